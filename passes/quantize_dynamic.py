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
import enum
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.activations import iterate_activations
from onnxcomp.context import PassContext
from onnxcomp.graph import Namer
from onnxcomp.pass_base import Pass, PassResult, Stage
from onnxcomp.quantization.dynamic import (
    WeightLayer,
    add_dynamic_quantize,
    dynamic_matmul_error,
    replace_with_integer_matmul,
    smoothing_factors,
)
from onnxcomp.quantization.weight_only import WeightSelectionConfig, quantize_embedding

logger = logging.getLogger(__name__)


class Smoothing(enum.Enum):
    """How activation outliers are migrated into weights (SmoothQuant)."""

    AUTO = "auto"
    FIXED = "fixed"
    OFF = "off"


SMOOTH_CANDIDATES = (0.5, 0.6, 0.7, 0.8, 0.9)
"""Migration strengths ``smoothing=auto`` tries per activation (besides none)."""


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
        groups = _group_by_activation(layers)
        smooth = self._smoothing(graph, ctx, groups) if self._smooths(ctx) and groups else {}
        namer = Namer(graph)
        sqnr = {}
        for members in groups.values():
            activation = members[0].activation
            factors = smooth.get(activation.name)
            qinput = add_dynamic_quantize(graph, namer, activation, factors)
            for layer in members:
                sqnr[layer.node.name] = replace_with_integer_matmul(
                    graph, namer, layer, qinput, per_channel=config.per_channel, smooth=factors
                )
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
        absmax, samples = _activation_statistics(ctx, ctx.export(graph), list(groups), self.config.search_samples)
        chosen: dict[str, np.ndarray] = {}
        alphas: dict[str, float | None] = {}
        layer_errors: dict[str, float] = {}
        for name, members in groups.items():
            if name not in absmax:
                continue
            weights = [layer.weight for layer in members]
            if self.config.smoothing is Smoothing.FIXED:
                alphas[name] = self.config.smooth_alpha
            else:
                alphas[name], errors = _best_alpha(samples[name], absmax[name], weights, self.config.per_channel)
                for layer, error in zip(members, errors):
                    layer_errors[layer.node.name] = round(error, 8)
            if alphas[name] is not None:
                chosen[name] = smoothing_factors(absmax[name], weights, alphas[name])
        ctx.artifacts[f"{self.name}.smooth_alpha"] = alphas
        if layer_errors:
            ctx.artifacts[f"{self.name}.simulated_relative_error"] = layer_errors
        return chosen


def _activation_statistics(
    ctx: PassContext, model, names: list[str], keep: int
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Per-channel max |x| over all calibration samples, and the first ``keep`` samples of each tensor."""
    absmax: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for index, (_, values) in enumerate(
        iterate_activations(model, ctx.data, names, progress=ctx.progress, desc="smoothing statistics")
    ):
        for name, value in values.items():
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            absmax[name] = channel if name not in absmax else np.maximum(absmax[name], channel)
            if index < keep:
                samples[name].append(value)
    return absmax, samples


def _best_alpha(
    samples: list[np.ndarray], absmax: np.ndarray, weights: list[np.ndarray], per_channel: bool
) -> tuple[float | None, list[float]]:
    """The candidate strength (None = no smoothing) with the least relative output error
    summed over the readers, and each reader's relative squared error with it."""
    energies = [sum(float(np.sum((x.reshape(-1, x.shape[-1]) @ w).astype(np.float64) ** 2)) for x in samples) for w in weights]

    def errors(alpha: float | None) -> list[float]:
        smooth = None if alpha is None else smoothing_factors(absmax, weights, alpha)
        return [
            dynamic_matmul_error(samples, w, smooth, per_channel=per_channel) / max(energy, 1e-30)
            for w, energy in zip(weights, energies)
        ]

    results = {alpha: errors(alpha) for alpha in (None, *SMOOTH_CANDIDATES)}
    best = min(results, key=lambda a: sum(results[a]))
    return best, results[best]


def _group_by_activation(layers: list[WeightLayer]) -> dict[str, list[WeightLayer]]:
    """Layers keyed by the name of the activation they read (names are unique in a graph)."""
    groups: dict[str, list[WeightLayer]] = {}
    for layer in layers:
        groups.setdefault(layer.activation.name, []).append(layer)
    return groups
