"""ONNX operators in torch, differentiable where ONNX is: the registry :data:`OPS`.

Each implementation takes the node (:class:`Node`: attributes, opset, name) and
its input tensors (``None`` for an omitted optional input) and returns one
tensor or a tuple, one per node output. Integer tensors stay integer (shapes,
indices: int64 as ONNX has them) and are computed on the fly, so shape
subgraphs (``Shape -> Gather -> Concat -> Reshape``) follow the actual input.

Semantics follow the ONNX operator specification (the current opset and the
older signatures still in use: attribute vs input axes, ``Softmax`` before
opset 13, ``Resize`` at opset 10). Where a case would need behaviour this
module does not implement, the op raises :class:`~onnxcomp.errors.TrainingError`
naming the node, instead of computing something close.

Two departures from a plain evaluation, both the point of training on a graph:

* ``QuantizeLinear`` is *fake* quantization: it returns the integer codes as
  a float tensor and passes the gradient straight through the rounding
  (clipped outside the integer range), so ``Q -> DQ`` pairs train (QAT).
  ``DequantizeLinear`` accepts those codes or real integer tensors.
* ``BatchNormalization`` and ``Dropout`` are always their inference forms:
  the running statistics stay fixed, nothing is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import TrainingError

Tensor = torch.Tensor


class Node:
    """A node as the op implementations see it: attributes decoded once."""

    def __init__(self, proto: onnx.NodeProto, opset: int):
        self.proto = proto
        self.op_type = proto.op_type
        self.name = proto.name or (proto.output[0] if proto.output else "")
        self.opset = opset
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        self.n_outputs = len(proto.output)

    def attr(self, name: str, default=None):
        value = self.attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def fail(self, why: str) -> TrainingError:
        return TrainingError(f"node '{self.name}' ({self.op_type}): {why}")


# -- dtypes -------------------------------------------------------------------------------------

TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.BOOL: torch.bool,
}

#: Integer ranges of the quantized types (QuantizeLinear saturates to these).
QUANT_RANGES = {
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT16: (-32768, 32767),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT32: (-(2**31), 2**31 - 1),
}


def torch_dtype(node: Node, onnx_type: int) -> torch.dtype:
    if onnx_type not in TORCH_DTYPES:
        raise node.fail(f"element type {onnx.TensorProto.DataType.Name(onnx_type)} is not supported")
    return TORCH_DTYPES[onnx_type]


def ints(t: Tensor | None) -> list[int]:
    """A shape-like tensor (int64 in ONNX) as Python ints."""
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes(node: Node, inputs: Sequence[Tensor | None], index: int) -> list[int] | None:
    """Axes from input ``index`` (newer opsets) or the ``axes`` attribute; None when neither."""
    if len(inputs) > index and inputs[index] is not None:
        return ints(inputs[index])
    return node.attr("axes")


# -- elementwise --------------------------------------------------------------------------------


def _div(node, x):
    a, b = x
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(node, x):
    a, b = x
    return torch.pow(a, b).to(a.dtype)


def _variadic(fn):
    def op(node, x):
        out = x[0]
        for t in x[1:]:
            out = fn(out, t)
        return out

    return op


def _mean(node, x):
    return _variadic(torch.add)(node, x) / len(x)


def _unary(fn):
    return lambda node, x: fn(x[0])


def _clip(node, x):
    if node.opset < 11:
        lo, hi = node.attr("min"), node.attr("max")
    else:
        lo = x[1] if len(x) > 1 else None
        hi = x[2] if len(x) > 2 else None
    if lo is None and hi is None:
        return x[0]
    lo, hi = _scalar_bound(lo), _scalar_bound(hi)
    if x[0].is_floating_point() and isinstance(lo, float) and isinstance(hi, float) and lo <= hi:
        # hardtanh's backward is one fused kernel; clamp with tensor bounds builds its mask from
        # four (ge, le, logical_and, where): ~8x slower, 15 % of a training step of EfficientNet-Lite1.
        return F.hardtanh(x[0], lo, hi)
    return torch.clamp(x[0], lo, hi)


def _scalar_bound(bound):
    """A constant one-element bound as a Python float (anything else as it is)."""
    if isinstance(bound, Tensor) and bound.numel() == 1 and not bound.requires_grad and bound.is_floating_point():
        return float(bound.item())
    return bound


def _leaky_relu(node, x):
    return F.leaky_relu(x[0], node.attr("alpha", 0.01))


def _hard_sigmoid(node, x):
    return torch.clamp(node.attr("alpha", 0.2) * x[0] + node.attr("beta", 0.5), 0.0, 1.0)


def _hard_swish(node, x):
    return x[0] * torch.clamp(x[0] / 6.0 + 0.5, 0.0, 1.0)


def _gelu(node, x):
    return F.gelu(x[0], approximate=node.attr("approximate", "none"))


def _elu(node, x):
    return F.elu(x[0], node.attr("alpha", 1.0))


def _prelu(node, x):
    return torch.where(x[0] >= 0, x[0], x[0] * x[1])


def _softmax_like(fn):
    def op(node, x):
        t = x[0]
        if node.opset >= 13:
            return fn(t, dim=node.attr("axis", -1))
        # Before opset 13 the input is coerced to 2-D at ``axis`` (default 1).
        axis = _axis(node.attr("axis", 1), t.dim())
        flat = t.reshape(math.prod(t.shape[:axis]), -1)
        return fn(flat, dim=1).reshape(t.shape)

    return op


def _compare(fn):
    return lambda node, x: fn(x[0], x[1])


def _where(node, x):
    return torch.where(x[0], x[1], x[2])


# -- linear algebra ----------------------------------------------------------------------------


def _gemm(node, x):
    a, b = x[0], x[1]
    if node.attr("transA", 0):
        a = a.t()
    if node.attr("transB", 0):
        b = b.t()
    y = node.attr("alpha", 1.0) * (a @ b)
    if len(x) > 2 and x[2] is not None:
        y = y + node.attr("beta", 1.0) * x[2]
    return y


def _matmul(node, x):
    return torch.matmul(x[0], x[1])


def _einsum(node, x):
    return torch.einsum(node.attr("equation"), *x)


# -- convolution and pooling --------------------------------------------------------------------


def _same_pads(node, sizes, kernel, strides, dilations) -> list[int]:
    """Explicit ``[begins..., ends...]`` for auto_pad SAME_UPPER / SAME_LOWER."""
    upper = node.attr("auto_pad") == "SAME_UPPER"
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _window(node, x: Tensor, kernel: list[int]):
    """Strides, dilations and explicit pads of a conv or pool node on input ``x``."""
    n = len(kernel)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(node, x.shape[2:], kernel, strides, dilations)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = node.attr("pads") or [0] * (2 * n)
    return list(strides), list(dilations), list(pads)


def _torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1, b2, ..., e1, e2, ...]`` to F.pad's ``[b_last, e_last, ..., b1, e1]``."""
    n = len(pads) // 2
    out = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _pad_spatial(x: Tensor, pads: Sequence[int], value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Pad asymmetrically where torch cannot; returns the input and torch's symmetric padding."""
    n = len(pads) // 2
    if all(pads[i] == pads[i + n] for i in range(n)):
        return x, list(pads[:n])
    return F.pad(x, _torch_pads(pads), value=value), [0] * n


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv(node, x):
    data, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    kernel = list(weight.shape[2:])
    if len(kernel) not in _CONV:
        raise node.fail(f"{len(kernel)}-D convolution is not supported")
    strides, dilations, pads = _window(node, data, kernel)
    data, padding = _pad_spatial(data, pads)
    if data.dim() == 4 and data.is_floating_point():
        # oneDNN's NHWC kernels: on EfficientNet-Lite1 a training step is ~25 % faster (depthwise
        # convolutions most); element-wise ops in between keep the layout, so this converts once.
        data = data.contiguous(memory_format=torch.channels_last)
    return _CONV[len(kernel)](data, weight, bias, strides, padding, dilations, node.attr("group", 1))


def _conv_transpose(node, x):
    data, weight = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    kernel = list(weight.shape[2:])
    n = len(kernel)
    if n not in _CONV_T:
        raise node.fail(f"{n}-D transposed convolution is not supported")
    strides = list(node.attr("strides") or [1] * n)
    dilations = list(node.attr("dilations") or [1] * n)
    out_pad = list(node.attr("output_padding") or [0] * n)
    sizes = list(data.shape[2:])
    full = [(i - 1) * s + (k - 1) * d + 1 + op for i, s, k, d, op in zip(sizes, strides, kernel, dilations, out_pad)]
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-n:] if output_shape else [i * s for i, s in zip(sizes, strides)]
        totals = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
        else:
            pads = [t - t // 2 for t in totals] + [t // 2 for t in totals]
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    else:
        pads = list(node.attr("pads") or [0] * (2 * n))
    y = _CONV_T[n](data, weight, None, strides, 0, 0, node.attr("group", 1), dilations)
    # output_padding adds positions past the last input contribution (zeros before the bias);
    # pads crop the full output (negative F.pad).
    y = F.pad(y, _torch_pads([0] * n + out_pad))
    y = F.pad(y, _torch_pads([-p for p in pads]))
    if bias is not None:
        y = y + bias.reshape(1, -1, *([1] * n))
    return y


def _global_average_pool(node, x):
    return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)


def _global_max_pool(node, x):
    return x[0].amax(dim=tuple(range(2, x[0].dim())), keepdim=True)


_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def _average_pool(node, x):
    data = x[0]
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pads = _window(node, data, kernel)
    if any(d != 1 for d in dilations):
        raise node.fail("dilated AveragePool is not supported")
    ceil = bool(node.attr("ceil_mode", 0))
    pool = _AVG[len(kernel)]
    padded = F.pad(data, _torch_pads(pads))
    y = pool(padded, kernel, strides, 0, ceil, True)
    if not node.attr("count_include_pad", 0) and any(pads):
        # Divide by the real (unpadded) elements of each window: same divisor on both sides.
        mask = F.pad(torch.ones_like(data[:1, :1]), _torch_pads(pads))
        y = y / pool(mask, kernel, strides, 0, ceil, True)
    return y


def _max_pool(node, x):
    if node.n_outputs > 1 and node.proto.output[1]:
        raise node.fail("MaxPool's Indices output is not supported")
    data = x[0]
    kernel = list(node.attr("kernel_shape"))
    strides, dilations, pads = _window(node, data, kernel)
    padded = F.pad(data, _torch_pads(pads), value=-math.inf) if any(pads) else data
    return _MAX[len(kernel)](padded, kernel, strides, 0, dilations, bool(node.attr("ceil_mode", 0)))


# -- normalization ------------------------------------------------------------------------------


def _batch_norm(node, x):
    if node.attr("training_mode", 0) or sum(1 for o in node.proto.output if o) > 1:
        raise node.fail("training-mode BatchNormalization is not supported (the inference form keeps its statistics fixed)")
    data, scale, bias, mean, var = x
    return F.batch_norm(data, mean, var, scale, bias, False, 0.0, node.attr("epsilon", 1e-5))


def _layer_norm(node, x):
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    axis = _axis(node.attr("axis", -1), data.dim())
    dims = tuple(range(axis, data.dim()))
    mean = data.mean(dim=dims, keepdim=True)
    centered = data - mean
    inv_std = torch.rsqrt((centered * centered).mean(dim=dims, keepdim=True) + node.attr("epsilon", 1e-5))
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    return (y, mean, inv_std)[: node.n_outputs]


def _instance_norm(node, x):
    return F.instance_norm(x[0], weight=x[1], bias=x[2], eps=node.attr("epsilon", 1e-5))


# -- reductions ---------------------------------------------------------------------------------


def _reduce(fn, axes_input_from: int):
    """A Reduce* op; axes became an input at opset ``axes_input_from``."""

    def op(node, x):
        data = x[0]
        axes = _axes(node, x, 1) if node.opset >= axes_input_from else node.attr("axes")
        keep = bool(node.attr("keepdims", 1))
        if not axes:
            if node.attr("noop_with_empty_axes", 0):
                return data
            axes = list(range(data.dim()))
        return fn(data, tuple(_axis(a, data.dim()) for a in axes), keep)

    return op


def _arg(fn):
    def op(node, x):
        data = x[0]
        axis = _axis(node.attr("axis", 0), data.dim())
        if node.attr("select_last_index", 0):
            flipped = fn(data.flip(axis), axis, bool(node.attr("keepdims", 1)))
            return data.shape[axis] - 1 - flipped
        return fn(data, axis, bool(node.attr("keepdims", 1)))

    return op


# -- shape manipulation -------------------------------------------------------------------------


def _reshape(node, x):
    data, shape = x[0], ints(x[1])
    if not node.attr("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _flatten(node, x):
    data = x[0]
    axis = _axis(node.attr("axis", 1), data.dim())
    return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


def _transpose(node, x):
    perm = node.attr("perm") or list(reversed(range(x[0].dim())))
    return x[0].permute(*perm)


def _squeeze(node, x):
    data = x[0]
    axes = _axes(node, x, 1)
    if axes is None:
        return data.squeeze() if data.dim() else data
    axes = sorted(_axis(a, data.dim()) for a in axes)
    for a in axes:
        if data.shape[a] != 1:
            raise node.fail(f"cannot squeeze axis {a} of size {data.shape[a]}")
    return data.reshape([d for i, d in enumerate(data.shape) if i not in axes])


def _unsqueeze(node, x):
    data = x[0]
    axes = _axes(node, x, 1)
    rank = data.dim() + len(axes)
    shape = list(data.shape)
    for a in sorted(_axis(a, rank) for a in axes):
        shape.insert(a, 1)
    return data.reshape(shape)


def _concat(node, x):
    return torch.cat([t for t in x if t is not None], dim=node.attr("axis"))


def _split(node, x):
    data = x[0]
    axis = _axis(node.attr("axis", 0), data.dim())
    split = ints(x[1]) if len(x) > 1 and x[1] is not None else node.attr("split")
    if not split:
        count = node.attr("num_outputs") or node.n_outputs
        size = data.shape[axis]
        chunk = math.ceil(size / count)
        split = [min(chunk, size - i * chunk) for i in range(count)]
    return tuple(torch.split(data, list(split), dim=axis))


def _slice(node, x):
    data = x[0]
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = ints(x[1]), ints(x[2])
        axes = ints(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = ints(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = list(axes) if axes else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, data.dim())
        size = data.shape[axis]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
            data = data.narrow(axis, start, max(end - start, 0)) if step == 1 else data.index_select(
                axis, torch.arange(start, end, step, dtype=torch.int64, device=data.device))
        elif step < 0:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            index = torch.arange(start, end, step, dtype=torch.int64, device=data.device)
            data = data.index_select(axis, index)
        else:
            raise node.fail("Slice step 0")
    return data


def _gather(node, x):
    data, index = x
    axis = _axis(node.attr("axis", 0), data.dim())
    index = index.to(torch.int64)
    index = torch.where(index < 0, index + data.shape[axis], index)
    picked = data.index_select(axis, index.reshape(-1))
    return picked.reshape((*data.shape[:axis], *index.shape, *data.shape[axis + 1:]))


def _gather_elements(node, x):
    data, index = x
    axis = _axis(node.attr("axis", 0), data.dim())
    index = index.to(torch.int64)
    return torch.gather(data, axis, torch.where(index < 0, index + data.shape[axis], index))


def _shape(node, x):
    shape = list(x[0].shape)
    start, end = node.attr("start", 0), node.attr("end")
    return torch.tensor(shape[start:end], dtype=torch.int64)


def _size(node, x):
    return torch.tensor(x[0].numel(), dtype=torch.int64)


def _cast(node, x):
    return x[0].to(torch_dtype(node, node.attr("to")))


def _cast_like(node, x):
    return x[0].to(x[1].dtype)


def _constant_of_shape(node, x):
    value = node.attr("value")
    array = onnx.numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    fill = torch.from_numpy(array.copy())
    return fill.expand(ints(x[0])).clone() if x[0].numel() else fill.reshape(())


def _identity(node, x):
    return x[0]


def _dropout(node, x):
    if node.n_outputs > 1 and node.proto.output[1]:
        return x[0], torch.ones_like(x[0], dtype=torch.bool)
    return x[0]


def _expand(node, x):
    return x[0].expand(torch.broadcast_shapes(x[0].shape, tuple(ints(x[1]))))


def _tile(node, x):
    return x[0].repeat(ints(x[1]))


def _range(node, x):
    start, limit, delta = x
    count = max(math.ceil((limit.item() - start.item()) / delta.item()), 0)
    return start + torch.arange(count, dtype=start.dtype) * delta


def _pad(node, x):
    data = x[0]
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pads, value = list(node.attr("pads")), node.attr("value", 0.0)
    else:
        pads = ints(x[1])
        value = x[2].item() if len(x) > 2 and x[2] is not None and x[2].numel() else 0.0
        axes = ints(x[3]) if len(x) > 3 and x[3] is not None else None
        if axes is not None:
            full = [0] * (2 * data.dim())
            for i, a in enumerate(axes):
                a = _axis(a, data.dim())
                full[a], full[a + data.dim()] = pads[i], pads[i + len(axes)]
            pads = full
    if mode == "constant":
        return F.pad(data, _torch_pads(pads), value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    rank = data.dim()
    if torch_mode is None or rank not in (3, 4, 5) or any(pads[i] or pads[i + rank] for i in range(2)):
        raise node.fail(f"Pad mode '{mode}' is supported on the spatial axes of 3-D to 5-D tensors only")
    spatial = pads[2:rank] + pads[rank + 2:]
    return F.pad(data, _torch_pads(spatial), mode=torch_mode)


def _logical(fn):
    return lambda node, x: fn(x[0], x[1])


# -- Resize -------------------------------------------------------------------------------------

_COORDINATES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric")
_NEAREST = {
    "round_prefer_floor": lambda c: torch.ceil(c - 0.5),
    "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
    "floor": torch.floor,
    "ceil": torch.ceil,
}


def _source_coordinates(node, mode: str, out: int, size: int, scale: float) -> Tensor:
    """ONNX's ``x_original`` for each output index along one axis (float32, as onnxruntime)."""
    i = torch.arange(out, dtype=torch.float32)
    scale = torch.tensor(scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out > 1 else torch.zeros(out)
    if mode == "align_corners":
        return i * (size - 1) / (out - 1) if out > 1 else torch.zeros(out)
    return i / scale


def _resize(node, x):
    data = x[0]
    mode = node.attr("mode", "nearest")
    if node.opset < 11:
        coordinates, scales, sizes = "asymmetric", x[1], None
    else:
        coordinates = node.attr("coordinate_transformation_mode", "half_pixel")
        scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
        sizes = x[3] if len(x) > 3 and x[3] is not None and x[3].numel() else None
    if mode not in ("nearest", "linear"):
        raise node.fail(f"Resize mode '{mode}' is not supported (nearest and linear are)")
    if coordinates not in _COORDINATES:
        raise node.fail(f"Resize coordinate_transformation_mode '{coordinates}' is not supported ({', '.join(_COORDINATES)} are)")
    if node.attr("axes") is not None or node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise node.fail("Resize with axes or keep_aspect_ratio_policy is not supported")
    rank = data.dim()
    if sizes is not None:
        outs = ints(sizes)
        factors = [o / s for o, s in zip(outs, data.shape)]
    else:
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        outs = [int(math.floor(s * f)) for s, f in zip(data.shape, factors)]
    if node.attr("antialias", 0) and any(f < 1 for f in factors):
        raise node.fail("antialiased downsampling is not supported")
    nearest = _NEAREST[node.attr("nearest_mode", "round_prefer_floor")]
    y = data
    for axis in range(rank):
        size, out = data.shape[axis], outs[axis]
        if out == size and factors[axis] == 1.0:
            continue
        coords = _source_coordinates(node, coordinates, out, size, factors[axis])
        if mode == "nearest":
            index = nearest(coords).clamp(0, size - 1).to(torch.int64)
            y = y.index_select(axis, index)
            continue
        coords = coords.clamp(0, size - 1)
        low = torch.floor(coords).to(torch.int64)
        high = torch.clamp(low + 1, max=size - 1)
        frac = (coords - low).to(y.dtype).reshape([-1 if i == axis else 1 for i in range(rank)])
        y = y.index_select(axis, low) * (1 - frac) + y.index_select(axis, high) * frac
    return y


# -- quantization -------------------------------------------------------------------------------


def _per_axis(param: Tensor, data: Tensor, axis: int) -> Tensor:
    """A per-axis scale or zero point shaped to broadcast along ``axis`` of ``data``."""
    if param.dim() == 0 or param.numel() == 1 and data.dim() == 0:
        return param
    shape = [1] * data.dim()
    shape[_axis(axis, data.dim())] = -1
    return param.reshape(shape)


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor | None, qmin: int, qmax: int) -> Tensor:
    """Integer codes ``clamp(round(x / scale) + zp)`` as floats; straight-through gradient.

    The rounding passes the gradient through unchanged; the clamp passes none
    outside ``[qmin, qmax]`` (the usual clipped STE of QAT). Rounding is half to
    even, as in ONNX.
    """
    q = x / scale
    q = q + (torch.round(q) - q).detach()
    if zero_point is not None:
        q = q + zero_point.to(q.dtype)
    return torch.clamp(q, qmin, qmax)


def _quant_type(node, zero_point: Tensor | None) -> int:
    if zero_point is not None:
        return {v: k for k, v in TORCH_DTYPES.items()}.get(zero_point.dtype, onnx.TensorProto.FLOAT)
    return node.attr("output_dtype", 0) or onnx.TensorProto.UINT8


def _quantize_linear(node, x):
    data, scale = x[0], x[1]
    zero_point = x[2] if len(x) > 2 else None
    if node.attr("block_size", 0):
        raise node.fail("blocked quantization is not supported")
    qtype = _quant_type(node, zero_point)
    if qtype not in QUANT_RANGES:
        raise node.fail(f"quantization to {onnx.TensorProto.DataType.Name(qtype)} is not supported")
    axis = node.attr("axis", 1)
    zp = None if zero_point is None else _per_axis(zero_point, data, axis)
    return fake_quantize(data, _per_axis(scale, data, axis), zp, *QUANT_RANGES[qtype])


def _dequantize_linear(node, x):
    data, scale = x[0], x[1]
    zero_point = x[2] if len(x) > 2 else None
    if node.attr("block_size", 0):
        raise node.fail("blocked quantization is not supported")
    axis = node.attr("axis", 1)
    codes = data.to(scale.dtype)
    if zero_point is not None:
        codes = codes - _per_axis(zero_point, data, axis).to(scale.dtype)
    return codes * _per_axis(scale, data, axis)


def _dynamic_quantize_linear(node, x):
    """uint8 codes of ``x`` with a scale and zero point from its own range, which ONNX widens to
    include 0; the codes pass gradients straight through, the scale and zero point are data."""
    data = x[0]
    with torch.no_grad():
        lo = torch.clamp(data.min(), max=0.0)
        scale = (torch.clamp(data.max(), min=0.0) - lo) / 255.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all zeros: codes = zero point = 0
        zero_point = torch.clamp(torch.round(-lo / safe), 0, 255)
    return fake_quantize(data, safe, zero_point, 0, 255), scale, zero_point


def _matmul_integer(node, x):
    """``(A - a_zero_point) @ (B - b_zero_point)``, exact in float64 like onnxruntime's int32, as float32."""
    a_zp = x[2] if len(x) > 2 else None
    b_zp = x[3] if len(x) > 3 else None
    a = x[0].to(torch.float64)
    b = x[1].to(torch.float64)
    if a_zp is not None:
        a_zp = a_zp.to(torch.float64)
        a = a - (a_zp.unsqueeze(-1) if a_zp.dim() == 1 and a_zp.numel() > 1 else a_zp)  # per row of A
    if b_zp is not None:
        b = b - b_zp.to(torch.float64)  # per column of B
    return torch.matmul(a, b).to(torch.float32)


# -- the registry -------------------------------------------------------------------------------

Op = Callable[[Node, list], "Tensor | tuple"]

OPS: dict[str, Op] = {
    # elementwise arithmetic
    "Add": lambda node, x: x[0] + x[1],
    "Sub": lambda node, x: x[0] - x[1],
    "Mul": lambda node, x: x[0] * x[1],
    "Div": _div,
    "Pow": _pow,
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),
    "Sign": _unary(torch.sign),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Min": _variadic(torch.minimum),
    "Max": _variadic(torch.maximum),
    "Sum": _variadic(torch.add),
    "Mean": _mean,
    # activations
    "Relu": _unary(torch.relu),
    "LeakyRelu": _leaky_relu,
    "PRelu": _prelu,
    "Elu": _elu,
    "Clip": _clip,
    "Sigmoid": _unary(torch.sigmoid),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Gelu": _gelu,
    "Softplus": _unary(F.softplus),
    "Softmax": _softmax_like(torch.softmax),
    "LogSoftmax": _softmax_like(torch.log_softmax),
    # linear algebra
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Einsum": _einsum,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    # pooling and normalization
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    "AveragePool": _average_pool,
    "MaxPool": _max_pool,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "InstanceNormalization": _instance_norm,
    # reductions (axes: attribute before, input from the opset given)
    "ReduceMean": _reduce(lambda t, a, k: t.mean(dim=a, keepdim=k), 18),
    "ReduceSum": _reduce(lambda t, a, k: t.sum(dim=a, keepdim=k), 13),
    "ReduceMax": _reduce(lambda t, a, k: t.amax(dim=a, keepdim=k), 18),
    "ReduceMin": _reduce(lambda t, a, k: t.amin(dim=a, keepdim=k), 18),
    "ReduceProd": _reduce(lambda t, a, k: _prod(t, a, k), 18),
    "ReduceL2": _reduce(lambda t, a, k: torch.sqrt((t * t).sum(dim=a, keepdim=k)), 18),
    "ReduceSumSquare": _reduce(lambda t, a, k: (t * t).sum(dim=a, keepdim=k), 18),
    "ArgMax": _arg(lambda t, a, k: torch.argmax(t, a, k)),
    "ArgMin": _arg(lambda t, a, k: torch.argmin(t, a, k)),
    # shapes and indexing
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "Shape": _shape,
    "Size": _size,
    "Cast": _cast,
    "CastLike": _cast_like,
    "ConstantOfShape": _constant_of_shape,
    "Identity": _identity,
    "Dropout": _dropout,
    "Expand": _expand,
    "Tile": _tile,
    "Range": _range,
    "Pad": _pad,
    "Resize": _resize,
    # comparison and logic
    "Where": _where,
    "Equal": _compare(torch.eq),
    "Less": _compare(torch.lt),
    "LessOrEqual": _compare(torch.le),
    "Greater": _compare(torch.gt),
    "GreaterOrEqual": _compare(torch.ge),
    "Not": _unary(torch.logical_not),
    "And": _logical(torch.logical_and),
    "Or": _logical(torch.logical_or),
    "Xor": _logical(torch.logical_xor),
    # quantization (fake, with a straight-through estimator)
    "QuantizeLinear": _quantize_linear,
    "DynamicQuantizeLinear": _dynamic_quantize_linear,
    "MatMulInteger": _matmul_integer,
    "DequantizeLinear": _dequantize_linear,
}


def _prod(t: Tensor, axes: tuple[int, ...], keep: bool) -> Tensor:
    for a in sorted(axes, reverse=True):
        t = t.prod(dim=a, keepdim=keep)
    return t
