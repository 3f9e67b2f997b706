"""Task metrics: what a compressed model's outputs mean to the application.

Every metric streams ``(reference outputs, candidate outputs, feed)`` batches
and ends in a headline score in [0, 1], 1 meaning the candidate decides
exactly as the original (its *drop* is ``1 - score``), with the numbers behind
it as details. Each also offers a continuous *deviation* (0 = identical) for
the searches (pruning sensitivity, mixed precision), where a decision count
over a handful of samples would be too coarse to rank choices.

* ``classification``: top-1 agreement on the samples the original is
  confident about (top probability >= 0.5; all samples when it is confident about none:
  a flip between near-tied classes of an image the model cannot name is no damage),
  with top-1 agreement on all samples, top-5 agreement and KL(original || new);
  deviation: KL.
* ``detection``: detections kept, counting a spurious one as a lost one
  (matched / (reference + spurious)), with kept and spurious separately;
  deviation: per-feature (scores weigh as much as boxes).
* ``ctc``: character agreement of greedy CTC decodings (1 - edits / reference
  characters), with lines read identically; deviation: KL per time step.
* ``embedding``: mean cosine of the (mean-pooled, mask-aware) embeddings, with
  the worst sample and nearest-neighbour agreement across samples;
  deviation: 1 - cosine.
* ``segmentation``: for one probability (or logit) map, thresholded at 0.5
  (or 0), the regions agreed like detections (see :mod:`.regions`), with the
  mask IoU; for several classes, the mean IoU of the argmax masks; deviation:
  per-feature.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from . import detection, regions
from .features import FeatureError, FeatureErrorAccumulator

Outputs = list[np.ndarray]
Feed = Mapping[str, np.ndarray]


@dataclasses.dataclass
class TaskResult:
    """The headline value of a metric, how far it fell, and what it rests on.

    Attributes:
        metric: The metric's name (``classification``, ``features``, ...).
        headline: What ``value`` is, for people ("detections agreed").
        value: The headline number (None: the data gave nothing to measure).
        drop: How much worse than identical outputs (0 = identical); the
            quality budget bounds this.
        details: The other numbers measured.
    """

    metric: str
    headline: str
    value: float | None
    drop: float | None
    details: dict[str, float | int | str | None]


def scored(metric: str, headline: str, score: float | None, details: dict) -> TaskResult:
    """A result whose headline is a score in [0, 1] (1 = identical): its drop is ``1 - score``."""
    return TaskResult(metric, headline, score, None if score is None else max(0.0, 1.0 - score), details)


class TaskMetric(abc.ABC):
    """A streaming task metric over one (or two, for detection) outputs."""

    name: str = ""
    headline: str = ""

    @abc.abstractmethod
    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None: ...

    @abc.abstractmethod
    def result(self) -> TaskResult: ...

    def deviation(self, references: Sequence[Outputs], candidates: Sequence[Outputs], feeds: Sequence[Feed]) -> float | None:
        """A continuous 0 = identical distance, or None to use the per-feature deviation."""
        return None


def softmax_last(values: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis: ``values`` themselves when they already are some."""
    values = np.asarray(values, dtype=np.float64)
    if looks_like_probabilities(values):
        return values
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def looks_like_probabilities(values: np.ndarray) -> bool:
    values = np.asarray(values)
    if values.size == 0 or values.min() < 0 or values.max() > 1 + 1e-4:
        return False
    return bool(np.allclose(values.sum(axis=-1), 1.0, atol=1e-2))


def kl_last(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """KL(reference || candidate) of the distributions along the last axis, one value per position."""
    p, q = softmax_last(reference), softmax_last(candidate)
    return np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)


class Classification(TaskMetric):
    """Logits or probabilities ``[B, C]`` (more leading axes are positions)."""

    name, headline = "classification", "top-1 agreement (confident)"
    CONFIDENT = 0.5
    MIN_CONFIDENT = 1

    def __init__(self, output: int):
        self.output = output
        self._agree = self._confident_agree = self._confident = self._count = self._top5 = 0
        self._kl = 0.0

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        ref = np.asarray(reference[self.output], dtype=np.float64).reshape(-1, reference[self.output].shape[-1])
        cand = np.asarray(candidate[self.output], dtype=np.float64).reshape(ref.shape)
        probs = softmax_last(ref)
        ref_top, cand_top = ref.argmax(axis=1), cand.argmax(axis=1)
        same = ref_top == cand_top
        confident = probs.max(axis=1) >= self.CONFIDENT
        k = min(5, ref.shape[1])
        cand_top5 = np.argsort(-cand, axis=1)[:, :k]
        self._top5 += int(np.sum(np.any(cand_top5 == ref_top[:, None], axis=1)))
        self._agree += int(same.sum())
        self._confident += int(confident.sum())
        self._confident_agree += int((same & confident).sum())
        self._count += len(same)
        self._kl += float(kl_last(ref, cand).sum())

    def result(self) -> TaskResult:
        n = max(self._count, 1)
        overall = self._agree / n if self._count else None
        use_confident = self._confident >= self.MIN_CONFIDENT
        score = self._confident_agree / self._confident if use_confident and self._confident else overall
        return scored(self.name, self.headline if use_confident else "top-1 agreement", score, {
            "basis": self._confident if use_confident else self._count,
            "top1_agreement": overall,
            "top5_agreement": self._top5 / n if self._count else None,
            "confident_samples": self._confident,
            "kl": self._kl / n if self._count else None,
            "samples": self._count,
        })  # fmt: skip

    def deviation(self, references, candidates, feeds) -> float:
        values = [float(np.mean(kl_last(r[self.output], c[self.output]))) for r, c in zip(references, candidates)]
        return float(np.mean(values)) if values else 0.0


class Detection(TaskMetric):
    """YOLO-style or boxes+scores detector outputs (see :mod:`.detection`)."""

    name, headline = "detection", "detections agreed"

    def __init__(self, layout: detection.Layout):
        self.layout = layout
        self._ref = self._cand = self._matched = 0

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        for item in range(np.asarray(reference[self.layout.boxes]).shape[0]):
            ref = detection.decode(reference, self.layout, item)
            cand = detection.decode(candidate, self.layout, item)
            self._ref += len(ref[0])
            self._cand += len(cand[0])
            self._matched += detection.match(ref, cand)

    def result(self) -> TaskResult:
        spurious = self._cand - self._matched
        denominator = self._ref + spurious
        return scored(self.name, self.headline, self._matched / denominator if denominator else None, {
            "reference_detections": self._ref,
            "kept": self._matched / self._ref if self._ref else None,
            "spurious": spurious,
            "candidate_detections": self._cand,
        })  # fmt: skip


class CTC(TaskMetric):
    """``[B, T, C]`` per-time-step class scores, blank = class 0, greedy decoding."""

    name, headline = "ctc", "character agreement"

    def __init__(self, output: int, blank: int = 0):
        self.output, self.blank = output, blank
        self._edits = self._chars = self._lines = self._identical = 0

    def _decode(self, scores: np.ndarray) -> list[list[int]]:
        best = np.asarray(scores).argmax(axis=-1)
        lines = []
        for row in best.reshape(-1, best.shape[-1]):
            collapsed = row[np.concatenate([[True], row[1:] != row[:-1]])]
            lines.append([int(c) for c in collapsed if c != self.blank])
        return lines

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        for ref, cand in zip(self._decode(reference[self.output]), self._decode(candidate[self.output])):
            self._edits += edit_distance(ref, cand)
            self._chars += len(ref)
            self._lines += 1
            self._identical += int(ref == cand)

    def result(self) -> TaskResult:
        score = max(0.0, 1.0 - self._edits / self._chars) if self._chars else (1.0 if self._lines and not self._edits else None)
        return scored(self.name, self.headline, score, {
            "lines": self._lines,
            "lines_identical": self._identical / self._lines if self._lines else None,
            "reference_characters": self._chars,
            "edits": self._edits,
        })  # fmt: skip

    def deviation(self, references, candidates, feeds) -> float:
        values = [float(np.mean(kl_last(r[self.output], c[self.output]))) for r, c in zip(references, candidates)]
        return float(np.mean(values)) if values else 0.0


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


class Embedding(TaskMetric):
    """``[B, D]`` embeddings, or ``[B, T, D]`` token states mean-pooled over the
    tokens an input named ``*mask*`` of shape ``[B, T]`` marks (all tokens without one)."""

    name, headline = "embedding", "embedding cosine (mean)"
    MAX_NEIGHBOUR_SAMPLES = 2048

    def __init__(self, output: int):
        self.output = output
        self._cosines: list[float] = []
        self._ref: list[np.ndarray] = []
        self._cand: list[np.ndarray] = []

    def _pool(self, values: np.ndarray, feed: Feed) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim == 3:
            mask = next((np.asarray(v) for k, v in feed.items() if "mask" in k.lower() and np.asarray(v).shape == values.shape[:2]), None)
            weights = np.ones(values.shape[:2]) if mask is None else mask.astype(np.float64)
            return (values * weights[..., None]).sum(axis=1) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        return values.reshape(values.shape[0], -1)

    def _cosines_of(self, reference: Outputs, candidate: Outputs, feed: Feed) -> np.ndarray:
        a, b = self._pool(reference[self.output], feed), self._pool(candidate[self.output], feed)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        both_zero = (na == 0) & (nb == 0)
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
        return np.where(both_zero, 1.0, cos)

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        self._cosines.extend(self._cosines_of(reference, candidate, feed).tolist())
        if len(self._ref) < self.MAX_NEIGHBOUR_SAMPLES:
            self._ref.extend(self._pool(reference[self.output], feed))
            self._cand.extend(self._pool(candidate[self.output], feed))

    def result(self) -> TaskResult:
        cosines = np.array(self._cosines)
        return scored(self.name, self.headline, float(cosines.mean()) if cosines.size else None, {
            "cosine_min": float(cosines.min()) if cosines.size else None,
            "neighbour_agreement": _neighbour_agreement(self._ref, self._cand),
            "samples": int(cosines.size),
        })  # fmt: skip

    def deviation(self, references, candidates, feeds) -> float:
        values = [float(np.mean(1.0 - self._cosines_of(r, c, f))) for r, c, f in zip(references, candidates, feeds)]
        return float(np.mean(values)) if values else 0.0


def _neighbour_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float | None:
    """How often each sample's nearest other sample (by cosine) is the same under both models."""
    if len(reference) < 3:
        return None

    def nearest(rows: list[np.ndarray]) -> np.ndarray:
        m = np.stack(rows)
        m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-30)
        sim = m @ m.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    return float(np.mean(nearest(reference) == nearest(candidate)))


class Segmentation(TaskMetric):
    """``[B, C, H, W]`` maps. One channel (a probability or logit map, thresholded at
    0.5 or 0): regions agreed, like detections (see :mod:`.regions`), with the mask
    IoU beside it. Several classes: the IoU of the argmax masks, averaged over the
    classes present in the reference."""

    name = "segmentation"

    def __init__(self, output: int):
        self.output = output
        self._inter: dict[int, int] = {}
        self._union: dict[int, int] = {}
        self._regions = [0, 0, 0]  # reference, candidate, matched
        self._single = False

    def _masks(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.shape[1] == 1:
            threshold = 0.5 if values.min() >= 0 and values.max() <= 1 else 0.0
            return (values[:, 0] > threshold).astype(np.int64)
        return values.argmax(axis=1)

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        ref, cand = self._masks(reference[self.output]), self._masks(candidate[self.output])
        self._single = np.asarray(reference[self.output]).shape[1] == 1
        classes = [1] if self._single else np.unique(ref).tolist()
        for c in classes:
            a, b = ref == c, cand == c
            self._inter[c] = self._inter.get(c, 0) + int(np.sum(a & b))
            self._union[c] = self._union.get(c, 0) + int(np.sum(a | b))
        if self._single:
            for a, b in zip(ref.reshape(-1, *ref.shape[-2:]), cand.reshape(-1, *cand.shape[-2:])):
                counts = regions.match(a == 1, b == 1)
                self._regions = [x + y for x, y in zip(self._regions, counts)]

    def result(self) -> TaskResult:
        ious = [self._inter[c] / u for c, u in self._union.items() if u > 0]
        iou = float(np.mean(ious)) if ious else None
        details = {"mask_iou": iou, "classes": len(ious), "foreground_pixels": int(sum(self._union.values()))}
        if not self._single:
            return scored(self.name, "mask IoU", iou, details)
        n_ref, n_cand, matched = self._regions
        spurious = n_cand - matched
        agreed = matched / (n_ref + spurious) if n_ref + spurious else None
        details.update(reference_regions=n_ref, kept=matched / n_ref if n_ref else None, spurious=spurious)
        return scored(self.name, "regions agreed", agreed, details)


class Features(TaskMetric):
    """The per-feature error of every float output (see :mod:`.features`); its
    headline is the worst feature of the worst output, lower is better."""

    name, headline = "features", "worst-feature error"

    def __init__(self, outputs: Sequence[tuple[int, str]]):
        self._accumulators = [(index, FeatureErrorAccumulator(name)) for index, name in outputs]

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        for index, acc in self._accumulators:
            acc.add(reference[index], candidate[index])

    def errors(self) -> list[FeatureError]:
        return [acc.result() for _, acc in self._accumulators]

    def result(self) -> TaskResult:
        errors = self.errors()
        if not errors:
            return TaskResult(self.name, self.headline, None, None, {})
        worst = max(errors, key=lambda e: e.worst)
        where = f"{worst.output}" + ("" if worst.axis is None else f" [axis {worst.axis}, index {worst.worst_index}]")
        return TaskResult(self.name, self.headline, worst.worst, worst.worst, {"worst_feature": where})


class UserMetric(TaskMetric):
    """A user's callable ``score(reference, candidate) -> float`` (higher is better) over the
    outputs of a batch, each a dict of output name -> array. The drop is the
    mean score of the original against itself minus the mean score of the
    compressed model against the original."""

    name = "user"

    def __init__(self, function, label: str, names: Sequence[str]):
        self.function, self.headline, self.names = function, label, list(names)
        self._ideal: list[float] = []
        self._scores: list[float] = []

    def _call(self, reference: Outputs, candidate: Outputs) -> float:
        from ..errors import UsageError

        ref = dict(zip(self.names, reference))
        cand = dict(zip(self.names, candidate))
        try:
            value = float(self.function(ref, cand))
        except Exception as err:  # noqa: BLE001 - the user's code: one clear line
            raise UsageError(f"metric {self.headline} failed: {type(err).__name__}: {err}") from err
        if not np.isfinite(value):
            raise UsageError(f"metric {self.headline} returned {value}, not a finite number")
        return value

    def add(self, reference: Outputs, candidate: Outputs, feed: Feed) -> None:
        self._ideal.append(self._call(reference, reference))
        self._scores.append(self._call(reference, candidate))

    def result(self) -> TaskResult:
        if not self._scores:
            return TaskResult(self.name, self.headline, None, None, {})
        ideal, score = float(np.mean(self._ideal)), float(np.mean(self._scores))
        return TaskResult(self.name, self.headline, score, max(0.0, ideal - score), {"identical_outputs_score": ideal})

    def deviation(self, references, candidates, feeds) -> float:
        ideal = np.mean([self._call(r, r) for r in references]) if references else 0.0
        score = np.mean([self._call(r, c) for r, c in zip(references, candidates)]) if references else 0.0
        return float(max(0.0, ideal - score))
