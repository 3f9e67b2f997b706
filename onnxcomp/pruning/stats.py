"""Per-channel activation statistics, collected in onnxruntime on calibration data.

The tensors observed are the inputs of the layers that consume prunable
channels (:class:`~onnxcomp.pruning.members.Observation`). For every position
of the channel axis we keep, over all samples and all other axes:

* ``mean_abs``: mean ``|x|`` (the "mean activation" criterion);
* ``mean``: mean ``x`` (bias compensation adds ``W[:, c] * mean_c`` for a
  removed channel ``c``);
* ``zeros``: fraction of exact zeros (APoZ, "average percentage of zeros").

Samples stream through :func:`onnxcomp.activations.iterate_activations`, so
memory stays flat in the number of samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx

from ..activations import iterate_activations
from ..data import Dataset
from ..progress import ProgressFactory, null_progress
from .members import Observation


@dataclasses.dataclass
class ChannelStats:
    """Statistics of one observed tensor along its channel axis."""

    mean_abs: np.ndarray
    mean: np.ndarray
    zeros: np.ndarray


class _Accumulator:
    def __init__(self, axis: int):
        self.axis = axis
        self.count = 0
        self.sum_abs = self.sum = self.zeros = None

    def add(self, value: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(value, dtype=np.float64), self.axis, 0)
        x = x.reshape(x.shape[0], -1)
        if self.sum is None:
            self.sum_abs, self.sum, self.zeros = (np.zeros(x.shape[0]) for _ in range(3))
        self.sum_abs += np.abs(x).sum(axis=1)
        self.sum += x.sum(axis=1)
        self.zeros += (x == 0).sum(axis=1)
        self.count += x.shape[1]

    def finish(self) -> ChannelStats:
        n = max(self.count, 1)
        return ChannelStats(self.sum_abs / n, self.sum / n, self.zeros / n)


def collect_stats(
    model: onnx.ModelProto,
    data: Dataset,
    observations: Sequence[Observation],
    *,
    progress: ProgressFactory = null_progress,
) -> dict[str, ChannelStats]:
    """Tensor name -> statistics along its observed channel axis."""
    accumulators: dict[str, _Accumulator] = {}
    for obs in observations:
        accumulators.setdefault(obs.name, _Accumulator(obs.axis))
    if not accumulators:
        return {}
    names = list(accumulators)
    for _, values in iterate_activations(model, data, names, progress=progress, desc="channel statistics"):
        for name in names:
            accumulators[name].add(values[name])
    return {name: acc.finish() for name, acc in accumulators.items()}
