"""Raising a model's opset for quantization.

Per-channel ``DequantizeLinear`` (the ``axis`` attribute) exists from opset
13, block-wise and 4-bit ones from 21. Older models (Paddle exports at opset
11, for instance) are converted with :func:`onnxcomp.opset.convert_opset`
(onnx's version converter, weights kept aside) and the conversion is accepted
only when the
converted model loads in onnxruntime and gives the same outputs as the
original on a real sample (float outputs within 1e-4 relative to their
magnitude, other outputs equal).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from onnxcomp.model_io import check_model, default_opset
from onnxcomp.opset import convert_opset
from onnxcomp.runtime import OptLevel, create_session

logger = logging.getLogger(__name__)

TOLERANCE = 1e-4


def _outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return create_session(model, level=OptLevel.DISABLED).run(None, feed)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f":
            scale = max(float(np.max(np.abs(x), initial=0.0)), 1.0)
            if not np.allclose(x, y, rtol=0.0, atol=TOLERANCE * scale, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def ensure_opset(
    model: onnx.ModelProto, minimum: int, feed: dict[str, np.ndarray]
) -> tuple[onnx.ModelProto, int, str | None]:
    """``model`` at opset >= ``minimum`` if a verified conversion exists.

    Returns:
        ``(model, opset, None)`` after a successful conversion (or when none
        was needed), else ``(original model, its opset, reason)``.
    """
    opset = default_opset(model) or minimum
    if opset >= minimum:
        return model, opset, None
    try:
        converted = convert_opset(model, minimum)  # large weights stay out of the converter
        check_model(converted, source=f"the model converted to opset {minimum}")
        same = _same(_outputs(model, feed), _outputs(converted, feed))
    except Exception as err:  # noqa: BLE001 - the converter and onnxruntime raise many types
        return model, opset, f"opset {opset} could not be converted to {minimum} ({' '.join(str(err).split())[:200]})"
    if not same:
        return model, opset, f"converting opset {opset} to {minimum} changed the model's outputs"
    logger.info("converted the model from opset %d to %d for per-channel quantization", opset, minimum)
    for field in ("producer_name", "producer_version", "doc_string"):
        setattr(converted, field, getattr(model, field))
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    return converted, minimum, None
