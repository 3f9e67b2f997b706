"""Constant folding: Constant nodes, constant sub-graphs, static shape chains, guards.

Folded values are computed by onnxruntime itself, so outputs must match exactly
(atol 0).
"""

import numpy as np
from onnx import TensorProto, helper

import builders
from builders import tensor, value


def test_constant_nodes_and_constant_subgraph_fold():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["wt"], value=tensor("wt", w)),
        helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),  # weight transposed at run time
        helper.make_node("Constant", [], ["two"], value=tensor("two", np.float32(2.0))),
        helper.make_node("Mul", ["w", "two"], ["w2"]),
        helper.make_node("MatMul", ["x", "w2"], ["y"]),
    ]
    m = builders.model(nodes, [value("x", ["N", 3])], [value("y", ["N", 4])])
    out, step = builders.apply_pass("fold-constants", m)
    assert builders.ops(out) == ["MatMul"]
    assert step.summary["constant_nodes"] == 2 and step.summary["nodes_folded"] == 2
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=0)
    _, again = builders.apply_pass("fold-constants", out)
    assert not again.modified


def test_static_shape_chain_folds_and_dynamic_batch_pick_stays():
    """Flatten via Shape->Gather->Concat->Reshape: the channel dims are static, the batch is not."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["x2"]),
        helper.make_node("Reshape", ["x2", "flat"], ["xx"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i1"], ["c"], axis=0),  # static dim (4): folds
        helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),  # batch: stays
        helper.make_node("Mul", ["c", "c"], ["cc"]),
        helper.make_node("Unsqueeze", ["n", "ax"], ["n1"]),
        helper.make_node("Unsqueeze", ["cc", "ax"], ["cc1"]),
        helper.make_node("Concat", ["n1", "cc1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["xx", "shape"], ["y"]),
    ]
    inits = [
        tensor("i0", np.int64(0)),
        tensor("i1", np.int64(1)),
        tensor("ax", np.array([0], np.int64)),
        tensor("flat", np.array([-1, 4, 4], np.int64)),
    ]
    m = builders.model(nodes, [value("x", ["N", 4, 4])], [value("y", ["N", 16])], inits)
    out, step = builders.apply_pass("fold-constants", m)
    assert step.summary["shape_values"] == 1  # the static Gather
    assert builders.ops(out).count("Gather") == 1
    assert "Mul" in builders.ops(out)
    builders.assert_same_outputs(m, out, builders.feed_for(m, batch=3), atol=0)


def test_nondeterministic_and_dequantize_are_not_folded():
    q = np.array([1, -2, 3], np.int8)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"]),
        helper.make_node("Add", ["x", "w"], ["a"]),
        helper.make_node("RandomUniform", [], ["r"], shape=[3], seed=1.0),
        helper.make_node("Mul", ["r", "zero"], ["r0"]),
        helper.make_node("Add", ["a", "r0"], ["y"]),
    ]
    inits = [tensor("q", q), tensor("s", np.float32(0.5)), tensor("z", np.int8(0)), tensor("zero", np.zeros(3, np.float32))]
    m = builders.model(nodes, [value("x", [3])], [value("y", [3])], inits)
    out, step = builders.apply_pass("fold-constants", m)
    assert "DequantizeLinear" in builders.ops(out) and "RandomUniform" in builders.ops(out)
    assert not step.modified


def test_growth_guard_keeps_expanding_constants():
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=tensor("v", np.array([1.0], np.float32))),
        helper.make_node("Add", ["x", "big"], ["y"]),
    ]
    m = builders.model(nodes, [value("x", [256, 256])], [value("y", [256, 256])], [tensor("shape", np.array([256, 256], np.int64))])
    out, step = builders.apply_pass("fold-constants", m)
    assert "ConstantOfShape" in builders.ops(out), "256 KiB constant must not be stored instead of 16 bytes"
    assert step.summary["kept_to_avoid_growth"] == 1
    out, step = builders.apply_pass("fold-constants", m, {"max_growth_bytes": 1 << 20})
    assert "ConstantOfShape" not in builders.ops(out)
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=0)


def test_fp16_weight_upcast_is_not_materialized():
    w16 = np.random.default_rng(1).normal(size=(128, 128)).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["w"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w32"], ["y"]),
    ]
    m = builders.model(nodes, [value("x", [1, 128])], [value("y", [1, 128])], [tensor("w", w16)])
    out, _ = builders.apply_pass("fold-constants", m)
    assert "Cast" in builders.ops(out), "folding would double the stored weight"


def test_graph_output_of_constant_node_is_kept():
    nodes = [helper.make_node("Constant", [], ["y"], value=tensor("y", np.ones(2, np.float32))), helper.make_node("Relu", ["x"], ["z"])]
    m = builders.model(nodes, [value("x", [2])], [value("y", [2]), value("z", [2])])
    out, _ = builders.apply_pass("fold-constants", m)
    assert [o.name for o in out.graph.output] == ["y", "z"]
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=0)
