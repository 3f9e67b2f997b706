"""Parameter and MAC counting against hand counts."""

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
import onnxcomp
from builders import tensor, value
from onnxcomp.analysis import model_stats


def test_resnet_block_macs_match_hand_count():
    stats = model_stats(builders.resnet_block())
    # conv0: out 8x16x16, each 3 in-ch x 3x3 -> 8*256*27; conv1, conv2: 8*256*(8*9) each; fc: 8 -> 10.
    hand = 8 * 256 * 27 + 2 * 8 * 256 * 72 + 8 * 10
    assert stats.macs == hand == 350_288
    by_node = {layer.node: layer.macs for layer in stats.layer_macs}
    assert by_node == {"conv0": 55_296, "conv1": 147_456, "conv2": 147_456, "fc": 80}
    assert stats.assumed_dims == {"x[0]": 1}


def test_batch_scales_macs():
    stats = model_stats(builders.resnet_block(), input_shapes={"x": (4, 3, 16, 16)})
    assert stats.macs == 4 * 350_288 and stats.assumed_dims == {}


def test_params_exclude_int64_and_count_all_weights():
    stats = model_stats(builders.resnet_block())
    # 3 conv weights, fc weight and bias, 3 batch norms of 4 vectors of 8
    assert stats.params == 8 * 27 + 2 * 8 * 72 + 80 + 10 + 3 * 4 * 8
    assert stats.weight_bytes == stats.params * 4


def test_scales_and_zero_points_are_not_parameters():
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
        helper.make_node("MatMul", ["xd", "w"], ["m"]),
        helper.make_node("Add", ["m", "ws"], ["y"]),  # a scale also used as data stays a parameter
    ]
    inits = [
        tensor("xs", np.float32(0.02)), tensor("xz", np.int8(0)),
        tensor("wq", rng.integers(-127, 127, (4, 8)).astype(np.int8)),
        tensor("ws", np.full(8, 0.01, np.float32)), tensor("wz", np.zeros(8, np.int8)),
    ]  # fmt: skip
    model = builders.model(nodes, [value("x", [1, 4])], [value("y", [1, 8])], inits)
    stats = model_stats(model)
    assert stats.params == 4 * 8 + 8
    assert stats.weight_bytes == 4 + 1 + 32 + 32 + 8


def test_conv_transpose_grouped_conv_and_batched_matmul():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("ConvTranspose", ["x", "wt"], ["t"], name="deconv", strides=[2, 2]),  # 4->6 ch, 5x5 -> 11x11
        helper.make_node("Conv", ["t", "wg"], ["g"], name="grouped", group=3),  # 6->6 ch, groups of 2, 1x1
        helper.make_node("Reshape", ["g", "shape"], ["r"], name="reshape"),  # [1, 6, 121]
        helper.make_node("MatMul", ["r", "wm"], ["y"], name="mm"),  # [1,6,121] x [121,5]
    ]
    inits = [
        tensor("wt", rng.normal(size=(4, 6, 3, 3)).astype(np.float32)),
        tensor("wg", rng.normal(size=(6, 2, 1, 1)).astype(np.float32)),
        tensor("shape", np.array([1, 6, 121], np.int64)),
        tensor("wm", rng.normal(size=(121, 5)).astype(np.float32)),
    ]
    m = builders.model(nodes, [value("x", [1, 4, 5, 5])], [value("y", [1, 6, 5])], inits)
    by_node = {layer.node: layer.macs for layer in model_stats(m).layer_macs}
    assert by_node["deconv"] == 4 * 25 * 6 * 9  # input elements x C_out/group x kernel
    assert by_node["grouped"] == 6 * 121 * 2  # output elements x C_in/group
    assert by_node["mm"] == 6 * 5 * 121


def test_dynamic_spatial_dims_leave_macs_unknown_and_say_so():
    m = builders.conv_bn_relu()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    stats = model_stats(m)
    assert stats.macs is None and stats.unresolved_layers == ["conv"]
    stats = model_stats(m, input_shapes={"x": (1, 4, 10, 8)})
    assert stats.macs == 8 * 10 * 8 * 4 * 9


@pytest.mark.parametrize("seed", [0])
def test_shapes_resolved_by_running_when_inference_cannot(seed):
    """A data-dependent Reshape (shape computed by NonZero) defeats inference; one run resolves it."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("NonZero", ["ones"], ["nz"]),
        helper.make_node("Shape", ["nz"], ["s"]),
        helper.make_node("Slice", ["s", "one", "two"], ["count"]),
        helper.make_node("Concat", ["minus1", "count"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
    ]
    inits = [
        tensor("ones", np.ones(6, np.float32)),
        tensor("one", np.array([1], np.int64)),
        tensor("two", np.array([2], np.int64)),
        tensor("minus1", np.array([-1], np.int64)),
        tensor("w", rng.normal(size=(6, 3)).astype(np.float32)),
    ]
    m = builders.model(nodes, [value("x", [2, 6])], [value("y", ["a", "b"])], inits)
    stats = model_stats(m)
    assert stats.macs == 2 * 3 * 6


def if_model() -> onnx.ModelProto:
    """y = x @ W1 if flag else x @ W2: all of the compute inside the If's branches (as silero-vad)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    def branch(name, weight):
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", weight], [f"{name}_y"], name=f"{name}_matmul")], name, [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 16])],
        )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="choose", then_branch=branch("then", "w1"), else_branch=branch("else", "w2"))],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [onnx.numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), n) for n in ("w1", "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_macs_count_the_layers_inside_if_branches():
    """inspect reported MACs 0 for a model whose compute sits in If branches."""
    stats = onnxcomp.inspect(if_model())
    assert {layer.node: layer.macs for layer in stats.layer_macs} == {
        "choose/then_branch/then_matmul": 128, "choose/else_branch/else_matmul": 128,
    }
    assert stats.macs == 256
