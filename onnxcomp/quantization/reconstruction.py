"""Layer-wise reconstruction of weight rounding on calibration activations (numpy).

Rounding every weight to the nearest grid point minimizes the weight error, not
the layer's output error. For a layer ``y = W x`` with inputs ``X`` collected on
calibration data, the output error of integer weights ``Q`` (on the same
per-channel grid ``s``) is, row by row,

    ||(W - sQ) X||^2 = sum_rows (w - s q) H (w - s q)^T,    H = X X^T,

so each output row is an independent quadratic problem in the input-channel
Hessian ``H``. It is solved as in Optimal Brain Quantization / GPTQ (Frantar
et al. 2022), the one-pass relative of AdaRound: quantize one input column at
a time and move the not-yet-quantized columns by ``-err * H^-1[j, j+1:] /
H^-1[j, j]``, the least-squares compensation of that column's rounding error.
The result stays on the same int8 grid (same scales, so the int32 bias and
onnxruntime's kernels are unchanged); only which integers are chosen differs.

Layouts: a Conv with ``g`` groups is ``g`` independent problems
``W[g, M/g, C/g*kh*kw]`` against im2col patches of its group's input channels
(a depthwise conv is ``C`` problems of size ``kh*kw``); Gemm/MatMul weights are
one problem ``W[N, K]`` against input rows. ``H`` is accumulated from about
``rows`` input positions per layer, sampled evenly over the samples given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx

from onnxcomp.activations import iterate_activations
from onnxcomp.data import Dataset
from onnxcomp.graph import attr
from onnxcomp.progress import ProgressFactory, null_progress

from .layers import LinearLayer
from .qparams import QParams

logger = logging.getLogger(__name__)

DAMPING = 0.01
"""Added to H's diagonal, relative to its mean, so H is invertible (dead channels)."""


def _conv_geometry(layer: LinearLayer) -> tuple | None:
    node = layer.node
    w = layer.weight_value()
    if w.ndim != 4 or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", ""):
        return None
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    return w.shape[2:], pads, strides, dilations


def _conv_patches(x: np.ndarray, layer: LinearLayer, geometry, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` random im2col patches of ``x[1, C, H, W]`` as ``[groups, count, C/g*kh*kw]``."""
    (kh, kw), pads, strides, dilations = geometry
    x = np.pad(x[0], ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    span_h, span_w = dilations[0] * (kh - 1) + 1, dilations[1] * (kw - 1) + 1
    windows = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(1, 2))
    windows = windows[:, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]
    channels, out_h, out_w = windows.shape[:3]
    positions = rng.choice(out_h * out_w, size=min(count, out_h * out_w), replace=False)
    rows, cols = np.divmod(positions, out_w)
    patches = windows[:, rows, cols]  # [C, R, kh, kw]
    groups = layer.groups
    per_group = channels // groups
    patches = patches.reshape(groups, per_group, len(positions), kh * kw).transpose(0, 2, 1, 3)
    return patches.reshape(groups, len(positions), per_group * kh * kw).astype(np.float64)


def _dense_rows(x: np.ndarray, count: int, rng: np.random.Generator, in_features: int) -> np.ndarray:
    rows = x.reshape(-1, in_features)
    pick = rng.choice(rows.shape[0], size=min(count, rows.shape[0]), replace=False)
    return rows[pick][None].astype(np.float64)


def grouped_weight(layer: LinearLayer) -> np.ndarray:
    """The weight as ``[groups, out/groups, K]`` (rows = output channels)."""
    w = layer.weight_value()
    if layer.node.op == "Conv":
        return w.reshape(layer.groups, w.shape[0] // layer.groups, -1)
    rows = w if layer.out_axis == 0 else w.T
    return rows[None]


def ungroup(layer: LinearLayer, grouped: np.ndarray) -> np.ndarray:
    shape = layer.weight_value().shape
    if layer.node.op == "Conv":
        return grouped.reshape(shape)
    rows = grouped.reshape(grouped.shape[1], grouped.shape[2])
    return rows if layer.out_axis == 0 else rows.T


def supported(layer: LinearLayer) -> bool:
    if layer.node.op == "Conv":
        return _conv_geometry(layer) is not None
    return layer.weight_value().ndim == 2


def input_hessians(
    model: onnx.ModelProto,
    data: Dataset,
    layers: Sequence[LinearLayer],
    *,
    samples: int,
    rows: int = 4096,
    seed: int = 0,
    progress: ProgressFactory = null_progress,
) -> dict[str, np.ndarray]:
    """``H[g, K, K] = sum x x^T`` over about ``rows`` sampled input positions per layer."""
    layers = [layer for layer in layers if supported(layer)]
    names = sorted({layer.activation.name for layer in layers})
    per_sample = max(1, -(-rows // samples))
    rng = np.random.default_rng(seed)
    hessians: dict[str, np.ndarray] = {}
    geometry = {layer.name: _conv_geometry(layer) for layer in layers if layer.node.op == "Conv"}
    stream = iterate_activations(model, data, names, progress=progress, desc="reconstruction statistics")
    for index, (_, values) in enumerate(stream):
        if index >= samples:
            break
        for layer in layers:
            x = values[layer.activation.name]
            if layer.node.op == "Conv":
                patches = _conv_patches(x, layer, geometry[layer.name], per_sample, rng)
            else:
                patches = _dense_rows(x, per_sample, rng, grouped_weight(layer).shape[-1])
            h = np.einsum("grk,grl->gkl", patches, patches)
            hessians[layer.name] = hessians.get(layer.name, 0) + h
    return hessians


def reconstruct_rounding(weight: np.ndarray, scale: np.ndarray, hessian: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """Integer weights ``[g, m, K]`` minimizing ``sum (w - s q) H (w - s q)^T`` column by column.

    Args:
        weight: ``[g, m, K]`` float weights.
        scale: ``[g, m]`` per-row scales (positive).
        hessian: ``[g, K, K]`` input Hessians.
    """
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    g, m, k = w.shape
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    idx = np.arange(k)
    h[:, idx, idx] += DAMPING * np.maximum(diag.mean(axis=1, keepdims=True), 1e-12) + dead
    inverse = np.linalg.inv(h)
    upper = np.linalg.cholesky(inverse).transpose(0, 2, 1)  # H^-1 = U^T U, U upper triangular
    s = scale.astype(np.float64)
    q = np.zeros((g, m, k), dtype=np.int64)
    for j in range(k):
        col = w[:, :, j]
        qj = np.clip(np.rint(col / s), qmin, qmax)
        q[:, :, j] = qj
        err = (col - qj * s) / upper[:, j, j][:, None]
        w[:, :, j + 1 :] -= err[:, :, None] * upper[:, None, j, j + 1 :]
    return q


def reconstructed_values(layer: LinearLayer, params: QParams, hessian: np.ndarray) -> np.ndarray:
    """Integer weights of ``layer`` on ``params``' grid, in the weight's layout and dtype."""
    grouped = grouped_weight(layer)
    g, m, _ = grouped.shape
    scale = np.broadcast_to(np.asarray(params.scale, dtype=np.float64).reshape(-1), (g * m,)).reshape(g, m)
    q = reconstruct_rounding(grouped, scale, hessian, params.qtype.qmin, params.qtype.qmax)
    return ungroup(layer, q).astype(params.qtype.numpy_dtype)
