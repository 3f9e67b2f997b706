"""Pruning from the command line: --prune, --prune-plan, inspect --prunable."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
from onnxcomp.cli import main


def _cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_path(tmp_path):
    """x[N,4,6,6] -> Conv 3x3 (32) -> Relu -> Conv 1x1 (32) -> Relu -> Conv 1x1 (3) -> y."""
    rng = np.random.default_rng(0)
    inits = [
        builders.tensor("w1", rng.normal(0, 0.3, (32, 4, 3, 3)).astype(np.float32)),
        builders.tensor("w2", rng.normal(0, 0.3, (32, 32, 1, 1)).astype(np.float32)),
        builders.tensor("w3", rng.normal(0, 0.3, (3, 32, 1, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    m = builders.model(nodes, [builders.value("x", ["N", 4, 6, 6])], [builders.value("y", ["N", 3, 6, 6])], inits)
    path = tmp_path / "net.onnx"
    onnx.save(m, str(path))
    return path


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).normal(size=(12, 4, 6, 6)).astype(np.float32))
    return path


def test_prune_with_calibration_writes_model_and_plan(model_path, calib_path, tmp_path, capsys):
    out, plan, report = tmp_path / "out.onnx", tmp_path / "plan.json", tmp_path / "report.json"
    code, _, err = _cli(
        ["optimize", model_path, "--prune", "0.5", "--calib", calib_path, "--prune-plan", plan, "-o", out,
         "--report", report, "--no-latency", "--accept-drop"],  # half of a random net: over any budget
        capsys,
    )  # fmt: skip
    assert code == 0, err
    step = next(s for s in json.loads(report.read_text())["steps"] if s["name"] == "prune-channels")
    assert step["modified"] and step["summary"]["criterion"] == "contribution"
    written = json.loads(plan.read_text())
    assert written["format"] == "onnxcomp-pruning-plan"
    assert len(written["weights"]["w1"]["keep"]["0"]) == 16
    pruned = onnx.load(str(out))
    assert {t.name: list(t.dims) for t in pruned.graph.initializer}["w2"] == [16, 16, 1, 1]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "1.5"], "--prune expects a ratio in [0, 1)"),
        (["--prune-plan", "plan.json"], "--prune-plan needs --prune"),
        (["--passes", "cleanup,prune-channels", "--prune-plan", "plan.json"], None),
    ],
)
def test_bad_prune_options_give_one_line_and_no_output(model_path, tmp_path, capsys, args, message):
    out = tmp_path / "never.onnx"
    args = [a if a != "plan.json" else tmp_path / "plan.json" for a in args]
    code, _, err = _cli(["optimize", model_path, *args, "-o", out, "--no-latency"], capsys)
    if message is None:  # a passes list with prune-channels at its default ratio: the plan is written
        assert code == 0 and (tmp_path / "plan.json").exists()
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "plan.json").exists()


def test_inspect_prunable_lists_groups_and_frozen_reasons(model_path, capsys):
    code, stdout, _ = _cli(["inspect", model_path, "--prunable"], capsys)
    assert code == 0
    assert "3 dependency groups, 2 prunable, 64 prunable units" in stdout
    assert "frozen: reaches graph output 'y'" in stdout
    code, stdout, _ = _cli(["inspect", model_path, "--prunable", "--json"], capsys)
    data = json.loads(stdout)
    assert [g["name"] for g in data["groups"]] == ["conv1", "conv2", "conv3"]
    assert data["prunable_units"] == 64
