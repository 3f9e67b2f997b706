r"""Knowledge-distillation losses: reference implementations in numpy.

These are the definitions the PyTorch adapter (:mod:`.torch_adapter`) is
tested against; use them to check another framework's implementation. All
losses average over the leading (batch) axis; ``axis`` is the class axis.
Notation: ``z_s``, ``z_t`` student and teacher logits, ``T`` the temperature,
``p^T = softmax(z / T)``.

**Hinton soft-target KL** (Hinton, Vinyals & Dean, 2015)::

    L_KD = T^2 * mean_batch  sum_c  p_t^T[c] * (log p_t^T[c] - log p_s^T[c])

The ``T^2`` keeps the gradient magnitude comparable to the hard-label loss
when ``T`` changes. The usual training objective mixes it with cross-entropy
on labels: ``alpha * L_KD + (1 - alpha) * CE(z_s, y)`` (:func:`kd_objective`).

**Top-k KL** (teacher stored as its k largest logits ``v`` at classes ``i``)::

    q = softmax(v / T)       (the teacher restricted to its top-k, renormalized)
    L_topk = T^2 * mean_batch  sum_j  q[j] * (log q[j] - log p_s^T[i_j])

``p_s^T`` is the student's full softmax, *not* renormalized to the k
classes, so the loss is >= 0 and is 0 only when the student puts all its mass
on the teacher's top-k in the teacher's proportions.

**Soft targets from stored probabilities** ``P`` (``NAME.probs``)::

    L = T^2 * mean_batch  sum_c  P[c] * (log P[c] - log p_s^T[c])      (0 log 0 = 0)

**Feature MSE**: ``mean((f_s - f_t)^2)`` over all elements.
**Feature cosine**: ``mean_batch(1 - cos(f_s, f_t))`` with both flattened per
sample (or along ``axis``).

**Attention transfer** (Zagoruyko & Komodakis, 2017), for feature maps
``A [N, C, H, W]``: the attention map ``Q = sum_c |A_c|^p`` flattened over
``H W`` and L2-normalized, then::

    L_AT = mean_batch || Q_s / ||Q_s||_2  -  Q_t / ||Q_t||_2 ||_2

(student and teacher maps must have the same spatial size; channels may differ).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def log_softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """``log softmax(z / T)`` along ``axis``, in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(logits, temperature, axis))


def _batch_mean(per_element: np.ndarray) -> float:
    """Sum everything but the batch axis, average over the batch."""
    per_element = np.asarray(per_element, dtype=np.float64)
    return float(per_element.reshape(per_element.shape[0], -1).sum(axis=1).mean())


def hinton_kd(student_logits: np.ndarray, teacher_logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> float:
    """``T^2 * KL(p_t^T || p_s^T)``, averaged over the batch."""
    log_pt = log_softmax(teacher_logits, temperature, axis)
    log_ps = log_softmax(student_logits, temperature, axis)
    return temperature**2 * _batch_mean(np.exp(log_pt) * (log_pt - log_ps))


def kd_from_probs(student_logits: np.ndarray, teacher_probs: np.ndarray, temperature: float = 1.0, axis: int = -1) -> float:
    """``T^2 * KL(P || p_s^T)`` for stored teacher probabilities ``P`` (at the same ``T``)."""
    p = np.asarray(teacher_probs, dtype=np.float64)
    log_p = np.where(p > 0, np.log(np.maximum(p, EPS)), 0.0)
    log_ps = log_softmax(student_logits, temperature, axis)
    return temperature**2 * _batch_mean(p * (log_p - log_ps))


def topk_kd(
    student_logits: np.ndarray,
    topk_values: np.ndarray,
    topk_indices: np.ndarray,
    temperature: float = 1.0,
    axis: int = -1,
) -> float:
    """Top-k KL (see the module docstring)."""
    log_q = log_softmax(topk_values, temperature, axis)
    log_ps = log_softmax(student_logits, temperature, axis)
    log_ps_k = np.take_along_axis(log_ps, np.asarray(topk_indices, dtype=np.int64), axis=axis)
    return temperature**2 * _batch_mean(np.exp(log_q) * (log_q - log_ps_k))


def cross_entropy(logits: np.ndarray, labels: np.ndarray, axis: int = -1) -> float:
    """``mean_batch(-log softmax(z)[y])`` for integer labels (class axis last)."""
    log_p = log_softmax(logits, 1.0, axis)
    picked = np.take_along_axis(log_p, np.expand_dims(np.asarray(labels, dtype=np.int64), axis), axis=axis)
    return float(-picked.mean())


def kd_objective(student_logits, teacher_logits, labels, temperature: float = 4.0, alpha: float = 0.9) -> float:
    """``alpha * hinton_kd + (1 - alpha) * cross_entropy`` (class axis last)."""
    return alpha * hinton_kd(student_logits, teacher_logits, temperature) + (1 - alpha) * cross_entropy(student_logits, labels)


def feature_mse(student: np.ndarray, teacher: np.ndarray) -> float:
    """Mean squared difference over all elements."""
    diff = np.asarray(student, dtype=np.float64) - np.asarray(teacher, dtype=np.float64)
    return float(np.mean(diff**2))


def feature_cosine(student: np.ndarray, teacher: np.ndarray, axis: int | None = None) -> float:
    """``mean(1 - cos)``: per sample on flattened features, or along ``axis``."""
    s = np.asarray(student, dtype=np.float64)
    t = np.asarray(teacher, dtype=np.float64)
    if axis is None:
        s, t, axis = s.reshape(len(s), -1), t.reshape(len(t), -1), -1
    dot = np.sum(s * t, axis=axis)
    norms = np.maximum(np.linalg.norm(s, axis=axis) * np.linalg.norm(t, axis=axis), EPS)
    return float(np.mean(1.0 - dot / norms))


def attention_map(features: np.ndarray, p: float = 2.0) -> np.ndarray:
    """``Q = sum_c |A_c|^p`` flattened over space and L2-normalized: ``[N, H*W]``."""
    a = np.asarray(features, dtype=np.float64)
    q = np.sum(np.abs(a) ** p, axis=1).reshape(len(a), -1)
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), EPS)


def attention_transfer(student_features: np.ndarray, teacher_features: np.ndarray, p: float = 2.0) -> float:
    """Attention transfer loss (see the module docstring)."""
    qs, qt = attention_map(student_features, p), attention_map(teacher_features, p)
    if qs.shape != qt.shape:
        raise ValueError(f"attention maps differ in size: student {qs.shape}, teacher {qt.shape}")
    return float(np.mean(np.linalg.norm(qs - qt, axis=1)))
