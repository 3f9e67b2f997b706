"""float16 conversion that keeps the model's interface and its fragile ops in float32.

Weights and activations of most nodes become float16 (half the weight bytes);
graph inputs and outputs keep their float32 type through ``Cast`` nodes at the
boundary, and metadata is kept. Nodes stay float32 when their op is on the
block list (:data:`onnxcomp.quantization.fp16.DEFAULT_BLOCK`, each with its
reason: index arithmetic, accumulating reductions, LayerNormalization's
variance...), when a constant they read exceeds half of fp16's range, and, with
calibration data, when any of their tensors does on that data.
The reasons are left in ``ctx.artifacts['convert-fp16']``.

On CPU this is a size feature: onnxruntime's CPU provider has few float16
kernels and runs the rest through inserted casts, so expect it slower than
float32 there; GPUs and NPUs run float16 natively.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.activations import iterate_activations
from onnxcomp.context import PassContext
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.quantization.fp16 import DEFAULT_BLOCK, FLOAT32, FP16_MAX, apply_fp16, plan_fp16

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ConvertFp16Config(PassConfig):
    """Options of float16 conversion.

    Attributes:
        keep_ops: Extra op types to keep in float32.
        allow_ops: Op types to convert although on the default block list.
        exclude: Node names to keep in float32.
        max_abs: Tensors (constants, or activations on calibration data) whose
            |value| exceeds this keep their nodes in float32.
    """

    keep_ops: tuple[str, ...] = ()
    allow_ops: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_abs: float = FP16_MAX / 2

    def validate(self) -> None:
        if not 0 < self.max_abs <= FP16_MAX:
            raise ValueError(f"max_abs must be in (0, {FP16_MAX:g}], got {self.max_abs}")


class ConvertFp16(Pass):
    """Convert to float16, keeping graph I/O float32 and overflow-prone ops in float32."""

    name = "convert-fp16"
    Config = ConvertFp16Config
    stage = Stage.CONVERT

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: ConvertFp16Config = self.config
        ctx.infer_shapes(graph)
        block = {op: why for op, why in DEFAULT_BLOCK.items() if op not in config.allow_ops}
        block.update({op: "kept by keep_ops" for op in config.keep_ops})
        absmax = _activation_absmax(graph, ctx) if ctx.data is not None else None
        plan = plan_fp16(
            graph, block=block, keep_nodes={n: "excluded" for n in config.exclude}, absmax=absmax, max_abs=config.max_abs
        )
        if not plan.half:
            return PassResult(graph, False, {"fp16_nodes": 0, "fp32_nodes": len(plan.kept)})
        counts = apply_fp16(graph, plan)
        graph.cleanup()
        ctx.artifacts[self.name] = {"kept_float32": plan.kept}
        summary = {"fp16_nodes": len(plan.half), "fp32_nodes": len(plan.kept), **counts}
        if absmax is not None:
            summary["range_checked_tensors"] = len(absmax)
        return PassResult(graph, True, summary)


def _activation_absmax(graph: gs.Graph, ctx: PassContext) -> dict[str, float]:
    """Largest |value| of every float32 activation over the calibration data."""
    names = [
        t.name
        for t in graph.tensors().values()
        if isinstance(t, gs.Variable) and t.dtype is not None and np.dtype(t.dtype) == FLOAT32
    ]
    peaks: dict[str, float] = {}
    model = ctx.export(graph)
    for _, values in iterate_activations(model, ctx.data, names, progress=ctx.progress, desc="fp16 range check"):
        for name, value in values.items():
            if value.size:
                peak = float(np.abs(value).max())
                peaks[name] = max(peaks.get(name, 0.0), peak)
    return peaks
