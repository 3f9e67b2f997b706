"""Building the manifest's plan from a probe run of the teacher.

The plan records everything that determines the stored bytes (see
:mod:`onnxcomp.distill.manifest` and docs/distill-format.md); the shard size
is chosen here when the caller does not give one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from .. import __version__
from ..data import Dataset, InputSpec, ValidatedDataset
from .config import DEFAULT_SHARD_BYTES, ExportConfig
from .manifest import Manifest
from .transforms import StoredTensor


def _describe_specs(specs: Sequence[InputSpec]) -> list[dict[str, Any]]:
    return [{"name": s.name, "dtype": s.dtype.name, "shape": None if s.shape is None else list(s.shape)} for s in specs]


def _graph_outputs(model: onnx.ModelProto) -> list[dict[str, Any]]:
    outputs = []
    for vi in model.graph.output:
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim] if t.HasField("shape") else None
        outputs.append({"name": vi.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else None, "shape": dims})
    return outputs


def _preprocessing(dataset: Dataset, image_options: Any, preprocessing: Mapping[str, Any] | None) -> dict[str, Any]:
    inner = dataset.inner if isinstance(dataset, ValidatedDataset) else dataset
    kind = type(inner).__name__
    record: dict[str, Any] = {"source_kind": kind}
    if kind == "ImageFolderDataset":
        from ..data_images import ImageOptions

        options = image_options or ImageOptions()
        record["image_options"] = {k: (v.value if hasattr(v, "value") else (list(v) if isinstance(v, tuple) else v))
                                   for k, v in dataclasses.asdict(options).items()}
        record["image_steps"] = (
            "decode RGB -> resize (crop: shorter side to size/crop_fraction, centre crop; stretch) -> channel order"
            " -> (pixels*scale - mean)/std -> layout, batch axis (onnxcomp.data_images)"
        )
    if preprocessing:
        record["user"] = dict(preprocessing)
    return record


def build_manifest(model, sha, teacher, specs, config, augment, tensors, probe, logit_names, dataset, ids,
                    image_options, preprocessing, batch_size) -> Manifest:
    """The manifest of an export: ``plan`` from the probe and settings, ``info`` provenance."""
    row_bytes = sum(t.row_bytes for t in tensors)
    samples_per_shard = config.samples_per_shard or max(1, DEFAULT_SHARD_BYTES // max(1, row_bytes * config.views))
    samples_per_shard = min(samples_per_shard, len(ids))
    plan = {
        "teacher": {
            "sha256": sha,
            "inputs": _describe_specs(specs),
            "outputs": _graph_outputs(model),
            "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        },
        "teacher_tensors": {name: {"dtype": value.dtype.name, "shape": list(value.shape[1:])} for name, value in probe.items()},
        "settings": {
            "logits": list(logit_names),
            "features": list(config.features),
            "dtype": config.dtype.value,
            "top_k": config.top_k,
            "temperature": config.temperature,
            "probabilities": config.probabilities,
            "class_axis": config.class_axis,
        },
        "tensors": [t.to_dict() for t in tensors],
        "samples": {"count": len(ids), "views": config.views, "ids": list(ids)},
        "augmentation": None if augment is None else {**augment.config(), "seed": config.seed},
        "preprocessing": _preprocessing(dataset, image_options, preprocessing),
        "shards": {"samples_per_shard": samples_per_shard, "count": -(-len(ids) // samples_per_shard)},
    }
    info = {
        "onnxcomp_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "teacher_path": None if isinstance(teacher, onnx.ModelProto) else str(teacher),
        "data": dataset.description,
        "batch_size": batch_size,
        "row_bytes": row_bytes,
        "topk_saving": _topk_saving(tensors, probe, logit_names, config),
    }
    return Manifest(plan=plan, info=info)


def _topk_saving(tensors: Sequence[StoredTensor], probe: Mapping[str, np.ndarray], logit_names, config: ExportConfig) -> float | None:
    if config.top_k is None:
        return None
    itemsize = np.dtype(config.dtype.value).itemsize
    full = sum(int(np.prod(probe[n].shape[1:])) * itemsize for n in logit_names)
    kept = sum(t.row_bytes for t in tensors if t.kind in ("topk_values", "topk_indices"))
    return 1.0 - kept / full
