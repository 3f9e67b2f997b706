"""The quality module: per-feature error, task metrics, detection of the task, user metrics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.data import ListDataset
from onnxcomp.errors import UsageError
from onnxcomp.quality import DEFAULT_MAX_DROP, MetricChoice, OutputView, Quality, detect
from onnxcomp.quality.tasks import edit_distance
from onnxcomp.verify import verify_models

CLASSES, ANCHORS = 3, 400


def detector_outputs(rng: np.random.Generator, objects: int = 4) -> np.ndarray:
    """A YOLOv8-style ``[1, 4+C, N]`` output: centre boxes in pixels, class scores in [0, 1]."""
    table = np.zeros((4 + CLASSES, ANCHORS), np.float32)
    table[0:2] = rng.uniform(20, 300, size=(2, ANCHORS))
    table[2:4] = rng.uniform(10, 40, size=(2, ANCHORS))
    table[4:] = rng.uniform(0, 0.05, size=(CLASSES, ANCHORS))
    for k in range(objects):  # well separated objects, each found by one anchor
        a = k * 50
        table[0, a], table[1, a] = 40 + 70 * k, 60 + 60 * k
        table[4 + k % CLASSES, a] = 0.6 + 0.1 * (k % 3)
    return table[None]


def _scaling_model(scale: np.ndarray) -> onnx.ModelProto:
    """y = x * scale (per feature row): scale 1 is the original, smaller score rows a damaged head."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS])],
        [numpy_helper.from_array(scale.astype(np.float32).reshape(1, -1, 1), "s")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mixed_scale_detector_damage_hidden_from_cosine_is_caught():
    """Scores at 5 % of their value: the tensor's cosine stays > 0.999, but every
    detection is lost and the score features' error is 0.95."""
    rng = np.random.default_rng(0)
    data = ListDataset([{"x": detector_outputs(rng)} for _ in range(6)])
    damaged = np.ones(4 + CLASSES)
    damaged[4:] = 0.05
    compared = verify_models(
        _scaling_model(np.ones(4 + CLASSES)), _scaling_model(damaged), data,
        quality=lambda names, values: Quality.for_outputs("auto", names, values),
    )  # fmt: skip
    (output,) = compared.outputs
    assert output.cosine_min > 0.999
    q = compared.quality
    assert q.metric == "detection" and "boxes beside scores" in q.why
    assert q.result.details["reference_detections"] == 24
    assert q.result.value == 0.0 and q.result.details["kept"] == 0.0
    assert not q.within_budget
    (features,) = q.features
    assert features.axis == 1 and features.worst_index >= 4
    assert features.worst == pytest.approx(0.95, abs=1e-3)  # (1 - 0.05): the whole score, lost


def test_detection_keeps_moved_boxes_within_iou_and_counts_spurious():
    rng = np.random.default_rng(1)
    ref = detector_outputs(rng)
    cand = ref.copy()
    cand[0, 0, 0] += 2.0  # a 2-pixel shift: IoU still > 0.5
    cand[0, 4 + 1, 300] = 0.9  # one spurious detection
    quality = Quality.for_outputs("detection", ["y"], [ref])
    meter = quality.meter()
    meter.add([ref], [cand], {})
    result = meter.result().result
    assert result.details["kept"] == 1.0 and result.details["spurious"] == 1
    assert result.value == pytest.approx(4 / 5)  # matched / (reference + spurious)


def test_per_feature_error_is_relative_to_each_feature():
    ref = np.stack([np.full((10,), 1000.0), np.linspace(0.1, 0.2, 10)])[None]  # [1, 2, 10]
    cand = ref.copy()
    cand[0, 1] *= 0.5
    quality = Quality.for_outputs("features", ["y"], [ref])
    meter = quality.meter()
    meter.add([ref], [cand], {})
    q = meter.result()
    assert q.result.value == pytest.approx(0.5, rel=1e-6)
    assert q.features[0].worst_index == 1
    assert q.result.drop > DEFAULT_MAX_DROP["features"]


def test_classification_agreement_confident_and_kl():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.1, 0.0, 0.05]])
    flipped = logits.copy()
    flipped[2] = [0.0, 0.1, 0.05]  # the unconfident sample changes its class
    meter = Quality.for_outputs("classification", ["logits"], [logits]).meter()
    for i in range(3):
        meter.add([logits[i : i + 1]], [flipped[i : i + 1]], {})
    r = meter.result().result
    assert r.details["top1_agreement"] == pytest.approx(2 / 3) and r.details["confident_samples"] == 2
    assert r.headline == "top-1 agreement (confident)" and r.value == 1.0  # a near-tie flipping is no damage
    assert r.details["kl"] > 0
    unsure = Quality.for_outputs("classification", ["logits"], [logits]).meter()
    unsure.add([logits[2:3]], [flipped[2:3]], {})
    r = unsure.result().result
    assert r.headline == "top-1 agreement" and r.value == 0.0  # no confident sample: all samples count
    confident_flip = Quality.for_outputs("classification", ["logits"], [logits]).meter()
    confident_flip.add([logits[0:1]], [logits[1:2]], {})
    assert confident_flip.result().result.value == 0.0


def test_ctc_character_agreement():
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2
    steps = np.zeros((1, 6, 4))
    for t, c in enumerate([1, 1, 0, 2, 3, 3]):  # decodes to [1, 2, 3]
        steps[0, t, c] = 1.0
    cand = steps.copy()
    cand[0, 3] = [0, 0, 0, 1.0]  # 2 -> 3: decodes to [1, 3]
    quality = Quality.for_outputs("ctc", ["p"], [steps])
    meter = quality.meter()
    meter.add([steps], [cand], {})
    r = meter.result().result
    assert r.value == pytest.approx(2 / 3) and r.details["edits"] == 1


def test_embedding_pools_with_the_attention_mask_and_counts_neighbours():
    rng = np.random.default_rng(2)
    states = rng.normal(size=(5, 1, 4, 8))
    mask = np.array([[1, 1, 0, 0]])
    quality = Quality.for_outputs("auto", ["last_hidden_state"], [states[0]])
    assert quality.task == "embedding"
    meter = quality.meter()
    for s in states:
        cand = s.copy()
        cand[0, 2:] = 100.0  # padding tokens: outside the mask, must not matter
        meter.add([s], [cand], {"attention_mask": mask})
    r = meter.result().result
    assert r.value == pytest.approx(1.0) and r.details["neighbour_agreement"] == 1.0


def test_segmentation_of_one_map_counts_regions_not_boundary_pixels():
    """A thin text-like region that loses its outer rows keeps its region (IoU 0.6 > 0.5) though
    its mask IoU drops to 0.6; a region that vanishes is lost, a new blob is spurious."""
    ref = np.zeros((1, 1, 40, 60))
    ref[0, 0, 5:10, 5:55] = 0.9  # a text line, 5 rows
    ref[0, 0, 20:30, 10:20] = 0.8  # a blob
    cand = ref.copy()
    cand[0, 0, 5] = cand[0, 0, 9] = 0.1  # the line thins to 3 rows
    meter = Quality.for_outputs("auto", ["map"], [ref]).meter()
    meter.add([ref], [cand], {})
    q = meter.result()
    assert q.metric == "segmentation" and q.result.headline == "regions agreed"
    assert q.result.value == 1.0 and q.result.details["mask_iou"] < 0.8
    lost = cand.copy()
    lost[0, 0, 20:30, 10:20] = 0.0
    lost[0, 0, 32:38, 40:50] = 0.9  # spurious
    meter = Quality.for_outputs("segmentation", ["map"], [ref]).meter()
    meter.add([ref], [lost], {})
    r = meter.result().result
    assert (r.details["kept"], r.details["spurious"]) == (0.5, 1) and r.value == pytest.approx(1 / 3)


def test_region_labels_match_a_reference_labelling():
    from onnxcomp.quality.regions import label

    mask = np.random.default_rng(4).random((64, 64)) > 0.6
    labels, count = label(mask)
    assert set(np.unique(labels[mask])) == set(range(1, count + 1)) and not labels[~mask].any()
    # 4-connected neighbours share a label; no two regions touch
    same_right = mask[:, 1:] & mask[:, :-1]
    same_down = mask[1:] & mask[:-1]
    assert np.all(labels[:, 1:][same_right] == labels[:, :-1][same_right])
    assert np.all(labels[1:][same_down] == labels[:-1][same_down])
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    assert count == scipy_ndimage.label(mask)[1]


def test_segmentation_of_several_classes_is_mean_iou():
    ref = np.zeros((1, 3, 4, 4))
    ref[0, 0] = 1.0
    ref[0, 1, :2] = 2.0  # class 1 on the top half, class 0 below
    cand = ref.copy()
    cand[0, 1, 1] = 0.0  # one row of class 1 goes to class 0
    meter = Quality.for_outputs("segmentation", ["logits"], [ref]).meter()
    meter.add([ref], [cand], {})
    r = meter.result().result
    assert r.headline == "mask IoU" and r.value == pytest.approx((8 / 12 + 4 / 8) / 2)


@pytest.mark.parametrize(
    ("name", "value", "task"),
    [
        ("output0", detector_outputs(np.random.default_rng(0)), "detection"),
        ("softmax", np.full((1, 25, 40), 1 / 40), "ctc"),
        ("sentence_embedding", np.ones((1, 384)), "embedding"),
        ("logits", np.ones((1, 1000)), "classification"),
        ("prob_map", np.full((1, 1, 32, 32), 0.5), "segmentation"),
        ("features", np.ones((1, 64, 7, 7)), "features"),
    ],
)
def test_detect_task_from_outputs(name, value, task):
    assert detect([OutputView(name, np.asarray(value, dtype=np.float32))])[0] == task


def test_user_metric_from_a_file_and_its_drop(tmp_path):
    script = tmp_path / "mymetric.py"
    script.write_text("import numpy as np\ndef score(ref, cand):\n    return -float(np.abs(ref['y'] - cand['y']).max())\n")
    choice = MetricChoice.parse(f"{script}:score")
    assert choice.task == "user"
    meter = Quality(choice, [OutputView("y", np.zeros((1, 2)))], max_drop=0.1).meter()
    meter.add([np.zeros((1, 2))], [np.array([[0.0, 0.3]])], {})
    q = meter.result()
    assert q.result.drop == pytest.approx(0.3) and not q.within_budget


@pytest.mark.parametrize("spec", ["nope", "no_such_module_xyz:score", "os:not_there", "x.py:score"])
def test_bad_metric_names_are_usage_errors(spec):
    with pytest.raises(UsageError):
        MetricChoice.parse(spec)


def test_a_task_no_output_fits_is_refused():
    with pytest.raises(UsageError, match="no output fits"):
        Quality.for_outputs("ctc", ["logits"], [np.ones((1, 10))])
