"""No run loses a user's file (issue 17, "data loss").

Outputs (-o, its external-data file, --report, --prune-plan) never alias an
input (the model, its external data, --calib, --recipe) or each other, by
path, hard link or symlink: refused with one line, exit 2, before any work,
nothing written. A report that cannot be written fails before the model is
committed; non-finite gate thresholds are refused; a killed run's temporary
files are removed by the next run writing the same output; ``distill export``
removes under ``.partial/`` only what it created.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
import onnxcomp
from onnxcomp.cli import main
from onnxcomp.errors import OutputError


@pytest.fixture
def folder(tmp_path):
    """A model, the same model with its weights in ``b.onnx.data``, calibration data and a recipe."""
    model = builders.resnet_block(seed=3)
    onnx.save(model, str(tmp_path / "m.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="b.onnx.data", size_threshold=0)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(8, 3, 16, 16)).astype(np.float32))
    (tmp_path / "r.yaml").write_text("passes: [cleanup]\n")
    return tmp_path


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _run(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


ALIASES = {
    # name: (model, extra arguments, part of the message)
    "report-is-input": ("m.onnx", ["-o", "o.onnx", "--report", "m.onnx"], "the report .* is the same file as the input model"),
    "report-is-calib": ("m.onnx", ["-o", "o.onnx", "--calib", "d.npz", "--report", "d.npz"], "calibration data"),
    "report-is-recipe": ("m.onnx", ["-o", "o.onnx", "--recipe", "r.yaml", "--report", "r.yaml"], "the recipe"),
    "report-is-input-data": ("ext.onnx", ["-o", "o.onnx", "--report", "b.onnx.data"], "input model's external data"),
    "report-is-output": ("m.onnx", ["-o", "o.onnx", "--report", "o.onnx"], "are the same file"),
    "plan-is-input": ("m.onnx", ["-o", "o.onnx", "--prune", "0.3", "--prune-plan", "m.onnx"], "the pruning plan .* input model"),
    "plan-is-calib": ("m.onnx", ["-o", "o.onnx", "--prune", "0.3", "--calib", "d.npz", "--prune-plan", "d.npz"], "calibration data"),
    "plan-is-output": ("m.onnx", ["-o", "o.onnx", "--prune", "0.3", "--prune-plan", "o.onnx"], "are the same file"),
    "plan-is-report": ("m.onnx", ["-o", "o.onnx", "--prune", "0.3", "--prune-plan", "x.json", "--report", "x.json"], "are the same file"),
    "output-is-calib": ("m.onnx", ["-o", "d.npz", "--calib", "d.npz"], "the output model .* calibration data"),
    "output-is-recipe": ("m.onnx", ["-o", "r.yaml", "--recipe", "r.yaml"], "the recipe"),
    "output-is-input-data": ("ext.onnx", ["-o", "b.onnx.data"], "the output model .* input model's external data"),
    "output-data-is-input-data": ("ext.onnx", ["-o", "b.onnx"], "the output's external-data file .* input model's external data"),
    "output-data-is-input": ("e.onnx.data", ["-o", "e.onnx"], "the output's external-data file .* the input model"),
}


@pytest.mark.parametrize("case", sorted(ALIASES))
def test_outputs_never_alias_inputs_or_each_other(folder, capsys, monkeypatch, case):
    model, extra, message = ALIASES[case]
    if model == "e.onnx.data":  # a model file named like the data file of the output
        (folder / "ext.onnx").rename(folder / model)
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    started = time.perf_counter()
    code, err = _run(["optimize", model, "--no-latency", "-q", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error:") and re.search(message, lines[0]), err
    assert _snapshot(folder) == before, "nothing written, nothing modified"
    assert time.perf_counter() - started < 10, "refused before any work"


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_links_to_an_input_count_as_the_input(folder, capsys, link):
    alias = folder / "alias.onnx"
    (os.link if link == "hard" else os.symlink)(folder / "m.onnx", alias)
    before = _snapshot(folder)
    code, err = _run(["optimize", folder / "m.onnx", "-o", folder / "o.onnx", "--report", alias, "-q"], capsys)
    assert code == 2 and "is the same file as the input model" in err, err
    assert _snapshot(folder) == before


def test_output_inside_the_calibration_folder_keeps_its_samples(folder, capsys):
    samples = folder / "samples"
    samples.mkdir()
    np.save(samples / "0.npy", np.zeros((1, 3, 16, 16), np.float32))
    before = _snapshot(folder)
    code, err = _run(["optimize", folder / "m.onnx", "-o", samples / "0.npy", "--calib", samples, "-q"], capsys)
    assert code == 2 and "would overwrite a file of the calibration data" in err, err
    assert _snapshot(folder) == before


def test_api_refuses_aliases_before_loading(folder):
    before = _snapshot(folder)
    with pytest.raises(OutputError, match="calibration data"):
        onnxcomp.optimize(folder / "m.onnx", output=folder / "d.npz", data=folder / "d.npz", latency=False)
    with pytest.raises(OutputError, match="external data"):
        onnxcomp.optimize(folder / "ext.onnx", output=folder / "b.onnx", latency=False)
    from onnxcomp.model_io import load_model

    loaded = load_model(folder / "ext.onnx")  # weights pinned to b.onnx.data: still an input
    with pytest.raises(OutputError, match="external data"):
        onnxcomp.optimize(loaded, output=folder / "b.onnx.data", latency=False)
    assert _snapshot(folder) == before


def test_overwrite_input_still_replaces_the_input(folder, capsys):
    code, err = _run(["optimize", folder / "ext.onnx", "-o", folder / "ext.onnx", "--overwrite-input", "--no-latency", "-q"], capsys)
    assert code == 0, err
    onnx.checker.check_model(str(folder / "ext.onnx"))


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_report_that_cannot_be_written_fails_before_the_model_is_written(folder, capsys, where):
    report = folder / "nowhere" / "r.json" if where == "missing-folder" else folder
    before = _snapshot(folder)
    code, err = _run(["optimize", folder / "m.onnx", "-o", folder / "o.onnx", "--report", report, "--no-latency", "-q"], capsys)
    assert code == 2, err
    assert err.startswith("onnxcomp: error:") and len(err.strip().splitlines()) == 1, err
    assert _snapshot(folder) == before, "the model must not be written when its report cannot be"


@pytest.mark.parametrize(
    "flag",
    ["--max-abs-error=nan", "--min-cosine=nan", "--max-abs-error=inf", "--min-cosine=-inf"],
)
def test_non_finite_thresholds_are_refused(folder, capsys, flag):
    before = _snapshot(folder)
    code, err = _run(["optimize", folder / "m.onnx", "-o", folder / "o.onnx", flag, "--no-latency", "-q"], capsys)
    assert code == 2, err
    assert "must be a finite number" in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(folder) == before


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_temp_files_of_a_killed_run_are_removed_by_the_next(tmp_path, capsys):
    """kill -9 while the staged output is verified leaves a temp file; the next run to that output removes it."""
    rng = np.random.default_rng(0)
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Relu", ["a"], ["r"]),
        onnx.helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [builders.tensor("w1", rng.normal(size=(64, 3, 3, 3)).astype(np.float32)),
             builders.tensor("w2", rng.normal(size=(64, 64, 3, 3)).astype(np.float32))]
    model = builders.model(nodes, [builders.value("x", ["N", 3, 96, 96])], [builders.value("y", ["N", 64, 96, 96])], inits)
    source, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(model, str(source))
    np.savez(tmp_path / "d.npz", x=np.zeros((400, 3, 96, 96), np.float32))
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxcomp", "optimize", str(source), "-o", str(out), "--calib", str(tmp_path / "d.npz"),
         "--verify-samples", "400", "--no-latency", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not _temps(tmp_path) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _temps(tmp_path), "the run must be verifying its staged output when it is killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert _temps(tmp_path) and not out.exists()
    code, err = _run(["optimize", source, "-o", out, "--no-verify", "--no-latency", "-q"], capsys)
    assert code == 0, err
    assert _temps(tmp_path) == [], "the killed run's temporary files are removed"
    assert out.exists()


def test_temp_files_of_a_live_run_are_kept(folder, capsys):
    from onnxcomp.model_io import TEMP_TAG, _host_tag

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = folder / f".o.onnx.{TEMP_TAG}-{_host_tag()}-{live.pid}-abcd1234.tmp"
        theirs.write_bytes(b"another run's staged model")
        code, err = _run(["optimize", folder / "m.onnx", "-o", folder / "o.onnx", "--no-verify", "--no-latency", "-q"], capsys)
        assert code == 0, err
        assert theirs.exists(), "a running process's temporary file is not ours to remove"
    finally:
        live.kill()
        live.wait()


def test_distill_export_removes_only_its_own_partials(tmp_path):
    from onnxcomp.distill import export_teacher

    teacher = tmp_path / "teacher.onnx"
    onnx.save(builders.resnet_block(seed=1), str(teacher))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "export"
    partial = out / ".partial"
    mine = [partial / "000000.mine", partial / "000000", partial / "notes"]
    for folder in mine:
        folder.mkdir(parents=True)
        (folder / "keep.txt").write_text("a user's file")
    (partial / "000000.txt").write_text("a user's file")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = partial / f"000000.{socket.gethostname()}.{int(gone.stdout)}.deadbeef"
    stale.mkdir()
    (stale / "t000.npy").write_bytes(b"half a shard")
    summary = export_teacher(teacher, data, out)
    assert summary.complete
    for folder in mine:
        assert (folder / "keep.txt").read_text() == "a user's file", f"{folder.name} must survive"
    assert (partial / "000000.txt").exists()
    assert not stale.exists(), "the leftover of an interrupted export of this shard is removed"
