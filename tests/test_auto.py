"""--quantize auto: every candidate measured with the run's metric, the fastest within the budget kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import builders
from onnxcomp.auto import optimize_auto
from onnxcomp.cli import main
from onnxcomp.errors import QualityError


@pytest.fixture
def paths(tmp_path):
    model = tmp_path / "net.onnx"
    onnx.save(builders.resnet_block(seed=2), str(model))
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(10, 3, 16, 16)).astype(np.float32))
    return model, calib


def test_auto_keeps_a_candidate_within_budget_and_reports_every_candidate(paths, tmp_path):
    model, calib = paths
    result = optimize_auto(model, output=tmp_path / "o.onnx", data=calib, target="size",
                           candidates=("int8", "int8-dynamic", "fp16"), latency=False)  # fmt: skip
    table = {c["mode"]: c for c in result.report.artifacts["auto"]["candidates"]}
    assert table["int8-dynamic"]["outcome"] == "no effect"  # a CNN has no MatMul
    kept = [c for c in table.values() if c["outcome"] == "kept"]
    assert len(kept) == 1 and kept[0]["drop"] <= 0.02  # the classification budget (top-1 agreement, held out)
    within = [c for c in table.values() if c["outcome"] in ("kept", "within budget")]
    assert {c["mode"] for c in within} == {"int8", "fp16"}
    assert kept[0]["size_ratio"] == min(c["size_ratio"] for c in within) < 1.0
    assert (tmp_path / "o.onnx").exists()
    onnx.checker.check_model(onnx.load(str(tmp_path / "o.onnx")))


def test_auto_without_data_skips_static_int8(paths, tmp_path):
    model, _ = paths
    result = optimize_auto(model, output=None, candidates=("int8", "fp16"), latency=False)
    table = {c["mode"]: c["outcome"] for c in result.report.artifacts["auto"]["candidates"]}
    assert table == {"int8": "skipped", "fp16": "kept"}


def test_auto_with_no_candidate_in_budget_exits_3_and_writes_nothing(paths, tmp_path, capsys):
    model, calib = paths
    out = tmp_path / "o.onnx"
    code = main([str(a) for a in ["optimize", model, "-o", out, "--calib", calib, "--quantize", "auto",
                                  "--metric", "features", "--max-drop", "0", "--no-latency"]])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 3 and "auto: no candidate is within the quality budget" in err
    assert "int8 over budget" in err and "fp16 over budget" in err
    assert not out.exists()
    with pytest.raises(QualityError):
        optimize_auto(model, output=None, data=calib, candidates=("fp16",), metric="features", max_drop=0.0, latency=False)


def test_auto_on_a_missing_model_is_one_input_error_not_a_table_of_failures(tmp_path, capsys):
    code = main(["optimize", str(tmp_path / "missing.onnx"), "--quantize", "auto"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no candidate" not in err[0]
    assert list(tmp_path.iterdir()) == []
