"""Knowledge distillation by exporting a teacher's outputs.

The teacher runs once, in onnxruntime, over a dataset; its logits (full, top-k,
temperature-softened) and chosen intermediate tensors are stored in sharded,
checksummed ``.npy`` files with a JSON manifest (docs/distill-format.md), so a
student can be trained against them in any framework, as often as needed::

    from onnxcomp.distill import ExportConfig, TeacherOutputs, export_teacher, losses

    export_teacher("teacher.onnx", "train.npz", "kd/", ExportConfig(top_k=20, temperature=4))
    outputs = TeacherOutputs("kd/")
    for batch in outputs.batches(128, shuffle=True):
        ...  # losses.hinton_kd(student_logits, ...)

A student ONNX model trains against an export with :func:`train` (on the
graph itself, needs ``onnxcomp[train]``)::

    from onnxcomp.distill import train

    model, report = train("student.onnx", "kd/", "train.npz", epochs=30, output="student.trained.onnx")

The PyTorch adapter (``onnxcomp.distill.torch_adapter``) imports torch only
when used; the Ray backend (``backend="ray"``) needs ``onnxcomp[ray]``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UsageError

_EXPORTS = {
    "CropFlip": ".augment",
    "augmentation_from_manifest": ".augment",
    "parse_augment": ".augment",
    "ExportConfig": ".config",
    "StoreDtype": ".config",
    "ExportSummary": ".export",
    "export_teacher": ".export",
    "TeacherOutputs": ".reader",
    "Verify": ".reader",
    "losses": ".losses",
}

__all__ = [*_EXPORTS, "train"]


def train(student: Any, teacher_outputs: Any, data: Any, **options: Any):
    """Train an ONNX student against an export of a teacher's outputs: ``(ModelProto, report)``.

    ``onnxcomp distill train`` as a function; the options and what is checked
    are those of :func:`onnxcomp.train.distill.train_student`.

    Raises:
        UsageError: PyTorch is not installed (``pip install 'onnxcomp[train]'``), or a bad option.
    """
    try:
        from ..train.distill import train_student
    except ImportError as err:
        if not (err.name or "").startswith("torch"):
            raise
        raise UsageError(f"distill train needs PyTorch ({err.name} is not installed): pip install 'onnxcomp[train]'") from None
    return train_student(student, teacher_outputs, data, **options)


def __getattr__(name: str) -> Any:
    """Import on first use, so ``onnxcomp distill --help`` and the CLI stay light."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name], __name__)
    value = module if name == "losses" else getattr(module, name)
    globals()[name] = value
    return value
