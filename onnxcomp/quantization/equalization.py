"""Cross-layer equalization of consecutive convolutions (data-free).

For two layers ``y = W2 act(W1 x + b1) + b2`` whose activation is positively
homogeneous (none, or Relu: ``relu(z / s) = relu(z) / s`` for ``s > 0``),
scaling output channel ``c`` of the first layer by ``1/s_c`` and input channel
``c`` of the second by ``s_c`` leaves the function unchanged. Choosing
``s_c = sqrt(r1_c / r2_c)``, with ``r1_c`` the largest ``|W1|`` of output
channel ``c`` and ``r2_c`` the largest ``|W2|`` reading input channel ``c``,
gives both the same range ``sqrt(r1_c r2_c)`` (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"). It helps
depthwise-separable nets most, where batch-norm folding leaves depthwise
channels with ranges orders of magnitude apart, which per-tensor activation
quantization of their output then loses.

Pairs: Conv -> [Relu] -> Conv (the second a plain conv over all channels or a
depthwise conv), each intermediate tensor read only by the next node, weights
private initializers. Clip/ReLU6 is *not* positively homogeneous (the clip
value would have to scale per channel), so such pairs are left alone. Chains
(conv -> depthwise -> conv) are equalized pair by pair, repeatedly, until the
scales settle.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.graph import (
    attr,
    is_graph_output,
    is_onnx_op,
    private_constant,
    set_constant,
)

logger = logging.getLogger(__name__)

HOMOGENEOUS = ("Relu",)


@dataclasses.dataclass
class Pair:
    first: gs.Node
    second: gs.Node


def _only_reader(graph: gs.Graph, tensor: gs.Tensor) -> gs.Node | None:
    if len(tensor.outputs) != 1 or is_graph_output(graph, tensor):
        return None
    return tensor.outputs[0]


def _private_weights(graph: gs.Graph, node: gs.Node) -> bool:
    tensors = node.inputs[1:3]
    return all(private_constant(graph, t) is not None and np.asarray(t.values).dtype == np.float32 for t in tensors)


def find_pairs(graph: gs.Graph) -> list[Pair]:
    pairs = []
    for node in graph.nodes:
        if not is_onnx_op(node, "Conv") or len(node.inputs) < 2 or not _private_weights(graph, node):
            continue
        reader = _only_reader(graph, node.outputs[0])
        if reader is not None and is_onnx_op(reader, *HOMOGENEOUS):
            reader = _only_reader(graph, reader.outputs[0])
        if reader is None or not is_onnx_op(reader, "Conv") or not _private_weights(graph, reader):
            continue
        channels = np.asarray(node.inputs[1].values).shape[0]
        w2 = np.asarray(reader.inputs[1].values)
        groups = int(attr(reader, "group", 1))
        if (groups == 1 and w2.shape[1] == channels) or (groups == channels and w2.shape[1] == 1 and w2.shape[0] == channels):
            pairs.append(Pair(node, reader))
    return pairs


def _ranges(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    w1 = np.asarray(pair.first.inputs[1].values, dtype=np.float64)
    w2 = np.asarray(pair.second.inputs[1].values, dtype=np.float64)
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    if int(attr(pair.second, "group", 1)) == 1:
        r2 = np.abs(w2).transpose(1, 0, *range(2, w2.ndim)).reshape(w2.shape[1], -1).max(axis=1)
    else:
        r2 = np.abs(w2).reshape(w2.shape[0], -1).max(axis=1)
    return r1, r2


def equalize_pair(pair: Pair, tolerance: float = 0.0) -> float:
    """Equalize one pair in place unless every ``|log s_c|`` is within ``tolerance``;
    returns the largest ``|log s_c|`` (0 when nothing was applied)."""
    r1, r2 = _ranges(pair)
    valid = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[valid] = np.sqrt(r1[valid] / r2[valid])
    moved = float(np.max(np.abs(np.log(scale)), initial=0.0))
    if moved <= tolerance:
        return 0.0
    w1 = pair.first.inputs[1]
    shape1 = (-1,) + (1,) * (np.ndim(w1.values) - 1)
    set_constant(w1, (np.asarray(w1.values, dtype=np.float64) / scale.reshape(shape1)).astype(np.float32))
    if len(pair.first.inputs) > 2 and pair.first.inputs[2].name:
        b1 = pair.first.inputs[2]
        set_constant(b1, (np.asarray(b1.values, dtype=np.float64) / scale).astype(np.float32))
    w2 = pair.second.inputs[1]
    w2v = np.asarray(w2.values, dtype=np.float64)
    if int(attr(pair.second, "group", 1)) == 1:
        w2v = w2v * scale.reshape((1, -1) + (1,) * (w2v.ndim - 2))
    else:
        w2v = w2v * scale.reshape((-1,) + (1,) * (w2v.ndim - 1))
    set_constant(w2, w2v.astype(np.float32))
    return moved


def equalize(graph: gs.Graph, iterations: int = 20, tolerance: float = 1e-3) -> tuple[int, int]:
    """Equalize every pair until no channel scale differs from 1 by more than ``tolerance``
    (in log); pairs already within it are left untouched.

    Returns:
        ``(pairs found, pairs changed)``.
    """
    pairs = find_pairs(graph)
    changed: set[int] = set()
    for _ in range(iterations):
        moved = 0.0
        for index, pair in enumerate(pairs):
            step = equalize_pair(pair, tolerance)
            if step > 0:
                changed.add(index)
            moved = max(moved, step)
        if moved == 0.0:
            break
    logger.info("equalized %d of %d layer pairs", len(changed), len(pairs))
    return len(pairs), len(changed)
