"""Integer weights of the layers static quantization runs on integer kernels.

Weights are int8, symmetric (zero point 0, range ``[-127, 127]``), with one
scale per output channel on the layer's out axis (:mod:`.layers`), or one per
tensor. The bias of a Conv/Gemm is stored as int32 at
``scale = x_scale * w_scale[c]`` (:func:`~.qdq.bias_scale`); when a bias is
too large for int32 at that scale (tiny weights, large bias), the channel's
weight scale is enlarged until it fits, as the int32 grid must reach the bias.
"""

from __future__ import annotations

import numpy as np

from .layers import LinearLayer
from .qdq import INT32_MAX, QuantizedWeight, bias_scale
from .qparams import QParams, QuantType, quantize, weight_params


def layer_weight_params(
    layer: LinearLayer,
    x_scale: np.ndarray | float | None,
    *,
    qtype: QuantType = QuantType.INT8,
    per_channel: bool = True,
    symmetric: bool = True,
) -> QParams:
    """Min/max weight parameters of ``layer``, widened so its int32 bias fits."""
    w = layer.weight_value()
    params = weight_params(w, qtype, axis=layer.out_axis if per_channel else None, symmetric=symmetric)
    bias = layer.bias_value() if layer.bias_node is layer.node else None
    if bias is None or x_scale is None:
        return params
    x_scale = float(np.asarray(x_scale).reshape(-1)[0])
    needed = np.abs(bias.astype(np.float64)) / (x_scale * (INT32_MAX - 1))
    scale = params.scale.astype(np.float64)
    if per_channel:
        widened = np.maximum(scale, needed * 1.0001)
    else:
        widened = np.maximum(scale, needed.max(initial=0.0) * 1.0001)
    if np.array_equal(widened, scale):
        return params
    return QParams(np.asarray(widened, dtype=np.float32), params.zero_point, qtype, params.axis)


def quantize_layer_weight(layer: LinearLayer, params: QParams, values: np.ndarray | None = None) -> QuantizedWeight:
    """Round ``layer``'s weight to the grid of ``params`` (or take given integer ``values``)."""
    if values is None:
        values = quantize(layer.weight_value(), params)
    return QuantizedWeight(values=values, params=params)


def bias_fits(layer: LinearLayer, x_scale: float, params: QParams) -> bool:
    """Whether ``layer``'s bias is representable in int32 at ``x_scale * w_scale``."""
    bias = layer.bias_value()
    if bias is None:
        return True
    scale = np.broadcast_to(bias_scale(np.asarray(x_scale), params.scale), bias.shape)
    return bool(np.all(np.abs(bias.astype(np.float64) / scale.astype(np.float64)) <= INT32_MAX))
