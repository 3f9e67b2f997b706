"""Bad input to the compressing pipelines (--quantize, --prune): one line, exit 2, nothing written.

Complements tests/test_cli.py (bad model files, data and recipes for the
default pipeline) with what only the compressing passes see: missing or
unfit calibration data, out-of-range options, and determinism of the
calibrated result.
"""

import hashlib
import re

import numpy as np
import onnx
import pytest

import builders
from onnxcomp.cli import main


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(builders.resnet_block(seed=3), str(path))
    return path


def _calib(tmp_path, name="calib.npz", shape=(8, 3, 16, 16), dtype=np.float32, fill=None):
    data = np.random.default_rng(0).normal(size=shape).astype(dtype)
    if fill is not None:
        data[...] = fill
    path = tmp_path / name
    np.savez(path, x=data)
    return path


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


CASES = {
    "int8-without-data": (["--quantize", "int8"], None, "needs calibration data: give --calib"),
    "unknown-mode": (["--quantize", "int3"], None, "unknown --quantize mode 'int3'; valid modes: .*int8"),
    "ratio-too-large": (["--prune", "1.5"], None, "ratio"),
    "ratio-negative": (["--prune", "-0.1"], None, "ratio"),
    "int8-wrong-shape": (["--quantize", "int8"], {"shape": (8, 3, 8, 8)}, "axis 2 must be 16"),
    "int8-wrong-dtype": (["--quantize", "int8"], {"dtype": np.float64}, "dtype float64, the model expects float32"),
    "int8-nan": (["--quantize", "int8"], {"fill": np.nan}, "contains NaN"),
    "prune-nan": (["--prune", "0.3"], {"fill": np.inf}, "contains Inf"),
    "int8-empty": (["--quantize", "int8"], {"shape": (0, 3, 16, 16)}, "no samples"),
    "prune-and-recipe": (["--prune", "0.3", "--passes", "cleanup"], None, "give only one of"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_compression_input(model_path, tmp_path, capsys, case):
    flags, data, message = CASES[case]
    extra = ["--calib", _calib(tmp_path, **data)] if data is not None else []
    before = _snapshot(tmp_path)
    code, _, err = _run(["optimize", model_path, "-o", tmp_path / "out.onnx", "--no-latency", *flags, *extra], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error:") and re.search(message, lines[0]), err
    assert _snapshot(tmp_path) == before, "nothing written, nothing modified"


@pytest.mark.parametrize("flags", [["--quantize", "int8"], ["--prune", "0.25"]], ids=["int8", "prune"])
def test_calibrated_results_are_deterministic(model_path, tmp_path, capsys, flags):
    calib = _calib(tmp_path)
    outputs = []
    for run in range(2):
        out = tmp_path / f"out{run}.onnx"
        code, _, err = _run(["optimize", model_path, "-o", out, "--calib", calib, "--no-latency", "-q", *flags], capsys)
        assert code == 0, err
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1], "same input, options and seed must give a byte-identical model"
