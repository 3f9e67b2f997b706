"""Determinism and interruption."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import onnx

import builders
from onnxcomp.cli import main

TIMING_KEYS = {"seconds", "latency_before", "latency_after", "latency_ratio"}


def _strip_timings(value):
    if isinstance(value, dict):
        return {k: _strip_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip_timings(v) for v in value]
    return value


def test_same_input_and_seed_give_identical_model_and_report(tmp_path, capsys):
    source = tmp_path / "m.onnx"
    onnx.save(builders.resnet_block(seed=4), str(source))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    outputs = []
    for run in range(2):
        out, report = tmp_path / f"o{run}.onnx", tmp_path / f"r{run}.json"
        code = main([str(a) for a in ["optimize", source, "-o", out, "--calib", tmp_path / "d.npz", "--report", report, "--seed", "3"]])
        assert code == 0, capsys.readouterr().err
        report_data = json.loads(report.read_text())
        report_data["output"] = None
        outputs.append((out.read_bytes(), _strip_timings(report_data)))
    assert outputs[0][0] == outputs[1][0], "output models must be byte-identical"
    assert outputs[0][1] == outputs[1][1], "reports must match apart from timings"


def _busy_run(tmp_path):
    """Start an optimize run that takes tens of seconds (a heavy conv net verified on 400 samples)."""
    rng = np.random.default_rng(0)
    nodes = [
        onnx.helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        onnx.helper.make_node("Relu", ["a"], ["r"]),
        onnx.helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [builders.tensor("w1", rng.normal(size=(64, 3, 3, 3)).astype(np.float32)), builders.tensor("w2", rng.normal(size=(64, 64, 3, 3)).astype(np.float32))]
    model = builders.model(nodes, [builders.value("x", ["N", 3, 96, 96])], [builders.value("y", ["N", 64, 96, 96])], inits)
    source = tmp_path / "m.onnx"
    onnx.save(model, str(source))
    np.savez(tmp_path / "d.npz", x=np.zeros((400, 3, 96, 96), np.float32))
    return subprocess.Popen(
        [sys.executable, "-m", "onnxcomp", "optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--calib", str(tmp_path / "d.npz"), "--verify-samples", "400", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_foreground_signals,
    )


def _foreground_signals():
    """In the child before exec: SIGINT as in a terminal's foreground job. A child inherits ignored
    signals and Python leaves an ignored SIGINT ignored, as a background job should; a suite started
    in the background (``pytest &`` in a script) has it ignored and would wrongly fail here."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigterm_leaves_nothing_behind(tmp_path):
    """SIGTERM while optimize runs: exit 130, one line, no output or temp file."""
    process = _busy_run(tmp_path)
    time.sleep(5.0)
    assert process.poll() is None, "the run must still be busy when the signal arrives"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["onnxcomp: error: interrupted by signal SIGTERM; nothing was written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]


def test_sigint_is_reported_like_sigterm(tmp_path):
    process = _busy_run(tmp_path)
    time.sleep(5.0)
    assert process.poll() is None, "the run must still be busy when the signal arrives"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == ["onnxcomp: error: interrupted; nothing was written"]
    assert not (tmp_path / "o.onnx").exists()


def test_ctrl_c_while_the_libraries_load_is_one_line():
    # Ctrl-C arriving while onnxruntime imports (the first second of every run), made deterministic
    # by an import hook that raises KeyboardInterrupt there.
    script = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
import onnxcomp
assert "onnx" not in sys.modules and "numpy" not in sys.modules, "import onnxcomp must stay light"
from onnxcomp.__main__ import entry
sys.argv = ["onnxcomp", "inspect", "missing.onnx"]
entry()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == ["onnxcomp: error: interrupted; nothing was written"]
