"""Bias correction: remove the mean output shift that weight quantization causes.

Rounding a layer's weights is not zero-mean against a non-zero-mean input: with
``dW = W - dequantize(W_q)`` and the per-channel input means ``E[x]``, the
quantized layer's output is off by ``dW E[x]`` on average, per output channel.
Adding that to the bias removes the shift (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"; here with input
means measured on calibration data rather than derived from batch norms).

The correction is *local*: it only compensates the layer's own weight error,
so correcting every layer at once does not double count shifts that upstream
layers cause (a one-shot correction of measured end-to-end output shifts does,
and overshoots). For a Conv, ``E[x]`` is per input channel and ``dW`` is summed
over the kernel window (border positions, which read zero padding, are
treated like the rest); Gemm/MatMul use the mean input row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcomp.activations import session_with_outputs
from onnxcomp.runtime import OptLevel

from .layers import LinearLayer
from .qdq import QuantizedWeight
from .qparams import dequantize
from .reconstruction import grouped_weight


def input_channel_means(model: onnx.ModelProto, layers: Sequence[LinearLayer], feeds) -> dict[str, np.ndarray]:
    """Per-channel means of each layer's input (channels on axis 1 for Conv, last axis otherwise)."""
    wanted = {}
    for layer in layers:
        wanted[layer.activation.name] = 1 if layer.node.op == "Conv" else -1
    names = list(wanted)
    session = session_with_outputs(model, names, level=OptLevel.ALL)
    sums: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            moved = np.moveaxis(np.asarray(value, dtype=np.float64), wanted[name], -1)
            mean = moved.reshape(-1, moved.shape[-1]).mean(axis=0)
            sums[name] = sums[name] + mean if name in sums else mean
    return {name: total / max(len(feeds), 1) for name, total in sums.items()}


def weight_shift(layer: LinearLayer, weight: QuantizedWeight, input_mean: np.ndarray) -> np.ndarray | None:
    """``(W - dequantize(W_q)) E[x]`` per output channel, or None if shapes do not fit."""
    error = layer.weight_value().astype(np.float64) - dequantize(weight.values, weight.params).astype(np.float64)
    if layer.node.op == "Conv":
        out_c, per_group = error.shape[:2]
        groups = layer.groups
        if input_mean.size != per_group * groups:
            return None
        summed = error.reshape(out_c, per_group, -1).sum(axis=2)
        means = input_mean.reshape(groups, per_group)[np.arange(out_c) // (out_c // groups)]
        return (summed * means).sum(axis=1)
    rows = grouped_weight(layer)
    if rows is None or rows.shape[-1] != input_mean.size:
        return None
    error_rows = error if layer.out_axis == 0 else error.T
    return error_rows @ input_mean


def corrected_biases(
    layers: Sequence[LinearLayer], weights: dict[str, QuantizedWeight], input_means: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Layer name -> bias + (W - W_q) E[x], for layers with a bias, quantized weights and input means."""
    result = {}
    for layer in layers:
        mean = input_means.get(layer.activation.name)
        if layer.bias is None or layer.name not in weights or mean is None:
            continue
        shift = weight_shift(layer, weights[layer.name], mean)
        bias = layer.bias_value()
        if shift is None or shift.shape != bias.shape:
            continue
        result[layer.name] = (bias.astype(np.float64) + shift).astype(np.float32)
    return result
