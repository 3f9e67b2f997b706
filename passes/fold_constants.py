"""Constant folding, including shape sub-graphs.

A node is folded when every input is a constant: its outputs are computed once,
here, and stored as initializers. Exporters leave many such nodes (``Constant``
nodes, ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` chains, weight
transposes). Rules:

* ``Constant`` nodes become initializers.
* ``Shape``/``Size`` of a tensor whose shape is statically known become
  constants; so do ``Gather``/``Slice`` of a ``Shape`` that only pick static
  dimensions (the batch dimension may stay dynamic).
* Non-deterministic ops (``Random*``, ``Multinomial``, ``Bernoulli``), ops in
  custom domains, control flow, and ``DequantizeLinear`` (which keeps quantized
  weights small) are never folded.
* Folding must not inflate the model: an output larger than both
  ``max_growth_bytes`` and the constant inputs of its node (``Cast`` of fp16
  weights to fp32, ``ConstantOfShape``, ``Tile``) is left to run at load time.

Values are computed by onnxruntime itself, in one session for the whole
foldable sub-graph, so folded values are exactly what the runtime would compute.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.graph import c_contiguous, constant_value, is_graph_output, is_onnx_op, remove_nodes, replace_all_uses
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.runtime import OptLevel, create_session

logger = logging.getLogger(__name__)

NEVER_FOLD = frozenset(
    {
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
        "Multinomial", "Bernoulli", "DequantizeLinear", "If", "Loop", "Scan",
        "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase",
        "SequenceAt", "SequenceLength", "SplitToSequence", "ConcatFromSequence",
        "Optional", "OptionalGetElement", "OptionalHasElement",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FoldConstantsConfig(PassConfig):
    """Options of constant folding.

    Attributes:
        max_growth_bytes: A folded output may exceed its node's constant inputs
            in size only up to this many bytes.
    """

    max_growth_bytes: int = 16 * 1024

    def validate(self) -> None:
        if self.max_growth_bytes < 0:
            raise ValueError("max_growth_bytes must be >= 0")


class FoldConstants(Pass):
    """Precompute nodes whose inputs are all constant."""

    name = "fold-constants"
    Config = FoldConstantsConfig
    stage = Stage.ANY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        converted = _constant_nodes_to_initializers(graph)
        ctx.infer_shapes(graph)
        shapes = _fold_static_shapes(graph)
        folded, skipped = _fold_constant_subgraph(graph, self.config.max_growth_bytes)
        summary = {
            "constant_nodes": converted,
            "shape_values": shapes,
            "nodes_folded": folded,
            "kept_to_avoid_growth": skipped,
        }
        return PassResult(graph, bool(converted or shapes or folded), summary)


def _constant_nodes_to_initializers(graph: gs.Graph) -> int:
    """Replace ``Constant`` nodes (not feeding graph outputs) by initializers."""
    doomed = []
    for node in graph.nodes:
        if not is_onnx_op(node, "Constant") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if is_graph_output(graph, out):
            continue
        value = constant_value(out)
        if value is None:  # sparse_value or string forms: leave alone
            continue
        _swap_for_constant(graph, out, np.asarray(value))
        doomed.append(node)
    remove_nodes(graph, doomed)
    return len(doomed)


def _shape_vector(node: gs.Node) -> list | None:
    """Dims selected by a ``Shape`` node (honouring opset-15 ``start``/``end``)."""
    shape = node.inputs[0].shape
    if shape is None:
        return None
    start = node.attrs.get("start", 0) or 0
    end = node.attrs.get("end", None)
    return list(shape)[slice(start, end)]


def _is_static(dim) -> bool:
    return isinstance(dim, (int, np.integer)) and dim >= 0


def _fold_static_shapes(graph: gs.Graph) -> int:
    """Turn Shape/Size of statically known dims into constants; returns count."""
    count = 0
    for node in list(graph.nodes):
        if not is_onnx_op(node) or not node.inputs or not node.outputs:
            continue
        out = node.outputs[0]
        if is_graph_output(graph, out):
            continue
        if node.op == "Shape":
            dims = _shape_vector(node)
            if dims is None:
                continue
            if all(_is_static(d) for d in dims):
                _replace_with_constant(graph, node, np.asarray(dims, dtype=np.int64))
                count += 1
            else:
                count += _fold_static_picks(graph, node, dims)
        elif node.op == "Size":
            shape = node.inputs[0].shape
            if shape is not None and all(_is_static(d) for d in shape):
                _replace_with_constant(graph, node, np.asarray(int(np.prod(shape, dtype=np.int64)), dtype=np.int64))
                count += 1
    return count


def _fold_static_picks(graph: gs.Graph, shape_node: gs.Node, dims: list) -> int:
    """Fold Gather/Slice readers of a partly dynamic Shape that pick static dims only."""
    count = 0
    for reader in list(shape_node.outputs[0].outputs):
        if not is_onnx_op(reader) or is_graph_output(graph, reader.outputs[0]) or reader.inputs[0] is not shape_node.outputs[0]:
            continue
        picked = None
        if reader.op == "Gather" and (reader.attrs.get("axis", 0) or 0) == 0 and len(reader.inputs) == 2:
            index = constant_value(reader.inputs[1])
            if index is not None and index.dtype.kind == "i":
                picked = np.asarray(dims, dtype=object)[np.asarray(index) % len(dims)]
        elif reader.op == "Slice" and len(reader.inputs) >= 3:
            picked = _static_slice(dims, reader)
        if picked is None:
            continue
        values = np.asarray(picked, dtype=object)
        if values.size and all(_is_static(d) for d in values.reshape(-1)):
            _replace_with_constant(graph, reader, values.astype(np.int64))
            count += 1
    return count


def _static_slice(dims: list, node: gs.Node) -> list | None:
    args = [constant_value(t) if t.name else None for t in node.inputs[1:]]
    starts, ends = args[0], args[1]
    axes = args[2] if len(args) > 2 else np.asarray([0])
    steps = args[3] if len(args) > 3 else np.asarray([1])
    if any(a is None for a in (starts, ends, axes, steps)) or starts.size != 1:
        return None
    if int(np.asarray(axes).reshape(-1)[0]) not in (0, -1):
        return None
    start, end, step = (int(np.asarray(v).reshape(-1)[0]) for v in (starts, ends, steps))
    return list(dims[slice(start, end, step)]) if step != 0 else None


def _replace_with_constant(graph: gs.Graph, node: gs.Node, value: np.ndarray) -> None:
    _swap_for_constant(graph, node.outputs[0], value)
    remove_nodes(graph, [node])


def _swap_for_constant(graph: gs.Graph, tensor: gs.Variable, value: np.ndarray) -> None:
    """Make every reader of ``tensor`` read an initializer holding ``value`` under
    the same name; the computed tensor is renamed so names stay unique."""
    name = tensor.name
    tensor.name = f"{name}__folded"
    replace_all_uses(graph, tensor, gs.Constant(name, c_contiguous(value)))


def _foldable(node: gs.Node, constant_ids: set[int]) -> bool:
    if not is_onnx_op(node) or node.op in NEVER_FOLD or node.op == "Constant":
        return False
    if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
        return False
    inputs = [t for t in node.inputs if t.name]
    return bool(inputs) and all(id(t) in constant_ids for t in inputs)


def _fold_constant_subgraph(graph: gs.Graph, max_growth: int) -> tuple[int, int]:
    """Evaluate the all-constant part of the graph in one onnxruntime session."""
    graph.toposort()
    constant_ids = {id(t) for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    outputs_of_graph = {id(t) for t in graph.outputs}
    foldable: list[gs.Node] = []
    for node in graph.nodes:
        if _foldable(node, constant_ids) and not any(id(o) in outputs_of_graph for o in node.outputs):
            foldable.append(node)
            constant_ids.update(id(o) for o in node.outputs)
    if not foldable:
        return 0, 0
    foldable_ids = {id(n) for n in foldable}
    sources, sizes = _constant_sources(foldable)
    # Boundary: outputs of foldable nodes that something else reads.
    boundary: list[gs.Variable] = []
    for node in foldable:
        for out in node.outputs:
            if out.name and any(id(r) not in foldable_ids for r in out.outputs):
                boundary.append(out)
    values = _evaluate(foldable, boundary, graph.opset)
    if values is None:
        return 0, 0
    folded_tensors = 0
    skipped = 0
    for tensor in boundary:
        value = values.get(tensor.name)
        if value is None:
            continue
        input_bytes = sum(sizes[c] for c in sources[id(tensor)])
        if value.nbytes > max(input_bytes, max_growth):
            skipped += 1
            continue
        _swap_for_constant(graph, tensor, value)
        folded_tensors += 1
    if not folded_tensors:
        return 0, skipped
    before = len(graph.nodes)
    graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=False, remove_unused_graph_inputs=False)
    return before - len(graph.nodes), skipped


def _constant_sources(nodes: list[gs.Node]) -> tuple[dict[int, set[int]], dict[int, int]]:
    """For each tensor computed by ``nodes``: the initializers it is derived from.

    Folding is judged against the bytes of those initializers, so a chain like
    ``fp16 weight -> Cast -> Transpose`` is seen to double the stored size.
    """
    sources: dict[int, set[int]] = {}
    sizes: dict[int, int] = {}
    for node in nodes:
        derived: set[int] = set()
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                derived.add(id(t))
                sizes[id(t)] = int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
            elif t.name:
                derived |= sources.get(id(t), set())
        for out in node.outputs:
            sources[id(out)] = derived
    return sources, sizes


def _evaluate(nodes: list[gs.Node], wanted: list[gs.Variable], opset: int) -> dict[str, np.ndarray] | None:
    """Run ``nodes`` (all-constant inputs) in onnxruntime and return ``wanted`` values.

    Falls back to evaluating node by node when the whole sub-graph is refused,
    so one unsupported node does not prevent folding the rest.
    """
    try:
        return _run_nodes(nodes, wanted, opset)
    except Exception as err:  # noqa: BLE001 - fall back to per-node evaluation
        logger.debug("folding as one sub-graph failed (%s); trying node by node", err)
    known: dict[str, np.ndarray] = {}
    for node in nodes:
        inputs = [t for t in node.inputs if t.name]
        if not all(isinstance(t, gs.Constant) or t.name in known for t in inputs):
            continue
        feeds_known = {t.name: known[t.name] for t in inputs if not isinstance(t, gs.Constant)}
        try:
            known.update(_run_nodes([node], list(node.outputs), opset, extra_constants=feeds_known))
        except Exception as err:  # noqa: BLE001 - leave this node unfolded
            logger.debug("cannot fold %s (%s): %s", node.name, node.op, err)
    wanted_names = {t.name for t in wanted}
    return {k: v for k, v in known.items() if k in wanted_names}


def _run_nodes(
    nodes: list[gs.Node], wanted: list[gs.Variable], opset: int, extra_constants=None
) -> dict[str, np.ndarray]:
    """Evaluate copies of ``nodes`` in a throw-away model (tensors link by name)."""
    extra_constants = extra_constants or {}
    sub = gs.Graph(nodes=[_clone(n, extra_constants) for n in nodes], opset=opset)
    produced = {o.name: o for n in sub.nodes for o in n.outputs}
    sub.outputs = [produced[t.name] for t in wanted if t.name in produced]
    model = gs.export_onnx(sub, do_type_check=False)
    model.ir_version = max(onnx.helper.find_min_ir_version_for(list(model.opset_import), True), 4)
    session = create_session(model, level=OptLevel.DISABLED)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {})))


def _clone(node: gs.Node, extra_constants: dict[str, np.ndarray]) -> gs.Node:
    inputs = []
    for t in node.inputs:
        if not t.name:
            inputs.append(gs.Variable.empty())
        elif isinstance(t, gs.Constant):
            inputs.append(gs.Constant(t.name, t.values))
        elif t.name in extra_constants:
            inputs.append(gs.Constant(t.name, extra_constants[t.name]))
        else:
            inputs.append(gs.Variable(t.name))
    outputs = [gs.Variable(o.name) for o in node.outputs]
    return gs.Node(op=node.op, name=node.name, attrs=dict(node.attrs), inputs=inputs, outputs=outputs, domain=node.domain)
