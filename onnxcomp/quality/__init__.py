"""One measure of "still good", used by everything that judges a change.

Whether a compressed model still does its job is decided here and nowhere
else: the verification report, the quality budget (the gate that refuses a
result), the pruning sensitivity sweep and the mixed-precision search all ask
a :class:`Quality` built from the same :class:`MetricChoice`, so they cannot
disagree about what "better" means.

A metric is chosen with ``--metric`` (``metric=`` in Python) or detected from
the model's outputs (:func:`detect`): one of the task metrics of
:mod:`.tasks`, a user callable, or — when nothing is obvious — ``features``,
the per-feature error of :mod:`.features`, which no output layout can fool.
The per-feature error of every float output is reported whatever the metric.

The budget bounds the metric's *drop* (0 = the same decisions/outputs as the
original): :data:`DEFAULT_MAX_DROP` per metric unless ``--max-drop`` says
otherwise; a user metric has a budget only when one is given.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from . import detection
from .features import FeatureDeviation, FeatureError
from .tasks import CTC, Classification, Detection, Embedding, Features, Segmentation, TaskMetric, TaskResult, UserMetric

TASKS = ("classification", "detection", "ctc", "embedding", "segmentation", "features")

DEFAULT_MAX_DROP: dict[str, float] = {
    "classification": 0.02,  # top-1 agreement on confident samples >= 98 %
    "detection": 0.05,  # >= 95 % of the original's detections, spurious ones counted as lost
    # >= 98 % of the characters read the same: PP-OCRv5 rec int8 changes 1.7 % of fp32's characters
    # on held-out lines while reading the ground truth as well as fp32 (0.995 vs 0.9915): the changes
    # sit where fp32 itself is unsure, so agreement overstates the damage by about a point.
    "ctc": 0.02,
    "embedding": 0.01,  # mean embedding cosine >= 0.99
    "segmentation": 0.05,  # mask IoU >= 0.95
    "features": 0.25,  # no output feature's RMS error above a quarter of its RMS
}
"""The default quality budget: the largest drop of each metric a run may show."""


@dataclasses.dataclass(frozen=True)
class MetricChoice:
    """What the user asked for: a task name, ``auto``, or a callable.

    Attributes:
        task: One of :data:`TASKS`, or ``auto`` (detect from the outputs).
        function: A user callable ``score(reference, candidate) -> float``
            (task ``user``).
        label: How the choice is shown (the callable's ``module:name``).
    """

    task: str = "auto"
    function: Callable[[Mapping[str, np.ndarray], Mapping[str, np.ndarray]], float] | None = None
    label: str = "auto"

    @classmethod
    def parse(cls, spec: Any) -> MetricChoice:
        """From ``None``/``"auto"``, a task name, ``"module:function"``,
        ``"path/to/file.py:function"`` or a Python callable.

        Raises:
            UsageError: An unknown name, or a callable that cannot be imported.
        """
        if spec is None or isinstance(spec, MetricChoice):
            return spec or cls()
        if callable(spec):
            return cls("user", spec, getattr(spec, "__qualname__", repr(spec)))
        if not isinstance(spec, str):
            raise UsageError(f"metric must be a name or a callable, got {type(spec).__name__}")
        text = spec.strip()
        if text == "auto" or text in TASKS:
            return cls(text, None, text)
        if ":" in text:
            return cls("user", _import_callable(text), text)
        raise UsageError(f"unknown metric '{text}': use auto, {', '.join(TASKS)}, or module:function")


def _import_callable(text: str) -> Callable:
    where, _, attribute = text.rpartition(":")
    if not where or not attribute.isidentifier():
        raise UsageError(f"metric '{text}': expected module:function or file.py:function")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UsageError(f"metric '{text}': file {where} not found")
            spec = importlib.util.spec_from_file_location(f"onnxcomp_user_metric_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's module: one clear line
        raise UsageError(f"metric '{text}': cannot import {where}: {type(err).__name__}: {err}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise UsageError(f"metric '{text}': {where} has no callable '{attribute}'")
    return function


@dataclasses.dataclass(frozen=True)
class OutputView:
    """An output as the metric sees it: its name, and one reference value."""

    name: str
    value: np.ndarray


_EMBEDDING_NAMES = re.compile(r"embed|pool|sentence|last_hidden|hidden_state", re.IGNORECASE)
_BOX_NAMES = re.compile(r"box", re.IGNORECASE)
_SCORE_NAMES = re.compile(r"score|conf|prob|cls|class", re.IGNORECASE)


def detect(outputs: Sequence[OutputView]) -> tuple[str, str]:
    """``(task, why)``: the task the outputs make obvious, else ``features``.

    Rules, first match wins: a YOLO-style tensor with box coordinates beyond
    1 beside scores in [0, 1] is detection; a ``*box*`` ``[B, N, 4]`` output
    beside a ``*score*`` one is detection; ``[B, T, C]`` probabilities
    (C >= 3) are CTC; an output named like an embedding or hidden state is
    embedding; ``[B, C]`` float (C >= 2) is classification; a ``[B, 1, H, W]``
    map in [0, 1] is segmentation.
    """
    floats = [(i, o) for i, o in enumerate(outputs) if o.value.dtype.kind == "f"]
    for i, o in floats:
        layout = detection.yolo_layout(o.value.shape, i)
        if layout is not None and _yolo_values(o.value, layout):
            return "detection", f"output '{o.name}' {list(o.value.shape)} holds boxes beside scores in [0, 1]"
    if _boxes_and_scores(floats) is not None:
        return "detection", "outputs hold boxes [B, N, 4] and scores"
    for _, o in floats:
        v = o.value
        if v.ndim == 3 and v.shape[1] > 1 and v.shape[2] >= 3 and not _EMBEDDING_NAMES.search(o.name):
            from .tasks import looks_like_probabilities

            if looks_like_probabilities(v):
                return "ctc", f"output '{o.name}' {list(v.shape)} holds per-step class probabilities"
    for _, o in floats:
        if _EMBEDDING_NAMES.search(o.name) and o.value.ndim in (2, 3):
            return "embedding", f"output '{o.name}' is named like an embedding"
    for _, o in floats:
        if o.value.ndim == 2 and o.value.shape[1] >= 2:
            return "classification", f"output '{o.name}' {list(o.value.shape)} holds one score per class"
    for _, o in floats:
        v = o.value
        if v.ndim == 4 and v.shape[1] == 1 and min(v.shape[2:]) > 1 and v.min() >= 0 and v.max() <= 1:
            return "segmentation", f"output '{o.name}' {list(v.shape)} is a probability map"
    return "features", "no output makes a task obvious"


def _yolo_values(value: np.ndarray, layout: detection.Layout) -> bool:
    table = value[0] if layout.features_axis == 2 else value[0].T
    boxes, scores = table[:, :4], table[:, 4:]
    return bool(np.abs(boxes).max() > 1.5 and scores.min() >= 0 and scores.max() <= 1)


def _boxes_and_scores(floats: list[tuple[int, OutputView]]) -> detection.Layout | None:
    boxes = [(i, o) for i, o in floats if _BOX_NAMES.search(o.name) and o.value.ndim == 3 and o.value.shape[2] == 4]
    scores = [(i, o) for i, o in floats if _SCORE_NAMES.search(o.name) and o.value.ndim == 3]
    if len(boxes) != 1 or len(scores) != 1:
        return None
    (bi, b), (si, s) = boxes[0], scores[0]
    n = b.value.shape[1]
    if s.value.shape[1] == n:
        return detection.Layout(bi, si, 2)
    if s.value.shape[2] == n:
        return detection.Layout(bi, si, 1)
    return None


def _task_metric(task: str, outputs: Sequence[OutputView]) -> TaskMetric | None:
    """The task metric over the output(s) that carry the task (None: no output fits)."""
    floats = [(i, o) for i, o in enumerate(outputs) if o.value.dtype.kind == "f"]
    if task == "detection":
        for i, o in floats:
            layout = detection.yolo_layout(o.value.shape, i)
            if layout is not None:
                return Detection(layout)
        layout = _boxes_and_scores(floats)
        return Detection(layout) if layout is not None else None
    fits = {
        "classification": lambda v: v.ndim >= 2 and v.shape[-1] >= 2,
        "ctc": lambda v: v.ndim == 3 and v.shape[2] >= 3,
        "embedding": lambda v: v.ndim in (2, 3),
        "segmentation": lambda v: v.ndim == 4,
    }[task]
    named = [(i, o) for i, o in floats if _EMBEDDING_NAMES.search(o.name)] if task == "embedding" else []
    for i, o in named or floats:
        if fits(o.value):
            return {"classification": Classification, "ctc": CTC, "embedding": Embedding, "segmentation": Segmentation}[task](i)
    return None


@dataclasses.dataclass
class QualityResult:
    """What a candidate model's outputs mean against the original's.

    Attributes:
        metric: The task metric (or ``features`` / ``user``).
        why: How the metric was chosen ("asked", or the detection rule).
        result: The metric's headline, drop and details.
        features: The per-feature error of every float output.
        max_drop: The budget on ``result.drop`` (None: no budget).
        samples: How many samples were compared.
    """

    metric: str
    why: str
    result: TaskResult
    features: list[FeatureError]
    max_drop: float | None
    samples: int = 0

    @property
    def within_budget(self) -> bool:
        return self.max_drop is None or self.result.drop is None or self.result.drop <= self.max_drop + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "why": self.why,
            "headline": self.result.headline,
            "value": self.result.value,
            "drop": self.result.drop,
            "max_drop": self.max_drop,
            "within_budget": self.within_budget,
            "details": dict(self.result.details),
            "features": [f.to_dict() for f in self.features],
            "samples": self.samples,
        }


class Quality:
    """The chosen metric for one model, ready to measure candidates against it.

    Build it with :meth:`for_outputs` from the original's outputs on one sample
    (the detection rules look at their shapes and values).
    """

    def __init__(self, choice: MetricChoice, outputs: Sequence[OutputView], *, max_drop: float | None = None):
        self.choice = choice
        self.names = [o.name for o in outputs]
        self._outputs = list(outputs)
        if choice.task == "user":
            self.task, self.why = "user", f"asked ({choice.label})"
        elif choice.task == "auto":
            self.task, self.why = detect(outputs)
        else:
            self.task, self.why = choice.task, "asked"
            if choice.task != "features" and _task_metric(choice.task, outputs) is None:
                shapes = ", ".join(f"{o.name} {list(o.value.shape)}" for o in outputs)
                raise UsageError(f"--metric {choice.task}: no output fits it ({shapes})")
        self.max_drop = max_drop if max_drop is not None else DEFAULT_MAX_DROP.get(self.task)
        self.budget_source = "given" if max_drop is not None else ("default" if self.max_drop is not None else "none")

    @classmethod
    def for_outputs(cls, choice: Any, names: Sequence[str], values: Sequence[np.ndarray], *, max_drop: float | None = None) -> Quality:
        views = [OutputView(n, np.asarray(v)) for n, v in zip(names, values)]
        return cls(MetricChoice.parse(choice), views, max_drop=max_drop)

    def _float_outputs(self) -> list[tuple[int, str]]:
        return [(i, o.name) for i, o in enumerate(self._outputs) if o.value.dtype.kind == "f"]

    def _metric(self) -> TaskMetric:
        if self.task == "user":
            return UserMetric(self.choice.function, self.choice.label, self.names)
        if self.task == "features":
            return Features(self._float_outputs())
        metric = _task_metric(self.task, self._outputs)
        assert metric is not None  # checked in __init__ or by detect()
        return metric

    def meter(self) -> Meter:
        """A streaming measurement of one candidate (see :class:`Meter`)."""
        return Meter(self)

    def deviation(self, references: Sequence[Sequence[np.ndarray]], feeds: Sequence[Mapping[str, np.ndarray]]):
        """A function ``candidates -> float`` (0 = identical, larger = worse) against these
        reference outputs: the task metric's continuous distance, else the per-feature one."""
        references = [list(r) for r in references]
        feeds = list(feeds)
        metric = self._metric()
        features = FeatureDeviation(references)

        def measure(candidates: Sequence[Sequence[np.ndarray]]) -> float:
            candidates = [list(c) for c in candidates]
            value = metric.deviation(references, candidates, feeds)
            return features(references, candidates) if value is None else value

        return measure


class Meter:
    """Streams (reference, candidate) output pairs; :meth:`result` gives the :class:`QualityResult`."""

    def __init__(self, quality: Quality):
        self.quality = quality
        self._metric = quality._metric()
        self._features = self._metric if quality.task == "features" else Features(quality._float_outputs())
        self.samples = 0

    def add(self, reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], feed: Mapping[str, np.ndarray]) -> None:
        reference, candidate = [np.asarray(r) for r in reference], [np.asarray(c) for c in candidate]
        self._metric.add(reference, candidate, feed)
        if self._features is not self._metric:
            self._features.add(reference, candidate, feed)
        self.samples += 1

    def result(self) -> QualityResult:
        q = self.quality
        features = self._features.errors()  # type: ignore[attr-defined]
        return QualityResult(q.task, q.why, self._metric.result(), features, q.max_drop, self.samples)


def describe_metrics() -> str:
    """The metrics and their default budgets, for help texts."""
    return ", ".join(f"{task} (max drop {DEFAULT_MAX_DROP[task]:g})" for task in TASKS)


__all__ = ["Quality", "QualityResult", "MetricChoice", "Meter", "DEFAULT_MAX_DROP", "TASKS", "detect", "OutputView"]
