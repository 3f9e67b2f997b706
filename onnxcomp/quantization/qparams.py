"""Scale/zero-point computation and numpy (de)quantization, per the ONNX spec.

ONNX ``QuantizeLinear`` computes ``q = saturate(round_half_to_even(x / scale) + zero_point)``
and ``DequantizeLinear`` computes ``x = (q - zero_point) * scale``. The helpers
here reproduce that arithmetic exactly, so a weight quantized in numpy and
stored as an integer initializer dequantizes in onnxruntime to the same value.

Ranges map to parameters as follows, for an integer type with limits
``[qmin, qmax]``:

* symmetric: ``scale = max(|lo|, |hi|) / ((qmax - qmin) / 2)``; the zero point is
  0 for signed types and 128 (``(qmax + qmin + 1) / 2``) for uint8. For signed
  types the range is ``[-qmax, qmax]`` (-127..127 for int8) so that ``-x``
  is representable.
* asymmetric: the range is first widened to contain 0 (so 0 is exactly
  representable: zero padding and ReLU outputs stay exact), then
  ``scale = (hi - lo) / (qmax - qmin)`` and
  ``zero_point = clip(round(qmin - lo / scale), qmin, qmax)``.

A zero range gives scale 1 (any scale reproduces an all-zero tensor) rather
than a division by zero.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import onnx

try:  # int4 arrays (onnx >= 1.16 ships ml_dtypes)
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None


class QuantType(enum.Enum):
    """Integer types a tensor can be quantized to."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT4 = "int4"
    UINT4 = "uint4"
    INT16 = "int16"
    UINT16 = "uint16"

    @property
    def qmin(self) -> int:
        return {"int8": -128, "uint8": 0, "int4": -8, "uint4": 0, "int16": -32768, "uint16": 0}[self.value]

    @property
    def qmax(self) -> int:
        return {"int8": 127, "uint8": 255, "int4": 7, "uint4": 15, "int16": 32767, "uint16": 65535}[self.value]

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def onnx_type(self) -> int:
        return {
            "int8": onnx.TensorProto.INT8,
            "uint8": onnx.TensorProto.UINT8,
            "int4": onnx.TensorProto.INT4,
            "uint4": onnx.TensorProto.UINT4,
            "int16": onnx.TensorProto.INT16,
            "uint16": onnx.TensorProto.UINT16,
        }[self.value]

    @property
    def numpy_dtype(self) -> np.dtype:
        if self in (QuantType.INT4, QuantType.UINT4):
            if ml_dtypes is None:  # pragma: no cover
                raise RuntimeError("int4 needs the ml_dtypes package")
            return np.dtype(ml_dtypes.int4 if self is QuantType.INT4 else ml_dtypes.uint4)
        return np.dtype(self.value)


@dataclasses.dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    Attributes:
        scale: float32 array, shape () per tensor, (C,) per channel, or the
            blocked shape for block quantization.
        zero_point: array of ``qtype``'s dtype, same shape as ``scale``.
        qtype: The integer type.
        axis: The channel axis for per-channel/blocked parameters, else None.
        block_size: Block length along ``axis`` for blocked parameters.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    qtype: QuantType
    axis: int | None = None
    block_size: int | None = None


def params_from_range(
    lo: np.ndarray | float,
    hi: np.ndarray | float,
    qtype: QuantType,
    *,
    symmetric: bool,
    axis: int | None = None,
    block_size: int | None = None,
) -> QParams:
    """Scale and zero point covering ``[lo, hi]`` (scalars or per-channel vectors)."""
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if symmetric:
        bound = np.maximum(np.abs(lo), np.abs(hi))
        if qtype.signed:
            scale = bound / qtype.qmax
            zero = np.zeros_like(scale)
        else:
            scale = bound / ((qtype.qmax - qtype.qmin) / 2.0)
            zero = np.full_like(scale, (qtype.qmax + qtype.qmin + 1) // 2)
    else:
        scale = (hi - lo) / (qtype.qmax - qtype.qmin)
        safe = np.where(scale > 0, scale, 1.0)
        zero = np.clip(np.round(qtype.qmin - lo / safe), qtype.qmin, qtype.qmax)
    scale = np.asarray(np.where(scale > 0, scale, 1.0), dtype=np.float32)
    zero_point = np.asarray(np.asarray(zero).astype(np.int64)).astype(qtype.numpy_dtype)
    return QParams(scale=scale, zero_point=zero_point, qtype=qtype, axis=axis, block_size=block_size)


def _broadcast(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if axis is None or values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _expand_blocks(values: np.ndarray, axis: int, block_size: int, length: int) -> np.ndarray:
    return np.repeat(values, block_size, axis=axis).take(np.arange(length), axis=axis)


def _per_element(params: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    scale = params.scale.astype(np.float32)
    zero = params.zero_point.astype(np.int64)
    if params.block_size is not None and params.axis is not None:
        axis = params.axis % len(shape)
        scale = _expand_blocks(scale, axis, params.block_size, shape[axis])
        zero = _expand_blocks(zero, axis, params.block_size, shape[axis])
        return scale, zero
    axis = None if params.axis is None else params.axis % max(len(shape), 1)
    return _broadcast(scale, len(shape), axis), _broadcast(zero, len(shape), axis)


def quantize(x: np.ndarray, params: QParams) -> np.ndarray:
    """ONNX QuantizeLinear in numpy (round half to even, saturate)."""
    scale, zero = _per_element(params, np.shape(x))
    q = np.rint(np.asarray(x, dtype=np.float32) / scale) + zero
    q = np.clip(q, params.qtype.qmin, params.qtype.qmax)
    return q.astype(np.int64).astype(params.qtype.numpy_dtype)


def dequantize(q: np.ndarray, params: QParams) -> np.ndarray:
    """ONNX DequantizeLinear in numpy (float32 result)."""
    scale, zero = _per_element(params, np.shape(q))
    return ((np.asarray(q).astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)


def weight_params(
    w: np.ndarray,
    qtype: QuantType = QuantType.INT8,
    *,
    axis: int | None = 0,
    symmetric: bool = True,
    block_size: int | None = None,
) -> QParams:
    """Min/max parameters of a weight tensor: per tensor (axis None), per channel
    along ``axis``, or per block of ``block_size`` consecutive elements along ``axis``."""
    w = np.asarray(w, dtype=np.float64)
    if axis is None:
        return params_from_range(w.min(initial=0.0), w.max(initial=0.0), qtype, symmetric=symmetric)
    axis = axis % w.ndim
    if block_size is None:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        lo, hi = w.min(axis=reduce, initial=0.0), w.max(axis=reduce, initial=0.0)
        return params_from_range(lo, hi, qtype, symmetric=symmetric, axis=axis)
    length = w.shape[axis]
    blocks = -(-length // block_size)
    pad = blocks * block_size - length
    padded = np.pad(w, [(0, pad) if i == axis else (0, 0) for i in range(w.ndim)])
    shape = list(padded.shape)
    shape[axis : axis + 1] = [blocks, block_size]
    grouped = padded.reshape(shape)
    lo = grouped.min(axis=axis + 1, initial=0.0)
    hi = grouped.max(axis=axis + 1, initial=0.0)
    return params_from_range(lo, hi, qtype, symmetric=symmetric, axis=axis, block_size=block_size)


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(approximation, dtype=np.float64)
    noise_power = float(np.sum(noise * noise))
    signal_power = float(np.sum(ref * ref))
    if noise_power == 0:
        return float("inf")
    if signal_power == 0:
        return float("-inf")
    return 10.0 * np.log10(signal_power / noise_power)
