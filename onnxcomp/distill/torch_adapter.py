"""PyTorch adapter: teacher outputs as a ``Dataset``, and the KD losses in torch.

This module imports torch (``pip install 'onnxcomp[torch]'``); nothing else in
onnxcomp imports it, so the rest works without torch. The losses follow the
numpy reference definitions in :mod:`onnxcomp.distill.losses` (formulas there;
the tests check both agree), with the class axis last::

    from onnxcomp.distill import TeacherOutputs
    from onnxcomp.distill.torch_adapter import KDLoss, TeacherDataset

    data = TeacherDataset(TeacherOutputs("kd/"), inputs=train_images, labels=train_labels)
    loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=True)
    loss_fn = KDLoss(temperature=4.0, alpha=0.9, key="logits")
    for x, y, teacher in loader:
        loss = loss_fn(student(x), teacher, y)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import augmentation_from_manifest
from .reader import TeacherOutputs


class TeacherDataset(torch.utils.data.Dataset):
    """Rows of an export, optionally with the student's inputs and labels.

    Item ``row`` is ``teacher`` (a dict of tensors), or ``(x, teacher)`` /
    ``(x, y, teacher)`` when ``inputs`` / ``labels`` are given. ``inputs`` and
    ``labels`` are indexed by *sample* (row // views), in the export's sample
    order. When the export used augmentation, ``x`` is the stored view of the
    sample (same crop and flip as the teacher saw), computed by the same
    function the exporter used.

    Args:
        outputs: The export (or its folder).
        inputs: Indexable of student inputs (numpy arrays, with or without the
            teacher input's batch axis).
        labels: Indexable of labels.
        keys: Stored tensors to return (default all but the view parameters).
        float32: Return float16 tensors as float32.
    """

    def __init__(self, outputs: TeacherOutputs | str | os.PathLike, inputs: Sequence[Any] | None = None,
                 labels: Sequence[Any] | None = None, keys: Sequence[str] | None = None, float32: bool = True):
        self.outputs = outputs if isinstance(outputs, TeacherOutputs) else TeacherOutputs(outputs)
        samples = len(self.outputs) // self.outputs.views
        for name, values in (("inputs", inputs), ("labels", labels)):
            if values is not None and len(values) != samples:
                raise ValueError(f"{name} has {len(values)} items, the export {samples} samples")
        self.inputs, self.labels = inputs, labels
        self.keys = list(keys) if keys is not None else [k for k in self.outputs.keys if k != "__view__"]
        self.float32 = float32
        self.augment = augmentation_from_manifest(self.outputs.manifest)

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, row: int):
        stored = self.outputs[row]
        teacher = {k: self._tensor(stored[k]) for k in self.keys}
        item: list[Any] = []
        sample = row // self.outputs.views
        if self.inputs is not None:
            x = np.asarray(self.inputs[sample])
            if self.augment is not None:
                x = _apply_view(self.augment, x, stored["__view__"])
            item.append(torch.from_numpy(np.ascontiguousarray(x)))
        if self.labels is not None:
            item.append(torch.as_tensor(self.labels[sample]))
        return teacher if not item else (*item, teacher)

    def _tensor(self, value: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.array(value))  # copy out of the read-only memory map
        return tensor.float() if self.float32 and tensor.dtype == torch.float16 else tensor


def _apply_view(augment, x: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Apply a view to a sample that may lack the teacher input's batch axis."""
    if x.ndim == 3:
        return augment.apply(x[np.newaxis], params)[0]
    return augment.apply(x, params)


def _batch_sum(per_element: torch.Tensor) -> torch.Tensor:
    return per_element.reshape(per_element.shape[0], -1).sum(dim=1).mean()


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(p_t^T || p_s^T)``, batch mean (see :func:`losses.hinton_kd`)."""
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_ps = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * _batch_sum(log_pt.exp() * (log_pt - log_ps))


def topk_kd(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_indices: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Top-k KL (see :func:`losses.topk_kd`)."""
    log_q = F.log_softmax(topk_values.float() / temperature, dim=-1)
    log_ps = F.log_softmax(student_logits / temperature, dim=-1).gather(-1, topk_indices.long())
    return temperature**2 * _batch_sum(log_q.exp() * (log_q - log_ps))


def kd_from_probs(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(P || p_s^T)`` for stored probabilities (see :func:`losses.kd_from_probs`)."""
    p = teacher_probs.float()
    log_ps = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * _batch_sum(torch.xlogy(p, p) - p * log_ps)


def feature_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(student, teacher.to(student.dtype))


def feature_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    cos = F.cosine_similarity(student.flatten(1), teacher.to(student.dtype).flatten(1), dim=1, eps=1e-12)
    return (1 - cos).mean()


def attention_transfer(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (see :func:`losses.attention_transfer`)."""
    def attention(a: torch.Tensor) -> torch.Tensor:
        return F.normalize(a.abs().pow(p).sum(dim=1).flatten(1), dim=1, eps=1e-12)

    return (attention(student) - attention(teacher.to(student.dtype))).norm(dim=1).mean()


class KDLoss(torch.nn.Module):
    """``alpha * KD + (1 - alpha) * CE(labels)``, KD picked from what the export stores.

    For teacher tensor ``key``: top-k KL when ``key.topk_values`` is present,
    else Hinton KL on the full logits ``key``, else KL to ``key.probs`` (which
    must have been exported at this ``temperature``). Labels equal to
    ``ignore_index`` mark unlabeled samples: they get the KD term only (the
    usual way to use teacher outputs on a larger unlabeled transfer set).
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, key: str = "logits", ignore_index: int = -100):
        super().__init__()
        self.temperature, self.alpha, self.key, self.ignore_index = temperature, alpha, key, ignore_index

    def forward(self, student_logits: torch.Tensor, teacher: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None) -> torch.Tensor:
        key, t = self.key, self.temperature
        if f"{key}.topk_values" in teacher:
            kd = topk_kd(student_logits, teacher[f"{key}.topk_values"], teacher[f"{key}.topk_indices"], t)
        elif key in teacher:
            kd = hinton_kd(student_logits, teacher[key], t)
        elif f"{key}.probs" in teacher:
            kd = kd_from_probs(student_logits, teacher[f"{key}.probs"], t)
        else:
            raise KeyError(f"no teacher tensor for '{key}' (have {', '.join(teacher)})")
        if labels is None or self.alpha == 1.0 or not bool((labels != self.ignore_index).any()):
            return kd
        ce = F.cross_entropy(student_logits, labels.long(), ignore_index=self.ignore_index)
        return self.alpha * kd + (1 - self.alpha) * ce
