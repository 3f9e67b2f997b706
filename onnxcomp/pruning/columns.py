"""The slabs of layer weights that belong to each channel: filters and columns.

A plain consuming layer (Conv with ``group == 1``, Gemm, MatMul: a ``SINK``
slice) reads input position ``i`` through the slab ``W[..., i, ...]`` along one
axis of its weight. A grouped Conv (``1 < group < C_in``) reads input position
``i = k * C_in/group + j`` (channel ``j`` of group ``k``) only through
``W[rows of group k, j]``: the other groups' filters never see it.

Both kinds are seen here as one matrix with a row per input position, so the
criteria (magnitude, contribution) and the sensitivity sweep (which zeroes the
columns of removed channels) treat every consumer alike; the filters that
produce channels (a grouped conv's included) are seen the same way, one row
per output channel, for magnitude scores and reconstruction. Without the grouped
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
class Slabs:
    """Position ``p`` along ``axis`` of ``node``'s weight ``node.inputs[1]``
    belongs to channel ``ids[p]``: a filter it produces, or a column through
    which it is read.

    ``group`` > 1 marks a grouped conv's input columns (weight
    ``[C_out, C_in/group, *kernel]``, ``axis`` 1, positions ``p`` over C_in).
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
        """One row per position: the weights of its slab, flattened."""
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


def slices_of(deps: Dependencies, role: Role) -> list[Slabs]:
    """The 1-D weight slices of ``role`` (all weights are input 1 of their layer)."""
    return [Slabs(r.node, r.ids, r.axes[0]) for r in deps.records.slices if r.role is role and r.ids.ndim == 1]


def consumer_columns(deps: Dependencies) -> list[Slabs]:
    """Every layer that reads tracked channels through a weight, plain or grouped."""
    out = slices_of(deps, Role.SINK)
    out.extend(
        Slabs(r.node, r.in_ids, 1, r.group)
        for r in deps.records.grouped_convs
        if r.in_ids is not None and constant_value(r.node.inputs[1]) is not None
    )
    return out


def producer_filters(deps: Dependencies) -> list[Slabs]:
    """Every layer that creates tracked channels, one filter per channel (grouped convs included)."""
    return slices_of(deps, Role.SOURCE) + [Slabs(r.node, r.out_ids, 0) for r in deps.records.grouped_convs]
