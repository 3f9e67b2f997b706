"""Recognizing transformer encoders/decoders and their normalized tensors, for static int8.

A graph is treated as a transformer when it has all three parts of an
attention block:

* a ``Softmax``;
* a ``MatMul`` whose two inputs are both computed (the attention scores
  ``Q @ K^T`` or the context ``P @ V``);
* a normalization over the hidden size: ``LayerNormalization`` (or the
  ``SimplifiedLayerNormalization``/``RMSNormalization`` forms), or its
  decomposed export ``ReduceMean(x) -> Sub(x, mean) -> Pow/Mul -> ReduceMean
  -> Sqrt -> Div`` (recognized by a ``ReduceMean`` of ``x`` read by a ``Sub``
  of the same ``x``), or the decomposed RMS norm ``Pow(x, 2) -> ReduceMean``.

CNNs have none of these together (an SE block has no Softmax, a CNN has no
MatMul of two activations), so their placement is unchanged.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp.graph import constant_value, is_onnx_op, producer

NORM_OPS = ("LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization")


def attention_matmuls(graph: gs.Graph) -> list[gs.Node]:
    """MatMuls whose two inputs are computed tensors (no constant operand)."""
    return [
        node for node in graph.nodes
        if is_onnx_op(node, "MatMul") and len(node.inputs) == 2
        and all(constant_value(t) is None for t in node.inputs)
    ]


def _decomposed_norm(node: gs.Node) -> bool:
    """``node`` is the first ReduceMean of a decomposed LayerNorm, or the ReduceMean of an RMS norm."""
    if not is_onnx_op(node, "ReduceMean") or not node.inputs:
        return False
    x = node.inputs[0]
    for reader in node.outputs[0].outputs:
        if is_onnx_op(reader, "Sub") and len(reader.inputs) == 2 and reader.inputs[0] is x and reader.inputs[1] is node.outputs[0]:
            return True
    square = producer(x)
    if square is None or not is_onnx_op(square, "Pow") or len(square.inputs) != 2:
        return False
    exponent = constant_value(square.inputs[1])
    return exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0


def is_transformer(graph: gs.Graph) -> bool:
    """Whether ``graph`` has a Softmax, an attention MatMul and a (possibly decomposed) LayerNorm."""
    if not any(is_onnx_op(node, "Softmax") for node in graph.nodes):
        return False
    if not attention_matmuls(graph):
        return False
    return any(_anchor(node) and not is_onnx_op(node, "Softmax") for node in graph.nodes)



_ELEMENTWISE = ("Mul", "Add", "Div", "Sub")
_NORM_CORE = ("Sqrt", "Reciprocal", "ReduceMean")


def _reaches(tensor: gs.Tensor, core: tuple[str, ...], depth: int) -> bool:
    """Whether ``tensor``'s producer is, or reaches through at most ``depth`` elementwise ops, an op of ``core``."""
    frontier, seen = [tensor], set()
    for _ in range(depth + 1):
        following = []
        for t in frontier:
            node = producer(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if is_onnx_op(node, *core):
                return True
            if is_onnx_op(node, *_ELEMENTWISE):
                following.extend(node.inputs)
        frontier = following
    return False


def is_normalized(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is the output of a LayerNorm/RMSNorm: the fused op, or the decomposed
    form's last ``Mul``/``Add`` (gamma, beta) a few elementwise ops after its ``Sqrt``/``Reciprocal``.

    A normalized tensor's range is set by the norm's gamma and beta, so a range
    calibrated on a few inputs holds for unseen ones; the other inputs of the
    linear layers (the attention context, the FFN activation) have rare
    per-input peaks that a calibrated range misses.
    """
    node = producer(tensor)
    if node is None:
        return False
    if node.op in NORM_OPS:
        return True
    return is_onnx_op(node, "Mul", "Add", "Div") and _reaches(tensor, _NORM_CORE, 3)


def _anchor(node: gs.Node) -> bool:
    return (node.op in NORM_OPS and (node.domain or "") in ("", "ai.onnx", "com.microsoft")) or _decomposed_norm(node) or is_onnx_op(node, "Softmax")


def transformer_region(graph: gs.Graph) -> set[int]:
    """Ids of the nodes inside the transformer blocks: those both reachable from and
    reaching a normalization or Softmax (the anchors, included).

    The CNN stem before the first block and the head after the last
    normalization (a convolutional neck, a CTC classifier) are outside, so a
    hybrid model keeps the general placement there.
    """
    anchors = [node for node in graph.nodes if _anchor(node)]

    def closure(forward: bool) -> set[int]:
        seen: set[int] = set()
        stack = list(anchors)
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if forward:
                stack.extend(reader for out in node.outputs for reader in out.outputs)
            else:
                stack.extend(p for t in node.inputs if (p := producer(t)) is not None)
        return seen

    return closure(True) & closure(False)
