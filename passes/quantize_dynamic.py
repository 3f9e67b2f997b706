"""Dynamic int8 quantization for MatMul/Gemm-heavy models (transformers).

Weights of MatMul/Gemm layers become int8 constants (symmetric, per output
column by default); activations are quantized to uint8 at run time by
``DynamicQuantizeLinear`` (one per tensor, shared by the layers that read it).
onnxruntime fuses the result into ``DynamicQuantizeMatMul`` /
``MatMulIntegerToFloat``; see :mod:`onnxcomp.quantization.dynamic` for the
rewrite and its algebra.

Embedding tables (large constants read by ``Gather``) become int8 per row,
dequantized after the lookup (:mod:`onnxcomp.quantization.weight_only`).

With calibration data, activation outliers are migrated into the weights
first (SmoothQuant), which narrows the ranges the per-tensor run-time
quantization has to cover. ``smoothing=auto`` picks, for every quantized
activation, the migration strength (or none) with the smallest simulated
output error of the layers reading it on the first ``search_samples`` samples
(onnxruntime's quantization arithmetic reproduced in numpy); ``fixed`` uses
``smooth_alpha`` everywhere. Without data, ``auto`` does not smooth.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.graph import Namer
from onnxcomp.pass_base import Pass, PassResult, Stage
from onnxcomp.quantization.dynamic import WeightLayer, group_by_activation, quantize_layer_groups
from onnxcomp.quantization.smoothing import Smoothing, activation_statistics, choose_factors, dynamic_matmul_error
from onnxcomp.quantization.weight_only import WeightSelectionConfig, quantize_embedding

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QuantizeDynamicConfig(WeightSelectionConfig):
    """Options of dynamic quantization.

    Attributes:
        per_channel: One weight scale per output column (else one per tensor).
        smoothing: ``auto`` (per activation, searched; only with data),
            ``fixed`` (``smooth_alpha`` everywhere; needs data) or ``off``.
        smooth_alpha: Migration strength in [0, 1] for ``smoothing=fixed``.
        search_samples: Calibration samples the ``auto`` search simulates.

    Layer selection options: see :class:`WeightSelectionConfig`.
    """

    per_channel: bool = True
    smoothing: Smoothing = Smoothing.AUTO
    smooth_alpha: float = 0.8
    search_samples: int = 16

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}")
        if self.search_samples < 1:
            raise ValueError("search_samples must be >= 1")


class QuantizeDynamic(Pass):
    """Dynamic int8: int8 MatMul/Gemm weights, uint8 activations quantized at run time."""

    name = "quantize-dynamic"
    Config = QuantizeDynamicConfig
    stage = Stage.QUANTIZE
    changes_shapes = False  # existing tensors keep shapes and dtypes; new ones are typed

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: QuantizeDynamicConfig = self.config
        layers, tables = config.select(graph)
        if not layers and not tables:
            return PassResult(graph, False, {"layers": 0, "embeddings": 0})
        groups = group_by_activation(layers)
        smooth = self._smoothing(graph, ctx, groups) if self._smooths(ctx) and groups else {}
        namer = Namer(graph)
        sqnr = quantize_layer_groups(graph, namer, groups, smooth, per_channel=config.per_channel)
        for table in tables:
            sqnr[table.table.name] = quantize_embedding(graph, namer, table)
        graph.cleanup()
        ctx.artifacts[self.name] = {"weight_sqnr_db": {k: round(float(v), 2) for k, v in sqnr.items()}}
        summary = {"layers": len(layers), "dynamic_quantize": len(groups), "embeddings": len(tables)}
        if smooth:
            summary["smoothed_inputs"] = len(smooth)
        if sqnr:
            summary["min_weight_sqnr_db"] = round(float(min(sqnr.values())), 1)
        return PassResult(graph, True, summary)

    def _smooths(self, ctx: PassContext) -> bool:
        if self.config.smoothing is Smoothing.OFF:
            return False
        if self.config.smoothing is Smoothing.FIXED:
            ctx.require_data(f"{self.name} (smoothing=fixed)")
            return True
        if ctx.data is None:
            logger.info("%s: no calibration data, activations are not smoothed", self.name)
            return False
        return True

    def _smoothing(self, graph: gs.Graph, ctx: PassContext, groups: dict[str, list[WeightLayer]]) -> dict[str, np.ndarray]:
        """Smoothing factors per activation name (only where they reduce the simulated error)."""
        absmax, samples = activation_statistics(ctx.export(graph), ctx.data, list(groups), self.config.search_samples, progress=ctx.progress)
        weights = {name: [layer.weight for layer in members] for name, members in groups.items()}
        chosen, alphas, errors = choose_factors(
            absmax, samples, weights, self.config.smoothing,
            fixed_alpha=self.config.smooth_alpha, error=dynamic_matmul_error, per_channel=self.config.per_channel,
        )
        ctx.artifacts[f"{self.name}.smooth_alpha"] = alphas
        layer_errors = {
            layer.node.name: round(error, 8) for name, errs in errors.items() for layer, error in zip(groups[name], errs)
        }
        if layer_errors:
            ctx.artifacts[f"{self.name}.simulated_relative_error"] = layer_errors
        return chosen

