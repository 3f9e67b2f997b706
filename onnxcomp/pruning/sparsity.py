"""Unstructured and N:M weight sparsity: which weights to zero.

* Unstructured magnitude pruning zeroes the ``k = round(sparsity * size)``
  smallest ``|w|`` of a layer (local), or every weight below one magnitude
  threshold chosen over all targeted layers (global).
* N:M keeps the ``n`` largest ``|w|`` of every ``m`` consecutive weights along
  the reduction axis (2:4 is what sparse tensor cores accelerate): a Conv's input
  channels for each output channel and kernel position, a MatMul/Gemm weight's
  input features for each output feature.

Zeroed weights shrink the *compressed* model (zip), not the ONNX file, and
onnxruntime's CPU kernels run them as dense tensors: no speedup.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx


def magnitude_keep(values: np.ndarray, sparsity: float) -> np.ndarray:
    """Mask of the weights kept when the ``sparsity`` fraction with smallest ``|w|`` is zeroed."""
    flat = np.abs(values).reshape(-1)
    k = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if k > 0:
        keep[np.argpartition(flat, k - 1)[:k]] = False
    return keep.reshape(values.shape)


def threshold_for(arrays: list[np.ndarray], sparsity: float) -> float:
    """The magnitude below which ``sparsity`` of all weights in ``arrays`` lie."""
    flat = np.concatenate([np.abs(a).reshape(-1) for a in arrays])
    k = int(round(sparsity * flat.size))
    if k <= 0:
        return -1.0
    return float(np.partition(flat, k - 1)[k - 1])


def n_m_keep(values: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Mask keeping the ``n`` largest ``|w|`` in each run of ``m`` along ``axis``
    (``values.shape[axis]`` must be a multiple of ``m``)."""
    moved = np.moveaxis(np.abs(values), axis, -1)
    runs = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    order = np.argsort(-runs, axis=-1, kind="stable")
    keep = np.zeros(runs.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def zip_size(model: onnx.ModelProto) -> int:
    """Bytes of the serialized model after DEFLATE (what zipping the file gives)."""
    return len(zlib.compress(model.SerializeToString(), 6))
