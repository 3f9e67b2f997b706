"""What onnxruntime actually runs: the op types of its optimized graph.

Quantization tests assert that the integer/fused kernels they aim for are the
ones onnxruntime picks, by saving the session's optimized model
(``optimized_model_filepath``) and counting its op types.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort


def optimized_ops(model: onnx.ModelProto, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> collections.Counter:
    """Op-type counts of the graph onnxruntime (CPU) runs for ``model`` at ``level``."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return collections.Counter(node.op_type for node in optimized.graph.node)


def relative_rms_error(reference: np.ndarray, approximation: np.ndarray) -> float:
    """``||approximation - reference|| / ||reference||`` (RMS error relative to the signal)."""
    ref = np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(approximation, dtype=np.float64) - ref) / np.linalg.norm(ref))
