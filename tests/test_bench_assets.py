"""Quick checks of benchmarks/assets (real inputs for benchmarks), without torch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

try:
    import benchmarks.assets  # noqa: F401
except ImportError:  # pytest run without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.assets import cache, ocr, text  # noqa: E402

DICTIONARY = ["blank", "a", "b", "c", " "]


def _one_hot(indices: list[int], classes: int) -> np.ndarray:
    logits = np.full((len(indices), classes), -5.0, dtype=np.float32)
    logits[np.arange(len(indices)), indices] = 5.0
    return logits


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks():
    logits = _one_hot([0, 1, 1, 0, 1, 2, 2, 4, 3, 0, 0], len(DICTIONARY))
    assert ocr.ctc_greedy_decode(logits, DICTIONARY) == "aab c"
    assert ocr.ctc_greedy_decode(logits[None], DICTIONARY) == "aab c"
    assert ocr.ctc_greedy_decode(_one_hot([0, 0, 0], 5), DICTIONARY) == ""


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        ("kitten", "kitten", 1.0),
        ("sitting", "kitten", 0.5),  # 3 edits / 6 characters
        ("kitten", "sitting", 1 - 3 / 7),
        ("", "abcd", 0.0),
        ("abcd", "", 0.0),
        ("", "", 1.0),
        ("xxxxxxxxxxxx", "ab", 0.0),  # clipped at 0
        ("helo world", "hello world", 1 - 1 / 11),
    ],
)
def test_char_accuracy(pred, truth, expected):
    assert ocr.char_accuracy(pred, truth) == pytest.approx(expected)


def test_resize_bilinear_sampling_grid():
    row = np.array([[0, 100]], dtype=np.uint8)
    # OpenCV half-pixel grid: x' = (x + 0.5) / 2 - 0.5, clamped at the borders.
    np.testing.assert_array_equal(ocr.resize_bilinear(row, 4, 1), [[0, 25, 75, 100]])
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ocr.resize_bilinear(image, 9, 7), image)
    flat = np.full((10, 20, 3), 77, dtype=np.uint8)
    assert (ocr.resize_bilinear(flat, 7, 3) == 77).all()


def test_rec_preprocess_shape_and_padding():
    image = np.full((30, 600, 3), 255, dtype=np.uint8)
    x = ocr.rec_preprocess(image)
    assert x.shape == (1, 3, 48, 960) and x.dtype == np.float32
    assert np.allclose(x, 1.0)
    short = ocr.rec_preprocess(np.zeros((40, 20, 3), dtype=np.uint8))
    assert short.shape == (1, 3, 48, 320)
    assert np.allclose(short[..., :24], -1.0) and np.allclose(short[..., 24:], 0.0)


def test_cache_publishes_only_complete_entries(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_VAR, str(tmp_path))

    def broken(out: Path) -> None:
        out.write_bytes(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.cached("model.onnx", broken)
    assert list(tmp_path.iterdir()) == []
    path = cache.cached("model.onnx", lambda out: out.write_bytes(b"done"))
    assert path.read_bytes() == b"done"
    assert cache.cached("model.onnx", broken) == path  # cache hit, no rebuild
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_documentation_sentences_are_disjoint_and_stable():
    calib = text.documentation_sentences(300, "calib")
    evaluation = text.documentation_sentences(300, "eval")
    assert not set(calib) & set(evaluation)
    assert text.documentation_sentences(10, "calib") == calib[:10]
    assert all(5 <= len(s.split()) <= 40 and s.endswith(".") for s in calib)


def test_photo_crops_deterministic_and_splits_disjoint():
    from benchmarks.assets import images

    names = {split: set(images.photo_names(split)) for split in images.SPLITS}
    assert not names["calib"] & names["eval"] and not names["holdout"] & (names["calib"] | names["eval"])
    assert {"horse", "color"} <= names["holdout"]  # scikit-image's own; others need their packages
    crops = images.photo_crops(4, size=64, seed=3, split="eval")
    assert [c.shape for c in crops] == [(64, 64, 3)] * 4 and crops[0].dtype == np.uint8
    again = images.photo_crops(2, size=64, seed=3, split="eval")
    assert all(np.array_equal(a, b) for a, b in zip(crops, again))
    spec = images.ImagePreprocess(size=64, mean=(127.0,) * 3, std=(128.0,) * 3)
    x = images.preprocess(crops, spec)
    assert x.shape == (4, 3, 64, 64) and x.dtype == np.float32 and np.abs(x).max() <= 1.0


def test_photo_folds_partition_the_pool_and_feed_photo_crops():
    from benchmarks.assets import images

    pool = [name for split in images.SPLITS for name in images.photo_names(split)]
    folds = images.photo_folds(3)
    held_out = [name for _, held in folds for name in held]
    assert sorted(held_out) == sorted(pool)  # every photograph held out exactly once
    for calib, held in folds:
        assert not set(calib) & set(held) and sorted(calib + held) == sorted(pool)
    calib, held = folds[0]
    crops = images.photo_crops(len(calib), size=32, seed=5, photos=calib)
    by_split = images.photo_crops(len(calib), size=32, seed=5, split="calib")
    assert len(crops) == len(calib) and not np.array_equal(crops[0], by_split[0])  # own random stream
    assert all(np.array_equal(a, b) for a, b in zip(crops, images.photo_crops(3, size=32, seed=5, photos=calib)))
    with pytest.raises(ValueError, match="not available"):
        images.photo_crops(1, size=32, photos=["no_such_photo"])
    with pytest.raises(ValueError, match="k must be"):
        images.photo_folds(1)


def test_ppocr_rec_reads_rendered_lines():
    ort = pytest.importorskip("onnxruntime")
    from benchmarks.assets import models

    dictionary = models.ppocr_dictionary()
    session = ort.InferenceSession(
        str(models.ppocr_model("rec")), providers=["CPUExecutionProvider"]
    )
    assert session.get_outputs()[0].shape[-1] == len(dictionary)
    lines = text.text_lines(30, "eval")
    scores = []
    for seed, line in enumerate(lines):
        probs = session.run(None, {"x": ocr.rec_preprocess(ocr.render_line(line, seed=seed))})[0]
        scores.append(ocr.char_accuracy(ocr.ctc_greedy_decode(probs, dictionary), line))
    assert np.mean(scores) > 0.9
