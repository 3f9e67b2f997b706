"""Folding a per-channel affine map into the linear layer that precedes it.

Many rewrites reduce to the same algebra: a node computes ``y = s * x + t``
per output channel of a linear layer (a BatchNormalization, a bias ``Add``, a
scaling ``Mul``), so it can be absorbed into that layer's weights and bias:

* ``Conv``: ``W'[o] = s[o] * W[o]``, ``b' = s * b + t``.
* ``ConvTranspose``: weights are ``(C_in, C_out/group, k...)``; output channel
  ``o = g * C_out/group + j`` scales ``W[i in group g, j]``.
* ``Gemm`` (``Y = alpha * A' B' + beta_g * C``): the output feature axis of
  ``B`` is 0 with ``transB=1`` and 1 otherwise; ``C' = s * beta_g * C + t``
  and the node's ``beta`` becomes 1.
* ``MatMul`` with a constant 2-D right operand (optionally followed by an
  ``Add`` of a constant bias): ``W'[:, o] = s[o] * W[:, o]``; a bias ``Add`` is
  created if there was none. The channel axis is the last axis of the product.

Guards: the layer's output is read by the affine node alone and is not a graph
output; the weight and bias are private initializers (not graph inputs, not
shared). Arithmetic is in float64, cast back to the weight's dtype. Nothing is
changed when a guard fails.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from .graph import (
    Namer,
    add_constant,
    constant_value,
    is_graph_output,
    is_onnx_op,
    private_constant,
    producer,
    reroute_output,
    set_constant,
)

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class ChannelAffine:
    """``y = scale * x + shift`` per channel (float64 vectors of equal length)."""

    scale: np.ndarray
    shift: np.ndarray

    @property
    def channels(self) -> int:
        return self.scale.size


def linear_layer_of(graph: gs.Graph, tensor: gs.Tensor) -> tuple[gs.Node, gs.Node | None] | str:
    """The linear layer computing ``tensor`` (and its bias ``Add`` for MatMul + Add).

    Returns:
        ``(layer, bias_add)`` or the reason there is no foldable layer.
    """
    node = producer(tensor)
    if node is None:
        return "input is not computed by a node"
    if len(tensor.outputs) != 1 or is_graph_output(graph, tensor):
        return "the layer's output has other readers"
    if is_onnx_op(node, *LINEAR_OPS):
        return node, None
    if is_onnx_op(node, "Add") and len(node.inputs) == 2:
        for index in (0, 1):
            matmul = producer(node.inputs[1 - index])
            if (
                matmul is not None
                and is_onnx_op(matmul, "MatMul")
                and constant_value(node.inputs[index]) is not None
                and len(node.inputs[1 - index].outputs) == 1
            ):
                return matmul, node
    return f"producer {node.op} is not a linear layer"


def output_channels(layer: gs.Node) -> int | None:
    """Number of output channels of a linear layer with a constant weight."""
    weight = constant_value(layer.inputs[1]) if len(layer.inputs) > 1 else None
    if weight is None:
        return None
    if layer.op == "Conv":
        return int(weight.shape[0])
    if layer.op == "ConvTranspose":
        return int(weight.shape[1]) * int(layer.attrs.get("group", 1))
    if layer.op == "Gemm" and weight.ndim == 2:
        return int(weight.shape[0] if layer.attrs.get("transB", 0) else weight.shape[1])
    if layer.op == "MatMul" and weight.ndim == 2:
        return int(weight.shape[1])
    return None


def channel_axis_from_end(layer: gs.Node, out_rank: int | None) -> int | None:
    """Position of the channel axis counted from the end (-1 = last), if known."""
    if layer.op in ("Conv", "ConvTranspose"):
        weight = constant_value(layer.inputs[1])
        return None if weight is None else -(weight.ndim - 1)
    return -1


def fold_affine(graph: gs.Graph, node: gs.Node, affine: ChannelAffine, namer: Namer) -> tuple[str | None, str | None]:
    """Absorb ``node`` (computing ``affine`` of its first input) into the layer before it.

    Returns:
        ``(layer op, None)`` on success, ``(None, reason)`` when not folded.
    """
    x = node.inputs[0]
    found = linear_layer_of(graph, x)
    if isinstance(found, str):
        return None, found
    layer, bias_add = found
    if layer.op in ("Conv", "ConvTranspose"):
        reason = _fold_conv(graph, layer, affine, namer)
    elif layer.op == "Gemm":
        reason = _fold_gemm(graph, layer, affine, namer)
    else:
        reason = _fold_matmul(graph, layer, bias_add, affine, namer)
    if reason is not None:
        return None, reason
    # A plain MatMul may have gained a bias Add that now computes x: reroute from x's producer.
    reroute_output(graph, producer(x), node)
    return layer.op, None


def _private_bias(graph: gs.Graph, layer: gs.Node, index: int) -> tuple[gs.Constant | None, str | None]:
    if len(layer.inputs) > index and layer.inputs[index].name:
        tensor = layer.inputs[index]
        if private_constant(graph, tensor) is None:
            return None, "bias is not a private constant"
        return tensor, None
    return None, None


def _set_bias(layer: gs.Node, index: int, bias_t: gs.Constant | None, values: np.ndarray, namer: Namer) -> None:
    if bias_t is not None:
        set_constant(bias_t, values)
        return
    new = add_constant(namer, f"{layer.name or layer.op}_bias", values)
    while len(layer.inputs) < index:
        layer.inputs.append(gs.Variable.empty())
    layer.inputs.append(new)


def _fold_conv(graph: gs.Graph, layer: gs.Node, affine: ChannelAffine, namer: Namer) -> str | None:
    weight = private_constant(graph, layer.inputs[1])
    if weight is None:
        return "weight is not a private constant"
    if weight.dtype.kind != "f":
        return f"weight dtype {weight.dtype} is not floating point"
    bias_t, problem = _private_bias(graph, layer, 2)
    if problem:
        return problem
    group = int(layer.attrs.get("group", 1))
    s, w = affine.scale, weight.astype(np.float64)
    if layer.op == "Conv":
        if w.shape[0] != s.size:
            return "channel count mismatch"
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        c_in, c_out_g = w.shape[0], w.shape[1]
        if c_out_g * group != s.size or c_in % group:
            return "channel count mismatch"
        grouped = w.reshape((group, c_in // group, c_out_g) + w.shape[2:])
        w = (grouped * s.reshape((group, 1, c_out_g) + (1,) * (w.ndim - 2))).reshape(weight.shape)
    b = np.zeros(s.size) if bias_t is None else np.asarray(bias_t.values, dtype=np.float64).reshape(-1)
    if b.size not in (1, s.size):
        return "bias does not have one value per channel"
    set_constant(layer.inputs[1], w.astype(weight.dtype))
    _set_bias(layer, 2, bias_t, (s * b + affine.shift).astype(weight.dtype), namer)
    return None


def _fold_gemm(graph: gs.Graph, layer: gs.Node, affine: ChannelAffine, namer: Namer) -> str | None:
    weight = private_constant(graph, layer.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        return "weight is not a private 2-D float constant"
    axis = 0 if layer.attrs.get("transB", 0) else 1
    if weight.shape[axis] != affine.channels:
        return "channel count mismatch"
    bias_t, problem = _private_bias(graph, layer, 2)
    if problem:
        return problem
    s = affine.scale
    shape = (-1, 1) if axis == 0 else (1, -1)
    beta_g = float(layer.attrs.get("beta", 1.0))
    c = np.zeros(s.size) if bias_t is None else beta_g * np.asarray(bias_t.values, dtype=np.float64)
    if c.ndim and c.shape[-1] not in (1, s.size):
        return "bias does not broadcast per channel"
    set_constant(layer.inputs[1], (weight.astype(np.float64) * s.reshape(shape)).astype(weight.dtype))
    _set_bias(layer, 2, bias_t, (s * c + affine.shift).astype(weight.dtype), namer)
    layer.attrs["beta"] = 1.0
    return None


def _fold_matmul(
    graph: gs.Graph, matmul: gs.Node, bias_add: gs.Node | None, affine: ChannelAffine, namer: Namer
) -> str | None:
    weight = private_constant(graph, matmul.inputs[1])
    if weight is None or weight.ndim != 2 or weight.dtype.kind != "f":
        return "weight is not a private 2-D float constant"
    if weight.shape[1] != affine.channels:
        return "channel count mismatch"
    s = affine.scale
    if bias_add is not None:
        index = 0 if constant_value(bias_add.inputs[0]) is not None else 1
        bias_t = bias_add.inputs[index]
        if private_constant(graph, bias_t) is None:
            return "bias is not a private constant"
        b = np.asarray(bias_t.values, dtype=np.float64)
        if b.ndim and b.shape[-1] not in (1, s.size):
            return "bias does not broadcast per channel"
        set_constant(matmul.inputs[1], (weight.astype(np.float64) * s.reshape(1, -1)).astype(weight.dtype))
        set_constant(bias_t, (s * b + affine.shift).astype(weight.dtype))
        return None
    set_constant(matmul.inputs[1], (weight.astype(np.float64) * s.reshape(1, -1)).astype(weight.dtype))
    if not np.any(affine.shift):
        return None
    out = matmul.outputs[0]
    bias = add_constant(namer, f"{matmul.name or 'MatMul'}_bias", affine.shift.astype(weight.dtype))
    hidden = gs.Variable(namer(f"{out.name}_nobias"), dtype=out.dtype)
    matmul.outputs[0] = hidden
    graph.nodes.append(
        gs.Node("Add", name=namer(f"{matmul.name or 'MatMul'}_bias_add"), inputs=[hidden, bias], outputs=[out])
    )
    return None
