"""Static int8 quantization on real models, side by side with onnxruntime's quantizer and NNCF.

Run:  python -m benchmarks.bench_quantize [--sections cnn,ocr,calib] [--calib N] [--eval N]

Sections (all in one run by default):

* ``cnn`` — EfficientNet-Lite1 (ImageNet) on crops of real photographs; calibration
  and evaluation crops come from disjoint photographs. Per model: top-1 agreement
  with fp32 where fp32 is confident (top probability >= 0.3), mean KL(fp32 || int8)
  and top-5 containment (fp32's class among the int8 top 5) over all crops, batch-1
  latency / fp32 measured interleaved in one process (2 threads and 1 thread),
  file size, and the quantizer's own wall time and peak RSS (each quantizer runs in
  a subprocess).
* ``ocr`` — PP-OCRv5 recogniser on rendered text lines (disjoint calibration and
  evaluation lines): character accuracy against the rendered text, latency / fp32.
* ``calib`` — cost of onnxcomp's calibration pass (in-graph statistics) against a
  plain inference session over the same 100 and 1000 crops streamed from disk:
  peak RSS and wall/CPU time ratios, each in its own subprocess.

Anchors: onnxruntime ``quantize_static`` (QDQ, per-channel, uint8 activations /
int8 weights; MinMax, Entropy, Percentile; with and without
``quant_pre_process``), and NNCF's ONNX post-training quantization when the
``nncf`` package imports. A quantizer that fails, or whose model onnxruntime
refuses, is reported as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from benchmarks import assets

CONFIDENT = 0.3


# -- workers (run in subprocesses, print one JSON line) ---------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which keeps the parent's)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _feeds_from(path: str, name: str):
    """Feeds from an .npz (stacked, key ``name``) or a folder of .npz files."""
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.glob("*.npz")):
            with np.load(f) as data:
                yield {name: data[name]}
    else:
        with np.load(p) as data:
            stacked = data[name]
        for i in range(len(stacked)):
            yield {name: stacked[i : i + 1]}


def _worker_ort(job: dict) -> dict:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = _feeds_from(job["calib"], job["input"])

        def get_next(self):
            return next(self.it, None)

    source = job["model"]
    if job.get("preprocess"):
        pre = job["out"] + ".pre.onnx"
        quant_pre_process(source, pre)
        source = pre
    quantize_static(
        source, job["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, job["method"]),
    )
    return {}


def _worker_nncf(job: dict) -> dict:
    import nncf

    model = onnx.load(job["model"])
    dataset = nncf.Dataset(list(_feeds_from(job["calib"], job["input"])))
    quantized = nncf.quantize(model, dataset, subset_size=job["samples"])
    onnx.save(quantized, job["out"])
    return {}


def _worker_ours(job: dict) -> dict:
    import onnxcomp
    from onnxcomp.pipelines import pipeline_from_flags

    onnxcomp.optimize(
        job["model"], pipeline_from_flags(quantize=job["mode"]), output=job["out"], data=job["calib"],
        verify=False, latency=False,
    )
    return {}


def _worker_plain(job: dict) -> dict:
    from onnxcomp.data import input_specs, open_data
    from onnxcomp.runtime import create_session

    model = onnx.load(job["model"])
    data = open_data(job["calib"], input_specs(model))
    session = create_session(model)
    count = 0
    for feed in data:
        session.run(None, feed)
        count += 1
    return {"samples": count}


def _worker_calibrate(job: dict) -> dict:
    from onnxcomp.data import input_specs, open_data
    from onnxcomp.ir import import_graph
    from onnxcomp.quantization.calibration import collect_statistics
    from onnxcomp.quantization.placement import PlacementOptions, plan_quantization
    from onnxcomp.quantization.static import observations
    from onnxcomp.shapes import infer_graph_shapes

    model = onnx.load(job["model"])
    graph = import_graph(model)
    infer_graph_shapes(graph, model)
    wanted = observations(plan_quantization(graph, PlacementOptions(), opset=17))
    del graph  # the pass holds its graph; here only the statistics pass is measured
    gc.collect()
    data = open_data(job["calib"], input_specs(model))
    stats = collect_statistics(model, data, wanted)
    return {"samples": stats.samples, "tensors": len(stats.names)}


WORKERS = {"ort": _worker_ort, "nncf": _worker_nncf, "ours": _worker_ours, "plain": _worker_plain, "calibrate": _worker_calibrate}


def _worker_main(job: dict) -> None:
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result = WORKERS[job["kind"]](job)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported in the table
        result = {"ok": False, "error": " ".join(f"{type(err).__name__}: {err}".split())[:160]}
    result.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu, peak_rss_mb=_peak_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)


def run_job(**job) -> dict:
    """Run a worker in a fresh interpreter (so its peak RSS is its own)."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_quantize", "--worker", json.dumps(job)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).resolve().parents[1],
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"ok": False, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]}


# -- evaluation -------------------------------------------------------------------------------


def _session(path, threads=None):
    from onnxcomp.runtime import create_session

    return create_session(str(path), intra_op_threads=threads)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def classifier_metrics(reference: np.ndarray, logits: np.ndarray) -> dict:
    p, q = _softmax(reference), _softmax(logits)
    confident = p.max(axis=1) >= CONFIDENT
    top1 = reference.argmax(1) == logits.argmax(1)
    top5 = np.array([r in np.argsort(-row)[:5] for r, row in zip(reference.argmax(1), logits)])
    kl = np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)
    return {"top1_confident": float(top1[confident].mean()), "confident": int(confident.sum()),
            "kl": float(kl.mean()), "top5": float(top5.mean()), "top1_all": float(top1.mean())}


def latency_ratios(paths: dict[str, Path], feed: dict, threads: int | None) -> dict[str, float]:
    from onnxcomp.latency import measure_latency

    loadable = {}
    for name, path in paths.items():
        try:
            _session(path)
            loadable[name] = str(path)
        except Exception:  # noqa: BLE001, S112 - a model onnxruntime refuses has no latency (reported as FAILED)
            continue
    stats = measure_latency(loadable, feed, intra_op_threads=threads, budget_s=20.0, max_runs=300, min_runs=20)
    base = stats["fp32"].median_ms
    return {name: s.median_ms / base for name, s in stats.items()} | {"fp32_ms": base}


def _size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


def _row(cells, widths):
    return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


# -- sections ---------------------------------------------------------------------------------


def quantizers(kind_input: str, model: Path, calib: str, samples: int, work: Path, modes: list[str], ort_pre: bool) -> dict:
    """Run every quantizer on ``model``; name -> {path, job result}."""
    jobs = {}
    for mode in modes:
        jobs[f"onnxcomp {mode}"] = {"kind": "ours", "mode": mode}
    for method in ("MinMax", "Entropy", "Percentile"):
        jobs[f"ort {method}"] = {"kind": "ort", "method": method}
        if ort_pre:
            jobs[f"ort {method} +pre"] = {"kind": "ort", "method": method, "preprocess": True}
    jobs["nncf"] = {"kind": "nncf", "samples": samples}
    results = {}
    for name, job in jobs.items():
        out = work / (name.replace(" ", "_").replace("+", "") + ".onnx")
        print(f"  quantizing: {name} ...", flush=True)
        result = run_job(model=str(model), calib=calib, input=kind_input, out=str(out), **job)
        if result.get("ok") and out.exists():
            try:
                _session(out)
            except Exception as err:  # noqa: BLE001
                result = {**result, "ok": False, "error": f"onnxruntime refuses the model: {str(err)[:120]}"}
        results[name] = {"path": out, **result}
    return results


def section_cnn(args, work: Path) -> None:
    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    model = assets.efficientnet_lite1_onnx()
    calib = assets.preprocess(assets.photo_crops(args.calib, spec.size, seed=0, split="calib"), spec)
    evaluation = assets.preprocess(assets.photo_crops(args.eval, spec.size, seed=1, split="eval"), spec)
    calib_path = work / "cnn_calib.npz"
    np.savez(calib_path, input=calib)
    print(f"\n== EfficientNet-Lite1: {args.calib} calibration crops, {args.eval} evaluation crops (disjoint photos) ==")
    results = quantizers("input", model, str(calib_path), args.calib, work, args.modes, ort_pre=True)
    reference_session = _session(model)
    reference = np.concatenate([reference_session.run(None, {"input": evaluation[i : i + 1]})[0] for i in range(len(evaluation))])
    metrics = {}
    for name, r in results.items():
        if not r.get("ok"):
            continue
        s = _session(r["path"])
        logits = np.concatenate([s.run(None, {"input": evaluation[i : i + 1]})[0] for i in range(len(evaluation))])
        metrics[name] = classifier_metrics(reference, logits)
    paths = {"fp32": Path(model)} | {n: r["path"] for n, r in results.items() if n in metrics}
    feed = {"input": evaluation[:1]}
    lat2, lat1 = latency_ratios(paths, feed, None), latency_ratios(paths, feed, 1)
    widths = [24, 10, 8, 8, 8, 10, 10, 9, 10, 10]
    print(_row(["model", "top1@conf", "KL", "top5", "top1", "lat 2T", "lat 1T", "size MB", "quant s", "peak MB"], widths))
    print(_row(["fp32", "-", "-", "-", "-", f"{lat2['fp32_ms']:.1f}ms", f"{lat1['fp32_ms']:.1f}ms", f"{_size_mb(Path(model)):.1f}", "-", "-"], widths))
    for name, r in results.items():
        if name not in metrics:
            print(_row([name, "FAILED: " + r.get("error", "?")], [24, 80]))
            continue
        m = metrics[name]
        print(_row([name, f"{m['top1_confident']:.3f}", f"{m['kl']:.4f}", f"{m['top5']:.3f}", f"{m['top1_all']:.3f}",
                    f"{lat2.get(name, float('nan')):.3f}x", f"{lat1.get(name, float('nan')):.3f}x",
                    f"{_size_mb(r['path']):.1f}", f"{r['seconds']:.0f}", f"{r['peak_rss_mb']:.0f}"], widths))
    print(f"(confident crops: {next(iter(metrics.values()))['confident'] if metrics else 0} of {len(evaluation)}; "
          "targets: top1@conf >= 0.97, KL <= 0.03, top5 >= 0.98, latency <= 0.5x)")


def _rec_lines(split: str, n: int, seed: int):
    return [(t, assets.rec_preprocess(assets.render_line(t, seed=seed + i))) for i, t in enumerate(assets.text_lines(n, split))]


def section_ocr(args, work: Path) -> None:
    model = assets.ppocr_model("rec")
    calib_dir = work / "rec_calib"
    calib_dir.mkdir(exist_ok=True)
    for i, (_, x) in enumerate(_rec_lines("calib", args.rec_calib, 0)):
        np.savez(calib_dir / f"{i:04d}.npz", x=x)
    evaluation = _rec_lines("eval", args.rec_eval, 10_000)
    print(f"\n== PP-OCRv5 rec: {args.rec_calib} calibration lines, {args.rec_eval} evaluation lines (disjoint text) ==")
    results = quantizers("x", model, str(calib_dir), args.rec_calib, work, args.modes, ort_pre=True)
    dictionary = assets.ppocr_dictionary()

    def accuracy(path) -> float:
        s = _session(path)
        return float(np.mean([assets.char_accuracy(assets.ctc_greedy_decode(s.run(None, {"x": x})[0], dictionary), t) for t, x in evaluation]))

    fp32 = accuracy(model)
    scores = {n: accuracy(r["path"]) for n, r in results.items() if r.get("ok")}
    paths = {"fp32": Path(model)} | {n: results[n]["path"] for n in scores}
    feed = {"x": next(x for _, x in evaluation if x.shape[-1] == 320)}
    lat2, lat1 = latency_ratios(paths, feed, None), latency_ratios(paths, feed, 1)
    widths = [24, 10, 10, 10, 10, 9, 10, 10]
    print(_row(["model", "char acc", "vs fp32", "lat 2T", "lat 1T", "size MB", "quant s", "peak MB"], widths))
    print(_row(["fp32", f"{fp32:.4f}", "-", f"{lat2['fp32_ms']:.1f}ms", f"{lat1['fp32_ms']:.1f}ms", f"{_size_mb(Path(model)):.1f}", "-", "-"], widths))
    for name, r in results.items():
        if name not in scores:
            print(_row([name, "FAILED: " + r.get("error", "?")], [24, 80]))
            continue
        print(_row([name, f"{scores[name]:.4f}", f"{100 * (scores[name] - fp32):+.2f}pt", f"{lat2.get(name, float('nan')):.3f}x",
                    f"{lat1.get(name, float('nan')):.3f}x", f"{_size_mb(r['path']):.1f}", f"{r['seconds']:.0f}", f"{r['peak_rss_mb']:.0f}"], widths))
    print("(targets: within 0.6 points of fp32, faster than fp32)")


def section_calib(args, work: Path) -> None:
    import onnxcomp

    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    clean = work / "efficientnet_clean.onnx"
    onnxcomp.optimize(str(assets.efficientnet_lite1_onnx()), ["cleanup"], output=clean, verify=False, latency=False)
    counts = [100, args.calib_max]
    folder = work / "calib_cost"
    folder.mkdir(exist_ok=True)
    crops = assets.photo_crops(max(counts), spec.size, seed=2, split="calib")
    for i, crop in enumerate(crops):
        np.save(folder / f"{i:05d}.npy", assets.preprocess([crop], spec))
    del crops
    print("\n== Calibration cost: EfficientNet-Lite1, crops streamed from .npy files, each run in its own process (fastest of 2 alternated runs) ==")
    widths = [10, 12, 12, 10, 12, 12, 10, 10]
    print(_row(["samples", "plain s", "calib s", "wall x", "plain cpu s", "calib cpu s", "cpu x", "RSS x"], widths))
    for count in counts:
        subset = work / f"calib_cost_{count}"
        subset.mkdir(exist_ok=True)
        for i in range(count):
            target = subset / f"{i:05d}.npy"
            if not target.exists():
                os.symlink(folder / f"{i:05d}.npy", target)
        # Alternate the two twice and keep each one's fastest run: the machine is shared, and a
        # load spike during one of them would otherwise decide the ratio.
        runs = [(run_job(kind="plain", model=str(clean), calib=str(subset)), run_job(kind="calibrate", model=str(clean), calib=str(subset))) for _ in range(2)]
        plain = min((p for p, _ in runs), key=lambda r: r.get("seconds", float("inf")))
        calib = min((c for _, c in runs), key=lambda r: r.get("seconds", float("inf")))
        if not (plain.get("ok") and calib.get("ok")):
            print(f"{count}: failed: {plain.get('error') or calib.get('error')}")
            continue
        print(_row([count, f"{plain['seconds']:.1f}", f"{calib['seconds']:.1f}", f"{calib['seconds'] / plain['seconds']:.2f}",
                    f"{plain['cpu_seconds']:.1f}", f"{calib['cpu_seconds']:.1f}", f"{calib['cpu_seconds'] / plain['cpu_seconds']:.2f}",
                    f"{calib['peak_rss_mb'] / plain['peak_rss_mb']:.3f}"], widths))
        print(f"           peak RSS: plain {plain['peak_rss_mb']:.0f} MB, calibration {calib['peak_rss_mb']:.0f} MB "
              f"({calib['tensors']} tensors observed)")
    print("(targets: RSS <= 1.2x plain and flat from 100 to 1000 samples; time <= 1.5x plain)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="cnn,ocr,calib")
    parser.add_argument("--modes", default="int8,int8-accurate", help="onnxcomp --quantize modes to compare")
    parser.add_argument("--calib", type=int, default=100, help="calibration crops (cnn)")
    parser.add_argument("--eval", type=int, default=400, help="evaluation crops (cnn)")
    parser.add_argument("--rec-calib", type=int, default=60)
    parser.add_argument("--rec-eval", type=int, default=100)
    parser.add_argument("--calib-max", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(json.loads(args.worker))
        return
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sections = {"cnn": section_cnn, "ocr": section_ocr, "calib": section_calib}
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        for name in args.sections.split(","):
            sections[name.strip()](args, Path(tmp))


if __name__ == "__main__":
    main()
