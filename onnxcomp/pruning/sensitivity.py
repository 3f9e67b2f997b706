"""Sensitivity sweep: how much the model's outputs move when one group is pruned alone.

Removing channels is simulated without rebuilding the model: the layers that
consume them get zero weights for those inputs, which is exactly what removal
does to everything downstream (a removed channel no longer reaches any
consumer), except where channels are also normalized together (LayerNorm over
a pruned hidden dimension), where it is a close estimate. With the ``obs``
criterion the consumers get their refitted weights instead, so the sweep sees
the model as reconstruction will leave it. Each (group, ratio) point costs one
onnxruntime session and a few calibration samples.

Deviation is the run's quality measure (:meth:`onnxcomp.quality.Quality.deviation`):
the continuous distance of the chosen metric (KL for classifiers and CTC, 1 -
cosine for embeddings, a user metric's drop), else the per-feature error, so a
detector's class scores weigh as much as its box coordinates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import Dataset
from ..progress import ProgressFactory, null_progress
from ..quality import MetricChoice, Quality
from ..runtime import OptLevel, create_session
from .analysis import Dependencies
from .columns import consumer_columns
from .groups import Group, removal_of
from .members import Removal

logger = logging.getLogger(__name__)

GRID = (0.2, 0.4, 0.6, 0.8)
"""Ratios at which each group is measured."""


@dataclasses.dataclass
class Curve:
    """Output deviation of one group at increasing ratios (0 at ratio 0)."""

    ratios: tuple[float, ...]
    deviations: tuple[float, ...]


@contextlib.contextmanager
def patched(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> Iterator[int]:
    """Temporarily replace initializers of ``model`` by name; yields how many were replaced."""
    index = {t.name: t for t in model.graph.initializer}
    saved: dict[str, onnx.TensorProto] = {}
    try:
        for name, values in arrays.items():
            tensor = index.get(name)
            if tensor is None:
                continue
            saved[name] = onnx.TensorProto()
            saved[name].CopyFrom(tensor)
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(values), name))
        yield len(saved)
    finally:
        for name, original in saved.items():
            index[name].CopyFrom(original)


def masked_arrays(deps: Dependencies, removal: Removal) -> dict[str, np.ndarray]:
    """Consumer weights with the columns of removed channels zeroed, by tensor name."""
    out: dict[str, np.ndarray] = {}
    for columns in consumer_columns(deps):
        name = columns.tensor.name
        gone = removal.of(columns.ids)
        if not name or not gone.any():
            continue
        out[name] = columns.zeroed(out[name] if name in out else columns.weight(), gone)
    return out


def sweep(
    model: onnx.ModelProto,
    deps: Dependencies,
    groups: Sequence[Group],
    scores: dict[int, float],
    data: Dataset,
    *,
    eligible: Sequence[int],
    samples: int = 8,
    grid: Callable[[Group], Sequence[float]] = lambda group: GRID,
    compensated: Callable[[int, float], dict[str, np.ndarray] | None] | None = None,
    metric: MetricChoice | None = None,
    progress: ProgressFactory = null_progress,
) -> dict[int, Curve]:
    """Deviation curve of every eligible group (group index -> curve).

    ``grid(group)`` gives the ratios to measure (ones the group can realize).
    ``compensated(group, ratio)`` may give refitted consumer weights for that
    point (by tensor name); otherwise the removed channels' columns are zeroed.
    ``metric`` is the run's quality metric (default: detected from the outputs).
    """
    from .select import select_units

    feeds = []
    for feed in data:
        feeds.append(feed)
        if len(feeds) >= samples:
            break
    base = create_session(model, level=OptLevel.ALL)
    reference = [[np.asarray(v) for v in base.run(None, feed)] for feed in feeds]
    names = [o.name for o in base.get_outputs()]
    deviation = Quality.for_outputs(metric or MetricChoice(), names, reference[0]).deviation(reference, feeds)
    curves: dict[int, Curve] = {}
    by_index = {g.index: g for g in groups}
    points = {index: list(grid(by_index[index])) for index in eligible}
    bar = progress(sum(len(p) for p in points.values()), "sensitivity sweep", "point")
    try:
        for index in eligible:
            group = by_index[index]
            if not points[index]:
                continue
            deviations = []
            for ratio in points[index]:
                arrays = compensated(index, ratio) if compensated is not None else None
                if arrays is None:
                    removed = select_units([group], scores, {index: ratio})
                    arrays = masked_arrays(deps, removal_of(deps, removed))
                with patched(model, arrays) as changed:
                    if not changed:
                        deviations.append(0.0)
                    else:
                        session = create_session(model, level=OptLevel.ALL)
                        deviations.append(deviation([session.run(None, feed) for feed in feeds]))
                bar.update(1)
            curves[index] = Curve(tuple(points[index]), tuple(deviations))
            logger.debug("sensitivity %s: %s", group.name, deviations)
    finally:
        bar.close()
    return curves


def load_curves(path, groups: Sequence[Group], eligible: Sequence[int]) -> dict[int, Curve]:
    """Curves saved by an earlier run (group name -> {ratio: deviation}), for ``eligible`` groups.

    Raises:
        UsageError: Unreadable file, or a group of this model missing from it.
    """
    import json
    from pathlib import Path

    from ..errors import UsageError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"sensitivity file {path}: cannot read ({err})") from None
    if isinstance(data, dict) and "artifacts" in data:
        data = data["artifacts"].get("prune-channels", {})
    if isinstance(data, dict) and "sensitivity" in data:
        data = data["sensitivity"]
    curves = {}
    by_index = {g.index: g for g in groups}
    for index in eligible:
        name = by_index[index].name
        points = data.get(name) if isinstance(data, dict) else None
        if points is None:
            raise UsageError(f"sensitivity file {path}: no curve for group '{name}' (not from this model?)")
        ordered = sorted((float(r), float(d)) for r, d in points.items())
        curves[index] = Curve(tuple(r for r, _ in ordered), tuple(d for _, d in ordered))
    return curves
