"""Folding per-channel ``Add``/``Sub``/``Mul``/``Div`` by constants into the layer before.

Exporters often emit a convolution's bias, or a per-channel scale, as a
separate elementwise node (Paddle: ``Conv -> Add(reshape(bias, [1, C, 1, 1]))``).
Absorbing it into the layer's weights and bias removes the node, lets a
following batch norm fold, and lets a quantizer see one layer with an int32
bias instead of a float ``Add``.

A node qualifies when one operand is the output of a Conv/ConvTranspose/Gemm/
MatMul read by nothing else, and the other is a constant that is either a
scalar or varies along the layer's channel axis only (e.g. ``[1, C, 1, 1]`` or
``[C, 1, 1]`` after a Conv, ``[C]`` or ``[1, C]`` after a MatMul), and the
constant does not broadcast the result to a larger shape. ``x - c`` is
``x + (-c)``, ``x / c`` is ``x * (1/c)`` (not folded if ``c`` has a zero).
``c - x`` and ``c / x`` are not affine in the channel sense and are left.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.affine import ChannelAffine, channel_axis_from_end, fold_affine, linear_layer_of, output_channels
from onnxcomp.context import PassContext
from onnxcomp.graph import Namer, constant_value, is_onnx_op
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FoldChannelAffineConfig(PassConfig):
    pass


class FoldChannelAffine(Pass):
    """Fold Add/Sub/Mul/Div by per-channel constants into the preceding linear layer."""

    name = "fold-channel-affine"
    Config = FoldChannelAffineConfig
    stage = Stage.FOLD
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        candidates = [n for n in graph.nodes if is_onnx_op(n, "Add", "Sub", "Mul", "Div") and len(n.inputs) == 2]
        if not candidates:
            return PassResult(graph, False, {})
        ctx.infer_shapes(graph)
        namer = Namer(graph)
        folded: Counter[str] = Counter()
        for node in candidates:
            if not node.inputs:  # detached by an earlier fold in this loop
                continue
            affine = _as_channel_affine(graph, node)
            if isinstance(affine, str):
                logger.debug("%s %s not folded: %s", node.op, node.name, affine)
                continue
            layer_op, reason = fold_affine(graph, node, affine, namer)
            if layer_op:
                folded[f"{node.op}_into_{layer_op}"] += 1
            else:
                logger.debug("%s %s not folded: %s", node.op, node.name, reason)
        return PassResult(graph, bool(folded), dict(sorted(folded.items())))


def _as_channel_affine(graph: gs.Graph, node: gs.Node) -> ChannelAffine | str:
    """``node`` as ``y = s * x + t`` per channel of the layer computing ``x``."""
    if node.op in ("Add", "Mul") and constant_value(node.inputs[0]) is not None:
        node.inputs[0], node.inputs[1] = node.inputs[1], node.inputs[0]  # commutative: x first
    x, c_t = node.inputs
    c = constant_value(c_t)
    if c is None or c.dtype.kind != "f":
        return "the other operand is not a float constant"
    found = linear_layer_of(graph, x)
    if isinstance(found, str):
        return found
    layer, bias_add = found
    if layer.op == "MatMul" and bias_add is None and node.op in ("Add", "Sub"):
        return "already the MatMul's bias"
    channels = output_channels(layer)
    if channels is None:
        return "layer weight is not constant"
    vector = _per_channel(c, channels, layer, x)
    if isinstance(vector, str):
        return vector
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op == "Add":
        return ChannelAffine(ones, vector)
    if node.op == "Sub":
        return ChannelAffine(ones, -vector)
    if node.op == "Mul":
        return ChannelAffine(vector, zeros)
    if np.any(vector == 0):
        return "division by zero in the constant"
    return ChannelAffine(1.0 / vector, zeros)


def _per_channel(c: np.ndarray, channels: int, layer: gs.Node, x: gs.Tensor) -> np.ndarray | str:
    """The constant as one float64 value per channel, or why it is not per-channel."""
    values = np.asarray(c, dtype=np.float64)
    if values.size == 1:
        if x.shape is None or values.ndim > len(x.shape):
            return "cannot tell whether the scalar broadcasts the output"
        return np.full(channels, float(values.reshape(-1)[0]))
    if x.shape is None:
        return "output rank unknown"
    out_rank = len(x.shape)
    axis = channel_axis_from_end(layer, out_rank)
    if axis is None or values.ndim > out_rank:
        return "constant has more dims than the output"
    shape = (1,) * (out_rank - values.ndim) + values.shape
    want = [1] * out_rank
    want[axis] = channels
    if list(shape) != want:
        return f"constant shape {list(c.shape)} is not per-channel for {layer.op}"
    return values.reshape(-1)
