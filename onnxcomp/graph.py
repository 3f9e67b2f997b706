"""The few graph-editing helpers every pass goes through.

Passes should not do list surgery on nodes and tensors themselves: they find a
pattern, check it, then call these helpers, which keep the invariants that are
easy to break by hand:

* graph output names never change (clients fetch outputs by name);
* graph inputs are never turned into constants or removed;
* new names never collide with existing tensor or node names;
* a weight is only rewritten in place when nothing else reads it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)


class Namer:
    """Hands out tensor/node names that are unique in a graph.

    Create one per pass run; it snapshots the names in use (subgraphs included)
    and remembers the ones it hands out.
    """

    def __init__(self, graph: gs.Graph):
        self._used: set[str] = set()
        for g in itertools.chain([graph], graph.subgraphs(recursive=True)):
            self._used.update(g.tensors().keys())
            self._used.update(n.name for n in g.nodes if n.name)
        self._counters: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        base = base or "onnxcomp"
        if base not in self._used:
            self._used.add(base)
            return base
        count = self._counters.get(base, 0)
        while True:
            count += 1
            candidate = f"{base}_{count}"
            if candidate not in self._used:
                self._counters[base] = count
                self._used.add(candidate)
                return candidate


DEFAULT_DOMAINS = (None, "", "ai.onnx")


def is_onnx_op(node: gs.Node, *ops: str) -> bool:
    """Whether ``node`` is in the default ONNX domain (and, if given, one of ``ops``)."""
    return node.domain in DEFAULT_DOMAINS and (not ops or node.op in ops)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes ``tensor``, or None for constants and graph inputs."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor: an initializer or a ``Constant`` node's output.

    Returns None for anything computed at run time. Graph inputs that carry a
    default initializer (IR < 4 style) are not constants: a caller may feed them.
    """
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and is_onnx_op(node, "Constant"):
        attrs = node.attrs
        if "value" in attrs and isinstance(attrs["value"], gs.Constant):
            return np.asarray(attrs["value"].values)
        scalar_kinds = {
            "value_float": np.float32,
            "value_int": np.int64,
            "value_floats": np.float32,
            "value_ints": np.int64,
        }
        for key, dtype in scalar_kinds.items():
            if key in attrs:
                return np.asarray(attrs[key], dtype=dtype)
    return None


def read_constant_uncached(tensor: gs.Constant) -> np.ndarray:
    """The values of an initializer, without keeping lazily loaded ones in memory.

    ``tensor.values`` caches what it loads on the constant; for a weight a
    pass reads once (to quantize it, say) that would keep every float weight
    of a large model alive until the end of the pass.
    """
    from onnx_graphsurgeon.ir.tensor import LazyValues

    values = tensor._values
    return np.asarray(values.load() if isinstance(values, LazyValues) else values)


def private_constant(graph: gs.Graph, tensor: gs.Tensor) -> np.ndarray | None:
    """``tensor``'s value if it is a constant that a pass may rewrite in place.

    That is: an initializer (not a graph input, not a graph output) read by
    exactly one node. Shared weights (tied embeddings, weights used twice) are
    refused because rewriting them would change the other reader.
    """
    if not isinstance(tensor, gs.Constant):
        return None
    if is_graph_input(graph, tensor) or is_graph_output(graph, tensor):
        return None
    if len(tensor.outputs) != 1:
        return None
    return np.asarray(tensor.values)


def c_contiguous(values) -> np.ndarray:
    """``values`` as a C-contiguous array, keeping 0-d arrays 0-d
    (unlike ``np.ascontiguousarray``, which turns scalars into shape (1,))."""
    array = np.asarray(values)
    return array if array.flags.c_contiguous else array.copy(order="C")


def add_constant(namer: Namer, base: str, values: np.ndarray) -> gs.Constant:
    """A new initializer with a unique name derived from ``base``."""
    return gs.Constant(namer(base), c_contiguous(values))


def set_constant(tensor: gs.Constant, values: np.ndarray) -> None:
    """Replace an initializer's values (caller checked it is private)."""
    tensor.values = c_contiguous(values)


def replace_all_uses(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every reader of ``old`` read ``new`` instead (subgraphs included).

    If ``old`` is a graph output, ``new`` takes its place in ``graph.outputs``
    and takes its name, so callers must first check :func:`can_take_output_name`.
    """
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new
    for sub in graph.subgraphs(recursive=True):
        for node in sub.nodes:
            for i, tensor in enumerate(node.inputs):
                if tensor is old:
                    node.inputs[i] = new
    for i, tensor in enumerate(graph.outputs):
        if tensor is old:
            _take_output_slot(graph, i, old, new)


def can_take_output_name(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> bool:
    """Whether ``new`` may replace graph output ``old`` (keeping the output's name).

    ``new`` must be a computed tensor that is neither a graph input, nor another
    graph output, nor a constant, since renaming those would change the model's
    interface.
    """
    if not is_graph_output(graph, old):
        return True
    return (
        isinstance(new, gs.Variable)
        and producer(new) is not None
        and not is_graph_input(graph, new)
        and not is_graph_output(graph, new)
    )


def _take_output_slot(graph: gs.Graph, index: int, old: gs.Tensor, new: gs.Tensor) -> None:
    name, dtype, shape = old.name, old.dtype, old.shape
    old.name = f"{name}__replaced"
    new.name = name
    if dtype is not None:
        new.dtype = dtype
    if shape is not None and new.shape is None:
        new.shape = shape
    graph.outputs[index] = new


def detach_node(node: gs.Node) -> None:
    """Disconnect ``node`` from its tensors; dead-code elimination drops it later."""
    node.inputs.clear()
    node.outputs.clear()


def remove_nodes(graph: gs.Graph, nodes: Iterable[gs.Node]) -> None:
    """Detach ``nodes`` and drop them from ``graph.nodes``."""
    doomed = {id(n) for n in nodes}
    for node in graph.nodes:
        if id(node) in doomed:
            detach_node(node)
    graph.nodes = [n for n in graph.nodes if id(n) not in doomed]


def bypass_node(graph: gs.Graph, node: gs.Node, keep: gs.Tensor) -> bool:
    """Remove a single-output node whose output equals ``keep``, rewiring its readers.

    Returns False (and changes nothing) when the node's output is a graph output
    that ``keep`` cannot stand in for, or when other outputs are still read.
    """
    out = node.outputs[0]
    if any(o.outputs or is_graph_output(graph, o) for o in node.outputs[1:]):
        return False
    if not can_take_output_name(graph, out, keep):
        return False
    replace_all_uses(graph, out, keep)
    remove_nodes(graph, [node])
    return True


def reroute_output(graph: gs.Graph, source: gs.Node, removed: gs.Node) -> None:
    """Let ``source`` write ``removed``'s output directly, then drop ``removed``.

    Used when a node is fused into its producer (e.g. BatchNormalization into
    Conv): the producer's original output must be read only by ``removed``.
    Output names, and therefore graph outputs, are preserved.
    """
    target = removed.outputs[0]
    remove_nodes(graph, [removed])
    source.outputs[0] = target


def attr(node: gs.Node, name: str, default=None):
    value = node.attrs.get(name, default)
    return default if value is None else value


def onnx_dtype_to_numpy(elem_type: int) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The tensor's shape when every dimension is a known integer, else None."""
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def rank(tensor: gs.Tensor) -> int | None:
    return None if tensor.shape is None else len(tensor.shape)


def is_float_dtype(dtype) -> bool:
    if dtype is None:
        return False
    try:
        return np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:
        return False
