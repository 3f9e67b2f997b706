"""Per-channel Add/Sub/Mul/Div folding into the preceding layer.

Outputs compared at atol 1e-5: folding rounds the merged weights once in float32.
"""

import numpy as np
import pytest
from onnx import helper

import builders
from builders import tensor, value


def _conv_then(op, const, const_first=False):
    rng = np.random.default_rng(1)
    inits = [tensor("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32)), tensor("b", rng.normal(size=4).astype(np.float32)), tensor("k", const)]
    operands = ["k", "c"] if const_first else ["c", "k"]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node(op, operands, ["y"])]
    return builders.model(nodes, [value("x", ["N", 3, 5, 5])], [value("y", ["N", 4, 5, 5])], inits)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("shape", [(1, 4, 1, 1), (4, 1, 1), ()])
def test_per_channel_affine_folds_into_conv(op, shape):
    const = np.random.default_rng(2).uniform(0.5, 1.5, shape).astype(np.float32)
    m = _conv_then(op, const)
    out, step = builders.apply_pass("fold-channel-affine", m)
    assert builders.ops(out) == ["Conv"] and step.modified
    # One float32 rounding of the folded weights: 1e-5 on outputs of magnitude ~3.
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=1e-5)


def test_constant_first_sub_is_not_affine_per_channel_fold():
    m = _conv_then("Sub", np.ones((1, 4, 1, 1), np.float32), const_first=True)
    out, step = builders.apply_pass("fold-channel-affine", m)
    assert not step.modified and builders.ops(out) == ["Conv", "Sub"]


def test_spatially_varying_constant_is_not_folded():
    m = _conv_then("Add", np.ones((1, 4, 5, 5), np.float32))
    out, step = builders.apply_pass("fold-channel-affine", m)
    assert not step.modified


def test_matmul_bias_add_is_left_as_is():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    m = builders.model(nodes, [value("x", [2, 3])], [value("y", [2, 4])], [tensor("w", rng.normal(size=(3, 4)).astype(np.float32)), tensor("b", np.ones(4, np.float32))])
    out, step = builders.apply_pass("fold-channel-affine", m)
    assert not step.modified and builders.ops(out) == ["MatMul", "Add"]
