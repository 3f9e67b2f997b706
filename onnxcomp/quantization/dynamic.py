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

Optional activation smoothing (SmoothQuant, Xiao et al. 2023) moves per-input-
channel outliers from the activation into the weights: with
``s_k = max|x_k|^alpha / max|W_k,:|^(1-alpha)``, ``x @ W = (x / s) @ (diag(s) W)``.
The division is one ``Mul`` by ``1/s`` before the DynamicQuantizeLinear (shared
by all layers reading ``x``); it narrows the per-tensor activation range that
DynamicQuantizeLinear must cover. It needs calibration data for ``max|x_k|``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant, attr, constant_value, is_onnx_op, read_constant_uncached, remove_nodes

from .qparams import QParams, QuantType, dequantize, params_from_range, quantize, sqnr_db, weight_params

logger = logging.getLogger(__name__)

SMOOTH_MIN_SCALE = 1e-5
"""Lower bound of a smoothing factor, so a channel that is always 0 stays finite."""


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


def quantize_weight_columns(weight: np.ndarray, *, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 ``Wq`` and float32 ``Ws`` with ``W ≈ Wq * Ws`` (Ws per column N, or a scalar)."""
    params = weight_params(weight, QuantType.INT8, axis=1 if per_channel else None, symmetric=True)
    return quantize(weight, params), params.scale.astype(np.float32)


def smoothing_factors(channel_absmax: np.ndarray, weights: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    """SmoothQuant factors ``s_k`` for an activation read by ``weights`` (each ``[K, N]``).

    ``s_k = a_k^alpha / w_k^(1-alpha)`` with ``a_k = max|x_k|`` and ``w_k`` the
    largest ``|W[k, :]|`` over all readers; channels with no activation or no
    weight keep ``s_k = 1``.
    """
    a = np.asarray(channel_absmax, dtype=np.float64)
    w = np.max([np.abs(np.asarray(m, dtype=np.float64)).max(axis=1) for m in weights], axis=0)
    valid = (a > 0) & (w > 0)
    s = np.ones_like(a)
    s[valid] = a[valid] ** alpha / w[valid] ** (1.0 - alpha)
    return np.maximum(s, SMOOTH_MIN_SCALE).astype(np.float32)


def dynamic_matmul_error(samples: Sequence[np.ndarray], weight: np.ndarray, smooth: np.ndarray | None, *, per_channel: bool) -> float:
    """Squared error of the dynamically quantized layer against float, summed over ``samples``.

    Each sample (an activation ``[..., K]`` of one run) is quantized the way
    DynamicQuantizeLinear does it at run time (uint8, asymmetric, its own
    min/max), after dividing by ``smooth``; the weight as the rewrite stores it.
    """
    w = weight if smooth is None else weight * smooth[:, None]
    wq, ws = quantize_weight_columns(w, per_channel=per_channel)
    w_approx = wq.astype(np.float32) * (ws if ws.ndim == 0 else ws[None, :])
    total = 0.0
    for x in samples:
        x2 = x.reshape(-1, x.shape[-1]).astype(np.float32)
        xs = x2 if smooth is None else x2 / smooth
        params = params_from_range(float(xs.min()), float(xs.max()), QuantType.UINT8, symmetric=False)
        x_approx = dequantize(quantize(xs, params), params)
        diff = x2 @ weight - x_approx @ w_approx
        total += float(np.sum(diff.astype(np.float64) ** 2))
    return total


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
