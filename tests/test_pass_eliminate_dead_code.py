"""Dead-code elimination: dead branches go, graph inputs stay, idempotent."""

import numpy as np
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
