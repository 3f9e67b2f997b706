"""Choosing which nodes run in float16, and rewriting tensor types around them.

The plan is made per node: a node is converted when all its floating-point
inputs and outputs are float32, its op is not on the block list, and (with
calibration data) none of its float tensors comes near float16's largest
value. Every float32 tensor then takes the type of its producer's side, and a
``Cast`` is inserted where a float16 tensor meets a float32 reader or the
other way round (one Cast per tensor and direction, shared by its readers).
Graph inputs and outputs keep their types, so callers feed and fetch float32
as before; their names do not change.

Ops that only read the shape (``Shape``, ``Size``) accept either type and
never get a Cast.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant, constant_value, is_graph_output, is_onnx_op, producer

logger = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)  # 65504

DEFAULT_BLOCK: Mapping[str, str] = {
    "Resize": "coordinate arithmetic on float scales/ROI; fp16 misplaces samples on large images",
    "Upsample": "scales input must stay float32",
    "Range": "fp16 represents integers exactly only up to 2048",
    "CumSum": "running sums overflow fp16 (max 65504)",
    "ReduceSum": "sums overflow fp16 (max 65504)",
    "ReduceSumSquare": "sums of squares overflow fp16",
    "ReduceL1": "sums overflow fp16",
    "ReduceL2": "sums of squares overflow fp16",
    "ReduceLogSum": "sums overflow fp16",
    "ReduceLogSumExp": "exponentials overflow fp16",
    "ReduceProd": "products overflow or underflow fp16",
    "ReduceMean": "the sum before the division can overflow fp16",
    "LayerNormalization": "row variance in fp16 doubled all-MiniLM-L6-v2's embedding error (1-cos 1.8e-7 -> 4.2e-7)",
    "RandomNormal": "dtype attribute", "RandomUniform": "dtype attribute",
    "RandomNormalLike": "dtype attribute", "RandomUniformLike": "dtype attribute",
    "Multinomial": "dtype attribute", "EyeLike": "dtype attribute", "Bernoulli": "dtype attribute",
    "If": "sub-graphs are not converted", "Loop": "sub-graphs are not converted", "Scan": "sub-graphs are not converted",
}  # fmt: skip
"""Ops kept in float32 by default, with the reason (shown in the report)."""

SHAPE_READERS = frozenset({"Shape", "Size"})

FLOAT32_ONLY_INPUTS: Mapping[str, tuple[int, ...]] = {"Dropout": (1,)}
"""Inputs that stay float32 even when their node runs in fp16 (Dropout's ratio)."""

FLOAT32 = np.dtype(np.float32)
FLOAT16 = np.dtype(np.float16)


@dataclasses.dataclass
class Fp16Plan:
    """Which nodes run in fp16, and why the others do not.

    Attributes:
        half: ``id(node)`` of every node converted to fp16.
        kept: Node name -> reason, for nodes with float32 tensors that stay float32.
    """

    half: set[int]
    kept: dict[str, str]


def _float_tensors(node: gs.Node) -> list[gs.Tensor]:
    return [t for t in [*node.inputs, *node.outputs] if t.name and t.dtype is not None and np.dtype(t.dtype).kind == "f"]


def plan_fp16(
    graph: gs.Graph,
    *,
    block: Mapping[str, str],
    keep_nodes: Mapping[str, str] | None = None,
    absmax: Mapping[str, float] | None = None,
    max_abs: float = FP16_MAX / 2,
) -> Fp16Plan:
    """Decide the nodes to convert (see the module docstring).

    Args:
        block: Op type -> reason for ops kept in float32.
        keep_nodes: Node name -> reason, kept in float32 (user exclusions).
        absmax: Largest |value| per tensor name seen on calibration data.
        max_abs: Tensors beyond this stay float32 (half fp16's range: headroom
            for inputs the calibration data did not cover).
    """
    half: set[int] = set()
    kept: dict[str, str] = {}
    keep_nodes = keep_nodes or {}
    for node in graph.nodes:
        floats = _float_tensors(node)
        if node.op in SHAPE_READERS or not any(np.dtype(t.dtype) == FLOAT32 for t in floats):
            continue
        reason = _keep_reason(node, floats, block, keep_nodes, absmax or {}, max_abs)
        if reason is None:
            half.add(id(node))
        else:
            kept[node.name or node.outputs[0].name] = reason
    _drop_sources_without_half_readers(graph, half)
    return Fp16Plan(half, kept)


def _drop_sources_without_half_readers(graph: gs.Graph, half: set[int]) -> None:
    """A node with no float input (``Cast`` from int, ``ConstantOfShape``) follows its readers:
    converting it when no reader is fp16 would only add a Cast back to float32."""
    for node in graph.nodes:
        if id(node) not in half or any(t.dtype is not None and np.dtype(t.dtype).kind == "f" for t in node.inputs if t.name):
            continue
        readers = [r for t in node.outputs for r in t.outputs]
        if readers and not any(id(r) in half for r in readers):
            half.discard(id(node))


def _keep_reason(node, floats, block, keep_nodes, absmax, max_abs) -> str | None:
    if node.name in keep_nodes:
        return keep_nodes[node.name]
    if not is_onnx_op(node):
        return f"custom-domain op {node.domain}.{node.op}"
    if node.op in block:
        return block[node.op]
    if any(np.dtype(t.dtype) != FLOAT32 for t in floats):
        return "mixes float32 with another float type"
    if any(t.dtype is None for t in [*node.inputs, *node.outputs] if t.name):
        return "a tensor of unknown type"
    for tensor in floats:
        value = constant_value(tensor)
        peak = float(np.abs(value).max(initial=0.0)) if value is not None and value.size else absmax.get(tensor.name)
        if peak is not None and peak > max_abs:
            return f"'{tensor.name}' reaches {peak:.3g}, beyond fp16's safe range ({max_abs:g})"
    return None


def apply_fp16(graph: gs.Graph, plan: Fp16Plan) -> dict[str, int]:
    """Rewrite ``graph`` according to ``plan``; returns counts for the report."""
    namer = Namer(graph)
    counts = {"casts": 0, "weights": 0, "clipped_weights": 0}
    casts: dict[tuple[int, str], gs.Variable] = {}

    def cast(tensor: gs.Tensor, dtype: np.dtype) -> gs.Tensor:
        key = (id(tensor), dtype.name)
        if key not in casts:
            out = gs.Variable(namer(f"{tensor.name}_{dtype.name}"), dtype=dtype, shape=tensor.shape)
            to = onnx.TensorProto.FLOAT16 if dtype == FLOAT16 else onnx.TensorProto.FLOAT
            graph.nodes.append(gs.Node("Cast", namer(f"{tensor.name}_To_{dtype.name}"), attrs={"to": to}, inputs=[tensor], outputs=[out]))
            casts[key] = out
            counts["casts"] += 1
        return casts[key]

    converted_constants: dict[int, gs.Constant] = {}
    nodes = list(graph.nodes)
    for node in nodes:
        if id(node) in plan.half:
            _retype_attributes(node)
    # Readers first: every float32 input of a half node must become fp16.
    for node in nodes:
        is_half = id(node) in plan.half
        float32_only = FLOAT32_ONLY_INPUTS.get(node.op, ()) if is_half else ()
        for index, tensor in enumerate(node.inputs):
            if not tensor.name or tensor.dtype is None or np.dtype(tensor.dtype) != FLOAT32 or node.op in SHAPE_READERS:
                continue
            source_half = _produced_half(tensor, plan)
            if not is_half or index in float32_only:
                if source_half:
                    node.inputs[index] = cast(tensor, FLOAT32)
                continue
            if source_half:
                continue
            if isinstance(tensor, gs.Constant) and _all_readers_half(tensor, plan):
                node.inputs[index] = _half_constant(tensor, namer, converted_constants, counts)
            else:
                node.inputs[index] = cast(tensor, FLOAT16)
    # Then outputs of half nodes become fp16 (graph outputs through a Cast back to float32).
    for node in nodes:
        if id(node) not in plan.half:
            continue
        for index, tensor in enumerate(node.outputs):
            if tensor.dtype is None or np.dtype(tensor.dtype) != FLOAT32:
                continue
            if is_graph_output(graph, tensor):
                inner = gs.Variable(namer(f"{tensor.name}_float16"), dtype=FLOAT16, shape=tensor.shape)
                node.outputs[index] = inner
                graph.nodes.append(gs.Node("Cast", namer(f"{tensor.name}_To_float32"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[inner], outputs=[tensor]))
                counts["casts"] += 1
            else:
                tensor.dtype = FLOAT16
    return counts


def _produced_half(tensor: gs.Tensor, plan: Fp16Plan) -> bool:
    node = producer(tensor)
    return node is not None and id(node) in plan.half


def _all_readers_half(tensor: gs.Tensor, plan: Fp16Plan) -> bool:
    return all(id(r) in plan.half or r.op in SHAPE_READERS for r in tensor.outputs)


def _half_constant(tensor: gs.Constant, namer: Namer, done: dict[int, gs.Constant], counts: dict[str, int]) -> gs.Constant:
    """An fp16 copy of a float32 constant (clipped to fp16's range), made once per constant."""
    if id(tensor) not in done:
        values = np.asarray(tensor.values, dtype=np.float32)
        clipped = int(np.count_nonzero(np.abs(values) > FP16_MAX))
        counts["clipped_weights"] += clipped
        counts["weights"] += 1
        done[id(tensor)] = add_constant(namer, f"{tensor.name}_fp16", np.asarray(np.clip(values, -FP16_MAX, FP16_MAX), dtype=np.float16))
    return done[id(tensor)]


def _retype_attributes(node: gs.Node) -> None:
    """Attributes that carry the float type: Cast's ``to``; ConstantOfShape's and Constant's value."""
    if node.op == "Cast" and node.attrs.get("to") == onnx.TensorProto.FLOAT:
        node.attrs["to"] = onnx.TensorProto.FLOAT16
    if node.op == "Constant":
        for key in ("value_float", "value_floats"):
            if key in node.attrs:
                node.attrs["value"] = gs.Constant(node.outputs[0].name + "_value", np.asarray(node.attrs.pop(key), np.float32))
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant) and np.asarray(value.values).dtype == FLOAT32:
        half = np.asarray(np.clip(np.asarray(value.values), -FP16_MAX, FP16_MAX), dtype=np.float16)
        node.attrs["value"] = gs.Constant(value.name, half)
