"""The mutable state of one dependency analysis, shared by the op rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import constant_value
from .channels import ChannelSets
from .layout import EMPTY, Block, Layout, block_on
from .members import Records

# A shape vector entry: an int constant, a dim of a tensor, or unknown (None).
# Constants remember where they are stored so a rewrite can change them.


@dataclasses.dataclass(frozen=True)
class ConstEntry:
    value: int
    holder: tuple[gs.Node, int, int] | None  # (consumer node, input index, offset)


@dataclasses.dataclass(frozen=True)
class DimEntry:
    tensor: str
    axis: int


ShapeEntryValue = ConstEntry | DimEntry | None


@dataclasses.dataclass
class AnalysisState:
    """Layouts of the tensors seen so far, plus everything recorded for the rewrite."""

    graph: gs.Graph
    shapes: dict[str, tuple[int, ...]]
    sets: ChannelSets = dataclasses.field(default_factory=ChannelSets)
    records: Records = dataclasses.field(default_factory=Records)
    layouts: dict[str, Layout] = dataclasses.field(default_factory=dict)
    shape_values: dict[str, list[ShapeEntryValue]] = dataclasses.field(default_factory=dict)

    def layout(self, tensor: gs.Tensor) -> Layout:
        return self.layouts.get(tensor.name, EMPTY) if tensor.name else EMPTY

    def set_layout(self, tensor: gs.Tensor, layout: Layout) -> None:
        if layout and tensor.name:
            self.layouts[tensor.name] = tuple(layout)

    def shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        return self.shapes.get(tensor.name)

    def rank(self, tensor: gs.Tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def input_rank(self, node: gs.Node) -> int | None:
        """Rank of ``node``'s first input; when unknown its channels are frozen (None)."""
        rank = self.rank(node.inputs[0])
        if rank is None:
            self.freeze_inputs(node, f"{self.where(node)}: input shape unknown")
        return rank

    def const(self, tensor: gs.Tensor) -> np.ndarray | None:
        return constant_value(tensor) if tensor.name else None

    def freeze(self, layout: Layout, reason: str) -> None:
        for block in layout:
            self.sets.freeze(block.ids, reason)

    def freeze_inputs(self, node: gs.Node, reason: str) -> None:
        """Freeze every channel reaching ``node``, including channel counts it reads as shape values."""
        for tensor in node.inputs:
            self.freeze(self.layout(tensor), reason)
            self.freeze_shape_dims(tensor, reason)

    def freeze_shape_dims(self, tensor: gs.Tensor, reason: str) -> None:
        for entry in self.shape_values.get(tensor.name, ()):
            if isinstance(entry, DimEntry):
                block = self.dim_block(entry)
                if block is not None:
                    self.sets.freeze(block.ids, reason)

    def dim_block(self, entry: DimEntry) -> Block | None:
        return block_on(self.layouts.get(entry.tensor, EMPTY), entry.axis)

    def new_channels(self, node: gs.Node, size: int) -> np.ndarray:
        return self.sets.new_space(node.name or node.op, size).ids

    def where(self, node: gs.Node) -> str:
        return f"{node.op} '{node.name}'"


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None
