"""A consuming layer's weight seen as a matrix ``M[out, features]`` plus a bias vector.

Reconstruction works on ``y = M x + b`` for every layer kind:

* ``Conv`` (group 1): ``M = W.reshape(C_out, C_in * prod(kernel))``, features
  ordered (input channel, kernel position) like an im2col patch; bias input 2.
  A grouped ``Conv`` is the block-diagonal ``M`` of its groups (group ``k``'s
  outputs read only group ``k``'s inputs); fits keep that structure
  (:func:`conv_groups`).
* ``Gemm``: ``M = alpha * B`` (``B`` transposed unless ``transB``); the bias is
  ``beta * C`` (C a vector or ``[1, N]``).
* ``MatMul`` with a constant ``[K, N]`` weight: ``M = W^T``; the bias is the
  constant of an ``Add`` reading only the product (created when absent).

:func:`write_layer` stores a new ``(M, b)`` back in the layer's own format.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import (
    Namer,
    add_constant,
    attr,
    constant_value,
    is_onnx_op,
    private_constant,
    set_constant,
)

ROWS_PER_LAYER = 8192
"""Regression rows gathered per layer over all calibration samples (for a conv:
output positions, drawn at random)."""


class RowSampler:
    """Draws the rows (output positions) of each sample used to fit or measure a layer."""

    def __init__(self, samples: int | None, seed: int):
        self.per_sample = max(1, -(-ROWS_PER_LAYER // (samples or 64)))
        self.rng = np.random.default_rng(seed)

    def __call__(self, count: int) -> np.ndarray:
        return np.sort(self.rng.choice(count, size=min(self.per_sample, count), replace=False))


@dataclasses.dataclass
class LinearView:
    matrix: np.ndarray  # [out, features], float64
    bias: np.ndarray  # [out], float64


def layer_kind(node: gs.Node) -> str | None:
    """'conv', 'gemm' or 'matmul' for layers reconstruction can refit, else None."""
    weight = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return None
    if is_onnx_op(node, "Conv") and weight.ndim == 4:
        if attr(node, "auto_pad", "NOTSET") in ("NOTSET", b"NOTSET"):
            return "conv"
    if is_onnx_op(node, "Gemm") and weight.ndim == 2 and not attr(node, "transA", 0):
        bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        if bias is None or bias.ndim < 2 or bias.shape[0] == 1:
            return "gemm"
    if is_onnx_op(node, "MatMul") and weight.ndim == 2:
        return "matmul"
    return None


def read_layer(node: gs.Node, kind: str) -> LinearView:
    weight = np.asarray(constant_value(node.inputs[1]), dtype=np.float64)
    if kind == "conv":
        matrix = _block_diagonal(weight, conv_groups(node, kind))
        bias = _vector(node, 2, weight.shape[0])
    elif kind == "gemm":
        matrix = float(attr(node, "alpha", 1.0)) * (weight if attr(node, "transB", 0) else weight.T)
        bias = float(attr(node, "beta", 1.0)) * _vector(node, 2, matrix.shape[0])
    else:
        matrix = weight.T
        add = bias_add(node)
        bias = np.zeros(matrix.shape[0]) if add is None else _add_constant(add)[1].reshape(-1) * np.ones(matrix.shape[0])
    return LinearView(matrix, bias)


def write_layer(graph: gs.Graph, namer: Namer, node: gs.Node, kind: str, view: LinearView) -> None:
    weight_t = node.inputs[1]
    dtype = np.asarray(constant_value(weight_t)).dtype
    if kind == "conv":
        shape = np.asarray(constant_value(weight_t)).shape
        _set_input(graph, namer, node, 1, _conv_weight(view.matrix, conv_groups(node, kind), shape).astype(dtype))
        _set_bias(graph, namer, node, 2, view.bias.astype(dtype))
    elif kind == "gemm":
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        matrix = view.matrix / alpha
        _set_input(graph, namer, node, 1, (matrix if attr(node, "transB", 0) else matrix.T).astype(dtype))
        if beta == 0.0:
            node.attrs["beta"] = beta = 1.0
        bias_t = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        shape = bias_t.shape if bias_t is not None else (view.bias.size,)
        _set_bias(graph, namer, node, 2, (view.bias / beta).reshape(shape).astype(dtype))
    else:
        _set_input(graph, namer, node, 1, view.matrix.T.astype(dtype))
        _set_matmul_bias(graph, namer, node, view.bias.astype(dtype))


def conv_groups(node: gs.Node, kind: str) -> int:
    """How many independent blocks ``M`` has (a conv's ``group``; 1 otherwise)."""
    return int(attr(node, "group", 1)) if kind == "conv" else 1


def _block_diagonal(weight: np.ndarray, group: int) -> np.ndarray:
    """``[C_out, C_in/group, *kernel]`` conv weight as ``M[C_out, C_in * kernel]``."""
    rows, features = weight.shape[0] // group, weight[0].size
    blocks = weight.reshape(group, rows, features)
    if group == 1:
        return blocks[0]
    matrix = np.zeros((weight.shape[0], group * features), dtype=weight.dtype)
    for k in range(group):
        matrix[k * rows:(k + 1) * rows, k * features:(k + 1) * features] = blocks[k]
    return matrix


def _conv_weight(matrix: np.ndarray, group: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`_block_diagonal` (entries off the blocks are dropped)."""
    rows, features = shape[0] // group, matrix.shape[1] // group
    blocks = [matrix[k * rows:(k + 1) * rows, k * features:(k + 1) * features] for k in range(group)]
    return np.concatenate(blocks, axis=0).reshape(shape)


def bias_add(node: gs.Node) -> gs.Node | None:
    """The ``Add`` of a constant vector that alone reads a MatMul's output."""
    out = node.outputs[0]
    if len(out.outputs) != 1:
        return None
    add = out.outputs[0]
    if not is_onnx_op(add, "Add") or len(add.inputs) != 2:
        return None
    index, value = _add_constant(add)
    if index is None or value.ndim > 1 and any(d != 1 for d in value.shape[:-1]):
        return None
    return add


def _add_constant(add: gs.Node) -> tuple[int | None, np.ndarray | None]:
    for index in (0, 1):
        value = constant_value(add.inputs[index])
        if value is not None:
            return index, np.asarray(value, dtype=np.float64)
    return None, None


def _vector(node: gs.Node, index: int, size: int) -> np.ndarray:
    if len(node.inputs) > index and node.inputs[index].name:
        return np.asarray(constant_value(node.inputs[index]), dtype=np.float64).reshape(-1) * np.ones(size)
    return np.zeros(size)


def _set_input(graph: gs.Graph, namer: Namer, node: gs.Node, index: int, values: np.ndarray) -> None:
    tensor = node.inputs[index]
    if private_constant(graph, tensor) is not None:
        set_constant(tensor, values)
    else:
        node.inputs[index] = add_constant(namer, tensor.name or f"{node.name}_w", values)


def _set_bias(graph: gs.Graph, namer: Namer, node: gs.Node, index: int, values: np.ndarray) -> None:
    if len(node.inputs) > index and node.inputs[index].name:
        _set_input(graph, namer, node, index, values)
        return
    while len(node.inputs) < index:
        node.inputs.append(gs.Variable.empty())
    node.inputs.append(add_constant(namer, f"{node.name or node.op}_bias", values))


def _set_matmul_bias(graph: gs.Graph, namer: Namer, node: gs.Node, values: np.ndarray) -> None:
    add = bias_add(node)
    if add is not None:
        index, current = _add_constant(add)
        _set_input(graph, namer, add, index, values.reshape(current.shape) if current.size == values.size else values)
        return
    if not np.any(values):
        return
    out = node.outputs[0]
    hidden = gs.Variable(namer(f"{out.name}_nobias"), dtype=out.dtype)
    node.outputs[0] = hidden
    bias = add_constant(namer, f"{node.name or 'MatMul'}_bias", values)
    graph.nodes.append(gs.Node("Add", name=namer(f"{node.name or 'MatMul'}_bias_add"), inputs=[hidden, bias], outputs=[out]))


def output_rows(kind: str, y: np.ndarray) -> np.ndarray:
    """A layer output as ``[rows, out]`` (conv: one row per batch x output position)."""
    if kind == "conv":
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def input_features(node: gs.Node, kind: str, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The layer's input features producing output ``rows``: im2col patches for a
    conv (ordered like the flattened weight: channel, then kernel position)."""
    if kind != "conv":
        return x.reshape(-1, x.shape[-1])[rows]
    kernel = [int(k) for k in np.asarray(constant_value(node.inputs[1])).shape[2:]]
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    _, c, h, w = x.shape
    out_h = (h + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    out_w = (w + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    batch, rest = np.divmod(rows, out_h * out_w)
    oh, ow = np.divmod(rest, out_w)
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ih = oh[:, None] * strides[0] + np.arange(kernel[0])[None, :] * dilations[0]
    iw = ow[:, None] * strides[1] + np.arange(kernel[1])[None, :] * dilations[1]
    channels = np.arange(c)[None, :, None, None]
    patches = padded[batch[:, None, None, None], channels, ih[:, None, :, None], iw[:, None, None, :]]
    return patches.reshape(rows.size, -1)


def layer_arrays(node: gs.Node, kind: str, view: LinearView) -> dict[str, np.ndarray]:
    """``view`` in the layer's own constants, by tensor name (biases only where
    the layer already has a constant for them)."""
    weight_t = node.inputs[1]
    weight = np.asarray(constant_value(weight_t))
    out: dict[str, np.ndarray] = {}
    bias_t = None
    if kind == "conv":
        out[weight_t.name] = _conv_weight(view.matrix, conv_groups(node, kind), weight.shape)
        bias_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        bias = view.bias
    elif kind == "gemm":
        matrix = view.matrix / float(attr(node, "alpha", 1.0))
        out[weight_t.name] = matrix if attr(node, "transB", 0) else matrix.T
        bias_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        bias = view.bias / (float(attr(node, "beta", 1.0)) or 1.0)
    else:
        out[weight_t.name] = view.matrix.T
        add = bias_add(node)
        bias_t = add.inputs[_add_constant(add)[0]] if add is not None else None
        bias = view.bias
    if bias_t is not None:
        current = np.asarray(constant_value(bias_t))
        out[bias_t.name] = np.broadcast_to(bias, current.shape) if current.size == bias.size else bias
    return {name: np.asarray(value, dtype=weight.dtype) for name, value in out.items()}
