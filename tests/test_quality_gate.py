"""The quality budget on real runs: exit 3 and nothing written, --accept-drop, user metrics,
and compressions that compressed nothing (--strict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
import onnxcomp
from onnxcomp.cli import main
from onnxcomp.errors import QualityError


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(builders.resnet_block(seed=2), str(path))
    return path


@pytest.fixture
def calib(tmp_path) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32))
    return path


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_budget_exceeded_exits_3_names_metric_value_budget_and_pass_and_writes_nothing(model_path, calib, tmp_path, capsys):
    out = tmp_path / "pruned.onnx"
    args = ["optimize", model_path, "-o", out, "--calib", calib, "--prune", "0.5", "--metric", "features", "--max-drop", "0.05", "--no-latency"]
    code, stdout, stderr = _cli([*args, "--report", tmp_path / "r.json"], capsys)
    assert code == 3
    (line,) = stderr.strip().splitlines()
    assert line.startswith("onnxcomp: error: quality budget exceeded: worst-feature error")
    assert "max drop 0.05" in line and "metric features" in line and "after prune-channels" in line
    assert "held-out" in line and "lower --prune ratio" in line and "nothing was written" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "net.onnx", "r.json"]
    report = json.loads((tmp_path / "r.json").read_text())  # the failure's report, for the record
    assert report["verification"]["quality"]["within_budget"] is False
    assert report["verification"]["quality"]["value"] > 0.05

    code, stdout, stderr = _cli([*args, "--accept-drop"], capsys)
    assert code == 0, stderr
    assert out.exists()
    assert "budget max drop 0.05: EXCEEDED" in stdout
    assert "warning: written although the quality budget is exceeded" in stdout


def test_api_raises_quality_error_with_the_report(model_path, calib, tmp_path):
    with pytest.raises(QualityError) as caught:
        onnxcomp.optimize(model_path, ["cleanup", {"prune-channels": {"ratio": 0.5}}], output=tmp_path / "o.onnx",
                          data=calib, metric="features", max_drop=0.05, latency=False)  # fmt: skip
    assert caught.value.report.verification.quality.metric == "features"
    assert not (tmp_path / "o.onnx").exists()


def test_user_metric_drives_the_gate(model_path, calib, tmp_path, capsys):
    (tmp_path / "mymetric.py").write_text(
        "import numpy as np\n\ndef score(ref, cand):\n    return -float(np.abs(ref['logits'] - cand['logits']).max())\n"
    )
    base = ["optimize", model_path, "--calib", calib, "--quantize", "int8", "--no-latency", "--metric", f"{tmp_path / 'mymetric.py'}:score"]
    code, stdout, stderr = _cli([*base, "-o", tmp_path / "a.onnx", "--max-drop", "1e-9"], capsys)
    assert code == 3 and "metric user" in stderr
    code, stdout, stderr = _cli([*base, "-o", tmp_path / "b.onnx", "--max-drop", "10"], capsys)
    assert code == 0, stderr
    assert "quality (user, asked" in stdout


def test_bad_metric_and_budget_are_usage_errors(model_path, tmp_path, capsys):
    code, _, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--metric", "nonsense"], capsys)
    assert code == 2 and "unknown metric 'nonsense'" in stderr
    code, _, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--max-drop", "nan"], capsys)
    assert code == 2 and "max_drop must be a finite number" in stderr
    assert not (tmp_path / "o.onnx").exists()


def test_random_inputs_have_no_budget(model_path, tmp_path, capsys):
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--prune", "0.5", "--max-drop", "0", "--no-latency"], capsys)
    assert code == 0, stderr
    assert "no budget (random inputs)" in stdout


def test_a_compression_that_changed_nothing_warns_and_strict_fails(model_path, tmp_path, capsys):
    """A CNN has no MatMul/Gemm for dynamic int8: the run says so, and --strict refuses it."""
    out = tmp_path / "o.onnx"
    code, stdout, stderr = _cli(["optimize", model_path, "-o", out, "--quantize", "int8-dynamic", "--no-latency"], capsys)
    assert code == 0, stderr
    assert "warning: quantize-dynamic changed nothing" in stdout
    out.unlink()
    code, stdout, stderr = _cli(["optimize", model_path, "-o", out, "--quantize", "int8-dynamic", "--no-latency", "--strict"], capsys)
    assert code == 4 and "quantize-dynamic changed nothing" in stderr and "--strict" in stderr
    assert not out.exists()


def _dynamic_image_model(reshape_to: int | None = None) -> onnx.ModelProto:
    """x[N, 3, H, W] -> Relu (-> Reshape to [1, reshape_to], which only some sizes fit)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r" if reshape_to else "y"])]
    inits = []
    if reshape_to:
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["y"]))
        inits.append(helper.make_tensor("shape", TensorProto.INT64, [2], [1, reshape_to]))
    graph = helper.make_graph(
        nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "D"] if reshape_to else ["N", 3, "H", "W"])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_dynamic_spatial_dims_without_data_are_verified_on_probe_sizes_not_refused(tmp_path, capsys):
    """Like every PP-OCR model: cleanup needs no data, so the main command runs."""
    onnx.save(_dynamic_image_model(), str(tmp_path / "dyn.onnx"))
    code, stdout, stderr = _cli(["optimize", tmp_path / "dyn.onnx", "-o", tmp_path / "o.onnx", "--no-latency"], capsys)
    assert code == 0, stderr
    assert "verification on 8 sample(s) from RANDOM inputs" in stdout and "H=64, W=64" in stdout
    onnx.save(_dynamic_image_model(reshape_to=3 * 32 * 32), str(tmp_path / "fixed.onnx"))
    code, stdout, stderr = _cli(["optimize", tmp_path / "fixed.onnx", "-o", tmp_path / "f.onnx"], capsys)
    assert code == 0, stderr
    assert "warning: not verified: the original model does not run on the assumed input sizes" in stdout
    assert (tmp_path / "f.onnx").exists()


def test_quantizing_a_model_whose_compute_is_inside_if_branches_says_nothing_was_quantized(tmp_path, capsys):
    """silero-vad's case: 'wrote ... 1.000x', exit 0, and only -v said nothing was quantized."""
    from test_analysis import if_model

    onnx.save(if_model(), str(tmp_path / "if.onnx"))
    args = ["optimize", tmp_path / "if.onnx", "-o", tmp_path / "q.onnx", "--quantize", "int8-weights", "--no-latency"]
    code, stdout, stderr = _cli(args, capsys)
    assert code == 0, stderr
    assert "warning: quantize-weights changed nothing" in stdout
    code, _, stderr = _cli([*args[:3], tmp_path / "q2.onnx", *args[4:], "--strict"], capsys)
    assert code == 4 and not (tmp_path / "q2.onnx").exists()


def test_a_metric_with_nothing_to_measure_says_the_budget_was_not_applied():
    from test_quality import _scaling_model, detector_outputs

    rng = np.random.default_rng(3)
    feeds = [{"x": detector_outputs(rng, objects=0)} for _ in range(10)]  # no score reaches 0.25
    result = onnxcomp.optimize(_scaling_model(np.ones(7)), ["cleanup"], data=feeds, latency=False)
    assert result.report.verification.quality.metric == "detection"
    assert result.report.verification.quality.result.value is None
    assert any("had nothing to measure" in w for w in result.report.warnings)


def test_mixed_precision_measures_with_the_runs_metric(model_path, calib):
    """quantize-static's max_drop search (metric: auto) asks the same metric the run is judged by."""
    calls = []

    def score(reference, candidate):
        calls.append(1)
        return -float(np.abs(reference["logits"] - candidate["logits"]).max())

    passes = ["cleanup", {"quantize-static": {"max_drop": 0.0, "metric": "auto"}}]
    result = onnxcomp.optimize(model_path, passes, data=calib, metric=score, max_drop=10.0, latency=False)
    verification_calls = 2 * result.report.verification.samples  # the identical-outputs score and the candidate's
    assert len(calls) > verification_calls
    assert result.report.artifacts["quantize-static"]["mixed_precision"]["metric"] == "auto"


def test_a_headline_on_few_samples_says_how_coarse_it_is(model_path, calib):
    result = onnxcomp.optimize(model_path, ["cleanup", "quantize-static"], data=calib, latency=False)
    q = result.report.verification.quality
    assert q.metric == "classification" and q.result.details["basis"] == 2  # 2 held-out samples of 10
    assert any("headline rests on 2 sample(s)" in w and "50%" in w for w in result.report.warnings)
