"""Sensitivity sweep: how much the model's outputs move when one group is pruned alone.

Removing channels is simulated without rebuilding the model: the layers that
consume them get zero weights for those inputs, which is exactly what removal
does to everything downstream (a removed channel no longer reaches any
consumer), except where channels are also normalized together (LayerNorm over
a pruned hidden dimension), where it is a close estimate. Each (group, ratio)
point costs one onnxruntime session and a few calibration samples.

Deviation is ``sum ||y' - y||^2 / sum ||y||^2`` over the float outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..data import Dataset
from ..progress import ProgressFactory, null_progress
from ..runtime import OptLevel, create_session
from .analysis import Dependencies
from .groups import Group, removal_of
from .members import Removal, Role

logger = logging.getLogger(__name__)

GRID = (0.2, 0.4, 0.6, 0.8)
"""Ratios at which each group is measured."""


@dataclasses.dataclass
class Curve:
    """Output deviation of one group at increasing ratios (0 at ratio 0)."""

    ratios: tuple[float, ...]
    deviations: tuple[float, ...]

    def ratio_at(self, threshold: float, cap: float) -> float:
        """Largest ratio (≤ cap) whose interpolated deviation stays ≤ threshold."""
        xs = np.array((0.0, *self.ratios))
        ys = np.maximum.accumulate(np.array((0.0, *self.deviations)))
        keep = xs <= cap + 1e-12
        xs, ys = xs[keep], ys[keep]
        if threshold >= ys[-1]:
            return float(xs[-1])
        k = int(np.searchsorted(ys, threshold, side="right"))
        if k == 0:
            return 0.0
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        return float(x0 + (x1 - x0) * (threshold - y0) / (y1 - y0)) if y1 > y0 else float(x0)


@contextlib.contextmanager
def masked_inputs(model: onnx.ModelProto, deps: Dependencies, removal: Removal) -> Iterator[int]:
    """Temporarily zero the consumer weights of removed channels in ``model``.

    Yields the number of weights changed; restores them on exit.
    """
    index = {t.name: t for t in model.graph.initializer}
    saved: dict[str, onnx.TensorProto] = {}
    try:
        for record in deps.records.slices:
            if record.role is not Role.SINK or record.ids.ndim != 1:
                continue
            gone = removal.of(record.ids)
            tensor = index.get(record.tensor.name)
            if tensor is None or not gone.any():
                continue
            if tensor.name not in saved:
                saved[tensor.name] = onnx.TensorProto()
                saved[tensor.name].CopyFrom(tensor)
            values = numpy_helper.to_array(tensor).copy()
            np.moveaxis(values, record.axes[0], 0)[gone] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        yield len(saved)
    finally:
        for name, original in saved.items():
            index[name].CopyFrom(original)


def _deviation(reference: list[list[np.ndarray]], session, samples: Sequence[dict]) -> float:
    num = den = 0.0
    for ref, feed in zip(reference, samples):
        for r, y in zip(ref, session.run(None, feed)):
            if r.dtype.kind != "f":
                continue
            diff = (np.asarray(y, dtype=np.float64) - r).reshape(-1)
            num += float(diff @ diff)
            den += float(np.asarray(r, dtype=np.float64).reshape(-1) @ r.reshape(-1).astype(np.float64))
    return num / den if den > 0 else num


def sweep(
    model: onnx.ModelProto,
    deps: Dependencies,
    groups: Sequence[Group],
    scores: dict[int, float],
    data: Dataset,
    *,
    eligible: Sequence[int],
    samples: int = 8,
    grid: Sequence[float] = GRID,
    progress: ProgressFactory = null_progress,
) -> dict[int, Curve]:
    """Deviation curve of every eligible group (group index -> curve)."""
    from .select import select_units

    feeds = []
    for feed in data:
        feeds.append(feed)
        if len(feeds) >= samples:
            break
    base = create_session(model, level=OptLevel.ALL)
    reference = [[np.asarray(v) for v in base.run(None, feed)] for feed in feeds]
    curves: dict[int, Curve] = {}
    by_index = {g.index: g for g in groups}
    bar = progress(len(eligible) * len(grid), "sensitivity sweep", "point")
    try:
        for index in eligible:
            group = by_index[index]
            deviations = []
            for ratio in grid:
                removed = select_units([group], scores, {index: ratio})
                with masked_inputs(model, deps, removal_of(deps, removed)) as changed:
                    if not changed:
                        deviations.append(0.0)
                    else:
                        session = create_session(model, level=OptLevel.ALL)
                        deviations.append(_deviation(reference, session, feeds))
                bar.update(1)
            curves[index] = Curve(tuple(grid), tuple(deviations))
            logger.debug("sensitivity %s: %s", group.name, deviations)
    finally:
        bar.close()
    return curves
