"""What a distillation export stores, as a frozen configuration."""

from __future__ import annotations

import dataclasses
import enum
import math

from ..errors import UsageError


class StoreDtype(enum.Enum):
    """Storage precision of float tensors (logits, probabilities, features)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


DEFAULT_SHARD_BYTES = 64 * 1024 * 1024
"""Target size of one shard when ``samples_per_shard`` is not given."""


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Options of :func:`onnxcomp.distill.export_teacher`.

    Attributes:
        logits: Teacher outputs stored as logits (default: every graph output).
        features: Further tensors stored as they are, e.g. intermediate feature
            maps or attention probabilities for feature/attention distillation.
            Any tensor of the graph can be named.
        dtype: Precision of stored float tensors.
        top_k: Store only the ``k`` largest logits per row (values and class
            indices, in descending order) instead of the full logits.
        temperature: Also store ``softmax(logits / T)``; with ``top_k``, only
            its values at the top-k classes (not renormalized).
        probabilities: The teacher's outputs are probabilities, not logits;
            ``log(p)`` is stored and used as logits (``softmax(log p) = p``).
        class_axis: Axis of the class dimension in the teacher output
            (counting the batch axis); top-k and softmax run along it.
        batch_size: Samples per onnxruntime run (models with a fixed batch of 1
            run one sample at a time). Not part of the export's identity.
        samples_per_shard: Samples per shard; None picks about
            :data:`DEFAULT_SHARD_BYTES` of outputs per shard.
        views: Augmented views exported per sample (needs ``augment``).
        augment: Augmentation spec, e.g. ``"crop-flip"`` or
            ``"crop-flip:scale=0.5-1,flip=0"`` (see :mod:`onnxcomp.distill.augment`).
        seed: Seed of the augmentation parameters.
    """

    logits: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    dtype: StoreDtype = StoreDtype.FLOAT32
    top_k: int | None = None
    temperature: float | None = None
    probabilities: bool = False
    class_axis: int = -1
    batch_size: int = 32
    samples_per_shard: int | None = None
    views: int = 1
    augment: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "logits", tuple(self.logits))
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "dtype", StoreDtype(self.dtype))
        self.validate()

    def validate(self) -> None:
        """Raises UsageError naming the offending field."""
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be a positive integer, got {self.top_k}")
        if self.temperature is not None and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UsageError(f"temperature must be a positive number, got {self.temperature}")
        if self.batch_size < 1:
            raise UsageError(f"batch_size must be positive, got {self.batch_size}")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise UsageError(f"samples_per_shard must be positive, got {self.samples_per_shard}")
        if self.views < 1:
            raise UsageError(f"views must be positive, got {self.views}")
        if self.views > 1 and self.augment is None:
            raise UsageError(f"views={self.views} needs an augmentation (augment / --augment)")
        if self.class_axis == 0:
            raise UsageError("class_axis 0 is the batch axis; give the class axis of the teacher output, e.g. -1")
        for name in (*self.logits, *self.features):
            if not name:
                raise UsageError("tensor names in logits/features must not be empty")
        overlap = sorted(set(self.logits) & set(self.features))
        if overlap:
            raise UsageError(f"{', '.join(overlap)} named both as logits and as a feature; name each tensor once")
        for field in ("logits", "features"):
            names = getattr(self, field)
            if len(set(names)) != len(names):
                raise UsageError(f"{field} names a tensor twice")
