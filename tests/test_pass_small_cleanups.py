"""Dead-code elimination, shape inference, pad folding and per-channel affine folding."""

import numpy as np
import pytest
from onnx import helper

import builders
from builders import tensor, value


def test_dead_branch_removed_unused_input_kept():
    nodes = [
        helper.make_node("Relu", ["x"], ["y"]),
        helper.make_node("Neg", ["x"], ["dead"]),
        helper.make_node("Exp", ["dead"], ["dead2"]),
    ]
    m = builders.model(nodes, [value("x", [3]), value("unused", [2])], [value("y", [3])], [tensor("w_unused", np.ones(4, np.float32))])
    out, step = builders.apply_pass("eliminate-dead-code", m)
    assert builders.ops(out) == ["Relu"]
    assert [i.name for i in out.graph.input] == ["x", "unused"], "graph inputs are the model's interface"
    assert not out.graph.initializer
    assert step.modified and step.summary["nodes_removed"] == 2
    _, again = builders.apply_pass("eliminate-dead-code", out)
    assert not again.modified


def test_infer_shapes_annotates_then_reports_no_change():
    m = builders.conv_bn_relu()
    out, step = builders.apply_pass("infer-shapes", m)
    assert step.modified and step.summary["tensors_annotated"] >= 2
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim] for vi in out.graph.value_info}
    assert shapes["c"] == ["N", 8, 8, 8]
    _, again = builders.apply_pass("infer-shapes", out)
    assert not again.modified


def _pad_conv(pads, mode="constant", fill=None, conv_pads=(0, 0, 0, 0)):
    rng = np.random.default_rng(0)
    inputs = ["x", "pads"] + (["fill"] if fill is not None else [])
    inits = [tensor("pads", np.asarray(pads, np.int64)), tensor("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32))]
    if fill is not None:
        inits.append(tensor("fill", np.float32(fill)))
    nodes = [
        helper.make_node("Pad", inputs, ["p"], mode=mode),
        helper.make_node("Conv", ["p", "w"], ["y"], pads=list(conv_pads)),
    ]
    return builders.model(nodes, [value("x", ["N", 3, 8, 8])], [value("y", ["N", 4, None, None])], inits)


def test_zero_pad_folds_into_conv():
    m = _pad_conv([0, 0, 1, 2, 0, 0, 2, 1], conv_pads=(1, 1, 1, 1))
    out, step = builders.apply_pass("fold-pad", m)
    assert builders.ops(out) == ["Conv"] and step.summary["pads_folded"] == 1
    conv = out.graph.node[0]
    assert list(next(a.ints for a in conv.attribute if a.name == "pads")) == [2, 3, 3, 2]
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], fill=1.0), dict(pads=[0, 1, 1, 1, 0, 0, 1, 1])],
    ids=["reflect", "nonzero-fill", "channel-pad"],
)
def test_pad_not_folded_when_semantics_differ(kwargs):
    m = _pad_conv(**kwargs)
    if kwargs["pads"][1]:  # channel padding changes the conv's input channels: make the weight fit
        w = next(t for t in m.graph.initializer if t.name == "w")
        w.CopyFrom(tensor("w", np.ones((4, 4, 3, 3), np.float32)))
    out, step = builders.apply_pass("fold-pad", m)
    assert "Pad" in builders.ops(out) and not step.modified


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
