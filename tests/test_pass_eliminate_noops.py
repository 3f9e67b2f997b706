"""No-op elimination: each rule, its negative case, graph outputs, idempotence.

Removing a no-op changes no arithmetic: outputs must match exactly (atol 0).
"""

import numpy as np
import pytest
from onnx import TensorProto, helper

import builders
from builders import tensor, value


def _single(op_nodes, inits=(), x_shape=("N", 4, 6), y_shape=None, x_type=TensorProto.FLOAT):
    """x -> Relu -> <op nodes reading 'r', writing 'o'> -> Neg -> y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), *op_nodes, helper.make_node("Neg", ["o"], ["y"])]
    return builders.model(nodes, [value("x", x_shape, x_type)], [value("y", y_shape or x_shape, x_type)], list(inits))


CASES = {
    "identity": ([helper.make_node("Identity", ["r"], ["o"])], []),
    "dropout": ([helper.make_node("Dropout", ["r"], ["o"])], []),
    "cast-same": ([helper.make_node("Cast", ["r"], ["o"], to=TensorProto.FLOAT)], []),
    "reshape-same": ([helper.make_node("Reshape", ["r", "s"], ["o"])], [tensor("s", np.array([-1, 4, 6], np.int64))]),
    "reshape-copy-dims": ([helper.make_node("Reshape", ["r", "s"], ["o"])], [tensor("s", np.array([0, 0, 6], np.int64))]),
    "pad-zero": ([helper.make_node("Pad", ["r", "p"], ["o"])], [tensor("p", np.zeros(6, np.int64))]),
    "mul-one": ([helper.make_node("Mul", ["r", "one"], ["o"])], [tensor("one", np.ones(6, np.float32))]),
    "one-mul": ([helper.make_node("Mul", ["one", "r"], ["o"])], [tensor("one", np.float32(1))]),
    "div-one": ([helper.make_node("Div", ["r", "one"], ["o"])], [tensor("one", np.float32(1))]),
    "add-zero": ([helper.make_node("Add", ["r", "z"], ["o"])], [tensor("z", np.zeros((4, 1), np.float32))]),
    "sub-zero": ([helper.make_node("Sub", ["r", "z"], ["o"])], [tensor("z", np.float32(0))]),
    "transpose-identity": ([helper.make_node("Transpose", ["r"], ["o"], perm=[0, 1, 2])], []),
    "concat-single": ([helper.make_node("Concat", ["r"], ["o"], axis=1)], []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_noop_removed(case):
    nodes, inits = CASES[case]
    m = _single(nodes, inits)
    out, step = builders.apply_pass("eliminate-noops", m)
    assert builders.ops(out) == ["Relu", "Neg"], case
    assert step.modified
    builders.assert_same_outputs(m, out, builders.feed_for(m, batch=3), atol=0)
    _, again = builders.apply_pass("eliminate-noops", out)
    assert not again.modified


NOT_NOOPS = {
    "cast-other-type": ([helper.make_node("Cast", ["r"], ["c"], to=TensorProto.INT32), helper.make_node("Cast", ["c"], ["o"], to=TensorProto.FLOAT)], []),
    "reshape-different": ([helper.make_node("Reshape", ["r", "s"], ["t"]), helper.make_node("Reshape", ["t", "s2"], ["o"])], [tensor("s", np.array([-1, 6, 4], np.int64)), tensor("s2", np.array([-1, 4, 6], np.int64))]),
    "mul-two": ([helper.make_node("Mul", ["r", "two"], ["o"])], [tensor("two", np.float32(2))]),
    "add-broadcasting-zero": ([helper.make_node("Add", ["r", "z"], ["t"]), helper.make_node("ReduceSum", ["t", "ax"], ["o"], keepdims=1)], [tensor("z", np.zeros((2, 1, 1, 1), np.float32)), tensor("ax", np.array([0], np.int64))]),
    "dropout-training": ([helper.make_node("Dropout", ["r", "ratio", "train"], ["o"])], [tensor("ratio", np.float32(0.0)), tensor("train", np.array(True))]),
    "pad-nonzero": ([helper.make_node("Pad", ["r", "p"], ["t"]), helper.make_node("Slice", ["t", "st", "en", "axs"], ["o"])], [tensor("p", np.array([0, 0, 1, 0, 0, 1], np.int64)), tensor("st", np.array([1], np.int64)), tensor("en", np.array([7], np.int64)), tensor("axs", np.array([2], np.int64))]),
}


@pytest.mark.parametrize("case", sorted(NOT_NOOPS))
def test_non_noops_kept(case):
    nodes, inits = NOT_NOOPS[case]
    y_shape = (1, "N", 4, 6) if case == "add-broadcasting-zero" else None
    m = _single(nodes, inits, y_shape=y_shape)
    out, step = builders.apply_pass("eliminate-noops", m)
    assert builders.ops(out) == builders.ops(m), case
    assert not step.modified


def test_noop_writing_a_graph_output_keeps_the_output_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])]
    m = builders.model(nodes, [value("x", [3])], [value("y", [3])])
    out, step = builders.apply_pass("eliminate-noops", m)
    assert builders.ops(out) == ["Relu"] and [o.name for o in out.graph.output] == ["y"]
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=0)


def test_identity_between_graph_input_and_output_is_kept():
    m = builders.model([helper.make_node("Identity", ["x"], ["y"])], [value("x", [3])], [value("y", [3])])
    out, step = builders.apply_pass("eliminate-noops", m)
    assert builders.ops(out) == ["Identity"] and not step.modified
