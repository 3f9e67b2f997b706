"""Static int8 quantization with QuantizeLinear/DequantizeLinear, calibrated in onnxruntime.

Activations become uint8 (asymmetric, per tensor) and weights int8
(symmetric, per output channel), placed so that onnxruntime's CPU provider
runs integer kernels (QLinearConv, QGemm, QLinearMatMul/MatMulIntegerToFloat,
QLinearAdd, QLinearConcat, QLinearGlobalAveragePool...): see
:mod:`onnxcomp.quantization.placement` for the rules and
:mod:`onnxcomp.quantization.static` for the steps.

Calibration runs the float model once over the data, collecting what every
range method needs (:mod:`onnxcomp.quantization.calibration`); with
``statistics`` set, the statistics are read from that file when it exists
(and matches this model) and written to it otherwise, so another ``method``
can be tried without running the model again.

In transformer blocks (detected, or forced with ``scheme``), the placement
follows :mod:`onnxcomp.quantization.placement`'s transformer scheme: only the
inputs of the linear layers (and of the attention-score MatMul) are quantized,
the residual stream, LayerNorm, Softmax and GELU stay float; the linear
inputs are smoothed first (SmoothQuant, :mod:`onnxcomp.quantization.smoothing`,
in the same run over the data as its statistics), ranges are min/max, and the
layers not reading a LayerNorm output (attention output and FFN
down-projections) are quantized at run time (``unnormalized_inputs``).

Models below opset 13 are converted to opset 13 first (per-channel
DequantizeLinear needs it) when the converted model gives the same outputs on
the first calibration sample; otherwise weights are quantized per tensor and
the reason is logged.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from pathlib import Path

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.errors import OutputError, UsageError
from onnxcomp.graph import Namer
from onnxcomp.ir import export_model, import_graph
from onnxcomp.model_io import default_opset
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.quantization.bias_correction import corrected_biases, input_channel_means
from onnxcomp.quantization.calibration import collect_statistics, model_fingerprint
from onnxcomp.quantization.dynamic import find_weight_layers, group_by_activation
from onnxcomp.quantization.holdout import split_holdout
from onnxcomp.quantization.observers import RangeMethod, Statistics
from onnxcomp.quantization.opset import ensure_opset
from onnxcomp.quantization.placement import LayerPolicy, PlacementOptions
from onnxcomp.quantization.qparams import QuantType
from onnxcomp.quantization.reconstruction import input_hessians, reconstructed_values
from onnxcomp.quantization.sensitivity import Evaluator, Metric, choose_float_layers
from onnxcomp.quantization.smoothing import (
    Smoothing,
    activation_statistics,
    choose_factors,
    dynamic_matmul_error,
    smooth_layers,
    static_matmul_error,
)
from onnxcomp.quantization.sqnr_report import sqnr_rows, tensor_sqnr
from onnxcomp.quantization.static import (
    DynamicLayers,
    StaticOptions,
    StaticQuantizer,
    compute_layer_names,
    group_params,
    input_params,
    observations,
)
from onnxcomp.quantization.transformer import is_normalized, is_transformer

logger = logging.getLogger(__name__)

PER_CHANNEL_OPSET = 13


class Rounding(enum.Enum):
    """How weights are rounded to the int8 grid."""

    NEAREST = "nearest"
    RECONSTRUCT = "reconstruct"


class Scheme(enum.Enum):
    """Which placement rules apply (see :mod:`onnxcomp.quantization.placement`)."""

    AUTO = "auto"
    CNN = "cnn"
    TRANSFORMER = "transformer"


class InputQuantization(enum.Enum):
    """How an activation read by linear layers is quantized."""

    STATIC = "static"
    DYNAMIC = "dynamic"


class ActivationType(enum.Enum):
    """Integer type of quantized activations."""

    UINT8 = "uint8"
    INT8 = "int8"


@dataclasses.dataclass(frozen=True)
class QuantizeStaticConfig(PassConfig):
    """Options of static quantization.

    Attributes:
        method: How activation ranges are chosen: minmax, moving-average,
            percentile, entropy (KL) or mse. Default: mse, and minmax inside
            the transformer blocks (whose rare large activations must not be
            clipped: mse loses 0.001 of MiniLM's embedding cosine).
        percentile: Percentile kept for ``method=percentile`` (e.g. 99.99).
        activations: uint8 (fastest on x86) or int8.
        symmetric_activations: Zero point in the middle of the range (disables
            Relu/Clip folding).
        per_channel: One weight scale per output channel.
        exclude: Node names (fnmatch patterns) kept in float.
        exclude_op_types: Op types kept in float.
        first_layer: int8 or float for the compute layers nearest the inputs.
        last_layer: int8 or float for the compute layers nearest the outputs.
        statistics: An ``.npz`` of calibration statistics: read if it exists,
            else collected and written there.
        max_drop: Mixed precision: keep the most sensitive compute layers
            float until the ``metric`` drop on held-out samples is at most this
            (every 5th sample, up to ``holdout`` of them, is held out of
            calibration for it).
        metric: cosine, kl, top1, or auto: the run's quality measure (see :mod:`onnxcomp.quantization.sensitivity`).
        holdout: Held-out samples for ``max_drop``.
        max_float_layers: Stop mixed precision after this many float layers.
        report_samples: Samples for the per-tensor SQNR report (0: none);
            held-out ones when there are, else the first calibration samples.
        bias_correction: Correct every quantized layer's bias by the mean
            output shift measured against the float model
            (:mod:`onnxcomp.quantization.bias_correction`).
        rounding: nearest, or reconstruct: choose the integer weights that
            minimize each layer's output error on calibration inputs
            (:mod:`onnxcomp.quantization.reconstruction`).
        recovery_samples: Calibration samples used by bias correction and
            rounding reconstruction.
        scheme: ``auto`` uses the transformer scheme in the transformer
            blocks when the model has attention, Softmax and LayerNorm
            (:func:`onnxcomp.quantization.transformer.is_transformer`), the
            general placement elsewhere; ``cnn`` uses the general placement
            everywhere; ``transformer`` skips the detection.
        attention_matmuls: Transformer scheme: also quantize the attention
            score MatMul (``Q @ K^T``).
        smoothing: Transformer scheme: migrate activation outliers of the
            MatMul/Gemm inputs into their weights (SmoothQuant,
            :mod:`onnxcomp.quantization.smoothing`): ``auto`` picks the
            strength per activation (or none) by simulated error on
            ``search_samples`` calibration samples, ``fixed`` uses
            ``smooth_alpha``, ``off`` disables it.
        smooth_alpha: Migration strength for ``smoothing=fixed``.
        unnormalized_inputs: Transformer scheme: ``dynamic`` quantizes the
            inputs of the MatMul/Gemm layers that do not read a LayerNorm
            output (the attention output projection reading the attention
            context, the FFN down-projection reading the GELU output) at run
            time (DynamicQuantizeLinear + MatMulInteger, as ``int8-dynamic``);
            ``static`` gives them a calibrated range like the others. Their
            rare per-input peaks exceed a calibrated range on unseen inputs
            (:func:`onnxcomp.quantization.transformer.is_normalized`).
        embeddings: Transformer scheme: large embedding tables read by
            Gather (token embeddings) become int8 per row, dequantized after
            the lookup, as ``int8-dynamic`` does.
        search_samples: Calibration samples the ``auto`` search simulates.
    """

    method: RangeMethod | None = None
    percentile: float = 99.99
    activations: ActivationType = ActivationType.UINT8
    symmetric_activations: bool = False
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    first_layer: LayerPolicy = LayerPolicy.INT8
    last_layer: LayerPolicy = LayerPolicy.INT8
    statistics: str | None = None
    max_drop: float | None = None
    metric: Metric = Metric.COSINE
    holdout: int = 32
    max_float_layers: int | None = None
    report_samples: int = 4
    bias_correction: bool = False
    rounding: Rounding = Rounding.NEAREST
    recovery_samples: int = 32
    scheme: Scheme = Scheme.AUTO
    attention_matmuls: bool = True
    smoothing: Smoothing = Smoothing.AUTO
    smooth_alpha: float = 0.8
    search_samples: int = 16
    unnormalized_inputs: InputQuantization = InputQuantization.DYNAMIC
    embeddings: bool = True

    def validate(self) -> None:
        if not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}")
        if self.search_samples < 1:
            raise ValueError(f"search_samples must be >= 1, got {self.search_samples}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ValueError(f"max_drop must be >= 0, got {self.max_drop}")
        if self.holdout < 1:
            raise ValueError(f"holdout must be >= 1, got {self.holdout}")
        if self.recovery_samples < 1:
            raise ValueError(f"recovery_samples must be >= 1, got {self.recovery_samples}")
        if self.report_samples < 0:
            raise ValueError(f"report_samples must be >= 0, got {self.report_samples}")

    def static_options(self, transformer: bool = False) -> StaticOptions:
        return StaticOptions(
            method=self.method or RangeMethod.MSE,
            region_method=self.method or RangeMethod.MINMAX if transformer else None,
            percentile=self.percentile,
            activation_type=QuantType(self.activations.value),
            symmetric_activations=self.symmetric_activations,
            per_channel=self.per_channel,
            placement=PlacementOptions(
                exclude=self.exclude,
                exclude_op_types=self.exclude_op_types,
                first_layer=self.first_layer,
                last_layer=self.last_layer,
                transformer=transformer,
                attention_matmuls=self.attention_matmuls,
            ),
        )


class QuantizeStatic(Pass):
    """Static int8 quantization (Q/DQ) calibrated on data, fused by onnxruntime into integer kernels."""

    name = "quantize-static"
    Config = QuantizeStaticConfig
    stage = Stage.QUANTIZE
    needs_data = True

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        data = ctx.require_data(self.name)
        if any(node.op == "QuantizeLinear" for node in graph.nodes):
            return PassResult(graph, False, {"skipped": "model is already quantized"})
        ctx.infer_shapes(graph)
        model = ctx.export(graph)
        opset = default_opset(model) or PER_CHANNEL_OPSET
        if opset < PER_CHANNEL_OPSET:
            model, opset, reason = ensure_opset(model, PER_CHANNEL_OPSET, data.first())
            if reason:
                ctx.warn(f"{self.name}: {reason}; weights are quantized per tensor")
        transformer = self.config.scheme is Scheme.TRANSFORMER or (self.config.scheme is Scheme.AUTO and is_transformer(graph))
        options = self.config.static_options(transformer)
        quantizer = StaticQuantizer(model, None, options, opset)
        _, plan = quantizer.plan()
        dynamic: frozenset[str] = frozenset()
        if transformer and self.config.unnormalized_inputs is InputQuantization.DYNAMIC:
            dynamic = frozenset(
                layer.name for layer in plan.layers
                if layer.node.op in ("MatMul", "Gemm") and layer.name in plan.region and not is_normalized(layer.activation)
            )
            if dynamic:
                placement = dataclasses.replace(options.placement, exclude=options.placement.exclude + tuple(sorted(dynamic)))
                quantizer = StaticQuantizer(model, None, dataclasses.replace(options, placement=placement), opset)
                _, plan = quantizer.plan()
        if not plan.points:
            return PassResult(graph, False, {"quantized_tensors": 0})
        calibration_data, held_out = data, []
        if self.config.max_drop is not None:
            calibration_data, held_out = split_holdout(data, limit=self.config.holdout)
        artifacts: dict = {}
        dynamic_smooth: dict = {}
        if transformer and self.config.smoothing is not Smoothing.OFF:
            model, dynamic_smooth = self._smooth(model, plan, dynamic, calibration_data, ctx, artifacts)
            quantizer = StaticQuantizer(model, None, quantizer.options, opset)
            _, plan = quantizer.plan()
        quantizer.dynamic_layers = DynamicLayers(dynamic, dynamic_smooth, self.config.per_channel)
        quantizer.embeddings = transformer and self.config.embeddings
        quantizer.stats = self._statistics(model, calibration_data, observations(plan), ctx)
        artifacts["calibration_samples"] = quantizer.stats.samples
        if self.config.rounding is Rounding.RECONSTRUCT:
            quantizer.weight_values = self._reconstruct(quantizer, plan, calibration_data, ctx)
        feeds = self._recovery_feeds(calibration_data)
        if self.config.bias_correction:
            self._correct_biases(quantizer, feeds)
        excluded: list[str] = []
        if self.config.max_drop is not None:
            excluded = self._mixed_precision(quantizer, plan, held_out, ctx, artifacts)
        result = quantizer.build(extra_exclude=excluded)
        if self.config.report_samples:
            feeds = held_out[: self.config.report_samples] or [f for _, f in zip(range(self.config.report_samples), data)]
            artifacts["sqnr"] = self._report(model, ctx.export(result.graph), result, feeds)
        ctx.artifacts[self.name] = artifacts
        summary = {
            "quantized_nodes": len(result.plan.nodes),
            "quantized_tensors": result.summary.quantized_tensors,
            "int8_weights": result.summary.quantized_weights,
            "int32_biases": result.summary.int32_biases,
            "folded_activations": result.summary.folded_activations,
            "float_layers": len(excluded),
            "calibration_samples": quantizer.stats.samples,
        }
        if transformer:
            summary["scheme"] = "transformer"
            summary["smoothed_inputs"] = artifacts.get("smoothed_inputs", 0)
            summary["dynamic_layers"] = len(dynamic)
        return PassResult(result.graph, True, summary)

    def _statistics(self, model, data, wanted, ctx: PassContext) -> Statistics:
        fingerprint = model_fingerprint(model)
        path = Path(self.config.statistics) if self.config.statistics else None
        if path is not None and path.exists():
            try:
                stats = Statistics.load(path)
            except ValueError as err:
                raise UsageError(f"{self.name}: statistics file {path}: {err}") from err
            if stats.meta.get("model") != fingerprint:
                raise UsageError(
                    f"{self.name}: statistics file {path} was collected on a different model "
                    "(or pipeline); delete it to calibrate again"
                )
            missing = [o.name for o in wanted if not stats.has(o.name)]
            if missing:
                raise UsageError(f"{self.name}: statistics file {path} lacks tensor(s) {', '.join(missing[:3])}")
            logger.info("%s: read statistics of %d samples from %s", self.name, stats.samples, path)
            return stats
        stats = collect_statistics(model, data, wanted, progress=ctx.progress, providers=ctx.providers, meta={"model": fingerprint})
        if path is not None:
            try:
                stats.save(path)
            except OSError as err:
                raise OutputError(f"{self.name}: cannot write statistics file {path}: {err}") from err
        return stats

    def _smooth(self, model, plan, dynamic: frozenset[str], data, ctx: PassContext, artifacts: dict):
        """SmoothQuant on the inputs of the plan's MatMul/Gemm layers (and of the dynamic ones).

        Returns the model with the static layers' smoothing applied, and the
        factors of the dynamic layers' activations (applied by their rewrite).
        One run over ``data`` collects the statistics of both.
        """
        quantized = set(plan.observed_names())
        names = {
            layer.name for layer in plan.layers
            if layer.node.op in ("MatMul", "Gemm") and layer.name in plan.region and layer.activation.name in quantized
        }
        graph = import_graph(model)
        layers = find_weight_layers(graph)
        static = group_by_activation([layer for layer in layers if layer.node.name in names])
        dynamic_groups = group_by_activation([layer for layer in layers if layer.node.name in dynamic])
        if not static and not dynamic_groups:
            return model, {}
        absmax, samples = activation_statistics(
            model, data, [*static, *dynamic_groups], self.config.search_samples, progress=ctx.progress
        )
        alphas: dict = {}
        chosen = {}
        for groups, error in ((static, static_matmul_error), (dynamic_groups, dynamic_matmul_error)):
            weights = {name: [layer.weight for layer in members] for name, members in groups.items()}
            chosen[error], found, _ = choose_factors(
                absmax, samples, weights, self.config.smoothing,
                fixed_alpha=self.config.smooth_alpha, error=error, per_channel=self.config.per_channel,
            )
            alphas.update(found)
        namer = Namer(graph)
        for name, factors in chosen[static_matmul_error].items():
            smooth_layers(graph, namer, static[name], factors)
        artifacts["smooth_alpha"] = alphas
        artifacts["smoothed_inputs"] = len(chosen[static_matmul_error]) + len(chosen[dynamic_matmul_error])
        logger.info("%s: smoothed %d of %d MatMul/Gemm inputs", self.name, artifacts["smoothed_inputs"], len(static) + len(dynamic_groups))
        smoothed = export_model(graph, model) if chosen[static_matmul_error] else model
        return smoothed, chosen[dynamic_matmul_error]

    def _recovery_feeds(self, data) -> list:
        if not self.config.bias_correction:
            return []
        return [feed for _, feed in zip(range(self.config.recovery_samples), data)]

    def _reconstruct(self, quantizer: StaticQuantizer, plan, data, ctx: PassContext) -> dict:
        """Integer weights of every quantized layer by rounding reconstruction."""
        _, plan = quantizer.plan()
        params = group_params(quantizer.stats, plan, quantizer.options)
        hessians = input_hessians(
            quantizer.model, data, plan.layers, samples=self.config.recovery_samples, seed=ctx.seed, progress=ctx.progress
        )
        values = {}
        for layer in plan.layers:
            if layer.name in hessians:
                w_params = quantizer.weight_params(layer, input_params(plan, params, layer))
                values[layer.name] = reconstructed_values(layer, w_params, hessians[layer.name])
        logger.info("%s: reconstructed the rounding of %d of %d layers", self.name, len(values), len(plan.layers))
        return values

    def _correct_biases(self, quantizer: StaticQuantizer, feeds) -> None:
        """Bias correction of every quantizable layer (float layers keep their own bias)."""
        _, plan = quantizer.plan()
        params = group_params(quantizer.stats, plan, quantizer.options)
        weights = quantizer.quantized_weights(plan, params)
        means = input_channel_means(quantizer.model, plan.layers, feeds)
        quantizer.biases = corrected_biases(plan.layers, weights, means)
        logger.info("%s: corrected %d biases", self.name, len(quantizer.biases))

    def _mixed_precision(self, quantizer: StaticQuantizer, plan, held_out, ctx: PassContext, artifacts: dict) -> list[str]:
        """Layers to keep float so the held-out drop is at most ``max_drop``."""
        evaluator = Evaluator(quantizer.model, held_out, self.config.metric, quality=ctx.metric)
        layers = compute_layer_names(plan)

        def drop_with_float(names) -> float:
            return evaluator.drop(ctx.export(quantizer.build(extra_exclude=names).graph))

        def drop_with_only(name: str) -> float:
            return drop_with_float([n for n in layers if n != name])

        choice = choose_float_layers(
            layers, drop_with_float, drop_with_only, self.config.max_drop,
            max_float=self.config.max_float_layers, progress=ctx.progress,
        )
        artifacts["mixed_precision"] = {
            "metric": self.config.metric.value,
            "held_out_samples": len(held_out),
            "all_int8_drop": round(choice.all_int8_drop, 6),
            "drop": round(choice.drop, 6),
            "float_layers": choice.float_layers,
            "sensitivity": {k: round(v, 6) for k, v in sorted(choice.sensitivity.items(), key=lambda kv: -kv[1])},
        }
        return choice.float_layers

    def _report(self, model, quantized, result, feeds) -> list[dict]:
        sqnr = tensor_sqnr(model, quantized, result.summary.dq_names, feeds)
        rows = sqnr_rows(model, sqnr)
        worst = sorted((r for r in rows if isinstance(r["sqnr_db"], float)), key=lambda r: r["sqnr_db"])[:3]
        logger.info("lowest SQNR: %s", ", ".join(f"{r['tensor']} {r['sqnr_db']} dB" for r in worst))
        return rows
