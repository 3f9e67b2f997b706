"""Opset conversion with weights kept aside."""

import numpy as np
import onnx
from onnx import helper

import builders
from builders import tensor, value
from onnxcomp.opset import convert_opset


def test_convert_opset_keeps_weights_and_outputs():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 64)).astype(np.float32)  # 16 KiB: stubbed during conversion
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Squeeze", ["m"], ["y"], axes=[0]),  # opset 11: axes is an attribute
    ]
    model = builders.model(nodes, [value("x", [1, 64])], [value("y", [64])], [tensor("w", w)], opset=11)
    snapshot = model.SerializeToString()
    converted = convert_opset(model, 13)
    assert converted.opset_import[0].version == 13
    squeeze = next(n for n in converted.graph.node if n.op_type == "Squeeze")
    assert len(squeeze.input) == 2, "opset 13 moves Squeeze axes to an input"
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(next(t for t in converted.graph.initializer if t.name == "w")), w)
    builders.assert_same_outputs(model, converted, builders.feed_for(model), atol=0)
    assert model.SerializeToString() == snapshot
