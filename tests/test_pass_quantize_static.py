"""quantize-static end to end: accuracy bounds, integer kernels, opset 11, bad data, statistics files, CLI."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
import onnxcomp
import quant_models as qm
from onnxcomp.cli import main
from onnxcomp.context import PassContext
from onnxcomp.data import ListDataset
from onnxcomp.errors import DataError, UsageError
from onnxcomp.ir import import_graph
from onnxcomp.pass_manager import PassManager
from onnxcomp.quantization import calibration
from onnxcomp.registry import build_pipeline, create_pass
from onnxcomp.verify import check_loads
from ort_graph import optimized_ops, relative_rms_error


def quantize(model: onnx.ModelProto, data, **options) -> onnx.ModelProto:
    ctx = PassContext(template=model, data=ListDataset(data))
    return PassManager(build_pipeline(["cleanup", {"quantize-static": options}])).run(model, ctx).model


def error_on(reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds) -> float:
    """Relative RMS error of the candidate (as onnxruntime runs it, fully optimized) over ``feeds``."""
    ref = np.concatenate([builders.run(reference, f)[0].ravel() for f in feeds])
    out = np.concatenate([builders.run(candidate, f, optimized=True)[0].ravel() for f in feeds])
    return relative_rms_error(ref, out)


def test_int8_per_channel_conv_stack_error_bound_and_integer_kernels():
    m = qm.conv_stack(seed=3)
    out = quantize(m, qm.samples(m, 32), method="minmax")
    # Three 3x3 convs, 16 channels, uint8 activations / int8 per-channel weights, min/max ranges:
    # ~1.2 % relative RMS output error on held-out inputs; the bound leaves 2.5x headroom.
    err = error_on(m, out, qm.samples(m, 8, seed=7))
    assert err < 0.03, f"relative RMS error {err:.4f}"
    ops = optimized_ops(out)
    assert ops["QLinearConv"] == 3 and "Conv" not in ops and "FusedConv" not in ops


def weight_scale_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Scale shape of the DequantizeLinear feeding each Conv/Gemm weight."""
    inits = {t.name: t for t in model.graph.initializer}
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.name: tuple(inits[dq[n.input[1]].input[1]].dims)
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm") and n.input[1] in dq
    }


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_scales_per_channel_or_per_tensor(per_channel):
    m = qm.cnn(seed=1)
    out = quantize(m, qm.samples(m, 16), per_channel=per_channel)
    shapes = weight_scale_shapes(out)
    assert len(shapes) == 7
    if per_channel:
        assert shapes["dw"] == (8,) and shapes["fc"] == (5,)
    else:
        assert set(shapes.values()) == {()}
    # Probabilities of the 5-class head stay within 2 % relative RMS error either way.
    assert error_on(m, out, qm.samples(m, 8, seed=5)) < 0.02


def test_keeps_metadata_passes_checker_and_loads_at_every_level():
    m = qm.cnn()
    result = onnxcomp.optimize(m, ["cleanup", "quantize-static"], data=qm.samples(m, 8), latency=False)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert {p.key: p.value for p in out.metadata_props} == {"origin": "quant-tests"}
    assert set(check_loads(out).values()) == {"ok"}
    assert result.report.verification.outputs[0].top1_agreement >= 0.75


def test_opset_11_model_is_converted_to_opset_13_with_per_channel_weights():
    m = qm.cnn(seed=2, opset=11)
    out = quantize(m, qm.samples(m, 16))
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) == 13
    axes = [a.i for n in out.graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "axis"]
    assert axes, "no per-channel DequantizeLinear"
    assert error_on(m, out, qm.samples(m, 4, seed=3)) < 0.02
    assert optimized_ops(out)["QLinearConv"] == 6


def test_running_twice_changes_nothing_the_second_time():
    m = qm.conv_stack()
    data = ListDataset(qm.samples(m, 4))
    once = quantize(m, qm.samples(m, 4))
    ctx = PassContext(template=once, data=data)
    result = create_pass("quantize-static").call(import_graph(once), ctx)
    assert result.modified is False


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda f: {"x": np.full_like(f["x"], np.nan)}, "NaN"),
        (lambda f: {"x": f["x"][:, :2]}, "x"),
        (lambda f: {"y": f["x"]}, "y"),
        (lambda f: {"x": f["x"].astype(np.float64)}, "dtype"),
    ],
)
def test_bad_calibration_data_is_a_data_error(bad, message):
    m = qm.conv_stack()
    samples = qm.samples(m, 3)
    samples[1] = bad(samples[1])
    with pytest.raises(DataError, match=message):
        onnxcomp.optimize(m, ["quantize-static"], data=samples, latency=False)


def test_data_driving_the_model_to_inf_is_a_data_error():
    m = qm.conv_stack()
    samples = qm.samples(m, 2)
    samples[1] = {"x": np.full_like(samples[1]["x"], 3e38)}
    with pytest.raises(DataError, match="NaN/Inf"):
        quantize(m, samples)


def test_without_data_the_pass_asks_for_it():
    m = qm.conv_stack()
    with pytest.raises(UsageError, match="calibration data"):
        PassManager(build_pipeline(["quantize-static"])).run(m, PassContext(template=m))


def test_statistics_file_is_reused_for_another_method(tmp_path, monkeypatch):
    m = qm.cnn()
    path = tmp_path / "stats.npz"
    data = qm.samples(m, 8)
    first = quantize(m, data, statistics=str(path), method="minmax")
    assert path.exists()

    def no_model_runs(*args, **kwargs):
        raise AssertionError("calibration ran although statistics were saved")

    monkeypatch.setattr("onnxcomp.passes.quantize_static.collect_statistics", no_model_runs)
    again = quantize(m, data, statistics=str(path), method="minmax")
    other = quantize(m, data, statistics=str(path), method="percentile", percentile=99.0)
    def scales(model):
        return sorted(
            float(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer if t.name.endswith("_scale") and not t.dims
        )
    assert scales(again) == scales(first)
    assert scales(other) != scales(first)


def test_statistics_of_another_model_are_refused(tmp_path):
    path = tmp_path / "stats.npz"
    m = qm.cnn(seed=0)
    quantize(m, qm.samples(m, 4), statistics=str(path))
    other = qm.cnn(seed=1)
    with pytest.raises(UsageError, match="different model"):
        quantize(other, qm.samples(other, 4), statistics=str(path))


def test_cli_int8_writes_a_verified_model_and_bad_data_exits_2(tmp_path, capsys):
    m = qm.cnn()
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([s["x"] for s in qm.samples(m, 8)]))
    out = tmp_path / "m.int8.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--calib", str(calib), "--quantize", "int8", "-q"]) == 0
    assert out.exists() and optimized_ops(onnx.load(out))["QLinearConv"] == 6

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((2, 3, 16, 16), np.nan, dtype=np.float32))
    out2 = tmp_path / "never.onnx"
    assert main(["optimize", str(src), "-o", str(out2), "--calib", str(bad), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxcomp: error:")
    assert not out2.exists()


def test_histogram_sample_size_keeps_the_total_budget():
    assert calibration.histogram_sample_size(None) == calibration.UNKNOWN_SIZE_SAMPLE
    assert calibration.histogram_sample_size(1000) * 1000 <= calibration.HISTOGRAM_BUDGET
    assert calibration.histogram_sample_size(10**7) == calibration.MIN_SAMPLE_SIZE


def test_int8_accurate_mode_runs_end_to_end_on_integer_kernels():
    from onnxcomp.pipelines import pipeline_from_flags

    m = qm.cnn(seed=3)
    result = onnxcomp.optimize(m, pipeline_from_flags(quantize="int8-accurate"), data=qm.samples(m, 16), latency=False)
    names = [s.name for s in result.report.steps if s.modified]
    assert "quantize-static" in names
    assert optimized_ops(result.model)["QLinearConv"] == 6
    # Equalization, bias correction and rounding reconstruction keep the 5-class probabilities close.
    assert error_on(m, result.model, qm.samples(m, 8, seed=11)) < 0.02
