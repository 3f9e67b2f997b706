"""float16 conversion keeping graph I/O and fragile ops in float32 (convert-fp16)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import builders
import onnxcomp
from onnxcomp.context import PassContext
from onnxcomp.data import ListDataset
from onnxcomp.errors import UsageError
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.registry import create_pass
from ort_graph import relative_rms_error


def block_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,8,16] -> MatMul -> Add -> LayerNormalization -> Relu -> MatMul -> y ;
    the LN output also -> ReduceSum -> s ; an int mask -> Cast(float) -> Mul(huge) -> masked."""
    rng = np.random.default_rng(seed)
    inits = [
        builders.tensor("w1", rng.normal(0, 0.3, (16, 32)).astype(np.float32)),
        builders.tensor("b1", rng.normal(0, 0.1, 32).astype(np.float32)),
        builders.tensor("gamma", rng.uniform(0.5, 1.5, 32).astype(np.float32)),
        builders.tensor("beta", rng.normal(0, 0.1, 32).astype(np.float32)),
        builders.tensor("w2", rng.normal(0, 0.3, (32, 4)).astype(np.float32)),
        builders.tensor("huge", np.array(-3.4e38, np.float32)),
        builders.tensor("axes", np.array([-1], np.int64)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("LayerNormalization", ["hb", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
        helper.make_node("ReduceSum", ["n", "axes"], ["s"], name="sum"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Cast", ["mask"], ["mask_f"], name="cast_mask", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["mask_f", "huge"], ["masked"], name="mask_mul"),
    ]
    return builders.model(
        nodes,
        [builders.value("x", ["N", 8, 16]), builders.value("mask", ["N", 8], TensorProto.INT64)],
        [
            builders.value("y", ["N", 8, 4]),
            builders.value("s", ["N", 8, 1]),
            builders.value("shape", [3], TensorProto.INT64),
            builders.value("masked", ["N", 8]),
        ],
        inits,
        metadata={"source": "test"},
    )


def run_pass(m, data=None, **options):
    ctx = PassContext(template=m, data=None if data is None else ListDataset(data))
    result = PassManager([create_pass("convert-fp16", options)], checks=(Check.CHECKER, Check.ORT)).run(m, ctx)
    return result.model, result.steps[-1], ctx


def feed(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(0, 1, (2, 8, 16)).astype(np.float32), "mask": rng.integers(0, 2, (2, 8)).astype(np.int64)}


def dtypes(m):
    return {v.name: v.type.tensor_type.elem_type for v in [*m.graph.input, *m.graph.output]}


def test_interface_types_are_kept_and_outputs_close():
    m = block_model()
    q, step, ctx = run_pass(m)
    assert dtypes(q) == dtypes(m)
    assert step.modified and step.summary["fp16_nodes"] == 4  # mm1, bias1, relu, mm2
    f = feed(1)
    ref, out = builders.run(m, f), builders.run(q, f)
    # fp16 rounds each op to 11 significant bits (~5e-4 relative); a few stacked ops stay below 5e-3.
    for name, a, b in zip(["y", "s"], ref[:2], out[:2]):
        assert relative_rms_error(a, b) < 5e-3, name
    np.testing.assert_array_equal(out[2], ref[2])  # Shape is exact
    np.testing.assert_array_equal(out[3], ref[3])  # kept in float32: -3.4e38 survives


def test_fragile_ops_stay_float32_with_reasons():
    q, _, ctx = run_pass(block_model())
    kept = ctx.artifacts["convert-fp16"]["kept_float32"]
    assert set(kept) == {"ln", "sum", "mask_mul"}
    assert "3.4e+38" in kept["mask_mul"] and "sum" in kept["sum"].lower()
    weights = {t.name: t.data_type for t in q.graph.initializer}
    assert weights["w1_fp16"] == TensorProto.FLOAT16 and weights["w2_fp16"] == TensorProto.FLOAT16
    assert weights["gamma"] == TensorProto.FLOAT  # LayerNormalization's scale stays float32
    cast = next(n for n in q.graph.node if n.name == "cast_mask")
    assert cast.attribute[0].i == TensorProto.FLOAT  # its reader stays float32, so does the Cast
    shape = next(n for n in q.graph.node if n.op_type == "Shape")
    assert shape.input[0] == "x"  # shape readers get no Cast


def test_cast_to_float_inside_the_region_becomes_float16():
    m = builders.model(
        [
            helper.make_node("Cast", ["ids"], ["f"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "x"], ["y"], name="mul"),
        ],
        [builders.value("ids", ["N", 4], TensorProto.INT64), builders.value("x", ["N", 4])],
        [builders.value("y", ["N", 4])],
    )
    q, _, _ = run_pass(m)
    cast = next(n for n in q.graph.node if n.name == "cast")
    assert cast.attribute[0].i == TensorProto.FLOAT16
    f = {"ids": np.arange(8, dtype=np.int64).reshape(2, 4), "x": np.full((2, 4), 0.5, np.float32)}
    np.testing.assert_array_equal(builders.run(q, f)[0], builders.run(m, f)[0])


def overflow_model():
    """y = (x * 3000)^2 / 1e6: the square reaches ~1e8, beyond fp16's 65504."""
    inits = [builders.tensor("k", np.array(3000.0, np.float32)), builders.tensor("d", np.array(1e6, np.float32))]
    nodes = [
        helper.make_node("Mul", ["x", "k"], ["a"], name="scale"),
        helper.make_node("Mul", ["a", "a"], ["sq"], name="square"),
        helper.make_node("Div", ["sq", "d"], ["y"], name="div"),
    ]
    return builders.model(nodes, [builders.value("x", ["N", 16])], [builders.value("y", ["N", 16])], inits)


def test_calibration_data_keeps_overflowing_nodes_in_float32():
    m = overflow_model()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.normal(0, 2, (1, 16)).astype(np.float32)} for _ in range(4)]
    f = {"x": rng.normal(0, 2, (3, 16)).astype(np.float32)}
    _, _, blind = run_pass(m)
    assert "square" not in blind.artifacts["convert-fp16"]["kept_float32"]
    # What a native fp16 runtime computes for the square (onnxruntime's CPU provider upcasts
    # Mul/Div to float32 kernels and drops the cast pairs between them, which hides it):
    a = np.float16(f["x"]) * np.float16(3000.0)
    with np.errstate(over="ignore"):
        assert not np.all(np.isfinite(a * a))
    checked, step, ctx = run_pass(m, data=calib)
    kept = ctx.artifacts["convert-fp16"]["kept_float32"]
    assert {"square", "div"} <= set(kept) and "scale" not in kept
    assert step.summary["range_checked_tensors"] >= 2
    assert relative_rms_error(builders.run(m, f)[0], builders.run(checked, f)[0]) < 1e-3


def test_second_run_changes_nothing():
    q, _, _ = run_pass(block_model())
    again, step, _ = run_pass(q)
    assert not step.modified and builders.ops(again) == builders.ops(q)


def test_optimize_keeps_metadata_loads_everywhere_and_halves_weights():
    m = block_model()
    result = onnxcomp.optimize(m, ["convert-fp16"], latency=False)
    onnx.checker.check_model(result.model)
    assert {p.key: p.value for p in result.model.metadata_props} == {"source": "test"}
    assert set(result.report.verification.loads.values()) == {"ok"}
    weight_bytes = lambda model, names: sum(len(t.raw_data) for t in model.graph.initializer if t.name.split("_fp16")[0] in names)  # noqa: E731
    assert weight_bytes(result.model, {"w1", "w2"}) * 2 == weight_bytes(m, {"w1", "w2"})


def test_allow_and_keep_ops():
    _, _, ctx = run_pass(block_model(), allow_ops=["LayerNormalization"], keep_ops=["Relu"])
    kept = ctx.artifacts["convert-fp16"]["kept_float32"]
    assert "ln" not in kept and kept["relu"] == "kept by keep_ops"


def test_invalid_max_abs():
    with pytest.raises(UsageError, match="max_abs"):
        create_pass("convert-fp16", {"max_abs": 1e6})
