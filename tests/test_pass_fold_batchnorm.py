"""BatchNormalization folding.

Outputs are compared in onnxruntime (optimizations off) at atol 1e-5 on
outputs of magnitude ~1-10: folding only reorders float32 arithmetic
(computed in float64, rounded once).
"""

import numpy as np
import pytest
from onnx import helper

import builders
from builders import bn_params, tensor, value

ATOL = 1e-5


def _bn_after(layer_nodes, inits, x_shape, y_shape, channels, seed=0, layer_out="c"):
    rng = np.random.default_rng(seed + 100)
    nodes = list(layer_nodes) + [
        helper.make_node("BatchNormalization", [layer_out, "g", "b", "m", "v"], ["y"], name="bn", epsilon=1e-4)
    ]
    g, b, m, v = (np.asarray(builders.numpy_helper.to_array(t)) for t in bn_params(rng, channels, "p"))
    inits = list(inits) + [tensor("g", g), tensor("b", b), tensor("m", m), tensor("v", v)]
    return builders.model(nodes, [value("x", x_shape)], [value("y", y_shape)], inits)


def _check_folded(m, into):
    out, step = builders.apply_pass("fold-batchnorm", m)
    assert "BatchNormalization" not in builders.ops(out)
    assert step.modified and step.summary.get(f"into_{into}") == 1
    builders.assert_same_outputs(m, out, builders.feed_for(m, seed=5), atol=ATOL)
    again, step2 = builders.apply_pass("fold-batchnorm", out)
    assert not step2.modified, "second run must report no change"
    return out


@pytest.mark.parametrize("bias", [True, False])
def test_conv(bias):
    _check_folded(builders.conv_bn_relu(seed=1, bias=bias), "Conv")


def test_grouped_and_depthwise_conv():
    _check_folded(builders.conv_bn_relu(seed=2, group=2), "Conv")
    _check_folded(builders.conv_bn_relu(seed=3, channels=4, group=4), "Conv")


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_with_group(group):
    rng = np.random.default_rng(4)
    c_in, c_out = 4, 6
    w = rng.normal(0, 0.3, (c_in, c_out // group, 3, 3)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "bias"], ["c"], name="deconv", group=group, strides=[2, 2])
    m = _bn_after([node], [tensor("w", w), tensor("bias", rng.normal(0, 0.1, c_out).astype(np.float32))], ["N", c_in, 5, 5], ["N", c_out, 11, 11], c_out)
    _check_folded(m, "ConvTranspose")


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm(trans_b, with_c):
    rng = np.random.default_rng(5)
    k, n = 6, 5
    w = rng.normal(0, 0.5, (n, k) if trans_b else (k, n)).astype(np.float32)
    inputs = ["x", "w"] + (["c0"] if with_c else [])
    inits = [tensor("w", w)] + ([tensor("c0", rng.normal(0, 0.5, n).astype(np.float32))] if with_c else [])
    node = helper.make_node("Gemm", inputs, ["c"], name="fc", transB=trans_b, alpha=0.7, beta=1.3)
    _check_folded(_bn_after([node], inits, ["N", k], ["N", n], n), "Gemm")


@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_2d(with_bias):
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm")]
    inits = [tensor("w", rng.normal(0, 0.5, (6, 4)).astype(np.float32))]
    out = "mm"
    if with_bias:
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["c"], name="add"))
        inits.append(tensor("bias", rng.normal(0, 0.5, 4).astype(np.float32)))
        out = "c"
    _check_folded(_bn_after(nodes, inits, [3, 6], [3, 4], 4, layer_out=out), "MatMul")


def test_matmul_3d_is_not_folded():
    """BN's channel axis is 1; for a rank-3 MatMul output that is not the weight's axis."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["c"], name="mm")]
    m = _bn_after(nodes, [tensor("w", rng.normal(0, 0.5, (6, 4)).astype(np.float32))], [2, 4, 6], [2, 4, 4], 4)
    out, step = builders.apply_pass("fold-batchnorm", m)
    assert not step.modified and "BatchNormalization" in builders.ops(out)


def test_shared_weight_is_not_rewritten():
    m = builders.conv_bn_relu(seed=8)
    # A second Conv reads the same weight: rewriting it would change that Conv.
    m.graph.node.append(helper.make_node("Conv", ["x", "w"], ["z"], name="other", pads=[1, 1, 1, 1]))
    m.graph.output.append(value("z", ["N", 8, 8, 8]))
    out, step = builders.apply_pass("fold-batchnorm", m)
    assert not step.modified
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=0)


def test_layer_output_read_elsewhere_is_not_folded():
    m = builders.conv_bn_relu(seed=9)
    m.graph.output.append(value("c", ["N", 8, 8, 8]))
    out, step = builders.apply_pass("fold-batchnorm", m)
    assert not step.modified and "BatchNormalization" in builders.ops(out)


def test_parameters_fed_as_graph_inputs_are_not_folded():
    m = builders.conv_bn_relu(seed=10)
    mean = next(t for t in m.graph.initializer if t.name == "bn_mean")
    m.graph.initializer.remove(mean)
    m.graph.input.append(value("bn_mean", [8]))
    out, step = builders.apply_pass("fold-batchnorm", m)
    assert not step.modified and "BatchNormalization" in builders.ops(out)
