"""The weighted linear layers of static quantization: weight, channel axes, bias.

Static int8 quantization, cross-layer equalization, bias correction and rounding
reconstruction all need the same facts about a linear layer, collected here:

=================  ===================  ========  =======  =====================================
op                 weight               out axis  in axis  bias
=================  ===================  ========  =======  =====================================
Conv               ``W[M, C/g, k...]``  0         1        input 2
Gemm, transB=1     ``B[N, K]``          0         1        C when it is ``[N]`` and ``beta == 1``
Gemm, transB=0     ``B[K, N]``          1         0        same
MatMul             ``B[..., K, N]``     -1        -2       constant ``[N]`` operand of the only
                                                           reader, an ``Add``
=================  ===================  ========  =======  =====================================

The *out axis* is the axis of per-channel weight scales (onnxruntime's
QLinearConv/QGemm/QLinearMatMul expect exactly these), the *in axis* pairs a
weight slice with an input channel (used to equalize consecutive layers).
ConvTranspose is not listed: onnxruntime's CPU provider has no integer kernel
for it, so it stays float.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.graph import attr, constant_value, is_graph_output, is_onnx_op


@dataclasses.dataclass
class LinearLayer:
    """A layer ``y = x * W (+ b)`` with a constant float weight.

    Attributes:
        node: The Conv/Gemm/MatMul node.
        weight: The weight tensor (an initializer or a Constant output).
        out_axis: Output-channel axis of the weight (non-negative).
        in_axis: Input-channel axis of the weight (non-negative).
        groups: Convolution groups (1 otherwise).
        bias: The bias tensor, or None.
        bias_node: The node that adds the bias (``node`` itself, or the
            ``Add`` after a MatMul); None without bias.
    """

    node: gs.Node
    weight: gs.Tensor
    out_axis: int
    in_axis: int
    groups: int = 1
    bias: gs.Tensor | None = None
    bias_node: gs.Node | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def activation(self) -> gs.Tensor:
        """The run-time input ``x``."""
        return self.node.inputs[0]

    @property
    def output(self) -> gs.Tensor:
        """The layer's result, bias included."""
        return (self.bias_node or self.node).outputs[0]

    def weight_value(self) -> np.ndarray:
        return np.asarray(constant_value(self.weight), dtype=np.float32)

    def bias_value(self) -> np.ndarray | None:
        if self.bias is None:
            return None
        return np.asarray(constant_value(self.bias), dtype=np.float32).reshape(-1)

    @property
    def out_channels(self) -> int:
        return int(np.shape(constant_value(self.weight))[self.out_axis])

    @property
    def is_depthwise(self) -> bool:
        """A grouped convolution with one input channel per group."""
        return self.node.op == "Conv" and self.groups > 1 and np.shape(constant_value(self.weight))[1] == 1


def _float_constant(tensor: gs.Tensor) -> np.ndarray | None:
    value = constant_value(tensor)
    if value is None or value.dtype != np.float32:
        return None
    return value


def linear_layer(graph: gs.Graph, node: gs.Node) -> LinearLayer | None:
    """Describe ``node`` as a :class:`LinearLayer`, or None if it is not one.

    The run-time input must not be a constant (constant folding handles that).
    """
    if not is_onnx_op(node, "Conv", "Gemm", "MatMul") or len(node.inputs) < 2:
        return None
    if constant_value(node.inputs[0]) is not None:
        return None
    weight = _float_constant(node.inputs[1])
    if weight is None:
        return None
    if node.op == "Conv":
        if weight.ndim < 3:
            return None
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if bias is not None and _float_constant(bias) is None:
            return None
        return LinearLayer(node, node.inputs[1], 0, 1, int(attr(node, "group", 1)), bias, node if bias is not None else None)
    if node.op == "Gemm":
        if weight.ndim != 2 or attr(node, "transA", 0):
            return None
        trans_b = bool(attr(node, "transB", 0))
        out_axis, in_axis = (0, 1) if trans_b else (1, 0)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            c = _float_constant(node.inputs[2])
            if c is None:
                return None
            if c.size == weight.shape[out_axis] and c.ndim <= 2 and float(attr(node, "beta", 1.0)) == 1.0:
                bias = node.inputs[2]
        return LinearLayer(node, node.inputs[1], out_axis, in_axis, 1, bias, node if bias is not None else None)
    if weight.ndim < 2:
        return None
    layer = LinearLayer(node, node.inputs[1], weight.ndim - 1, weight.ndim - 2)
    out = node.outputs[0]
    readers = list(out.outputs)
    if len(readers) == 1 and not is_graph_output(graph, out) and is_onnx_op(readers[0], "Add") and len(readers[0].inputs) == 2:
        add = readers[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        value = _float_constant(other)
        if value is not None and value.size == weight.shape[-1] and value.shape[-1:] == (weight.shape[-1],):
            layer.bias, layer.bias_node = other, add
    return layer


def linear_layers(graph: gs.Graph) -> list[LinearLayer]:
    """Every :class:`LinearLayer` of ``graph``, in graph order."""
    layers = []
    for node in graph.nodes:
        layer = linear_layer(graph, node)
        if layer is not None:
            layers.append(layer)
    return layers
