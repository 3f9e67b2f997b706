"""Dynamic int8 quantization of MatMul/Gemm layers with constant weights.

A layer ``y = x @ W (+ b)`` with a constant ``W[K, N]`` is rewritten, in
standard ONNX ops, as::

    xq, xs, xz = DynamicQuantizeLinear(x)          # uint8, per tensor, at run time
    acc        = MatMulInteger(xq, Wq, xz, Wz)     # int32, Wq int8 constant, Wz = 0
    y          = Cast<float>(acc) * (xs * Ws)      # Ws: per output column (or one scalar)
    y          = y + b                             # Gemm bias (times beta), if any

which is exact up to rounding because ``x ≈ xs * (xq - xz)`` and
``W ≈ Wq * Ws`` with ``Ws`` broadcast along N. This is the layout
onnxruntime's own ``quantize_dynamic`` emits; its CPU provider fuses it (at
ORT_ENABLE_EXTENDED and above) into ``com.microsoft.DynamicQuantizeMatMul``,
or ``MatMulIntegerToFloat`` when several layers share one quantized input,
which is why a tensor read by several layers gets one DynamicQuantizeLinear.

Weights use uint8 activations against int8 symmetric weights (U8S8), the
combination onnxruntime's x86 kernels run fastest; zero points of weights are 0.

Optional activation smoothing (SmoothQuant, :mod:`.smoothing`) moves per-input-
channel outliers from the activation into the weights. The division is one
``Mul`` by ``1/s`` before the DynamicQuantizeLinear (shared by all layers
reading ``x``); it narrows the per-tensor activation range that
DynamicQuantizeLinear must cover. It needs calibration data for ``max|x_k|``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant, attr, constant_value, is_onnx_op, read_constant_uncached, remove_nodes

from .qparams import QParams, QuantType, dequantize, sqnr_db
from .smoothing import quantize_weight_columns

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class WeightLayer:
    """A MatMul or Gemm computing ``activation @ weight * alpha + bias``.

    Attributes:
        node: The MatMul/Gemm node.
        activation: The run-time input (A).
        weight_tensor: The constant B as stored.
        transposed: B is stored ``[N, K]`` (Gemm ``transB=1``).
        alpha: Gemm's alpha (1 for MatMul).
        bias: Gemm's ``beta * C`` (broadcastable to the output), or None.
    """

    node: gs.Node
    activation: gs.Tensor
    weight_tensor: gs.Constant
    transposed: bool = False
    alpha: float = 1.0
    bias: np.ndarray | None = None

    @property
    def weight(self) -> np.ndarray:
        """``[K, N]`` float weight as multiplied (Gemm ``transB`` undone).

        Read on each access without being cached on the graph, so a pass that
        handles one layer at a time holds one float weight in memory.
        """
        values = read_constant_uncached(self.weight_tensor)
        return np.ascontiguousarray(values.T) if self.transposed else values


def find_weight_layers(
    graph: gs.Graph,
    *,
    op_types: Collection[str] = ("MatMul", "Gemm"),
    exclude: Collection[str] = (),
    min_elements: int = 0,
) -> list[WeightLayer]:
    """MatMul/Gemm nodes whose second input is a constant 2-D float weight.

    A MatMul qualifies when B is a 2-D float constant (A may have any rank >= 2);
    a Gemm when ``transA`` is 0, B is constant and C is absent or constant.
    Nodes named in ``exclude`` and weights smaller than ``min_elements`` are
    skipped.
    """
    layers = []
    for node in graph.nodes:
        if node.name in exclude or not is_onnx_op(node, *op_types) or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        if not isinstance(weight, gs.Constant) or len(weight.shape) != 2 or np.dtype(weight.dtype) != np.float32:
            continue
        if int(np.prod(weight.shape)) < min_elements or constant_value(node.inputs[0]) is not None:
            continue
        if node.op == "MatMul":
            layers.append(WeightLayer(node, node.inputs[0], weight))
            continue
        if attr(node, "transA", 0):
            continue
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = constant_value(node.inputs[2])
            if c is None:
                continue
            bias = (c.astype(np.float32) * np.float32(attr(node, "beta", 1.0))).astype(np.float32)
        layers.append(WeightLayer(node, node.inputs[0], weight, bool(attr(node, "transB", 0)), float(attr(node, "alpha", 1.0)), bias))
    return layers


@dataclasses.dataclass
class QuantizedInput:
    """The outputs of one DynamicQuantizeLinear: quantized tensor, scale, zero point."""

    values: gs.Variable
    scale: gs.Variable
    zero_point: gs.Variable


def add_dynamic_quantize(graph: gs.Graph, namer: Namer, x: gs.Tensor, smooth: np.ndarray | None = None) -> QuantizedInput:
    """Append ``DynamicQuantizeLinear(x)`` (after ``x * (1/smooth)`` if given)."""
    base = x.name or "x"
    source = x
    if smooth is not None:
        inverse = add_constant(namer, f"{base}_smooth_inv", (1.0 / smooth).astype(np.float32))
        source = gs.Variable(namer(f"{base}_smoothed"), dtype=np.float32)
        graph.nodes.append(gs.Node("Mul", namer(f"{base}_Smooth"), inputs=[x, inverse], outputs=[source]))
    out = QuantizedInput(
        gs.Variable(namer(f"{base}_quantized"), dtype=np.uint8),
        gs.Variable(namer(f"{base}_scale"), dtype=np.float32, shape=[]),
        gs.Variable(namer(f"{base}_zero_point"), dtype=np.uint8, shape=[]),
    )
    graph.nodes.append(
        gs.Node(
            "DynamicQuantizeLinear",
            namer(f"{base}_DynamicQuantize"),
            inputs=[source],
            outputs=[out.values, out.scale, out.zero_point],
        )
    )
    return out


def replace_with_integer_matmul(
    graph: gs.Graph,
    namer: Namer,
    layer: WeightLayer,
    qinput: QuantizedInput,
    *,
    per_channel: bool,
    smooth: np.ndarray | None = None,
) -> float:
    """Replace ``layer`` by MatMulInteger + rescale (see the module docstring).

    The last new node writes the layer's original output tensor, so its name
    (and graph-output status) is kept. Returns the weight's SQNR in dB.
    """
    node = layer.node
    base = node.name or node.outputs[0].name
    weight = layer.weight if smooth is None else layer.weight * smooth[:, None]
    wq, ws = quantize_weight_columns(weight, per_channel=per_channel)
    scale_shape = ws.shape
    approx = dequantize(wq, QParams(ws, np.zeros(scale_shape, np.int8), QuantType.INT8, axis=1 if ws.ndim else None))
    if smooth is not None:
        approx = approx / smooth[:, None]
    error_db = sqnr_db(layer.weight, approx)

    w_const = add_constant(namer, f"{base}_weight_int8", wq)
    w_zero = add_constant(namer, f"{base}_weight_zero_point", np.zeros(scale_shape, np.int8))
    w_scale = add_constant(namer, f"{base}_weight_scale", (ws * np.float32(layer.alpha)).astype(np.float32))
    acc = gs.Variable(namer(f"{base}_int32"), dtype=np.int32)
    accf = gs.Variable(namer(f"{base}_int32_float"), dtype=np.float32)
    scale = gs.Variable(namer(f"{base}_rescale"), dtype=np.float32)
    output = node.outputs[0]
    remove_nodes(graph, [node])
    scaled = output if layer.bias is None else gs.Variable(namer(f"{base}_unbiased"), dtype=np.float32)
    nodes = [
        gs.Node("MatMulInteger", namer(f"{base}_MatMulInteger"), inputs=[qinput.values, w_const, qinput.zero_point, w_zero], outputs=[acc]),
        gs.Node("Cast", namer(f"{base}_Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[acc], outputs=[accf]),
        gs.Node("Mul", namer(f"{base}_ScaleProduct"), inputs=[qinput.scale, w_scale], outputs=[scale]),
        gs.Node("Mul", namer(f"{base}_Rescale"), inputs=[accf, scale], outputs=[scaled]),
    ]
    if layer.bias is not None:
        bias = add_constant(namer, f"{base}_bias", layer.bias)
        nodes.append(gs.Node("Add", namer(f"{base}_Bias"), inputs=[scaled, bias], outputs=[output]))
    graph.nodes.extend(nodes)
    return error_db


def group_by_activation(layers: Collection[WeightLayer]) -> dict[str, list[WeightLayer]]:
    """Layers keyed by the name of the activation they read (names are unique in a graph)."""
    groups: dict[str, list[WeightLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.activation.name, []).append(layer)
    return groups


def quantize_layer_groups(
    graph: gs.Graph,
    namer: Namer,
    groups: dict[str, list[WeightLayer]],
    smooth: dict[str, np.ndarray],
    *,
    per_channel: bool,
) -> dict[str, float]:
    """Rewrite every group (layers sharing one activation) with one DynamicQuantizeLinear,
    smoothed by ``smooth[activation]`` where given; returns each layer's weight SQNR in dB."""
    sqnr = {}
    for members in groups.values():
        factors = smooth.get(members[0].activation.name)
        qinput = add_dynamic_quantize(graph, namer, members[0].activation, factors)
        for layer in members:
            sqnr[layer.node.name] = replace_with_integer_matmul(graph, namer, layer, qinput, per_channel=per_channel, smooth=factors)
    return sqnr
