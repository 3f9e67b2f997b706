"""The weight columns through which layers read their input channels.

A plain consuming layer (Conv with ``group == 1``, Gemm, MatMul: a ``SINK``
slice) reads input position ``i`` through the slab ``W[..., i, ...]`` along one
axis of its weight. A grouped Conv (``1 < group < C_in``) reads input position
``i = k * C_in/group + j`` (channel ``j`` of group ``k``) only through
``W[rows of group k, j]``: the other groups' filters never see it.

Both kinds are seen here as one matrix with a row per input position, so the
criteria (magnitude, contribution) and the sensitivity sweep (which zeroes the
columns of removed channels) treat every consumer alike. Without the grouped
form, channels read only by grouped convs (ResNeXt, RegNet and ShuffleNet
bottlenecks) looked free to remove: masking changed nothing and the sweep
measured no deviation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import constant_value
from .analysis import Dependencies
from .members import Role


@dataclasses.dataclass(eq=False)
class Columns:
    """Layer ``node`` reads input position ``p`` (channel ``ids[p]``) through
    column ``p`` of its weight ``node.inputs[1]``.

    ``axis`` is the weight axis of the input positions; ``group`` > 1 marks a
    grouped conv (weight ``[C_out, C_in/group, *kernel]``, ``axis`` 1).
    """

    node: gs.Node
    ids: np.ndarray
    axis: int
    group: int = 1

    @property
    def tensor(self) -> gs.Tensor:
        return self.node.inputs[1]

    def weight(self) -> np.ndarray:
        return np.asarray(constant_value(self.tensor))

    def matrix(self, weight: np.ndarray | None = None) -> np.ndarray:
        """One row per input position: the weights that read it, flattened."""
        weight = self.weight() if weight is None else weight
        if self.group == 1:
            return np.moveaxis(weight, self.axis, 0).reshape(weight.shape[self.axis], -1)
        per_group = weight.reshape(self.group, weight.shape[0] // self.group, weight.shape[1], -1)
        return per_group.transpose(0, 2, 1, 3).reshape(self.ids.size, -1)

    def zeroed(self, weight: np.ndarray, gone: np.ndarray) -> np.ndarray:
        """A copy of ``weight`` with the columns of the ``gone`` positions zero."""
        out = np.array(weight, copy=True)
        if self.group == 1:
            np.moveaxis(out, self.axis, 0)[gone] = 0
        else:
            per_group = out.reshape(self.group, out.shape[0] // self.group, out.shape[1], -1)
            per_group[...] = np.where(gone.reshape(self.group, 1, -1, 1), 0, per_group)
        return out


def consumer_columns(deps: Dependencies) -> list[Columns]:
    """Every layer that reads tracked channels through a weight, plain or grouped."""
    out = [
        Columns(r.node, r.ids, r.axes[0])
        for r in deps.records.slices
        if r.role is Role.SINK and r.ids.ndim == 1
    ]
    out.extend(
        Columns(r.node, r.in_ids, 1, r.group)
        for r in deps.records.grouped_convs
        if r.in_ids is not None and constant_value(r.node.inputs[1]) is not None
    )
    return out
