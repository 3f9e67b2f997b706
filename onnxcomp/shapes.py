"""Shape and type inference that scales to large models.

``onnx.shape_inference`` needs the whole model in one protobuf and copies it.
Inference only needs the *values* of small constants (shape vectors, axes), so
large initializers are replaced by dims-only stubs before inference; the result
is then written back onto the graph's tensors by name.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .ir import export_model

logger = logging.getLogger(__name__)

STUB_THRESHOLD = 4096
"""Initializers at least this many bytes are stubbed during inference."""

STUB_LOCATION = "onnxcomp-stub"
"""External-data location marking a stubbed initializer (no file has it)."""


def _is_large(tensor: onnx.TensorProto, threshold: int) -> bool:
    """A weight whose data should not be copied: on disk (external) or big in memory.

    ``ByteSize`` measures the serialized tensor without copying its bytes out
    (reading ``raw_data`` in Python would).
    """
    if tensor.data_type == onnx.TensorProto.STRING:
        return False  # strings cannot live in external data
    external = tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL
    return external or tensor.ByteSize() >= threshold


def stub_large_tensors(model: onnx.ModelProto, threshold: int = STUB_THRESHOLD) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers carry name, dims and type but no data.

    Stubs are marked as external data at :data:`STUB_LOCATION`. The copy is
    assembled field by field, so the weights are never read or copied: this is
    what shape inference, opset conversion and checking run on.
    """
    stubbed = onnx.ModelProto()
    copy_fields(model, stubbed, skip={"graph"})
    copy_fields(model.graph, stubbed.graph, skip={"initializer"})
    for tensor in model.graph.initializer:
        stub = stubbed.graph.initializer.add()
        if not _is_large(tensor, threshold):
            stub.CopyFrom(tensor)
            continue
        stub.name, stub.data_type = tensor.name, tensor.data_type
        stub.dims.extend(tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        entry = stub.external_data.add()
        entry.key, entry.value = "location", STUB_LOCATION
    return stubbed


def copy_fields(source, target, *, skip: set[str] = frozenset()) -> None:
    """Copy the set fields of protobuf ``source`` into ``target``, except those named in ``skip``."""
    for field in source.DESCRIPTOR.fields:
        if field.name in skip:
            continue
        if field.is_repeated:
            values = getattr(source, field.name)
            if len(values):
                getattr(target, field.name).extend(values)
        elif field.message_type is not None:
            if source.HasField(field.name):
                getattr(target, field.name).CopyFrom(getattr(source, field.name))
        elif field.has_presence:
            if source.HasField(field.name):
                setattr(target, field.name, getattr(source, field.name))
        else:
            setattr(target, field.name, getattr(source, field.name))


def infer_model_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy of ``model`` with large weights stubbed (for reading shapes only)."""
    stubbed = stub_large_tensors(model)
    try:
        return onnx.shape_inference.infer_shapes(stubbed, check_type=False, strict_mode=False, data_prop=True)
    except Exception as err:  # inference is best effort on messy real graphs
        logger.debug("shape inference failed: %s", err)
        return stubbed


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    graph = model.graph
    infos = {vi.name: vi for vi in graph.value_info}
    infos.update({vi.name: vi for vi in graph.output})
    infos.update({vi.name: vi for vi in graph.input})
    return infos


def shape_of(info: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    t = info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def dtype_of(info: onnx.ValueInfoProto) -> np.dtype | None:
    t = info.type
    if not t.HasField("tensor_type") or not t.tensor_type.elem_type:
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)
    except (KeyError, ValueError, TypeError):
        return None


def infer_graph_shapes(graph: gs.Graph, template: onnx.ModelProto) -> int:
    """Run shape inference and write shapes/dtypes onto ``graph``'s variables.

    Returns:
        How many tensors gained or changed shape or dtype information.
    """
    inferred = infer_model_shapes(export_model(graph, template))
    infos = value_infos(inferred)
    changed = 0
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Variable) or name not in infos:
            continue
        shape, dtype = shape_of(infos[name]), dtype_of(infos[name])
        new_shape = list(shape) if shape is not None else tensor.shape
        new_dtype = dtype if dtype is not None else tensor.dtype
        if _shape_key(new_shape) != _shape_key(tensor.shape) or _dtype_key(new_dtype) != _dtype_key(tensor.dtype):
            tensor.shape, tensor.dtype = new_shape, new_dtype
            changed += 1
    return changed


def _shape_key(shape):
    return None if shape is None else tuple(shape)


def _dtype_key(dtype):
    if dtype is None:
        return None
    try:
        return np.dtype(dtype).str
    except TypeError:
        return str(dtype)


def clear_intermediate_shapes(graph: gs.Graph) -> None:
    """Forget shapes/dtypes of tensors between nodes (after edits that change them)."""
    keep = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None
            tensor.dtype = None
