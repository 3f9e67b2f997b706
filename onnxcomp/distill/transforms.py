"""From teacher outputs to the tensors an export stores.

Every teacher tensor named as logits becomes one or more stored tensors:

* ``NAME`` -- the full logits, or, with ``top_k``:
  ``NAME.topk_values`` (the ``k`` largest logits, descending) and
  ``NAME.topk_indices`` (their class indices, int32);
* ``NAME.probs`` -- with ``temperature`` T: ``softmax(z / T)`` along the class
  axis; with ``top_k`` it is ``NAME.topk_probs``, the same probabilities at
  the top-k classes only (not renormalized, so ``1 - sum`` is the tail mass).

Features are stored as they are (floats in the chosen precision). Top-k
selects among the teacher's own float values; softmax is computed in float64;
results are then cast. ``probabilities=True`` replaces ``z`` by
``log(max(p, tiny))`` in the teacher's precision.

Casting to float16 refuses finite values beyond its range (|x| > 65504)
rather than storing infinities; non-finite teacher outputs are refused too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataError, UsageError
from .config import ExportConfig

VIEW_KEY = "__view__"
"""Stored tensor holding each row's augmentation parameters."""

FLOAT16_MAX = float(np.finfo(np.float16).max)

SMALL_K = 16
"""Up to this k, top-k runs as k rounds of argmax (faster than a partition)."""


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of the export; every row (sample view) has ``shape``.

    Attributes:
        key: Its name in the export and in :class:`TeacherOutputs`.
        file: File name inside each shard folder.
        source: The teacher tensor it is derived from ("" for view parameters).
        kind: ``logits``, ``topk_values``, ``topk_indices``, ``probs``,
            ``topk_probs``, ``feature`` or ``view``.
        class_axis: Class axis within a row (logit kinds only).
    """

    key: str
    file: str
    source: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    class_axis: int | None = None
    temperature: float | None = None
    top_k: int | None = None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoredTensor:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["shape"] = tuple(int(d) for d in values["shape"])
        return cls(**values)


def plan_tensors(
    config: ExportConfig,
    outputs: Mapping[str, np.ndarray],
    logits: Sequence[str],
    view_params: int = 0,
) -> list[StoredTensor]:
    """The stored tensors for ``config``, from one probe run of the teacher.

    Args:
        outputs: Teacher tensors of a batch of one (leading axis 1).
        logits: The tensors treated as logits (config.logits or the graph outputs).
        view_params: Number of augmentation parameters per row (0: none).

    Raises:
        UsageError: Top-k or temperature asked for a tensor that is not a float
            logit tensor with enough classes.
    """
    planned: list[StoredTensor] = []

    def add(key: str, source: str, kind: str, dtype: str, shape: tuple[int, ...], **extra) -> None:
        planned.append(StoredTensor(key, f"t{len(planned):03d}.npy", source, kind, dtype, shape, **extra))

    store_float = config.dtype.value
    for name in logits:
        row_shape = tuple(outputs[name].shape[1:])
        value = outputs[name]
        needs_classes = config.top_k is not None or config.temperature is not None or config.probabilities
        if not needs_classes:
            add(name, name, "logits", _stored_dtype(value.dtype, store_float), row_shape)
            continue
        axis = _row_axis(name, value, config.class_axis)
        if value.dtype.kind != "f":
            raise UsageError(f"teacher output '{name}' is {value.dtype}; top-k, temperature and probabilities need float logits (choose outputs with --logits)")
        classes = row_shape[axis]
        common = {"class_axis": axis}
        if config.top_k is None:
            add(name, name, "logits", store_float, row_shape, **common)
        else:
            if config.top_k > classes:
                raise UsageError(f"top_k={config.top_k} exceeds the {classes} classes of '{name}' (axis {config.class_axis})")
            k_shape = row_shape[:axis] + (config.top_k,) + row_shape[axis + 1:]
            add(f"{name}.topk_values", name, "topk_values", store_float, k_shape, top_k=config.top_k, **common)
            add(f"{name}.topk_indices", name, "topk_indices", "int32", k_shape, top_k=config.top_k, **common)
        if config.temperature is not None:
            if config.top_k is None:
                add(f"{name}.probs", name, "probs", store_float, row_shape, temperature=config.temperature, **common)
            else:
                add(f"{name}.topk_probs", name, "topk_probs", store_float, k_shape, temperature=config.temperature, top_k=config.top_k, **common)
    for name in config.features:
        value = outputs[name]
        add(name, name, "feature", _stored_dtype(value.dtype, store_float), tuple(value.shape[1:]))
    if view_params:
        add(VIEW_KEY, "", "view", "float64", (view_params,))
    keys = [t.key for t in planned]
    if len(set(keys)) != len(keys):
        raise UsageError(f"stored tensor names collide: {', '.join(sorted(k for k in keys if keys.count(k) > 1))}")
    return planned


def _stored_dtype(dtype: np.dtype, store_float: str) -> str:
    return store_float if dtype.kind == "f" else np.dtype(dtype).name


def _row_axis(name: str, value: np.ndarray, class_axis: int) -> int:
    ndim = value.ndim
    if ndim < 2:
        raise UsageError(f"teacher output '{name}' has shape {list(value.shape)}: no class axis besides the batch axis")
    axis = class_axis % ndim if -ndim <= class_axis < ndim else None
    if axis is None or axis == 0:
        raise UsageError(f"class_axis {class_axis} is not a class axis of '{name}' (shape {list(value.shape)})")
    return axis - 1


def derive(
    tensors: Sequence[StoredTensor],
    outputs: Mapping[str, np.ndarray],
    config: ExportConfig,
    *,
    source_shapes: Mapping[str, tuple[int, ...]],
    first_row: int,
    ids: Sequence[str],
) -> dict[str, np.ndarray]:
    """Stored arrays (``[rows, *shape]``) for a batch of teacher outputs.

    Args:
        outputs: Teacher tensors with the batch (row) axis first.
        source_shapes: Per-row shape of every teacher tensor, from the probe.
        first_row: Index of the batch's first row, for messages.
        ids: Sample id of every row of the batch, for messages.

    Raises:
        DataError: A teacher tensor is not finite, has another shape than the
            probe said, or exceeds the float16 range.
    """
    for source, shape in source_shapes.items():
        _check_rows(source, shape, outputs[source], first_row, ids)
    logits_of: dict[str, np.ndarray] = {}  # per source, computed once
    order_of: dict[str, np.ndarray] = {}
    stored: dict[str, np.ndarray] = {}
    for tensor in tensors:
        if tensor.kind == "view":
            continue
        value = outputs[tensor.source]
        if tensor.kind == "feature" or tensor.class_axis is None:
            stored[tensor.key] = _cast(value, tensor, first_row, ids)
            continue
        axis = tensor.class_axis + 1
        if tensor.source not in logits_of:
            logits_of[tensor.source] = _as_logits(value, config.probabilities)
        logits = logits_of[tensor.source]
        if tensor.kind == "logits":
            stored[tensor.key] = _cast(logits, tensor, first_row, ids)
        elif tensor.kind == "probs":
            stored[tensor.key] = _cast(softmax(logits, tensor.temperature, axis), tensor, first_row, ids)
        else:
            if tensor.source not in order_of:
                order_of[tensor.source] = top_k_indices(logits, tensor.top_k, axis)
            order = order_of[tensor.source]
            if tensor.kind == "topk_indices":
                stored[tensor.key] = order.astype(np.int32)
            elif tensor.kind == "topk_values":
                stored[tensor.key] = _cast(np.take_along_axis(logits, order, axis), tensor, first_row, ids)
            elif tensor.kind == "topk_probs":
                probs = softmax(logits, tensor.temperature, axis)
                stored[tensor.key] = _cast(np.take_along_axis(probs, order, axis), tensor, first_row, ids)
    return stored


def _as_logits(value: np.ndarray, probabilities: bool) -> np.ndarray:
    """The logits in the teacher's float precision (softmax converts to float64 itself)."""
    if not probabilities:
        return value
    return np.log(np.maximum(value, np.finfo(value.dtype).tiny))


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """``exp(z/T - max) / sum(exp(z/T - max))`` along ``axis``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def top_k_indices(logits: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Indices of the ``k`` largest values along ``axis``, largest first (ties: lower index first).

    Same result as the first ``k`` of a stable descending argsort, without
    sorting all ``C`` classes. Small ``k`` (finite values): ``k`` rounds of
    argmax, which returns the lowest index among equal maxima, each excluding
    the classes already taken -- O(kC) with a small constant. Otherwise: the
    k-th largest value ``v`` is found by partition; every value above ``v`` is
    selected, then values equal to ``v`` in index order until there are ``k``;
    the selection is sorted stably by descending value -- O(C + k log k).
    """
    z = np.moveaxis(logits, axis, -1)
    rows = z.reshape(-1, z.shape[-1])
    classes = rows.shape[1]
    if k >= classes:
        order = np.argsort(-rows, axis=1, kind="stable")
    elif k <= SMALL_K and np.all(np.isfinite(rows)):
        remaining = rows.astype(np.float64 if rows.dtype == np.float64 else np.float32)  # a copy we may overwrite
        order = np.empty((len(rows), k), dtype=np.int64)
        every_row = np.arange(len(rows))
        for j in range(k):
            order[:, j] = np.argmax(remaining, axis=1)
            remaining[every_row, order[:, j]] = -np.inf
    else:
        kth = -np.partition(-rows, k - 1, axis=1)[:, k - 1:k]
        above = rows > kth
        ties = rows == kth
        need = k - above.sum(axis=1, keepdims=True)
        selected = above | (ties & (np.cumsum(ties, axis=1) <= need))
        candidates = np.nonzero(selected)[1].reshape(len(rows), k)  # ascending class index per row
        values = np.take_along_axis(rows, candidates, axis=1)
        order = np.take_along_axis(candidates, np.argsort(-values, axis=1, kind="stable"), axis=1)
    order = order[:, :k].reshape(*z.shape[:-1], k)
    return np.moveaxis(order, -1, axis)


def _check_rows(source: str, shape: tuple[int, ...], value: np.ndarray, first_row: int, ids: Sequence[str]) -> None:
    if tuple(value.shape[1:]) != tuple(shape):
        raise DataError(
            f"teacher tensor '{source}' has shape {list(value.shape[1:])} per sample for row {first_row} "
            f"(sample '{ids[0]}') but {list(shape)} for the first sample; outputs of varying shape are not "
            "supported: give inputs of one shape (pad or resize them)"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        bad = int(np.argwhere(~np.all(np.isfinite(value.reshape(len(value), -1)), axis=1))[0, 0])
        what = "NaN" if np.any(np.isnan(value[bad])) else "Inf"
        raise DataError(f"teacher tensor '{source}' contains {what} for row {first_row + bad} (sample '{ids[bad]}')")


def _cast(value: np.ndarray, tensor: StoredTensor, first_row: int, ids: Sequence[str]) -> np.ndarray:
    dtype = np.dtype(tensor.dtype)
    if dtype == np.float16:
        magnitude = np.max(np.abs(value.reshape(len(value), -1)), axis=1)
        if np.any(magnitude > FLOAT16_MAX):
            bad = int(np.argmax(magnitude > FLOAT16_MAX))
            raise DataError(
                f"'{tensor.key}' reaches {magnitude[bad]:.6g} for row {first_row + bad} (sample '{ids[bad]}'), beyond "
                f"float16's range (±{FLOAT16_MAX:g}); export with dtype float32"
            )
    return np.ascontiguousarray(value.astype(dtype, copy=False)) if value.ndim else value.astype(dtype)
