"""Structured pruning of each graph construct the dependency analysis handles.

Every model gives the channels to be pruned zero weights and biases (their
producing rows, their consuming columns), so the L2 criterion picks exactly
them and removing them must leave the outputs unchanged. Outputs are compared
in onnxruntime with optimizations disabled; the bound 1e-5 (abs and rel) only
absorbs the changed summation order of the smaller layers.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders
from onnxcomp.context import PassContext
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.registry import create_pass

TOL = 1e-5


class Net:
    """A tiny model under construction: seeded weights with chosen channels zeroed."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value) -> str:
        self.inits.append(builders.tensor(name, np.asarray(value)))
        return name

    def node(self, op: str, inputs, outputs, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=outputs[0], **attrs))
        return outputs[0]

    def conv(self, name, x, cin, cout, k=1, group=1, zero_out=(), zero_in=(), bias=True) -> str:
        w = self.rng.normal(0, 0.5, (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.5, cout).astype(np.float32)
        w[list(zero_out)] = 0
        b[list(zero_out)] = 0
        per_out = cout // group
        for c in zero_in:  # input channel c lives in group c // (cin/group) at local index c % (cin/group)
            g, local = divmod(c, cin // group)
            w[g * per_out:(g + 1) * per_out, local] = 0
        inputs = [x, self.const(f"{name}_w", w)] + ([self.const(f"{name}_b", b)] if bias else [])
        return self.node("Conv", inputs, [name], pads=[k // 2] * 4, group=group)

    def matmul(self, name, x, k, n, zero_out=(), zero_in=()) -> str:
        w = self.rng.normal(0, 0.5, (k, n)).astype(np.float32)
        b = self.rng.normal(0, 0.5, n).astype(np.float32)
        w[:, list(zero_out)] = 0
        b[list(zero_out)] = 0
        w[list(zero_in)] = 0
        y = self.node("MatMul", [x, self.const(f"{name}_w", w)], [f"{name}_mm"])
        return self.node("Add", [y, self.const(f"{name}_b", b)], [name])

    def model(self, inputs, outputs) -> onnx.ModelProto:
        return builders.model(self.nodes, inputs, outputs, self.inits)


def prune(model: onnx.ModelProto, **options):
    """Run prune-channels alone (L2, exact ratios) with checker and ORT checks after it."""
    options = {"criterion": "l2", "round_to": 1, **options}
    manager = PassManager([create_pass("prune-channels", options)], checks=(Check.CHECKER, Check.ORT))
    ctx = PassContext(template=model)
    result = manager.run(model, ctx)
    return result.model, result.steps[0], ctx.artifacts.get("prune-channels", {})


def weight(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(init[node.input[index]])


def attribute(model: onnx.ModelProto, node_name: str, name: str):
    node = next(n for n in model.graph.node if n.name == node_name)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def assert_unchanged(original, pruned, seed=1):
    builders.assert_same_outputs(original, pruned, builders.feed_for(original, seed=seed, batch=1), atol=TOL, rtol=TOL)


def test_residual_add_couples_both_branches():
    net = Net()
    zero = [1, 4, 6]
    a = net.node("Relu", [net.conv("convA", "x", 4, 8, k=3, zero_out=zero)], ["a"])
    b = net.conv("convB", a, 8, 8, k=3, zero_out=zero, zero_in=zero)
    s = net.node("Relu", [net.node("Add", [a, b], ["s_sum"])], ["s"])
    net.conv("y", s, 8, 5, zero_in=zero)
    m = net.model([builders.value("x", [1, 4, 6, 6])], [builders.value("y", [1, 5, 6, 6])])
    out, step, artifacts = prune(m, ratio=3 / 8)
    assert step.modified and step.summary["units_removed"] == 3
    assert weight(out, "convA").shape == (5, 4, 3, 3)
    assert weight(out, "convB").shape == (5, 5, 3, 3)
    assert weight(out, "y").shape == (5, 5, 1, 1)
    residual = next(g for g in artifacts["groups"] if "convB" in g["layers"])
    assert set(residual["layers"]) == {"convA", "convB"} and residual["units"] == 8
    assert_unchanged(m, out)


def test_concat_and_slice_offsets_follow_removed_channels():
    net = Net(1)
    a = net.node("Relu", [net.conv("convA", "x", 3, 4, zero_out=[1])], ["a"])
    b = net.node("Relu", [net.conv("convB", "x", 3, 6, zero_out=[0, 4])], ["b"])
    c = net.node("Concat", [a, b], ["c"], axis=1)
    net.conv("y1", c, 10, 3, zero_in=[1, 4, 8])
    d = net.node(
        "Slice",
        [c, net.const("starts", np.array([2])), net.const("ends", np.array([7])), net.const("axes", np.array([1]))],
        ["d"],
    )
    net.conv("y2", d, 5, 2, zero_in=[2])  # d holds A2, A3, B0, B1, B2: B0 is zero
    m = net.model([builders.value("x", [1, 3, 4, 4])], [builders.value("y1", [1, 3, 4, 4]), builders.value("y2", [1, 2, 4, 4])])
    out, step, _ = prune(m, ratio=0.25)
    assert step.summary["units_removed"] == 3
    assert weight(out, "y1").shape == (3, 7, 1, 1)
    assert weight(out, "y2").shape == (2, 4, 1, 1)
    assert weight(out, "d", 1).tolist() == [1] and weight(out, "d", 2).tolist() == [5]
    assert_unchanged(m, out)


def test_depthwise_conv_passes_channels_and_updates_group():
    net = Net(2)
    zero = [2, 5]
    h = net.node("Relu", [net.conv("conv1", "x", 3, 8, zero_out=zero)], ["h"])
    d = net.node("Relu", [net.conv("dw", h, 8, 8, k=3, group=8, zero_out=zero)], ["d"])
    net.conv("y", d, 8, 4, zero_in=zero)
    m = net.model([builders.value("x", [1, 3, 5, 5])], [builders.value("y", [1, 4, 5, 5])])
    out, step, artifacts = prune(m, ratio=0.25)
    assert step.modified
    assert weight(out, "dw").shape == (6, 1, 3, 3) and attribute(out, "dw", "group") == 6
    assert len(artifacts["groups"][0]["layers"]) == 1  # the depthwise conv creates no channels of its own
    assert_unchanged(m, out)


def test_grouped_conv_removes_equally_in_every_group():
    net = Net(3)
    h = net.node("Relu", [net.conv("conv1", "x", 4, 8, zero_out=[1, 6])], ["h"])
    g = net.node("Relu", [net.conv("gconv", h, 8, 8, k=3, group=2, zero_out=[2, 5], zero_in=[1, 6])], ["g"])
    net.conv("y", g, 8, 3, zero_in=[2, 5])
    m = net.model([builders.value("x", [1, 4, 5, 5])], [builders.value("y", [1, 3, 5, 5])])
    out, step, _ = prune(m, ratio=0.25)
    assert step.summary["units_removed"] == 4
    assert weight(out, "gconv").shape == (6, 3, 3, 3) and attribute(out, "gconv", "group") == 2
    assert_unchanged(m, out)


def test_channel_shuffle_prunes_whole_columns_and_rewrites_both_reshapes():
    # ShuffleNet's shuffle: [1,8] -> [1,2,4] -> transpose -> [1,8]. Pre-shuffle channel i*4+j lands at
    # j*2+i, and both rows i must keep the same j for the second reshape to interleave them again, so
    # a unit is a column j (channels j and 4+j). Column 1 (channels 1, 5 -> 2, 3 after) is zero.
    net = Net(11)
    a = net.node("Relu", [net.conv("convA", "x", 4, 8, zero_out=[1, 5])], ["a"])
    r = net.node("Reshape", [a, net.const("split", np.array([1, 2, 4, 6, 6]))], ["r"])
    t = net.node("Transpose", [r], ["t"], perm=[0, 2, 1, 3, 4])
    s = net.node("Reshape", [t, net.const("merge", np.array([1, 8, 6, 6]))], ["s"])
    net.conv("y", s, 8, 3, zero_in=[2, 3])
    m = net.model([builders.value("x", [1, 4, 6, 6])], [builders.value("y", [1, 3, 6, 6])])
    out, step, artifacts = prune(m, ratio=0.25)
    assert step.summary["units_prunable"] == 4 and step.summary["units_removed"] == 1
    assert weight(out, "convA").shape == (6, 4, 1, 1) and weight(out, "y").shape == (3, 6, 1, 1)
    assert weight(out, "r", 1).tolist() == [1, 2, 3, 6, 6] and weight(out, "s", 1).tolist() == [1, 6, 6, 6]
    assert_unchanged(m, out)


def test_shufflenet_unit_prunes_columns_evenly_across_both_grouped_convs():
    # ShuffleNet v1: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1 conv (2 groups each).
    # A column j (channels j, 4+j) loses one channel in every group of gconvA; after the shuffle it is
    # channels 2j, 2j+1, inside group j // 2 of gconvB, so one column must go from each half of j.
    # Columns 1 and 3 are zero.
    net = Net(12)
    a = net.node("Relu", [net.conv("gconvA", "x", 8, 8, group=2, zero_out=[1, 5, 3, 7])], ["a"])
    r = net.node("Reshape", [a, net.const("split", np.array([1, 2, 4, 6, 6]))], ["r"])
    t = net.node("Transpose", [r], ["t"], perm=[0, 2, 1, 3, 4])
    s = net.node("Reshape", [t, net.const("merge", np.array([1, 8, 6, 6]))], ["s"])
    d = net.conv("dw", s, 8, 8, k=3, group=8, zero_out=[2, 3, 6, 7])
    net.conv("gconvB", d, 8, 4, group=2, zero_in=[2, 3, 6, 7])
    m = net.model([builders.value("x", [1, 8, 6, 6])], [builders.value("gconvB", [1, 4, 6, 6])])
    out, step, artifacts = prune(m, ratio=0.5)
    assert step.summary["units_prunable"] == 4 and step.summary["units_removed"] == 2
    assert weight(out, "gconvA").shape == (4, 4, 1, 1) and attribute(out, "gconvA", "group") == 2
    assert weight(out, "dw").shape == (4, 1, 3, 3) and attribute(out, "dw", "group") == 4
    assert weight(out, "gconvB").shape == (4, 2, 1, 1) and attribute(out, "gconvB", "group") == 2
    assert_unchanged(m, out)


def test_se_block_gate_is_coupled_with_the_gated_channels():
    net = Net(4)
    zero = [0, 3]
    a = net.node("Relu", [net.conv("conv1", "x", 3, 8, zero_out=zero)], ["a"])
    p = net.node("GlobalAveragePool", [a], ["p"])
    r = net.node("Relu", [net.conv("se1", p, 8, 4, zero_in=zero)], ["r"])
    s = net.node("Sigmoid", [net.conv("se2", r, 4, 8, zero_out=zero)], ["s"])
    gated = net.node("Mul", [a, s], ["gated"])
    net.conv("y", gated, 8, 3, zero_in=zero)
    m = net.model([builders.value("x", [1, 3, 4, 4])], [builders.value("y", [1, 3, 4, 4])])
    out, step, artifacts = prune(m, ratio=0.25, layer_ratios={"se1": 0.0})
    assert step.modified
    gated_group = next(g for g in artifacts["groups"] if "conv1" in g["layers"])
    assert set(gated_group["layers"]) == {"conv1", "se2"}
    assert weight(out, "se2").shape == (6, 4, 1, 1) and weight(out, "se1").shape == (4, 6, 1, 1)
    assert_unchanged(m, out)


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_into_gemm_removes_feature_blocks(flatten):
    net = Net(5)
    r = net.node("Relu", [net.conv("conv", "x", 2, 4, k=3, zero_out=[2])], ["r"])
    if flatten == "Flatten":
        f = net.node("Flatten", [r], ["f"], axis=1)
    else:
        f = net.node("Reshape", [r, net.const("target", np.array([1, 36]))], ["f"])
    w = net.rng.normal(0, 0.5, (5, 36)).astype(np.float32)
    w[:, 18:27] = 0
    net.node("Gemm", [f, net.const("fc_w", w), net.const("fc_b", np.ones(5, np.float32))], ["y"], transB=1)
    m = net.model([builders.value("x", [1, 2, 3, 3])], [builders.value("y", [1, 5])])
    out, step, _ = prune(m, ratio=0.25)
    assert step.modified
    assert weight(out, "y").shape == (5, 27)
    if flatten == "Reshape":
        assert weight(out, "f", 1).tolist() == [1, 27]
    assert_unchanged(m, out)


def test_matmul_chain_prunes_hidden_units():
    net = Net(6)
    h1 = net.node("Relu", [net.matmul("fc1", "x", 6, 8, zero_out=[2, 7])], ["h1"])
    h2 = net.node("Relu", [net.matmul("fc2", h1, 8, 8, zero_out=[0, 5], zero_in=[2, 7])], ["h2"])
    net.matmul("y", h2, 8, 4, zero_in=[0, 5])
    m = net.model([builders.value("x", [1, 3, 6])], [builders.value("y", [1, 3, 4])])
    out, step, _ = prune(m, ratio=0.25)
    assert step.summary["units_removed"] == 4
    assert weight(out, "fc1_mm").shape == (6, 6) and weight(out, "fc2_mm").shape == (6, 6)
    assert weight(out, "y_mm").shape == (6, 4) and weight(out, "fc1", 1).shape == (6,)
    assert_unchanged(m, out)


def attention(seed=7, zero_head=True) -> onnx.ModelProto:
    """x[1,5,8] -> 2-head self-attention (head dim 4) -> output projection [1,5,6]."""
    net = Net(seed)
    head = list(range(4, 8)) if zero_head else []
    q, k, v = (net.matmul(n, "x", 8, 8, zero_out=head) for n in ("q", "k", "v"))
    split = net.const("split_shape", np.array([0, 0, 2, 4]))
    qh, kh, vh = (net.node("Reshape", [t, split], [f"{t}_heads"]) for t in (q, k, v))
    qt = net.node("Transpose", [qh], ["qt"], perm=[0, 2, 1, 3])
    kt = net.node("Transpose", [kh], ["kt"], perm=[0, 2, 3, 1])
    vt = net.node("Transpose", [vh], ["vt"], perm=[0, 2, 1, 3])
    scores = net.node("Div", [net.node("MatMul", [qt, kt], ["qk"]), net.const("scale", np.float32(2.0))], ["scores"])
    probs = net.node("Softmax", [scores], ["probs"], axis=-1)
    ctx = net.node("Transpose", [net.node("MatMul", [probs, vt], ["pv"])], ["ctx_t"], perm=[0, 2, 1, 3])
    merged = net.node("Reshape", [ctx, net.const("merge_shape", np.array([0, 0, 8]))], ["merged"])
    net.matmul("y", merged, 8, 6, zero_in=head)
    return net.model([builders.value("x", [1, 5, 8])], [builders.value("y", [1, 5, 6])])


def test_attention_heads_are_pruned_whole():
    m = attention()
    out, step, artifacts = prune(m, ratio=0.5)
    assert step.modified
    heads = next(g for g in artifacts["groups"] if "q_mm" in g["layers"])
    assert set(heads["layers"]) == {"q_mm", "k_mm", "v_mm"} and heads["units"] == 2
    for name in ("q_mm", "k_mm", "v_mm"):
        assert weight(out, name).shape == (8, 4)
    assert weight(out, "y_mm").shape == (4, 6)
    assert weight(out, "q_heads", 1).tolist() == [0, 0, 1, 4]
    assert weight(out, "merged", 1).tolist() == [0, 0, 4]
    assert_unchanged(m, out)


def test_unknown_op_freezes_its_channels_and_reports_why():
    net = Net(8)
    h = net.node("Relu", [net.conv("conv0", "x", 3, 8, zero_out=[3, 4])], ["h"])
    g = net.node("Relu", [net.conv("conv1", h, 8, 8, zero_in=[3, 4])], ["g"])
    n = net.node("LRN", [g], ["n"], size=3)
    net.conv("y", n, 8, 2)
    m = net.model([builders.value("x", [1, 3, 4, 4])], [builders.value("y", [1, 2, 4, 4])])
    out, step, artifacts = prune(m, ratio=0.25)
    assert step.modified and step.summary["units_removed"] == 2
    frozen = {f["group"]: f["reasons"] for f in artifacts["frozen"]}
    assert any("LRN 'n'" in r for r in frozen["conv1"])
    assert any("graph output 'y'" in r for r in frozen["y"])
    assert weight(out, "conv1").shape == (8, 6, 1, 1) and weight(out, "y").shape == (2, 8, 1, 1)
    assert_unchanged(m, out)


def test_channel_count_read_at_run_time_is_frozen():
    net = Net(9)
    h = net.node("Relu", [net.conv("conv0", "x", 3, 8)], ["h"])
    shape = net.node("Shape", [h], ["shape"])
    count = net.node("Gather", [shape, net.const("one", np.array(1))], ["count"])
    scale = net.node("Cast", [count], ["scale"], to=onnx.TensorProto.FLOAT)
    d = net.node("Div", [h, scale], ["d"])
    net.conv("y", d, 8, 2)
    m = net.model([builders.value("x", [1, 3, 4, 4])], [builders.value("y", [1, 2, 4, 4])])
    _, step, artifacts = prune(m, ratio=0.5)
    assert not step.modified
    assert any("reads the channel count at run time" in r for r in artifacts["frozen"][0]["reasons"])


def test_nothing_to_remove_reports_unmodified():
    m = builders.resnet_block(seed=3)
    out, step, _ = prune(m, ratio=0.0)
    assert not step.modified and step.summary["units_removed"] == 0
    assert_unchanged(m, out)


def test_batchnorm_parameters_follow_and_bn_scale_criterion_picks_zero_gammas():
    net = Net(10)
    zero = [1, 5]
    c = net.conv("conv1", "x", 3, 8, k=3)
    gamma = net.rng.uniform(0.5, 1.5, 8).astype(np.float32)
    beta = net.rng.normal(0, 0.5, 8).astype(np.float32)
    gamma[zero] = 0
    beta[zero] = 0
    params = [net.const("gamma", gamma), net.const("beta", beta), net.const("mean", np.zeros(8, np.float32)), net.const("var", np.ones(8, np.float32))]
    n = net.node("BatchNormalization", [c, *params], ["bn"])
    r = net.node("Relu", [n], ["r"])
    net.conv("y", r, 8, 2)
    m = net.model([builders.value("x", [1, 3, 5, 5])], [builders.value("y", [1, 2, 5, 5])])
    out, step, _ = prune(m, ratio=0.25, criterion="bn-scale")
    assert step.modified and step.summary["criterion"] == "bn-scale"
    assert weight(out, "bn", 1).shape == (6,) and weight(out, "bn", 4).shape == (6,)
    assert weight(out, "conv1").shape == (6, 3, 3, 3)
    assert_unchanged(m, out)
