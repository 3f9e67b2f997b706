"""Dynamic and static int8, weight-only int8/int4, fp16 and codebook quantization on real
models, side by side with onnxruntime's own quantizers and NNCF, in one run.

Run:  python -m benchmarks.bench_quantize_transformer [--eval N] [--calib N] [--budget S]

all-MiniLM-L6-v2 on real sentences (documentation_sentences; calibration and
evaluation splits are disjoint), evaluated one sentence per run (batch 1, no
padding, as dynamic quantization sees it in serving):

* mean / min cosine of the sentence embeddings against fp32;
* nearest-neighbour agreement: for every evaluation sentence, whether its
  nearest other sentence is the same under fp32 and quantized embeddings;
* file size, and batch-1 latency relative to fp32 measured interleaved in this
  process (one intra-op thread, a median-length sentence); the median and the
  10th-percentile ratios are both shown, the latter is steadier on a loaded machine.

Anchors: onnxruntime ``quantize_dynamic`` (default, per_channel, reduce_range,
both) and ``MatMulNBitsQuantizer`` (4-bit and 8-bit, block 32; needs onnx-ir);
NNCF's static int8 with ``model_type=TRANSFORMER`` (SmoothQuant, fast bias
correction) when ``nncf`` imports. Static int8 (``--quantize int8``) is shown
with the transformer scheme (the default on this model), with every linear
input static (``unnormalized_inputs=static``), and with the general placement
(``scheme=cnn``, what ``--quantize int8`` did before the transformer scheme),
all calibrated on the ``--calib`` sentences.

EfficientNet-Lite1 on photo crops: fp16 and codebook sizes (raw, gzip, zip),
top-1 agreement and KL against fp32, latency ratio.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx

import onnxcomp
from benchmarks import assets
from onnxcomp.latency import measure_latency
from onnxcomp.pipelines import pipeline_from_flags
from onnxcomp.runtime import OptLevel, create_session

logging.getLogger("onnxruntime").setLevel(logging.ERROR)
logging.getLogger("root").setLevel(logging.ERROR)


def onnxcomp_model(source: Path, mode: str, out: Path, probe: list[dict], data=None) -> tuple[Path, float]:
    """``onnxcomp optimize --quantize mode`` (cleanup only when mode is empty); ``probe`` only
    gives the input shapes for the report's statistics, ``data`` is calibration data."""
    start = time.perf_counter()
    pipeline = pipeline_from_flags(quantize=mode) if mode else ["cleanup"]
    onnxcomp.optimize(str(source), pipeline, output=out, data=data, verify_data=probe, verify=False, latency=False)
    return out, time.perf_counter() - start


def onnxcomp_static(source: Path, options: dict, out: Path, probe: list[dict], data) -> tuple[Path, float]:
    """``quantize-static`` with ``options`` after cleanup, calibrated on ``data``."""
    start = time.perf_counter()
    onnxcomp.optimize(str(source), ["cleanup", {"quantize-static": options}], output=out, data=data, verify_data=probe, verify=False, latency=False)
    return out, time.perf_counter() - start


def nncf_transformer(source: Path, out: Path, data: list[dict]) -> tuple[Path, float] | None:
    """NNCF post-training int8 with ``model_type=TRANSFORMER`` (None when nncf is not installed)."""
    try:
        import nncf
    except ImportError:
        return None
    start = time.perf_counter()
    model = nncf.quantize(onnx.load(str(source)), nncf.Dataset(data), subset_size=len(data), model_type=nncf.ModelType.TRANSFORMER)
    onnx.save(model, str(out))
    return out, time.perf_counter() - start


def ort_dynamic(source: Path, out: Path, **options) -> tuple[Path, float]:
    from onnxruntime.quantization import quantize_dynamic

    start = time.perf_counter()
    quantize_dynamic(str(source), str(out), **options)
    return out, time.perf_counter() - start


def ort_nbits(source: Path, out: Path, **options) -> tuple[Path, float] | None:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # onnx-ir missing
        return None
    start = time.perf_counter()
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), op_types_to_quantize=("MatMul",), **options)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out, time.perf_counter() - start


def embed(path: Path, feeds: list[dict]) -> np.ndarray:
    session = create_session(str(path), level=OptLevel.ALL)
    rows = [assets.sentence_embeddings(session.run(None, f)[0], f["attention_mask"]) for f in feeds]
    return np.concatenate(rows)


def nearest(embeddings: np.ndarray) -> np.ndarray:
    similarity = embeddings @ embeddings.T
    np.fill_diagonal(similarity, -np.inf)
    return similarity.argmax(axis=1)


def compressed_sizes(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.name, raw)
    return len(gzip.compress(raw, compresslevel=9)), len(buffer.getvalue())


def minilm(args, tmp: Path) -> None:
    source = assets.minilm_onnx()
    calib = [assets.minilm_tokenize([s]) for s in assets.documentation_sentences(args.calib, split="calib")]
    sentences = assets.documentation_sentences(args.eval, split="eval")
    feeds = [assets.minilm_tokenize([s]) for s in sentences]
    probe = calib[:2]
    variants: dict[str, tuple[Path, float] | None] = {"fp32": (source, 0.0)}
    variants["onnxcomp cleanup only"] = onnxcomp_model(source, "", tmp / "clean.onnx", probe)
    variants["ORT quantize_dynamic (default)"] = ort_dynamic(source, tmp / "ort_dyn.onnx")
    variants["ORT quantize_dynamic per_channel"] = ort_dynamic(source, tmp / "ort_dyn_pc.onnx", per_channel=True)
    variants["ORT quantize_dynamic reduce_range"] = ort_dynamic(source, tmp / "ort_dyn_rr.onnx", reduce_range=True)
    variants["ORT quantize_dynamic per_channel+reduce_range"] = ort_dynamic(source, tmp / "ort_dyn_pcrr.onnx", per_channel=True, reduce_range=True)
    variants["onnxcomp int8-dynamic (no data)"] = onnxcomp_model(source, "int8-dynamic", tmp / "dyn.onnx", probe)
    variants[f"onnxcomp int8-dynamic (+{args.calib} calib sentences)"] = onnxcomp_model(source, "int8-dynamic", tmp / "dyn_data.onnx", probe, data=calib)
    variants[f"onnxcomp int8 static (+{args.calib} calib sentences)"] = onnxcomp_static(source, {}, tmp / "static.onnx", probe, calib)
    variants["onnxcomp int8 static, all inputs static"] = onnxcomp_static(
        source, {"unnormalized_inputs": "static"}, tmp / "static_all.onnx", probe, calib
    )
    variants["onnxcomp int8 static, general placement (scheme=cnn)"] = onnxcomp_static(source, {"scheme": "cnn"}, tmp / "static_cnn.onnx", probe, calib)
    variants["NNCF int8 static (model_type=TRANSFORMER)"] = nncf_transformer(source, tmp / "nncf.onnx", calib)
    variants["ORT MatMulNBits 8-bit block32 sym"] = ort_nbits(source, tmp / "ort_nb8.onnx", bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
    variants["onnxcomp int8-weights"] = onnxcomp_model(source, "int8-weights", tmp / "w8.onnx", probe)
    variants["ORT MatMulNBits 4-bit block32 sym"] = ort_nbits(source, tmp / "ort_nb4s.onnx", bits=4, block_size=32, is_symmetric=True, accuracy_level=4)
    variants["ORT MatMulNBits 4-bit block32 asym"] = ort_nbits(source, tmp / "ort_nb4a.onnx", bits=4, block_size=32, is_symmetric=False, accuracy_level=4)
    variants["onnxcomp int4-weights"] = onnxcomp_model(source, "int4-weights", tmp / "w4.onnx", probe)
    variants["onnxcomp fp16"] = onnxcomp_model(source, "fp16", tmp / "fp16.onnx", probe)
    variants["onnxcomp codebook-256"] = onnxcomp_model(source, "codebook-256", tmp / "cb256.onnx", probe)
    variants["onnxcomp codebook-16"] = onnxcomp_model(source, "codebook-16", tmp / "cb16.onnx", probe)
    variants = {k: v for k, v in variants.items() if v is not None}

    reference = embed(source, feeds)
    reference_nn = nearest(reference)
    lengths = [f["input_ids"].shape[1] for f in feeds]
    latency_feed = feeds[int(np.argsort(lengths)[len(lengths) // 2])]
    timings = measure_latency({k: str(p) for k, (p, _) in variants.items()}, latency_feed, budget_s=args.budget, max_runs=2000, intra_op_threads=1)
    base_size, base_ms = source.stat().st_size, timings["fp32"].median_ms
    print(f"\n## all-MiniLM-L6-v2: {len(feeds)} eval sentences (batch 1), latency on {latency_feed['input_ids'].shape[1]} tokens, 1 thread")
    print(f"fp32 median {base_ms:.2f} ms; targets: cosine >= 0.995, NN agreement >= 0.98, latency <= 0.6x\n")
    print("| variant | mean cos | min cos | NN agree | size MB | size x | latency x (median) | latency x (p10) | build s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (path, seconds) in variants.items():
        e = embed(path, feeds)
        cos = np.sum(e * reference, axis=1)
        agree = float(np.mean(nearest(e) == reference_nn))
        size = path.stat().st_size
        print(
            f"| {name} | {cos.mean():.5f} | {cos.min():.5f} | {agree:.4f} | {size / 1e6:.1f} | {size / base_size:.3f} "
            f"| {timings[name].median_ms / base_ms:.3f} | {timings[name].p10_ms / timings['fp32'].p10_ms:.3f} | {seconds:.1f} |"
        )


def efficientnet(args, tmp: Path) -> None:
    source = assets.efficientnet_lite1_onnx()
    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    calib = [{"input": assets.preprocess([c], spec)} for c in assets.photo_crops(16, size=spec.size, seed=0, split="calib")]
    feeds = [{"input": assets.preprocess([c], spec)} for c in assets.photo_crops(args.images, size=spec.size, seed=1, split="eval")]
    probe = calib[:2]
    variants = {"fp32": (source, 0.0)}
    variants["onnxcomp fp16 (+calib range check)"] = onnxcomp_model(source, "fp16", tmp / "e_fp16.onnx", probe, data=calib)
    variants["onnxcomp codebook-256"] = onnxcomp_model(source, "codebook-256", tmp / "e_cb256.onnx", probe)
    variants["onnxcomp codebook-16"] = onnxcomp_model(source, "codebook-16", tmp / "e_cb16.onnx", probe)
    reference = np.concatenate([create_session(str(source)).run(None, f)[0] for f in feeds])
    p_ref = _softmax(reference)
    timings = measure_latency({k: str(p) for k, (p, _) in variants.items()}, feeds[0], budget_s=args.budget, max_runs=1000, intra_op_threads=1)
    base_size = source.stat().st_size
    base_gzip, _ = compressed_sizes(source)
    print(f"\n## EfficientNet-Lite1: {len(feeds)} eval photo crops, batch 1, 1 thread\n")
    print("| variant | size MB | gzip MB | zip MB | size x | gzip x | top-1 agree | KL(fp32‖q) | latency x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (path, _) in variants.items():
        session = create_session(str(path))
        logits = np.concatenate([session.run(None, f)[0] for f in feeds])
        p = _softmax(logits)
        kl = float(np.mean(np.sum(p_ref * (np.log(p_ref + 1e-12) - np.log(p + 1e-12)), axis=1)))
        agree = float(np.mean(p.argmax(1) == p_ref.argmax(1)))
        size = path.stat().st_size
        gz, zp = compressed_sizes(path)
        print(
            f"| {name} | {size / 1e6:.2f} | {gz / 1e6:.2f} | {zp / 1e6:.2f} | {size / base_size:.3f} | {gz / base_gzip:.3f} "
            f"| {agree:.3f} | {kl:.4f} | {timings[name].median_ms / timings['fp32'].median_ms:.3f} |"
        )


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=500, help="evaluation sentences")
    parser.add_argument("--calib", type=int, default=64, help="calibration sentences (static int8, int8-dynamic smoothing, NNCF)")
    parser.add_argument("--images", type=int, default=64, help="EfficientNet evaluation crops")
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of interleaved latency measurement (all variants of a model together)")
    parser.add_argument("--skip-efficientnet", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        minilm(args, Path(tmp))
        if not args.skip_efficientnet:
            efficientnet(args, Path(tmp))


if __name__ == "__main__":
    main()
