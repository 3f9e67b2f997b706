"""Writing a :class:`~.placement.QuantPlan` into the graph as Q/DQ nodes.

Per quantized activation (a :class:`~.placement.QuantPoint`)::

    tensor -> QuantizeLinear(scale, zp) -> DequantizeLinear(scale, zp) -> every reader of `observed`

Every reader of ``observed`` reads the DequantizeLinear, or only the point's
``readers`` when it names them (the transformer scheme's float residual stream).
Points of one group share the *same* scale and zero-point initializers, so
onnxruntime sees bit-identical parameters around data-movement ops and Concat.
A folded Relu/Clip is removed when the final parameters make it redundant,
which is onnxruntime's own test (``IsClipMadeRedundantByQ``): for Relu the zero
point is qmin; for Clip(lo, hi) ``round(lo/s) + zp <= qmin`` and
``round(hi/s) + zp >= qmax``. Otherwise it stays and the Q reads its output.

Per quantized layer, the constant weight becomes an int8 initializer read
through a DequantizeLinear (per output channel on the layer's out axis), and a
Conv/Gemm bias becomes int32 with ``scale = float32(x_scale) * w_scale`` and
zero point 0, the layout onnxruntime requires (within 1 %) to fuse the bias
into QLinearConv/QGemm. A MatMul's bias ``Add`` stays float (onnxruntime folds
it into QGemm itself).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.graph import (
    Namer,
    add_constant,
    constant_value,
    is_onnx_op,
    producer,
    remove_nodes,
    replace_all_uses,
    static_shape,
)

from .layers import LinearLayer
from .placement import QuantPlan, QuantPoint
from .qparams import QParams

logger = logging.getLogger(__name__)

INT32_MAX = np.iinfo(np.int32).max


@dataclasses.dataclass
class QuantizedWeight:
    """An integer weight and its parameters (``weight ≈ dequantize(values, params)``)."""

    values: np.ndarray
    params: QParams


@dataclasses.dataclass
class InsertionSummary:
    """What was written, for the pass summary."""

    quantized_tensors: int = 0
    quantized_weights: int = 0
    int32_biases: int = 0
    folded_activations: int = 0
    dq_names: dict[str, str] = dataclasses.field(default_factory=dict)
    """Observed float tensor name -> name of the DequantizeLinear output standing for it."""


def bias_scale(x_scale: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """The int32 bias scale onnxruntime checks: ``float32(x_scale) * float32(w_scale)``."""
    return (np.float32(np.asarray(x_scale).reshape(())) * np.asarray(w_scale, dtype=np.float32)).astype(np.float32)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``round(bias / scale)`` as int32 (the caller made sure it fits)."""
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32)


def activation_redundant(point: QuantPoint, params: QParams) -> bool:
    """Whether the Q with ``params`` clips exactly like the point's Relu/Clip."""
    if point.clip is None:
        return False
    low, high = point.clip
    scale = float(params.scale.reshape(-1)[0])
    zero = int(params.zero_point.reshape(-1)[0])
    qmin, qmax = params.qtype.qmin, params.qtype.qmax
    if zero != qmin or low != 0.0:
        return False
    return not np.isfinite(high) or round(high / scale) + zero >= qmax


def _scalar_constants(namer: Namer, base: str, params: QParams) -> tuple[gs.Constant, gs.Constant]:
    scale = add_constant(namer, f"{base}_scale", np.asarray(params.scale, dtype=np.float32).reshape(()))
    zero = add_constant(namer, f"{base}_zero_point", np.asarray(params.zero_point).reshape(()))
    return scale, zero


def _insert_pair(
    graph: gs.Graph, namer: Namer, point: QuantPoint, constants: tuple[gs.Constant, gs.Constant], keep_activation: bool
) -> gs.Variable:
    """Insert Q and DQ for ``point``; returns the DQ output (now read instead of ``observed``)."""
    scale, zero = constants
    observed = point.observed
    source = observed if (point.activation is None or keep_activation) else point.tensor
    base = observed.name
    q_out = gs.Variable(namer(f"{base}_quantized"), dtype=zero.values.dtype, shape=observed.shape)
    dq_out = gs.Variable(namer(f"{base}_dequantized"), dtype=np.float32, shape=observed.shape)
    dq = gs.Node("DequantizeLinear", namer(f"{base}_DequantizeLinear"), inputs=[q_out, scale, zero], outputs=[dq_out])
    graph.nodes.append(dq)
    if point.readers is None:
        replace_all_uses(graph, observed, dq_out)
    else:
        for reader in point.readers:
            for i, t in enumerate(reader.inputs):
                if t is observed:
                    reader.inputs[i] = dq_out
    q = gs.Node("QuantizeLinear", namer(f"{base}_QuantizeLinear"), inputs=[source, scale, zero], outputs=[q_out])
    graph.nodes.append(q)
    if point.activation is not None and not keep_activation:
        remove_nodes(graph, [point.activation])
    return dq_out


def _dequantized_constant(
    graph: gs.Graph, namer: Namer, base: str, values: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None
) -> gs.Variable:
    """``DequantizeLinear(values, scale, zero)`` of new initializers; returns its output."""
    q = add_constant(namer, f"{base}_quantized", values)
    scale_c = add_constant(namer, f"{base}_scale", np.asarray(scale, dtype=np.float32))
    zero_c = add_constant(namer, f"{base}_zero_point", np.asarray(zero))
    out = gs.Variable(namer(f"{base}_dequantized"), dtype=np.float32, shape=list(values.shape))
    attrs = {"axis": int(axis)} if axis is not None and np.ndim(scale) > 0 else {}
    graph.nodes.append(gs.Node("DequantizeLinear", namer(f"{base}_DequantizeLinear"), attrs=attrs, inputs=[q, scale_c, zero_c], outputs=[out]))
    return out


def _write_layer(
    graph: gs.Graph, namer: Namer, layer: LinearLayer, weight: QuantizedWeight, x_params: QParams | None, summary: InsertionSummary
) -> None:
    node = layer.node
    axis = weight.params.axis
    params = weight.params
    node.inputs[1] = _dequantized_constant(graph, namer, layer.weight.name, weight.values, params.scale, params.zero_point, axis)
    summary.quantized_weights += 1
    if layer.bias is None or layer.bias_node is not node or x_params is None:
        return
    scale = bias_scale(x_params.scale, weight.params.scale)
    scale = np.broadcast_to(scale, (layer.out_channels,)).astype(np.float32)
    q = quantize_bias(layer.bias_value(), scale)
    zero = np.zeros(scale.shape, dtype=np.int32)
    node.inputs[2] = _dequantized_constant(graph, namer, layer.bias.name, q, scale, zero, 0)
    summary.int32_biases += 1


def insert_qdq(
    graph: gs.Graph,
    plan: QuantPlan,
    group_params: list[QParams],
    weights: dict[str, QuantizedWeight],
    *,
    opset: int = 13,
) -> InsertionSummary:
    """Rewrite ``graph`` per ``plan``.

    Args:
        opset: The graph's default-domain opset (per-axis DequantizeLinear
            needs 13).
        group_params: Activation parameters of each group of ``plan``.
        weights: Layer (node) name -> its quantized weight; layers of the
            plan without an entry keep float weights.
    """
    namer = Namer(graph)
    summary = InsertionSummary()
    constants: dict[int, tuple[gs.Constant, gs.Constant]] = {}
    x_params_of: dict[str, QParams] = {}
    for point in plan.points:
        params = group_params[point.group]
        keep = point.activation is not None and not activation_redundant(point, params)
        if point.activation is not None and not keep:
            summary.folded_activations += 1
        name = point.name  # before insertion: a graph output passes its name on to the DQ output
        if point.group not in constants:
            constants[point.group] = _scalar_constants(namer, name, params)
        dq_out = _insert_pair(graph, namer, point, constants[point.group], keep)
        summary.dq_names[name] = dq_out.name
        x_params_of[dq_out.name] = params
        summary.quantized_tensors += 1
    written = set()
    for layer in plan.layers:
        weight = weights.get(layer.name)
        if weight is None:
            continue
        _write_layer(graph, namer, layer, weight, x_params_of.get(layer.node.inputs[0].name), summary)
        written.add(id(layer.node))
    for node in list(graph.nodes):
        if opset >= 13 and id(node) not in written and node.op in KEEP_FLOAT_OPS and is_onnx_op(node):
            _keep_float(graph, namer, node)
    graph.cleanup(remove_unused_graph_inputs=False)
    return summary


KEEP_FLOAT_OPS = ("Conv", "ConvTranspose", "Gemm")
"""Layers onnxruntime quantizes by itself (WeightBiasQuantization) when they read a per-tensor DQ."""


def _input_channels(node: gs.Node) -> int | None:
    shape = static_shape(node.inputs[0])
    if shape is not None and len(shape) >= 2:
        return shape[1]
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.ndim < 2:
        return None
    if node.op == "Conv":
        return int(weight.shape[1]) * int(node.attrs.get("group", 1))
    if node.op == "ConvTranspose":
        return int(weight.shape[0])
    if node.attrs.get("transA", 0):
        return None
    return int(weight.shape[1] if node.attrs.get("transB", 0) else weight.shape[0])


def _keep_float(graph: gs.Graph, namer: Namer, node: gs.Node) -> None:
    """Stop onnxruntime from quantizing a float layer that reads a DQ.

    onnxruntime's WeightBiasQuantization turns a Conv/ConvTranspose/Gemm whose
    input comes from a per-tensor DequantizeLinear (and whose output reaches a
    Q) into an integer layer with per-tensor int8 weights, exactly what a
    layer kept float must avoid. The layer gets its own DequantizeLinear whose
    (identical) parameters are repeated per channel on axis 1: the values are
    the same, but the DQ is no longer per tensor, so the layer stays float.
    """
    dq = producer(node.inputs[0])
    if dq is None or dq.op != "DequantizeLinear" or len(dq.inputs) < 3:
        return
    scale, zero = constant_value(dq.inputs[1]), constant_value(dq.inputs[2])
    channels = _input_channels(node)
    if scale is None or zero is None or scale.size != 1 or channels is None:
        return
    base = f"{node.name or node.inputs[0].name}_input"
    out = gs.Variable(namer(f"{base}_dequantized"), dtype=np.float32, shape=node.inputs[0].shape)
    inputs = [
        dq.inputs[0],
        add_constant(namer, f"{base}_scale", np.full(channels, scale.reshape(-1)[0], dtype=scale.dtype)),
        add_constant(namer, f"{base}_zero_point", np.full(channels, zero.reshape(-1)[0], dtype=zero.dtype)),
    ]
    graph.nodes.append(gs.Node("DequantizeLinear", namer(f"{base}_DequantizeLinear"), attrs={"axis": 1}, inputs=inputs, outputs=[out]))
    node.inputs[0] = out
