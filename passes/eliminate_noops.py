"""Identity and no-op elimination.

Removes nodes that return their input unchanged (same values, dtype and
shape), rewiring readers to the input:

* ``Identity``; ``Dropout`` at inference (mask output unread, no training flag);
* ``Cast``/``CastLike`` to the input's own type;
* ``Reshape``/``Expand`` to the input's own shape (dims compared where known; a
  single ``-1``/``0`` may stand for the one dim that is not);
* ``Pad`` whose pads are all zero; ``Transpose`` with the identity permutation;
  ``Concat`` of one input;
* ``Mul``/``Div`` by one and ``Add``/``Sub`` of zero, when the constant cannot
  broadcast the other operand to a larger shape and has the same dtype.

A node whose output is a graph output is only removed when its input can take
the output's name (see :func:`onnxcomp.graph.can_take_output_name`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.graph import bypass_node, constant_value, is_onnx_op
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EliminateNoOpsConfig(PassConfig):
    pass


class EliminateNoOps(Pass):
    """Bypass nodes that do not change their input."""

    name = "eliminate-noops"
    Config = EliminateNoOpsConfig
    stage = Stage.ANY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        ctx.infer_shapes(graph)
        removed: Counter[str] = Counter()
        for node in list(graph.nodes):
            if not is_onnx_op(node) or not node.outputs:
                continue
            kept = _passthrough_input(node)
            if kept is None:
                continue
            if bypass_node(graph, node, kept):
                removed[node.op] += 1
            else:
                logger.debug("no-op %s (%s) kept: its output is a graph output", node.name, node.op)
        return PassResult(graph, bool(removed), dict(sorted(removed.items())))


def _passthrough_input(node: gs.Node) -> gs.Tensor | None:
    """The input ``node`` returns unchanged, or None if it is not a no-op."""
    check = _RULES.get(node.op)
    if check is None or not node.inputs or not node.inputs[0].name:
        return None
    return check(node)


def _identity(node: gs.Node):
    return node.inputs[0]


def _dropout(node: gs.Node):
    if len(node.outputs) > 1 and node.outputs[1].name and node.outputs[1].outputs:
        return None
    if len(node.inputs) >= 3 and node.inputs[2].name:
        training = constant_value(node.inputs[2])
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            return None
    return node.inputs[0]


def _same_dtype(a, b) -> bool:
    if a is None or b is None:
        return False
    try:
        return np.dtype(a) == np.dtype(b)
    except TypeError:
        return False


def _cast(node: gs.Node):
    x = node.inputs[0]
    to = node.attrs.get("to")
    if to is None or x.dtype is None:
        return None
    try:
        target = onnx.helper.tensor_dtype_to_np_dtype(int(to))
    except (KeyError, ValueError, TypeError):
        return None
    return x if _same_dtype(target, x.dtype) and _same_dtype(node.outputs[0].dtype or target, x.dtype) else None


def _cast_like(node: gs.Node):
    x, like = node.inputs[0], node.inputs[1]
    return x if _same_dtype(x.dtype, like.dtype) else None


def _known(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def _reshape(node: gs.Node):
    x = node.inputs[0]
    target = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if target is None or x.shape is None:
        return None
    target = [int(v) for v in np.asarray(target).reshape(-1)]
    shape = list(x.shape)
    if len(target) != len(shape):
        return None
    allow_zero = bool(node.attrs.get("allowzero", 0))
    free = 0
    for want, have in zip(target, shape):
        if want == -1:
            free += 1
        elif want == 0 and not allow_zero:
            continue  # copies the input dim
        elif not (_known(have) and have == want):
            return None
    return x if free <= 1 else None


def _expand(node: gs.Node):
    x = node.inputs[0]
    target = constant_value(node.inputs[1])
    if target is None or x.shape is None:
        return None
    target = [int(v) for v in np.asarray(target).reshape(-1)]
    if len(target) > len(x.shape):
        return None
    tail = list(x.shape)[len(x.shape) - len(target):]
    ok = all(want == 1 or (_known(have) and have == want) for want, have in zip(target, tail))
    return x if ok else None


def _pad(node: gs.Node):
    if len(node.inputs) >= 2 and node.inputs[1].name:
        pads = constant_value(node.inputs[1])
    else:
        pads = node.attrs.get("pads")
    if pads is None:
        return None
    return node.inputs[0] if not np.any(np.asarray(pads)) else None


def _transpose(node: gs.Node):
    perm = node.attrs.get("perm")
    if perm is None:
        rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
        return node.inputs[0] if rank in (0, 1) else None
    return node.inputs[0] if list(perm) == list(range(len(perm))) else None


def _concat(node: gs.Node):
    inputs = [t for t in node.inputs if t.name]
    return inputs[0] if len(inputs) == 1 else None


def _broadcast_neutral(node: gs.Node, neutral: float, positions: tuple[int, ...]):
    """The operand kept by ``x op c`` when c is all ``neutral`` and cannot grow x."""
    if len(node.inputs) != 2:
        return None
    for pos in positions:
        const_t, other = node.inputs[pos], node.inputs[1 - pos]
        value = constant_value(const_t)
        if value is None or other.shape is None or not _same_dtype(value.dtype, other.dtype):
            continue
        if value.size == 0 or not np.all(value == neutral):
            continue
        if value.ndim > len(other.shape):
            continue
        tail = list(other.shape)[len(other.shape) - value.ndim:] if value.ndim else []
        if all(c == 1 or (_known(o) and o == c) for c, o in zip(value.shape, tail)):
            return other
    return None


_RULES = {
    "Identity": _identity,
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Reshape": _reshape,
    "Expand": _expand,
    "Pad": _pad,
    "Transpose": _transpose,
    "Concat": _concat,
    "Mul": lambda n: _broadcast_neutral(n, 1.0, (1, 0)),
    "Div": lambda n: _broadcast_neutral(n, 1.0, (1,)),
    "Add": lambda n: _broadcast_neutral(n, 0.0, (1, 0)),
    "Sub": lambda n: _broadcast_neutral(n, 0.0, (1,)),
}
