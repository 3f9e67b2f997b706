"""The command line: happy paths and the bad-input corpus.

Every bad input must give one line on stderr, the documented exit code, no
traceback, no output file, and leave the input untouched.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
import onnxcomp
from onnxcomp.cli import main
from onnxcomp.errors import DataError


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "net.onnx"
    m = builders.resnet_block(seed=2)
    entry = m.metadata_props.add()
    entry.key, entry.value = "vocab", "cat dog"
    onnx.save(m, str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_optimize_writes_model_and_report(model_path, tmp_path, capsys):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "out.onnx"
    code, stdout, stderr = _cli(["optimize", model_path, "-o", out, "--calib", tmp_path / "calib.npz", "--report", tmp_path / "r.json"], capsys)
    assert code == 0, stderr
    assert "latency (median)" in stdout and "verification on 6 sample(s)" in stdout  # cleanup fitted nothing: all data is unseen
    optimized = onnx.load(str(out))
    onnx.checker.check_model(optimized)
    assert {p.key: p.value for p in optimized.metadata_props} == {"vocab": "cat dog"}
    assert "BatchNormalization" not in builders.ops(optimized)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["before"]["macs"] == report["after"]["macs"] == 350_288
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert report["verification"]["outputs"][0]["max_abs"] < 1e-5
    assert report["verification"]["loads"] == {"disabled": "ok", "basic": "ok", "extended": "ok", "all": "ok"}
    assert report["latency_ratio"] > 0


def test_optimize_default_output_name_and_random_data_warning(model_path, capsys):
    code, stdout, stderr = _cli(["optimize", model_path, "--no-latency"], capsys)
    assert code == 0, stderr
    assert (model_path.parent / "net.opt.onnx").exists()
    assert "RANDOM inputs" in stdout and "warning: no data given" in stdout


def test_quiet_applies_to_its_own_call_only(model_path, tmp_path, capsys):
    """Pipelines call ``main`` repeatedly in one process; an earlier ``-q`` must not silence later calls."""
    code, stdout, _ = _cli(["optimize", model_path, "-o", tmp_path / "a.onnx", "--no-latency", "-q"], capsys)
    assert code == 0 and stdout == ""
    code, stdout, _ = _cli(["optimize", model_path, "-o", tmp_path / "b.onnx", "--no-latency"], capsys)
    assert code == 0 and "wrote" in stdout


def test_optimize_refuses_to_overwrite_input(model_path, capsys):
    before = _digest(model_path)
    code, _, stderr = _cli(["optimize", model_path, "-o", model_path, "--no-latency"], capsys)
    assert code == 2 and "refusing to overwrite the input model" in stderr
    assert _digest(model_path) == before
    code, _, stderr = _cli(["optimize", model_path, "-o", model_path, "--no-latency", "--overwrite-input"], capsys)
    assert code == 0, stderr


def test_failed_verification_gate_writes_nothing_but_the_report(model_path, tmp_path, capsys):
    out = tmp_path / "gated.onnx"
    code, _, stderr = _cli(["optimize", model_path, "-o", out, "--no-latency", "--max-abs-error", "0", "--report", tmp_path / "r.json"], capsys)
    # BN folding moves outputs by float32 rounding, so a zero tolerance fails: exit 3, no model.
    assert code == 3 and "differs from the original" in stderr
    assert not out.exists() and (tmp_path / "r.json").exists()


def test_inspect_text_and_json(model_path, capsys):
    code, stdout, _ = _cli(["inspect", model_path, "--layers"], capsys)
    assert code == 0 and "MACs       350.29 k (350,288)" in stdout and "conv1" in stdout
    code, stdout, _ = _cli(["inspect", model_path, "--json"], capsys)
    data = json.loads(stdout)
    assert data["macs"] == 350_288 and data["op_histogram"]["Conv"] == 3
    assert data["inputs"] == [{"name": "x", "dtype": "float", "shape": ["N", 3, 16, 16]}]


def test_passes_listing(capsys):
    code, stdout, _ = _cli(["passes"], capsys)
    assert code == 0 and "fold-batchnorm" in stdout and "presets: cleanup" in stdout
    # what each --quantize mode runs, since --help points here for it
    assert "    int8-accurate: equalize-cross-layer, quantize-static(rounding=reconstruct" in stdout
    code, stdout, _ = _cli(["passes", "--json"], capsys)
    modes = json.loads(stdout)["quantize_modes"]
    assert code == 0 and modes["int4-weights"] == "quantize-weights(bits=4, symmetric=False)" and "int8-dynamic" in modes


def _checker_failing(path: Path) -> Path:
    m = builders.conv_bn_relu()
    m.graph.node[2].input[0] = "nowhere"
    path.write_bytes(m.SerializeToString())
    return path


def _future_opset(path: Path) -> Path:
    m = builders.conv_bn_relu()
    m.opset_import[0].version = 500
    path.write_bytes(m.SerializeToString())
    return path


BAD_MODELS = {
    "missing": (lambda p: p, "no such file"),
    "directory": (lambda p: (p.mkdir(), p)[1], "is a directory"),
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
    "random-bytes": (lambda p: (p.write_bytes(np.random.default_rng(0).bytes(2000)), p)[1], "not an ONNX model"),
    "truncated": (lambda p: (p.write_bytes(builders.resnet_block().SerializeToString()[:700]), p)[1], "not an ONNX model|no outputs|no graph"),
    "tensor-protobuf": (lambda p: (p.write_bytes(onnx.numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString()), p)[1], "not an ONNX model"),
    "checker-fails": (_checker_failing, "fails the ONNX checker"),
    "future-opset": (_future_opset, "opset 500 is newer"),
}


@pytest.mark.parametrize("command", ["optimize", "inspect"])
@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_bad_model_files(tmp_path, capsys, command, case):
    make, message = BAD_MODELS[case]
    path = make(tmp_path / "bad.onnx")
    before = _digest(path) if path.is_file() else None
    listing = _files(tmp_path)
    args = [command, path] + (["-o", tmp_path / "out.onnx", "--no-latency"] if command == "optimize" else [])
    code, stdout, stderr = _cli(args, capsys)
    if command == "inspect" and case == "checker-fails":
        assert code == 0  # inspect describes models the checker rejects
        return
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error:"), stderr
    assert __import__("re").search(message, lines[0]), lines[0]
    assert "Traceback" not in stderr
    assert _files(tmp_path) == listing, "nothing may be written"
    if before is not None:
        assert _digest(path) == before


def _calib(tmp_path: Path, name: str, **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


BAD_DATA = {
    "wrong-name": (lambda t: _calib(t, "d.npz", y=np.zeros((2, 3, 16, 16), np.float32)), "lacks input\\(s\\) 'x'"),
    "wrong-shape": (lambda t: _calib(t, "d.npz", x=np.zeros((2, 3, 8, 8), np.float32)), "axis 2 must be 16"),
    "wrong-dtype": (lambda t: _calib(t, "d.npz", x=np.zeros((2, 3, 16, 16), np.float64)), "dtype float64, the model expects float32"),
    "nan": (lambda t: _calib(t, "d.npz", x=np.full((2, 3, 16, 16), np.nan, np.float32)), "contains NaN"),
    "empty": (lambda t: _calib(t, "d.npz", x=np.zeros((0, 3, 16, 16), np.float32)), "no samples"),
    "pickled": (lambda t: _calib(t, "d.npz", x=np.array([object()], dtype=object)), "pickled Python objects; refused"),
    "missing": (lambda t: t / "absent.npz", "no such file or folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_calibration_data(model_path, tmp_path, capsys, case):
    make, message = BAD_DATA[case]
    data = make(tmp_path)
    before = _digest(model_path)
    listing = _files(tmp_path)
    code, _, stderr = _cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--calib", data, "--no-latency"], capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and __import__("re").search(message, lines[0]), stderr
    assert _files(tmp_path) == listing and _digest(model_path) == before


@pytest.mark.parametrize(
    "recipe, message",
    [("passes: [cleanup, bogus]\n", "unknown pass 'bogus'"), ("passes: [cleanup]\nwhat: 1\n", "unknown key\\(s\\) what"), ("{{{", "invalid YAML")],
)
def test_bad_recipe(model_path, tmp_path, capsys, recipe, message):
    (tmp_path / "r.yaml").write_text(recipe)
    code, _, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--recipe", tmp_path / "r.yaml"], capsys)
    assert code == 2 and __import__("re").search(message, stderr) and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_recipe_is_read_whatever_its_file_name(model_path, tmp_path, capsys):
    """A recipe path need not end in .yaml (e.g. --recipe /dev/stdin, or a .txt file); a bad one still fails in one line."""
    (tmp_path / "recipe.txt").write_text("passes: [cleanup]\nchecks: [ort-load]\n")
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--recipe", tmp_path / "recipe.txt", "--no-latency"], capsys)
    assert code == 0, stderr
    assert "wrote" in stdout and (tmp_path / "o.onnx").exists()
    (tmp_path / "bad.txt").write_text("passes: [bogus]\n")
    code, _, stderr = _cli(["optimize", model_path, "-o", tmp_path / "b.onnx", "--recipe", tmp_path / "bad.txt"], capsys)
    assert code == 2 and "unknown pass 'bogus'" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "b.onnx").exists()


def test_bad_usage_is_exit_2_one_line(model_path, capsys):
    code, _, stderr = _cli(["optimize", model_path, "--verify-samples", "0"], capsys)
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "Invalid value" in stderr
    code, _, stderr = _cli(["optimize", model_path, "--passes", "cleanup", "--recipe", "x.yaml"], capsys)
    assert code == 2 and "give only one of --recipe, --passes" in stderr


def test_dynamic_dims_without_data_are_assumed_and_said(tmp_path, capsys):
    """The main command runs without data (issue 17): the dim is assumed, and the report says so."""
    m = builders.conv_bn_relu()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    path = tmp_path / "dyn.onnx"
    onnx.save(m, str(path))
    code, stdout, stderr = _cli(["optimize", path, "--no-latency"], capsys)
    assert code == 0, stderr
    assert "assumed" in stdout and "H=64" in stdout
    code, stdout, stderr = _cli(["optimize", path, "--no-latency", "--input-shape", "x:1x4x6x8"], capsys)
    assert code == 0, stderr
    assert "H=64" not in stdout


def test_installed_script_runs_as_a_subprocess(model_path, tmp_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "optimize", str(tmp_path / "missing.onnx")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"onnxcomp: error: {tmp_path / 'missing.onnx'}: no such file"


def test_optimize_model_with_external_data(tmp_path, capsys):
    """Weights stay on disk through the run and land in the output's own data file."""
    from onnxcomp.model_io import load_model, save_model

    source_dir = tmp_path / "in"
    source_dir.mkdir()
    original = builders.resnet_block(seed=5)
    save_model(original, source_dir / "net.onnx", external_data=True)
    out = tmp_path / "out" / "net.opt.onnx"
    out.parent.mkdir()
    code, _, stderr = _cli(["optimize", source_dir / "net.onnx", "-o", out, "--no-latency"], capsys)
    assert code == 0, stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.opt.onnx", "net.opt.onnx.data"]
    optimized = load_model(out, load_external_data=True)
    builders.assert_same_outputs(original, optimized, builders.feed_for(original), atol=1e-5)
    assert sorted(p.name for p in source_dir.iterdir()) == ["net.onnx", "net.onnx.data"]


def test_verify_on_held_out_data(model_path, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(4, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "held_out.npz", x=rng.normal(size=(3, 3, 16, 16)).astype(np.float32))
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx", "--calib", tmp_path / "calib.npz", "--verify-data", tmp_path / "held_out.npz", "--no-latency"], capsys)
    assert code == 0, stderr
    assert f"verification on 3 sample(s) from {tmp_path / 'held_out.npz'}" in stdout


def test_in_sample_verification_is_flagged_only_when_passes_fitted_the_data(model_path, tmp_path, capsys):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    common = ["--calib", tmp_path / "calib.npz", "--no-latency"]
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "clean.onnx", *common], capsys)
    assert code == 0, stderr
    assert "in-sample" not in stdout  # cleanup never reads the data: verifying on it is fair
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "q.onnx", "--quantize", "int8", *common], capsys)
    assert code == 0, stderr
    assert "warning: verified on the calibration data the passes fitted to (in-sample: fewer than 5 samples" in stdout
    held_out = ["--verify-data", tmp_path / "calib.npz"]
    code, stdout, _ = _cli(["optimize", model_path, "-o", tmp_path / "q2.onnx", "--quantize", "int8", *common, *held_out], capsys)
    assert code == 0 and "in-sample" not in stdout


def test_calibration_data_is_split_and_verification_uses_only_the_held_out_part(model_path, tmp_path, capsys):
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32))
    common = ["--calib", tmp_path / "calib.npz", "--no-latency", "--quantize", "int8"]
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "q.onnx", *common], capsys)
    assert code == 0, stderr
    assert "verification on 2 sample(s) from" in stdout and "(held-out 1 in 5)" in stdout
    assert "in-sample" not in stdout
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "q2.onnx", *common, "--verify-in-sample"], capsys)
    assert code == 0, stderr
    assert "verification on 10 sample(s)" in stdout and "(in-sample: asked)" in stdout


def test_latency_ratio_spread_and_noise_verdict(model_path, tmp_path, capsys):
    from onnxcomp.latency import LatencyStats

    assert LatencyStats(1.0, 0.9, 1.1, 10, 0.98, 0.93, 1.04).within_noise
    assert not LatencyStats(1.0, 0.9, 1.1, 10, 0.70, 0.66, 0.75).within_noise
    code, stdout, stderr = _cli(["optimize", model_path, "-o", tmp_path / "o.onnx"], capsys)
    assert code == 0, stderr
    (line,) = [text for text in stdout.splitlines() if text.startswith("latency ratio per round: 10-90 % ")]
    assert any(verdict in line for verdict in ("within noise", "faster", "SLOWER than the original"))


def test_inspect_refuses_an_unknown_input_name(model_path, capsys):
    """A misspelt --input-shape was silently ignored (MACs unknown, exit 0); optimize refused it."""
    code, _, stderr = _cli(["inspect", model_path, "--input-shape", "nope:1x3x16x16"], capsys)
    assert code == 2 and "--input-shape names unknown input(s) nope" in stderr
    with pytest.raises(DataError):
        onnxcomp.inspect(model_path, input_shapes={"nope": (1, 3, 16, 16)})
