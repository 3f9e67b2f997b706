"""Dynamic int8 quantization of MatMul/Gemm layers (quantize-dynamic)."""

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
from ort_graph import optimized_ops, relative_rms_error


def mlp(seed: int = 0, outlier: float = 1.0) -> onnx.ModelProto:
    """x[N,S,32] -> {MatMul q[32,48], MatMul k[32,48]} (shared input) -> Add -> Relu
    -> MatMul w2[48,16] + b2 -> Gemm-free tail; plus a Gemm(transB=1, alpha, beta) head on a 2-D input.

    ``outlier`` scales input channel 3 of x's producer weights, making one activation
    channel much larger than the others (the case activation smoothing is for).
    """
    rng = np.random.default_rng(seed)
    pre = rng.normal(0, 0.3, (32, 32)).astype(np.float32)
    pre[:, 3] *= outlier
    inits = [
        builders.tensor("pre", pre),
        builders.tensor("wq", rng.normal(0, 0.2, (32, 48)).astype(np.float32)),
        builders.tensor("wk", rng.normal(0, 0.2, (32, 48)).astype(np.float32)),
        builders.tensor("w2", rng.normal(0, 0.2, (48, 16)).astype(np.float32)),
        builders.tensor("b2", rng.normal(0, 0.1, 16).astype(np.float32)),
        builders.tensor("g", rng.normal(0, 0.2, (24, 16)).astype(np.float32)),
        builders.tensor("gc", rng.normal(0, 0.1, 24).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["x2"], name="square"),  # makes the activation non-constant-foldable
        helper.make_node("Add", ["x2", "x"], ["x3"], name="mix"),
        helper.make_node("MatMul", ["x3", "pre"], ["h"], name="pre_mm_float"),
        helper.make_node("MatMul", ["h", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["h", "wk"], ["k"], name="mm_k"),
        helper.make_node("Add", ["q", "k"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["m"], name="mm_2"),
        helper.make_node("Add", ["m", "b2"], ["y"], name="bias_2"),
        helper.make_node("Gemm", ["z", "g", "gc"], ["t"], name="gemm", transB=1, alpha=0.5, beta=2.0),
    ]
    return builders.model(
        nodes,
        [builders.value("x", ["N", 6, 32]), builders.value("z", ["N", 16])],
        [builders.value("y", ["N", 6, 16]), builders.value("t", ["N", 24])],
        inits,
        metadata={"source": "test"},
    )


def run_pass(m: onnx.ModelProto, data=None, **options):
    options.setdefault("min_weight_elements", 0)
    ctx = PassContext(template=m, data=None if data is None else ListDataset(data))
    p = create_pass("quantize-dynamic", options)
    result = PassManager([p], checks=(Check.CHECKER, Check.ORT)).run(m, ctx)
    return result.model, result.steps[-1], ctx


def feeds(m, count, seed=0):
    return [builders.feed_for(m, seed=seed + i, batch=1) for i in range(count)]


def test_layers_become_integer_matmuls_with_bounded_error():
    m = mlp()
    q, step, _ = run_pass(m, exclude=("pre_mm_float",))
    assert step.modified and step.summary["layers"] == 4
    ops = builders.ops(q)
    assert ops.count("MatMulInteger") == 4 and "Gemm" not in ops
    assert [n for n in q.graph.node if n.op_type == "MatMul"][0].name == "pre_mm_float"
    feed = builders.feed_for(m, seed=5, batch=3)
    for ref, out in zip(builders.run(m, feed), builders.run(q, feed)):
        # uint8 per-tensor activations x int8 per-column weights: ~0.5 % RMS per layer,
        # two stacked layers; 3 % leaves margin for the seed, a broken rescale gives ~100 %.
        assert relative_rms_error(ref, out) < 0.03


def test_shared_input_is_quantized_once():
    q, step, _ = run_pass(mlp(), exclude=("pre_mm_float",))
    # h feeds mm_q and mm_k; r feeds mm_2; z feeds the Gemm.
    assert step.summary["dynamic_quantize"] == 3
    assert builders.ops(q).count("DynamicQuantizeLinear") == 3


def test_onnxruntime_runs_fused_integer_kernels():
    q, _, _ = run_pass(mlp(), exclude=("pre_mm_float",))
    ops = optimized_ops(q)
    fused = ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"]
    assert fused == 4, ops
    assert ops["MatMulInteger"] == 0 and ops["Gemm"] == 0
    assert ops["MatMul"] + ops["FusedMatMul"] == 1  # only the excluded float layer


def test_second_run_changes_nothing():
    q, _, _ = run_pass(mlp())
    again, step, _ = run_pass(q)
    assert not step.modified
    assert builders.ops(again) == builders.ops(q)


def test_optimize_keeps_metadata_and_loads_at_every_level():
    m = mlp()
    result = onnxcomp.optimize(m, ["quantize-dynamic"], latency=False)
    onnx.checker.check_model(result.model)
    assert {p.key: p.value for p in result.model.metadata_props} == {"source": "test"}
    assert set(result.report.verification.loads.values()) == {"ok"}


def test_per_tensor_weights_store_one_scale():
    q, _, _ = run_pass(mlp(), per_channel=False, exclude=("pre_mm_float",))
    inits = {t.name: t for t in q.graph.initializer}
    scales = [inits[n] for n in inits if n.endswith("_weight_scale")]
    assert scales and all(list(s.dims) == [] for s in scales)


def test_auto_smoothing_reduces_error_on_outlier_channels():
    m = mlp(seed=3, outlier=40.0)
    calib, held_out = feeds(m, 12, seed=0), feeds(m, 6, seed=100)
    plain, _, _ = run_pass(m, exclude=("pre_mm_float",), smoothing="off")
    smoothed, step, ctx = run_pass(m, data=calib, exclude=("pre_mm_float",))
    assert step.summary.get("smoothed_inputs", 0) >= 1
    assert any(a is not None for a in ctx.artifacts["quantize-dynamic.smooth_alpha"].values())
    simulated = ctx.artifacts["quantize-dynamic.simulated_relative_error"]
    assert set(simulated) == {"mm_q", "mm_k", "mm_2", "gemm"} and all(0 < e < 1e-2 for e in simulated.values())

    def error(q):
        errors = [relative_rms_error(builders.run(m, f)[0], builders.run(q, f)[0]) for f in held_out]
        return float(np.mean(errors))

    # One channel 40x the others wastes ~5 of the 8 activation bits without smoothing.
    assert error(smoothed) < 0.7 * error(plain)


def test_auto_smoothing_without_data_is_off():
    _, step, ctx = run_pass(mlp())
    assert "smoothed_inputs" not in step.summary
    assert "quantize-dynamic.smooth_alpha" not in ctx.artifacts


def test_fixed_smoothing_requires_data():
    with pytest.raises(UsageError, match="calibration data"):
        run_pass(mlp(), smoothing="fixed")


def test_embedding_table_is_int8_per_row():
    rng = np.random.default_rng(0)
    table = rng.normal(0, 1, (64, 16)).astype(np.float32)
    table[7] *= 100.0  # one large row must not crush the others (per-row scales)
    m = builders.model(
        [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0)],
        [builders.value("ids", ["N", 5], TensorProto.INT64)],
        [builders.value("e", ["N", 5, 16])],
        [builders.tensor("table", table)],
    )
    q, step, _ = run_pass(m, embedding_min_elements=0)
    assert step.summary["embeddings"] == 1
    assert {t.data_type for t in q.graph.initializer if list(t.dims) == [64, 16]} == {TensorProto.INT8}
    ids = np.array([[0, 7, 3, 63, 7]], dtype=np.int64)
    ref, out = builders.run(m, {"ids": ids})[0], builders.run(q, {"ids": ids})[0]
    # Symmetric int8 per row: |error| <= max|row| / 127 / 2.
    bound = np.abs(table[ids[0]]).max(axis=1, keepdims=True) / 254.0
    assert np.all(np.abs(out[0] - ref[0]) <= bound * 1.0001 + 1e-7)


def test_invalid_options_are_usage_errors():
    with pytest.raises(UsageError, match="op_types"):
        create_pass("quantize-dynamic", {"op_types": ["Conv"]})
    with pytest.raises(UsageError, match="smooth_alpha"):
        create_pass("quantize-dynamic", {"smooth_alpha": 1.5})
    with pytest.raises(UsageError, match="smoothing"):
        create_pass("quantize-dynamic", {"smoothing": "sometimes"})
