"""``onnxcomp distill``: happy paths and bad input (one line, exit code, nothing corrupt)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_distill_export import data_file, samples, teacher_file

from onnxcomp.cli import main


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, expected_code, fragment):
    assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: "), err
    assert "Traceback" not in err and fragment in lines[0], err


def test_export_info_verify(tmp_path, capsys):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    out = tmp_path / "kd"
    code, stdout, err = cli(["distill", "export", teacher, "--data", data, "-o", out, "--top-k", "3", "--temperature", "4",
                             "--feature", "p", "--dtype", "float16", "--shard-size", "10"], capsys)
    assert code == 0, err
    assert "status     complete" in stdout and "saves 10.0%" in stdout  # 3 x (2 + 4) bytes of 10 x 2
    code, stdout, _ = cli(["distill", "info", out], capsys)
    assert code == 0 and "shards    3 of 3 present" in stdout and "logits.topk_indices" in stdout
    code, stdout, _ = cli(["distill", "info", out, "--json"], capsys)
    assert json.loads(stdout)["plan"]["settings"]["temperature"] == 4.0
    code, stdout, err = cli(["distill", "verify", out, "--teacher", teacher, "--data", data], capsys)
    assert code == 0 and "checksums ok; teacher matches; data matches" in stdout, err


def test_shard_parts_from_the_command_line(tmp_path, capsys):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    args = ["distill", "export", teacher, "--data", data, "-o", tmp_path / "kd", "--shard-size", "5"]
    code, stdout, _ = cli([*args, "--shard", "1/2"], capsys)
    assert code == 0 and "incomplete: 3 shard(s) missing (2, 3, 4)" in stdout
    code, _, err = cli(["distill", "verify", tmp_path / "kd"], capsys)
    assert_one_line_error(code, err, 2, "export incomplete, 3 of 5 shards missing")
    code, stdout, _ = cli([*args, "--shard", "2/2"], capsys)
    assert code == 0 and "status     complete" in stdout


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--feature", "nope"], "feature 'nope' is not a tensor of the teacher"),
        (["--shard", "3/2"], "--shard 3/2: expected 1 <= I <= N"),
        (["--shard", "half"], "--shard expects I/N"),
        (["--views", "2"], "views=2 needs an augmentation"),
        (["--augment", "blur"], "unknown augmentation 'blur'"),
        (["--top-k", "0"], "Invalid value for '--top-k'"),
        (["--temperature", "-1"], "temperature must be a positive number"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(tmp_path, capsys, extra, fragment):
    out = tmp_path / "kd"
    code, _, err = cli(["distill", "export", teacher_file(tmp_path), "--data", data_file(tmp_path), "-o", out, *extra], capsys)
    assert_one_line_error(code, err, 2, fragment)
    assert not out.exists()


def test_bad_data_and_unwritable_output_exit_2(tmp_path, capsys):
    teacher = teacher_file(tmp_path)
    code, _, err = cli(["distill", "export", teacher, "--data", data_file(tmp_path, np.zeros((2, 3, 8, 8), np.float32)), "-o", tmp_path / "kd"], capsys)
    assert_one_line_error(code, err, 2, "the model expects x float32[N,3,16,16]")
    (tmp_path / "file").write_text("x")
    code, _, err = cli(["distill", "export", teacher, "--data", data_file(tmp_path), "-o", tmp_path / "file" / "kd"], capsys)
    assert_one_line_error(code, err, 2, "cannot write")
    code, _, err = cli(["distill", "export", tmp_path / "missing.onnx", "--data", data_file(tmp_path), "-o", tmp_path / "kd"], capsys)
    assert_one_line_error(code, err, 2, "missing.onnx: no such file")
    assert not (tmp_path / "kd").exists()


def test_verify_catches_wrong_teacher_and_changed_data(tmp_path, capsys):
    data = data_file(tmp_path)
    out = tmp_path / "kd"
    assert cli(["distill", "export", teacher_file(tmp_path), "--data", data, "-o", out], capsys)[0] == 0
    code, _, err = cli(["distill", "verify", out, "--teacher", teacher_file(tmp_path, seed=5)], capsys)
    assert_one_line_error(code, err, 2, "was exported from another teacher")
    changed = samples()
    changed[-1, 0, 0, 0] += 1e-3
    code, _, err = cli(["distill", "verify", out, "--data", data_file(tmp_path, changed, "changed.npz")], capsys)
    assert_one_line_error(code, err, 2, "differ from the data the export was made from")
    code, _, err = cli(["distill", "export", teacher_file(tmp_path, seed=5), "--data", data, "-o", out], capsys)
    assert_one_line_error(code, err, 2, "holds a different export (teacher sha256")
    code, _, err = cli(["distill", "info", tmp_path], capsys)
    assert_one_line_error(code, err, 2, "not a distillation export")


def test_distill_help_does_not_import_the_exporter():
    code = (
        "import sys; from onnxcomp.cli import main; main(['distill', '--help']); "
        "print('loaded' if 'onnxcomp.distill.export' in sys.modules else 'lazy')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "export  Run TEACHER over --data" in result.stdout and result.stdout.strip().endswith("lazy")


def slow_teacher(tmp_path):
    """x[N,64,512] -> 30 chained MatMuls with one 512x512 weight -> y[N,64,512] (tens of ms per sample)."""
    import onnx
    from onnx import helper

    import builders

    weight = builders.tensor("w", (np.eye(512) + np.random.default_rng(0).normal(0, 0.01, (512, 512))).astype(np.float32) / 1.01)
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", "w"], [f"h{i}" if i < 29 else "y"]) for i in range(30)]
    model = builders.model(nodes, [builders.value("x", ["N", 64, 512])], [builders.value("y", ["N", 64, 512])], [weight])
    onnx.save(model, tmp_path / "slow.onnx")
    return tmp_path / "slow.onnx"


@pytest.mark.slow
def test_sigterm_keeps_finished_shards_and_resumes_identically(tmp_path):
    import signal
    import time

    teacher = slow_teacher(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(40, 64, 512)).astype(np.float32))
    args = [sys.executable, "-m", "onnxcomp", "distill", "export", teacher, "--data", tmp_path / "d.npz", "--shard-size", "2",
            "--batch-size", "2", "--dtype", "float16"]
    process = subprocess.Popen([*map(str, args), "-o", str(tmp_path / "kd")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((tmp_path / "kd" / "shards").glob("0*"))) < 2:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("onnxcomp: error: interrupted; ") and "run the same command again" in err
    kept = sorted(p.name for p in (tmp_path / "kd" / "shards").iterdir())
    assert 2 <= len(kept) < 20, "interrupted mid-way"
    subprocess.run([*map(str, args), "-o", str(tmp_path / "kd")], check=True, capture_output=True)
    subprocess.run([*map(str, args), "-o", str(tmp_path / "ref")], check=True, capture_output=True)
    from test_distill_export import shard_bytes

    assert shard_bytes(tmp_path / "kd") == shard_bytes(tmp_path / "ref")
