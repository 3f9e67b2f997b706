"""KD losses: the numpy reference against hand-computed values, and the torch adapter against numpy."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

import builders
from onnxcomp.distill import ExportConfig, TeacherOutputs, export_teacher, losses

LN3 = math.log(3.0)


def test_hinton_kd_hand_computed():
    # teacher softmax([0, ln 3]) = [1/4, 3/4]; student softmax([0, 0]) = [1/2, 1/2]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert losses.hinton_kd(np.array([[0.0, 0.0]]), np.array([[0.0, LN3]])) == pytest.approx(expected, rel=1e-12)
    # At T = 2 the teacher needs logits [0, 2 ln 3] for the same softened distribution; the loss gains T^2 = 4.
    assert losses.hinton_kd(np.array([[0.0, 0.0]]), np.array([[0.0, 2 * LN3]]), temperature=2.0) == pytest.approx(4 * expected, rel=1e-12)
    # batch mean: a second, identical-distribution row contributes 0
    batch = losses.hinton_kd(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([[0.0, LN3], [5.0, 6.0]]))
    assert batch == pytest.approx(expected / 2, rel=1e-12)


def test_topk_kd_hand_computed():
    # teacher top-2 logits [ln 3, 0] at classes [2, 0] -> q = [3/4, 1/4]; student uniform over 4 classes
    loss = losses.topk_kd(np.zeros((1, 4)), np.array([[LN3, 0.0]]), np.array([[2, 0]]))
    assert loss == pytest.approx(0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.25), rel=1e-12)
    # zero only when the student puts all its mass on the top-k in the teacher's proportions
    assert losses.topk_kd(np.array([[0.0, -50, LN3, -50]]), np.array([[LN3, 0.0]]), np.array([[2, 0]])) == pytest.approx(0, abs=1e-12)


def test_topk_with_all_classes_equals_hinton_and_probs_form_agrees():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 9)), rng.normal(size=(6, 9)) * 2
    order = np.argsort(-t, axis=1)
    values = np.take_along_axis(t, order, 1)
    for temperature in (1.0, 3.5):
        hinton = losses.hinton_kd(s, t, temperature)
        assert losses.topk_kd(s, values, order, temperature) == pytest.approx(hinton, rel=1e-10)
        probs = losses.softmax(t, temperature)
        assert losses.kd_from_probs(s, probs, temperature) == pytest.approx(hinton, rel=1e-10)
    # a zero probability contributes 0 (0 log 0 = 0), not NaN
    assert losses.kd_from_probs(np.zeros((1, 2)), np.array([[1.0, 0.0]])) == pytest.approx(math.log(2), rel=1e-12)


def test_cross_entropy_and_objective_hand_computed():
    ce = losses.cross_entropy(np.array([[0.0, LN3]]), np.array([1]))
    assert ce == pytest.approx(-math.log(0.75), rel=1e-12)
    kd = losses.hinton_kd(np.array([[0.0, LN3]]), np.array([[0.0, 0.0]]), 2.0)
    objective = losses.kd_objective(np.array([[0.0, LN3]]), np.array([[0.0, 0.0]]), np.array([1]), temperature=2.0, alpha=0.3)
    assert objective == pytest.approx(0.3 * kd + 0.7 * ce, rel=1e-12)


def test_feature_losses_hand_computed():
    assert losses.feature_mse(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == pytest.approx(2.5)
    a = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = np.array([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    # orthogonal -> 1, parallel -> 0, opposite -> 2
    assert losses.feature_cosine(a, b) == pytest.approx((1 + 0 + 2) / 3)
    # attention transfer: Q_s = [1, 0]; teacher channels [0, 1] and [0, 0] -> Q_t = [0, 1]; ||[1, -1]|| = sqrt 2
    student = np.array([[[[1.0, 0.0]]]])
    teacher = np.array([[[[0.0, 1.0]], [[0.0, 0.0]]]])
    assert losses.attention_transfer(student, teacher) == pytest.approx(math.sqrt(2))
    assert losses.attention_transfer(teacher * 5, teacher) == pytest.approx(0.0, abs=1e-12)  # scale-invariant
    with pytest.raises(ValueError, match="differ in size"):
        losses.attention_transfer(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)))


# --- PyTorch adapter (torch is an optional extra; CI without torch skips these) ------------------


def test_torch_losses_match_numpy_reference():
    torch = pytest.importorskip("torch")
    from onnxcomp.distill import torch_adapter as ta

    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)) * 3
    order = np.argsort(-t, axis=1)[:, :3]
    values = np.take_along_axis(t, order, 1)
    T = 2.5
    as_t = torch.from_numpy
    pairs = [
        (ta.hinton_kd(as_t(s), as_t(t), T), losses.hinton_kd(s, t, T)),
        (ta.topk_kd(as_t(s), as_t(values), as_t(order), T), losses.topk_kd(s, values, order, T)),
        (ta.kd_from_probs(as_t(s), as_t(losses.softmax(t, T)), T), losses.kd_from_probs(s, losses.softmax(t, T), T)),
        (ta.feature_mse(as_t(s), as_t(t)), losses.feature_mse(s, t)),
        (ta.feature_cosine(as_t(s), as_t(t)), losses.feature_cosine(s, t)),
    ]
    fa, fb = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))
    pairs.append((ta.attention_transfer(as_t(fa), as_t(fb)), losses.attention_transfer(fa, fb)))
    for got, want in pairs:
        # float64 tensors on both sides: agreement to rounding
        assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_torch_dataset_and_kd_loss_on_an_export(tmp_path):
    torch = pytest.importorskip("torch")
    from onnxcomp.distill.torch_adapter import KDLoss, TeacherDataset

    onnx.save(builders.resnet_block(), tmp_path / "t.onnx")
    x = np.random.default_rng(0).normal(size=(6, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    export_teacher(tmp_path / "t.onnx", tmp_path / "d.npz", tmp_path / "kd",
                   ExportConfig(top_k=4, dtype="float16", augment="crop-flip", views=2, samples_per_shard=2))
    outputs = TeacherOutputs(tmp_path / "kd")
    labels = np.arange(6) % 10
    dataset = TeacherDataset(outputs, inputs=list(x), labels=labels)
    assert len(dataset) == 12
    view, label, teacher = dataset[5]  # sample 2, view 1
    assert int(label) == 2 and teacher["logits.topk_values"].dtype == torch.float32
    from onnxcomp.distill.augment import augmentation_from_manifest

    expected = augmentation_from_manifest(outputs.manifest).apply(x[2][None], outputs[5]["__view__"])[0]
    np.testing.assert_array_equal(view.numpy(), expected)

    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    _, yb, tb = next(iter(loader))
    student_logits = torch.zeros(4, 10, dtype=torch.float32)
    loss = KDLoss(temperature=2.0, alpha=1.0)(student_logits, tb)
    want = losses.topk_kd(np.zeros((4, 10)), tb["logits.topk_values"].numpy(), tb["logits.topk_indices"].numpy(), 2.0)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    mixed = KDLoss(temperature=2.0, alpha=0.5)(student_logits, tb, yb)
    assert float(mixed) == pytest.approx(0.5 * want + 0.5 * math.log(10), rel=1e-5)
    unlabeled = torch.full_like(yb, -100)
    assert float(KDLoss(temperature=2.0, alpha=0.5)(student_logits, tb, unlabeled)) == pytest.approx(want, rel=1e-5)
    partly = yb.clone()
    partly[:2] = -100  # CE over the two labeled rows only
    s = np.random.default_rng(2).normal(size=(4, 10))
    values, indices = tb["logits.topk_values"].numpy(), tb["logits.topk_indices"].numpy()
    expected = 0.5 * losses.topk_kd(s, values, indices, 2.0) + 0.5 * losses.cross_entropy(s[2:], yb.numpy()[2:])
    got = KDLoss(temperature=2.0, alpha=0.5)(torch.from_numpy(s), tb, partly)
    assert float(got) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="labels has 5 items"):
        TeacherDataset(outputs, labels=labels[:5])
