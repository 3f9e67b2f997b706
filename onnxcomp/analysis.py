"""Static facts about a model: parameters, sizes, op histogram, MACs per layer.

MACs (multiply-accumulates) are counted for the layers that dominate compute
(Conv, ConvTranspose, Gemm, MatMul and their integer/QLinear forms) from
concrete tensor shapes. Shapes come from ONNX shape inference with the inputs
fixed to concrete sizes; tensors it cannot resolve (data-dependent reshapes in
messy exports) are measured by running the model once in onnxruntime on a
sample of those sizes. The dims that had to be assumed are reported.

Formulas (``prod`` over all axes):

* Conv: ``prod(Y) * prod(W[1:])``  (output elements x C_in/group x kernel);
* ConvTranspose: ``prod(X) * prod(W[1:])``  (input elements x C_out/group x kernel);
* Gemm / MatMul: ``prod(Y) * K``, K the contracted dim of A.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .data import Feed, InputSpec, check_override_names, input_specs, resolve_shapes
from .model_io import default_opset, iter_tensors
from .shapes import infer_model_shapes, shape_of, stub_large_tensors, value_infos

logger = logging.getLogger(__name__)

# op -> (index of the activation input, index of the weight input, kind)
MAC_OPS: Mapping[str, tuple[int, int, str]] = {
    "Conv": (0, 1, "conv"),
    "ConvInteger": (0, 1, "conv"),
    "QLinearConv": (0, 3, "conv"),
    "ConvTranspose": (0, 1, "convtranspose"),
    "Gemm": (0, 1, "gemm"),
    "QGemm": (0, 3, "gemm"),
    "MatMul": (0, 1, "matmul"),
    "MatMulInteger": (0, 1, "matmul"),
    "QLinearMatMul": (0, 3, "matmul"),
    "MatMulIntegerToFloat": (0, 1, "matmul"),
    "DynamicQuantizeMatMul": (0, 1, "matmul"),
    "FusedMatMul": (0, 1, "matmul"),
    "MatMulNBits": (0, 1, "matmulnbits"),
}

PARAM_DTYPES = frozenset(
    {
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8,
        onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.INT32,
    }
)  # fmt: skip


@dataclasses.dataclass
class LayerMacs:
    node: str
    op: str
    macs: int


@dataclasses.dataclass
class ModelStats:
    """What ``onnxcomp inspect`` prints and reports compare before/after."""

    opset: int | None
    ir_version: int
    producer: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: int
    op_histogram: dict[str, int]
    params: int
    weight_bytes: int
    serialized_bytes: int
    macs: int | None
    layer_macs: list[LayerMacs]
    unresolved_layers: list[str]
    input_shapes: dict[str, list[int]]
    assumed_dims: dict[str, int]
    metadata: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tensor_elements(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    info = {e.key: e.value for e in tensor.external_data}
    if "length" in info:
        return int(info["length"])
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (_tensor_elements(tensor) + 1) // 2
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return _tensor_elements(tensor) * itemsize


#: Inputs holding quantization parameters (scales, zero points), by op type.
QUANT_PARAM_INPUTS: Mapping[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "MatMulNBits": (2, 3),
    "GatherBlockQuantized": (2, 3),
    "DynamicQuantizeMatMul": (2, 3),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
}


def quantization_parameters(model: onnx.ModelProto) -> set[str]:
    """Names of the main graph's tensors used only as scales or zero points."""
    quant, other = set(), set()
    for node in model.graph.node:
        slots = QUANT_PARAM_INPUTS.get(node.op_type, ())
        for index, name in enumerate(node.input):
            (quant if index in slots else other).add(name)
    return quant - other


def count_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(parameter count, bytes of every stored weight-like tensor).

    int64 tensors (shapes, indices, axes) are not parameters; int32 ones are
    (quantized biases). Scales and zero points of quantized weights and
    activations are stored bytes but not parameters: an int8 model has as
    many parameters as its float original.
    """
    skip = quantization_parameters(model)
    params = 0
    weight_bytes = 0
    for tensor in iter_tensors(model):
        if tensor.data_type in PARAM_DTYPES:
            if tensor.name not in skip:
                params += _tensor_elements(tensor)
            weight_bytes += _tensor_bytes(tensor)
    return params, weight_bytes


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(
        f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph.node
    )
    return dict(counts.most_common())


def _io(values: Sequence[onnx.ValueInfoProto], skip: set[str]) -> list[dict[str, Any]]:
    out = []
    for vi in values:
        if vi.name in skip:
            continue
        shape = shape_of(vi)
        elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        out.append(
            {
                "name": vi.name,
                "dtype": onnx.helper.tensor_dtype_to_string(elem).replace("TensorProto.", "").lower() if elem else "?",
                "shape": None if shape is None else ["?" if d is None else d for d in shape],
            }
        )
    return out


def model_stats(
    model: onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    sample: Feed | None = None,
) -> ModelStats:
    """Compute :class:`ModelStats`.

    Args:
        model: The model.
        input_shapes: Concrete shapes for inputs with dynamic dims.
        sample: A feed used to resolve shapes (its shapes win over
            ``input_shapes``) and, if inference cannot, to run the model once.
    """
    specs = input_specs(model)
    assumed: dict[str, int] = {}
    if sample is not None:
        shapes = {k: tuple(int(d) for d in np.shape(v)) for k, v in sample.items()}
    else:
        check_override_names(specs, input_shapes)  # a misspelt name is an error, not silently unknown MACs
        try:
            shapes, assumed = resolve_shapes(specs, input_shapes)
        except Exception as err:  # noqa: BLE001 - MACs stay unknown, the rest is still useful
            logger.info("MACs not computed: %s", err)
            shapes = {}
    layer_macs, unresolved = count_macs(model, specs, shapes, sample)
    params, weight_bytes = count_params(model)
    initializers = {t.name for t in model.graph.initializer}
    return ModelStats(
        opset=default_opset(model),
        ir_version=model.ir_version,
        producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
        inputs=_io(model.graph.input, initializers),
        outputs=_io(model.graph.output, set()),
        nodes=len(model.graph.node),
        op_histogram=op_histogram(model),
        params=params,
        weight_bytes=weight_bytes,
        serialized_bytes=_serialized_size(model),
        macs=None if unresolved or not shapes else sum(layer.macs for layer in layer_macs),
        layer_macs=layer_macs,
        unresolved_layers=unresolved,
        input_shapes={k: list(v) for k, v in shapes.items()},
        assumed_dims=assumed,
        metadata={p.key: p.value for p in model.metadata_props},
    )


def _serialized_size(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001
        return 0


def count_macs(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    shapes: Mapping[str, tuple[int, ...]],
    sample: Feed | None = None,
) -> tuple[list[LayerMacs], list[str]]:
    """MACs of every compute layer, and the names of layers whose shapes stayed unknown.

    Layers inside ``If``/``Loop``/``Scan`` subgraphs count too, named
    ``outer_node/attribute/layer``: each branch and each body once (both
    branches of an ``If``, one iteration of a loop).
    """
    layers = [(path + (n.name or n.op_type), n) for path, g in _graphs(model.graph) for n in g.node if n.op_type in MAC_OPS]
    if not layers:
        return [], []
    if not shapes:
        return [], [name for name, _ in layers]
    known = _shapes_with_fixed_inputs(model, specs, shapes)
    main = {id(n) for n in model.graph.node}
    needed = set()
    for _, node in layers:
        for name in _operands(node):
            if name and name not in known and id(node) in main:  # only main-graph tensors can be exposed
                needed.add(name)
    if needed:
        known.update(_shapes_by_running(model, specs, shapes, sample, needed))
    result, unresolved = [], []
    for name, node in layers:
        macs = _node_macs(node, known)
        if macs is None:
            unresolved.append(name)
        else:
            result.append(LayerMacs(name, node.op_type, macs))
    return result, unresolved


def _graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """``graph`` and every subgraph under it, each with its path prefix."""
    yield path, graph
    for node in graph.node:
        for a in node.attribute:
            subgraphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for k, sub in enumerate(subgraphs):
                suffix = a.name if len(subgraphs) == 1 else f"{a.name}[{k}]"
                yield from _graphs(sub, f"{path}{node.name or node.op_type}/{suffix}/")


def _operands(node: onnx.NodeProto) -> list[str]:
    x_index, w_index, _ = MAC_OPS[node.op_type]
    names = [node.output[0]] if node.output else []
    for index in (x_index, w_index):
        if index < len(node.input):
            names.append(node.input[index])
    return names


def _shapes_with_fixed_inputs(
    model: onnx.ModelProto, specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    fixed = stub_large_tensors(model)  # weights are not needed for shapes
    del fixed.graph.value_info[:]
    for vi in fixed.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = int(d)
    inferred = infer_model_shapes(fixed)
    known: dict[str, tuple[int, ...]] = {}
    infos = dict(value_infos(inferred))
    for _, sub in list(_graphs(inferred.graph))[1:]:
        infos.update({vi.name: vi for vi in [*sub.value_info, *sub.output, *sub.input]})
    for name, vi in infos.items():
        shape = shape_of(vi)
        if shape is not None and all(isinstance(d, int) for d in shape):
            known[name] = tuple(int(d) for d in shape)
    graphs = [g for _, g in _graphs(model.graph)]
    for tensor in (t for g in graphs for t in g.initializer):
        known[tensor.name] = tuple(int(d) for d in tensor.dims)
    for node in (n for g in graphs for n in g.node):
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    known[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return known


def _shapes_by_running(
    model: onnx.ModelProto,
    specs: Sequence[InputSpec],
    shapes: Mapping[str, tuple[int, ...]],
    sample: Feed | None,
    names: set[str],
) -> dict[str, tuple[int, ...]]:
    """Measure tensor shapes by one onnxruntime run (for what inference missed)."""
    from .activations import expose_outputs
    from .data import RandomDataset
    from .runtime import OptLevel, create_session

    try:
        feed = sample if sample is not None else next(iter(RandomDataset(specs, shapes, 1, seed=0)))
        probe = expose_outputs(model, sorted(names))
        session = create_session(probe, level=OptLevel.DISABLED)
        wanted = [n for n in sorted(names) if n in {o.name for o in session.get_outputs()}]
        values = session.run(wanted, feed)
        return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(wanted, values)}
    except Exception as err:  # noqa: BLE001 - MACs for those layers stay unknown
        logger.info("could not measure shapes by running the model: %s", err)
        return {}


def _node_macs(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    x_index, w_index, kind = MAC_OPS[node.op_type]
    y = shapes.get(node.output[0]) if node.output else None
    x = shapes.get(node.input[x_index]) if x_index < len(node.input) else None
    w = shapes.get(node.input[w_index]) if w_index < len(node.input) else None
    prod = lambda s: int(np.prod(s, dtype=np.int64))  # noqa: E731
    if kind == "conv":
        return prod(y) * prod(w[1:]) if y is not None and w is not None else None
    if kind == "convtranspose":
        return prod(x) * prod(w[1:]) if x is not None and w is not None else None
    if kind == "gemm":
        if y is None or x is None or len(x) != 2:
            return None
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        return prod(y) * (x[0] if trans_a else x[1])
    if kind == "matmul":
        if y is None or x is None or not x:
            return None
        return prod(y) * x[-1]
    if kind == "matmulnbits":
        attrs = {a.name: a.i for a in node.attribute}
        if y is None or "K" not in attrs:
            return None
        return prod(y) * attrs["K"]
    return None
