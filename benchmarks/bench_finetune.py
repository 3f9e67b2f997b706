"""Training in the loop on real models: pruning and int8 without and with ``--finetune``.

Run:  python -m benchmarks.bench_finetune [--sections sweep,prune,qat] [--minutes M] [--threads 1] [--json PATH]

Everything goes through the Python API as a user would call it:
``onnxcomp.optimize(model, pipeline_from_flags(prune=..., quantize=..., finetune={...}), data=...,
verify_data=..., accept_drop=True)``; the quality numbers below are measured here, on data no pass saw.

Sections (all in one run by default):

* ``sweep`` — chooses the fine-tune learning rate for ``prune`` without looking at its test
  photographs: the model pruned at 30 % (calibrated on the first 64 crops, as ``prune`` does) is
  fine-tuned for a short budget per learning rate on crops of the ``calib`` photographs only and
  validated on crops of the ``eval`` photographs (top-1 agreement on confident crops, KL; the lowest
  KL wins: top-1 on the few confident crops moves in steps of 1/n). ``prune`` uses the chosen rate
  unless ``--lr`` is given.
* ``prune`` — EfficientNet-Lite1, ``--prune R --calib`` (``prune-channels`` ratio R, its first 64
  samples calibrate, as in ``bench_prune``) without and with ``finetune`` (distillation from the
  unpruned model on unlabeled photo crops, no labels). Training crops: the 64 ``calib`` crops of
  ``bench_prune`` followed by random crops of the ``calib`` and ``eval`` photographs (18
  photographs); the fine-tune pass holds one in five out for early stopping. Test: crops of the
  ``holdout`` photographs (other packages' photographs, never seen by pruning or training): top-1
  agreement with the unpruned model on confident crops (top probability >= 0.3) and on all crops,
  mean KL(unpruned || model); batch-1 latency over the unpruned model (interleaved, 1 thread and
  default threads); wall time and peak RSS of the optimize call; the fine-tune's own steps, samples,
  held-out loss and stop reason.
* ``qat`` — PP-OCRv5 recogniser, ``--quantize int8`` without and with ``--finetune`` (QAT: fake
  quantization at the quantizer's Q/DQ places, straight-through gradients; the weights live in
  Constant nodes). Rendered text lines: training lines from the ``calib`` split, test lines from the
  ``eval`` split (disjoint sentences, other rendering seeds). Character accuracy against the rendered
  text, exact-line agreement and character accuracy against fp32's reading, latency over fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx

import onnxcomp
from benchmarks import assets
from benchmarks.bench_prune import _logits, _per_crop, _table
from onnxcomp.latency import measure_latency
from onnxcomp.pipelines import pipeline_from_flags
from onnxcomp.runtime import create_session

PRUNE_CALIB = 64  # prune-channels' calib_samples: the first 64 training crops calibrate the pruning


# -- measuring ------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


class _PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        self.base = self.peak = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


def _run(model, spec, data, verify_data, threads: int | None):
    """One optimize call as a user would make it; returns (result, seconds, peak RSS MB, RSS before MB)."""
    start = time.perf_counter()
    with _PeakRss() as rss:
        result = onnxcomp.optimize(model, spec, data=data, verify_data=verify_data, accept_drop=True, latency=False)
    return result, time.perf_counter() - start, rss.peak, rss.base


def _finetune_info(result) -> dict:
    art = result.report.artifacts.get("finetune")
    if not art:
        return {}
    keys = ("steps", "samples", "epochs", "stopped", "heldout_before", "heldout_after", "best_step",
            "loss_first", "loss_last", "trained_tensors", "trained_elements", "batching")  # fmt: skip
    return {k: art.get(k) for k in keys} | {"ft_seconds": art.get("seconds")}


def _latency(models: dict[str, onnx.ModelProto], feed, threads: int | None, budget: float) -> dict[str, float]:
    timings = measure_latency(models, feed, budget_s=budget, max_runs=300, intra_op_threads=threads, reference="base")
    return {name: t.ratio for name, t in timings.items()} | {"base_ms": timings["base"].median_ms}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


TRAINING_COLUMNS = ["optimize s", "fine-tune s", "steps", "samples", "held-out loss", "stopped", "peak RSS MB"]


def _training_cells(r: dict) -> list:
    """The cells of :data:`TRAINING_COLUMNS` for one row."""
    held = f"{_fmt(r.get('heldout_before'), '.4f')} -> {_fmt(r.get('heldout_after'), '.4f')}" if r["finetune"] else "-"
    return [f"{r['seconds']:.0f}", _fmt(r.get("ft_seconds"), ".0f"), r.get("steps", "-"), r.get("samples", "-"), held,
            r.get("stopped") or "-", _fmt(r["peak_rss_mb"], ".0f")]  # fmt: skip


# -- EfficientNet-Lite1 ---------------------------------------------------------------------------


def _agreement(ref: np.ndarray, out: np.ndarray) -> dict:
    confident, same, kl = _per_crop(ref, out)  # confidence threshold 0.3, as bench_prune
    return {"top1_confident": float(same[confident].mean()), "top1_all": float(same.mean()), "kl": float(kl.mean()),
            "confident": int(confident.sum())}  # fmt: skip


def _crops(n: int, seed: int, *, split: str | None = None, photos: list[str] | None = None) -> np.ndarray:
    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    if n <= 0:
        return np.zeros((0, 3, spec.size, spec.size), np.float32)
    return assets.preprocess(assets.photo_crops(n, spec.size, seed=seed, split=split or "calib", photos=photos), spec)


def _feeds(x: np.ndarray) -> list[dict]:
    return [{"input": x[i : i + 1]} for i in range(len(x))]


def _base_model(feed) -> onnx.ModelProto:
    path = assets.efficientnet_lite1_onnx()
    return onnxcomp.optimize(str(path), ["cleanup"], verify=False, latency=False, input_shapes={"input": feed["input"].shape}).model


def sweep_section(args, state: dict) -> dict:
    """Learning rates for the prune section, chosen on photographs that are neither trained on nor tested."""
    from onnxcomp.train import finetune

    calib = _crops(PRUNE_CALIB, seed=0, split="calib")
    train = np.concatenate([calib, _crops(args.sweep_train - PRUNE_CALIB, seed=11, split="calib")])
    val = _crops(args.val, seed=12, split="eval")
    base = _base_model({"input": val[:1]})
    pruned = onnxcomp.optimize(base, pipeline_from_flags(prune=args.ratio), data=_feeds(train), verify=False,
                               latency=False).model  # fmt: skip
    ref = _logits(base, val)
    rows = [{"lr": None, **_agreement(ref, _logits(pruned, val)), "seconds": 0.0}]
    for lr in args.lrs:
        model, report = finetune(pruned, base, _feeds(train), minutes=args.sweep_minutes, epochs=100, lr=lr,
                                 batch_size=args.batch, threads=args.threads, temperature=args.temperature)  # fmt: skip
        rows.append({"lr": lr, **_agreement(ref, _logits(model, val)), "seconds": report.seconds, "steps": report.steps,
                     "samples": report.samples, "loss_first": report.loss_first, "loss_last": report.loss_last})  # fmt: skip
        print(f"  sweep lr {lr:g}: {rows[-1]}", flush=True)
    # KL over all validation crops decides: top-1 on the few confident crops moves in steps of 1/n.
    best = min(rows[1:], key=lambda r: r["kl"])
    state["lr"] = best["lr"]
    return {"train": len(train), "val": len(val), "minutes": args.sweep_minutes, "ratio": args.ratio, "rows": rows,
            "best_lr": best["lr"]}  # fmt: skip


def print_sweep(result: dict) -> None:
    print(
        f"\n## Learning-rate sweep: EfficientNet-Lite1 at {result['ratio']:.0%}, {result['train']} training crops of the "
        f"calib photographs, {result['minutes']:g} min each; validation: {result['val']} crops of the eval photographs"
    )
    header = ["lr", "val top-1 @ conf", "val top-1 all", "val KL", "steps", "samples", "train loss first -> last", "s"]
    rows = [
        ["no fine-tune" if r["lr"] is None else f"{r['lr']:g}", f"{r['top1_confident']:.3f}", f"{r['top1_all']:.3f}",
         f"{r['kl']:.3f}", r.get("steps", "-"), r.get("samples", "-"),
         f"{_fmt(r.get('loss_first'), '.4f')} -> {_fmt(r.get('loss_last'), '.4f')}", f"{r['seconds']:.0f}"]
        for r in result["rows"]
    ]  # fmt: skip
    print(_table(header, rows))
    print(f"chosen lr: {result['best_lr']:g}")


def prune_section(args, state: dict) -> dict:
    calib = _crops(PRUNE_CALIB, seed=0, split="calib")
    photos = assets.photo_names("calib") + assets.photo_names("eval")
    train = np.concatenate([calib, _crops(args.train - PRUNE_CALIB, seed=21, photos=photos)])
    test = _crops(args.test, seed=3, split="holdout")
    feed = {"input": test[:1]}
    base = _base_model(feed)
    ref = _logits(base, test)
    lr = args.lr or state.get("lr") or 1e-4
    options = {"minutes": args.minutes, "epochs": args.epochs, "lr": lr, "batch_size": args.batch, "threads": args.threads,
               "temperature": args.temperature}
    models, rows = {"base": base}, []
    for ratio in args.ratios:
        for label, finetune in (("--prune", None), ("--prune --finetune", options)):
            result, seconds, peak, before = _run(base, pipeline_from_flags(prune=ratio, finetune=finetune), _feeds(train),
                                                 _feeds(test), args.threads)  # fmt: skip
            name = f"{label} {ratio:.1f}"
            models[name] = result.model
            if args.save:
                onnx.save(result.model, str(args.save / f"efficientnet_lite1_{name.replace(' ', '_').strip('-')}.onnx"))
            rows.append({"model": name, "ratio": ratio, "finetune": finetune is not None, **_agreement(ref, _logits(result.model, test)),
                         "seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": before, **_finetune_info(result)})  # fmt: skip
            print(f"  {rows[-1]}", flush=True)
    latency_1t = _latency(models, feed, 1, args.latency_budget)
    latency = _latency(models, feed, None, args.latency_budget)
    for row in rows:
        row["latency_1t"], row["latency"] = latency_1t[row["model"]], latency[row["model"]]
    return {"train": len(train), "test": len(test), "confident": rows[0]["confident"], "lr": lr, "options": options,
            "holdout_photos": assets.photo_names("holdout"), "base_ms_1t": latency_1t["base_ms"],
            "base_ms": latency["base_ms"], "rows": rows}  # fmt: skip


def print_prune(result: dict) -> None:
    o = result["options"]
    print(
        f"\n## EfficientNet-Lite1, prune then fine-tune: {result['train']} unlabeled training crops (18 photographs; "
        f"the first {PRUNE_CALIB} calibrate pruning), fine-tune lr {o['lr']:g}, T {o['temperature']:g}, batch {o['batch_size']}, budget "
        f"{o['minutes']:g} min / {o['epochs']} epochs, {o['threads']} thread(s); test: {result['test']} crops of unseen "
        f"photographs ({result['confident']} confident; {', '.join(result['holdout_photos'])}); unpruned "
        f"{result['base_ms_1t']:.1f} ms (1 thread), {result['base_ms']:.1f} ms (default threads)"
    )
    header = ["model", "top-1 @ conf", "top-1 all", "KL", "latency 1T", "latency", *TRAINING_COLUMNS]
    rows = [
        [r["model"], f"{r['top1_confident']:.3f}", f"{r['top1_all']:.3f}", f"{r['kl']:.3f}", f"{r['latency_1t']:.3f}x",
         f"{r['latency']:.3f}x", *_training_cells(r)]
        for r in result["rows"]
    ]  # fmt: skip
    print(_table(header, rows))


# -- PP-OCRv5 recogniser --------------------------------------------------------------------------


def _rec_lines(split: str, n: int, seed: int) -> tuple[list[str], list[dict]]:
    lines = assets.text_lines(n, split)
    return lines, [{"x": assets.rec_preprocess(assets.render_line(t, seed=seed + i))} for i, t in enumerate(lines)]


def _read(model: onnx.ModelProto, feeds: list[dict]) -> list[str]:
    session, labels = create_session(model), assets.ppocr_dictionary()
    return [assets.ctc_greedy_decode(session.run(None, f)[0][0], labels) for f in feeds]


def qat_section(args, state: dict) -> dict:
    _, train = _rec_lines("calib", args.ocr_train, seed=0)
    truth, test = _rec_lines("eval", args.ocr_test, seed=100)
    base = onnxcomp.optimize(str(assets.ppocr_model("rec")), ["cleanup"], verify=False, latency=False).model
    fp32 = _read(base, test)
    options = {"minutes": args.ocr_minutes, "epochs": args.ocr_epochs, "lr": args.ocr_lr, "batch_size": args.ocr_batch,
               "threads": args.threads}  # fmt: skip
    models, rows = {"base": base}, [{"model": "fp32", "finetune": False, "texts": fp32, "seconds": 0.0, "peak_rss_mb": None}]
    for label, finetune in (("--quantize int8", None), ("--quantize int8 --finetune", options)):
        result, seconds, peak, before = _run(base, pipeline_from_flags(quantize="int8", finetune=finetune), train, test,
                                             args.threads)  # fmt: skip
        models[label] = result.model
        if args.save:
            onnx.save(result.model, str(args.save / f"ppocr_rec_{label.replace(' ', '_').strip('-')}.onnx"))
        rows.append({"model": label, "finetune": finetune is not None, "texts": _read(result.model, test), "seconds": seconds,
                     "peak_rss_mb": peak, "rss_before_mb": before, **_finetune_info(result)})  # fmt: skip
    feed = test[0]
    latency_1t = _latency(models, feed, 1, args.latency_budget)
    for row in rows:
        texts = row.pop("texts")
        row["char_accuracy"] = float(np.mean([assets.char_accuracy(p, t) for p, t in zip(texts, truth)]))
        row["vs_fp32_char"] = float(np.mean([assets.char_accuracy(p, t) for p, t in zip(texts, fp32)]))
        row["vs_fp32_lines"] = float(np.mean([p == t for p, t in zip(texts, fp32)]))
        row["latency_1t"] = latency_1t["base" if row["model"] == "fp32" else row["model"]]
        print(f"  {row}", flush=True)
    return {"train": len(train), "test": len(test), "options": options, "base_ms_1t": latency_1t["base_ms"], "rows": rows}


def print_qat(result: dict) -> None:
    o = result["options"]
    print(
        f"\n## PP-OCRv5 recogniser, int8 without and with QAT: {result['train']} training lines, {result['test']} "
        f"held-out lines; fine-tune lr {o['lr']:g}, batch {o['batch_size']}, budget {o['minutes']:g} min / "
        f"{o['epochs']} epochs, {o['threads']} thread(s); fp32 {result['base_ms_1t']:.1f} ms (1 thread)"
    )
    fp32 = result["rows"][0]["char_accuracy"]
    header = ["model", "char accuracy", "vs fp32 (points)", "char acc. vs fp32 reading", "lines = fp32", "latency 1T",
              *TRAINING_COLUMNS]  # fmt: skip
    rows = [
        [r["model"], f"{r['char_accuracy']:.4f}", f"{100 * (r['char_accuracy'] - fp32):+.2f}", f"{r['vs_fp32_char']:.4f}",
         f"{r['vs_fp32_lines']:.3f}", f"{r['latency_1t']:.3f}x", *_training_cells(r)]
        for r in result["rows"]
    ]  # fmt: skip
    print(_table(header, rows))


SECTIONS = {"sweep": (sweep_section, print_sweep), "prune": (prune_section, print_prune), "qat": (qat_section, print_qat)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch and teacher threads while fine-tuning")
    parser.add_argument("--ratios", default="0.3", help="pruning ratios of the prune section (e.g. 0.1,0.3,0.5)")
    parser.add_argument("--train", type=int, default=800, help="training crops of the prune section")
    parser.add_argument("--test", type=int, default=200, help="test crops of unseen photographs")
    parser.add_argument("--minutes", type=float, default=12.0, help="fine-tune budget per pruned model")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=4.0, help="of the distillation KL")
    parser.add_argument("--lr", type=float, default=None, help="fine-tune lr (default: the sweep's choice, else 1e-4)")
    parser.add_argument("--lrs", default="1e-5,3e-5,1e-4", help="learning rates of the sweep")
    parser.add_argument("--sweep-minutes", type=float, default=3.0)
    parser.add_argument("--sweep-train", type=int, default=400)
    parser.add_argument("--val", type=int, default=150)
    parser.add_argument("--ocr-train", type=int, default=400)
    parser.add_argument("--ocr-test", type=int, default=200)
    parser.add_argument("--ocr-minutes", type=float, default=8.0)
    parser.add_argument("--ocr-epochs", type=int, default=10)
    parser.add_argument("--ocr-lr", type=float, default=1e-5)
    parser.add_argument("--ocr-batch", type=int, default=16)
    parser.add_argument("--latency-budget", type=float, default=8.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--save", type=Path, help="a folder to write the optimized models to")
    args = parser.parse_args(argv)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.ratio = 0.3
    args.lrs = [float(r) for r in args.lrs.split(",")]
    logging.basicConfig(level=logging.WARNING)
    results: dict = {}
    state: dict = {}
    started = time.perf_counter()
    for name in args.sections.split(","):
        run, show = SECTIONS[name]
        results[name] = run(args, state)
        show(results[name])
        sys.stdout.flush()
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
