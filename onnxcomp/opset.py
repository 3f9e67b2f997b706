"""Raising a model's opset without copying its weights.

``onnx.version_converter`` serializes the whole model, so it fails above 2 GiB
and costs a copy of every weight below. Conversion only rewrites nodes and
small constants (shapes, axes), so large initializers are replaced by
dims-only stubs first and put back by name afterwards.
"""

from __future__ import annotations

import onnx

from .model_io import iter_tensors
from .shapes import STUB_LOCATION, stub_large_tensors


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``model`` converted to default-domain opset ``target`` (``model`` is not changed).

    Raises:
        Whatever ``onnx.version_converter`` raises when it cannot convert.
    """
    stubbed = stub_large_tensors(model)
    converted = onnx.version_converter.convert_version(stubbed, target)
    originals = {t.name: t for t in model.graph.initializer}
    for tensor in converted.graph.initializer:
        locations = [e.value for e in tensor.external_data if e.key == "location"]
        if locations == [STUB_LOCATION]:
            tensor.CopyFrom(originals[tensor.name])
    leftover = [t.name for t in iter_tensors(converted) if any(e.value == STUB_LOCATION for e in t.external_data)]
    if leftover:
        raise ValueError(f"version conversion lost track of weight(s) {', '.join(leftover[:5])}")
    return converted
