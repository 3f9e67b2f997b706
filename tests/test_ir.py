"""Graph import/export details: 4-bit constants, rewritten external weights."""

import ml_dtypes
import numpy as np
import onnx
from onnx import helper

import builders
from onnxcomp.ir import export_model, import_graph


def test_int4_constants_set_by_a_pass_export_packed():
    q = np.array([[-8, -1, 0, 7, 3]], dtype=np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0), helper.make_node("Add", ["x", "w"], ["y"])]
    inits = [builders.tensor("q", np.zeros((1, 5), np.int8)), builders.tensor("s", np.array([0.5], np.float32))]
    model = builders.model(nodes, [builders.value("x", [1, 5])], [builders.value("y", [1, 5])], inits, opset=21)
    graph = import_graph(model)
    graph.tensors()["q"].values = q.astype(ml_dtypes.int4)  # as a quantizing pass would
    exported = export_model(graph, model)
    onnx.checker.check_model(exported)
    stored = next(t for t in exported.graph.initializer if t.name == "q")
    assert stored.data_type == onnx.TensorProto.INT4 and len(stored.raw_data) == 3  # 5 nibbles -> 3 bytes
    (y,) = builders.run(exported, {"x": np.zeros((1, 5), np.float32)})
    np.testing.assert_array_equal(y, q.astype(np.float32) * 0.5)


def test_an_input_with_a_default_initializer_stays_an_input():
    """An overridable default (graph input + initializer) lost its input status in cleanup."""
    import onnxruntime as ort

    import onnxcomp

    nodes = [helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Relu", ["t"], ["y"])]
    inputs = [builders.value("x", [1, 4]), builders.value("b", [1, 4])]
    inits = [builders.tensor("b", np.ones((1, 4), np.float32)), builders.tensor("unused_weight", np.ones((2,), np.float32))]
    model = builders.model(nodes, inputs, [builders.value("y", [1, 4])], inits)
    optimized = onnxcomp.optimize(model, ["cleanup"], latency=False).model
    assert [i.name for i in optimized.graph.input] == ["x", "b"]
    assert "b" in {t.name for t in optimized.graph.initializer}
    assert [i.name for i in model.graph.input] == ["x", "b"] and len(model.graph.initializer) == 2  # input untouched
    session = ort.InferenceSession(optimized.SerializeToString())
    x = np.full((1, 4), -0.5, np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.full((1, 4), 0.5))  # the default
    np.testing.assert_array_equal(session.run(None, {"x": x, "b": np.full((1, 4), 2, np.float32)})[0], np.full((1, 4), 1.5))


def test_initializers_all_listed_as_inputs_are_weights_not_defaults():
    """IR < 4 required every initializer to be an input, and exporters keeping initializers as
    inputs list them all: those stay foldable weights, not inputs of the optimized model."""
    from onnxcomp.ir import overridable_defaults

    nodes = [helper.make_node("Add", ["x", "b"], ["y"])]
    model = builders.model(nodes, [builders.value("x", [1, 4]), builders.value("b", [1, 4])], [builders.value("y", [1, 4])],
                           [builders.tensor("b", np.ones((1, 4), np.float32))])  # fmt: skip
    assert overridable_defaults(model) == {}
