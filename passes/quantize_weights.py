"""Weight-only quantization of MatMul/Gemm weights to int8 or int4, block-wise.

Activations stay float; each weight ``W[K, N]`` is stored as integers with one
scale (and, asymmetric, one zero point) per output column and block of
``block_size`` rows of K (see :mod:`onnxcomp.quantization.weight_only`).
Two encodings:

* ``dequantize-linear`` (default, standard ONNX): ``DequantizeLinear(Wq) -> MatMul``.
  Per-channel int8 works from opset 13; blocks or int4 need opset 21, so the
  model is converted with onnx's version converter first and its outputs
  checked unchanged (or the pass refuses with the reason). onnxruntime's CPU
  provider fuses the pair into ``MatMulNBits`` at ORT_ENABLE_EXTENDED and above.
* ``matmul-nbits``: ``com.microsoft.MatMulNBits`` directly (any opset;
  onnxruntime only), with an explicit ``accuracy_level`` (4: int8 compute with
  activations quantized per block at run time; 0: float compute).

Embedding tables read by Gather become int8 per row either way (4-bit Gather is
not a standard kernel). This is a size feature first: on CPU the fused kernel
dequantizes on the fly, so speed depends on the shapes (report it measured).
"""

from __future__ import annotations

import dataclasses
import enum
import logging

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.graph import Namer
from onnxcomp.ir import import_graph
from onnxcomp.pass_base import Pass, PassResult, Stage
from onnxcomp.probe import probe_feed
from onnxcomp.quantization.opset import ensure_opset
from onnxcomp.quantization.weight_only import (
    BLOCKED_DQ_OPSET,
    WeightSelectionConfig,
    block_quantize,
    quantize_embedding,
    replace_with_dequantize_linear,
    replace_with_matmul_nbits,
)

logger = logging.getLogger(__name__)


class WeightFormat(enum.Enum):
    """How quantized weights are written."""

    DEQUANTIZE_LINEAR = "dequantize-linear"
    MATMUL_NBITS = "matmul-nbits"


@dataclasses.dataclass(frozen=True)
class QuantizeWeightsConfig(WeightSelectionConfig):
    """Options of weight-only quantization.

    Attributes:
        bits: 8 or 4.
        block_size: Rows of K sharing a scale (power of two >= 16), or 0 for one
            scale per output column (dequantize-linear only).
        symmetric: Zero point 0 (signed codes); else per-block zero points.
        format: ``dequantize-linear`` (standard ONNX) or ``matmul-nbits``.
        accuracy_level: MatMulNBits ``accuracy_level`` (0-4) for ``matmul-nbits``.
        clip_search: Per block, pick the range shrink with the least squared error.

    Layer selection options: see :class:`WeightSelectionConfig`.
    """

    bits: int = 8
    block_size: int = 32
    symmetric: bool = True
    format: WeightFormat = WeightFormat.DEQUANTIZE_LINEAR
    accuracy_level: int = 4
    clip_search: bool = True

    def validate(self) -> None:
        super().validate()
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.block_size and (self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block_size must be a power of two >= 16 (or 0 for per-channel), got {self.block_size}")
        if not self.block_size and self.format is WeightFormat.MATMUL_NBITS:
            raise ValueError("block_size 0 (per-channel) needs format=dequantize-linear")
        if not 0 <= self.accuracy_level <= 4:
            raise ValueError(f"accuracy_level must be in 0..4, got {self.accuracy_level}")


class QuantizeWeights(Pass):
    """Weight-only int8/int4 block quantization of MatMul/Gemm weights (activations stay float)."""

    name = "quantize-weights"
    Config = QuantizeWeightsConfig
    stage = Stage.QUANTIZE
    changes_shapes = False  # existing tensors keep shapes and dtypes

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: QuantizeWeightsConfig = self.config
        layers, tables = config.select(graph)
        if not layers and not tables:
            return PassResult(graph, False, {"layers": 0, "embeddings": 0})
        summary = {}
        if layers and self._needs_opset_21() and (graph.opset or 0) < BLOCKED_DQ_OPSET:
            graph = self._raised(graph, ctx)
            summary["opset"] = f"raised to {BLOCKED_DQ_OPSET}"
            layers, tables = config.select(graph)
        namer = Namer(graph)
        sqnr = {}
        for layer in layers:  # one float weight in memory at a time
            weight = layer.weight
            quantized = block_quantize(
                weight, bits=config.bits, block_size=config.block_size or None,
                symmetric=config.symmetric, clip_search=config.clip_search,
            )  # fmt: skip
            sqnr[layer.node.name] = quantized.sqnr_db(weight)
            del weight
            if config.format is WeightFormat.MATMUL_NBITS:
                replace_with_matmul_nbits(graph, namer, layer, quantized, accuracy_level=config.accuracy_level)
            else:
                replace_with_dequantize_linear(graph, namer, layer, quantized)
        for table in tables:
            sqnr[table.table.name] = quantize_embedding(graph, namer, table)
        graph.cleanup()
        ctx.artifacts[self.name] = {"weight_sqnr_db": {k: round(float(v), 2) for k, v in sqnr.items()}}
        summary.update(layers=len(layers), embeddings=len(tables))
        if sqnr:
            summary["min_weight_sqnr_db"] = round(float(min(sqnr.values())), 1)
        return PassResult(graph, True, summary)

    def _needs_opset_21(self) -> bool:
        c = self.config
        return c.format is WeightFormat.DEQUANTIZE_LINEAR and (c.bits == 4 or c.block_size > 0)

    def _raised(self, graph: gs.Graph, ctx: PassContext) -> gs.Graph:
        model = ctx.export(graph)
        feed, _ = probe_feed(model, ctx.data, seed=ctx.seed)
        converted, _, reason = ensure_opset(model, BLOCKED_DQ_OPSET, feed)
        if reason is not None:
            raise UsageError(
                f"{self.name}: block-wise or 4-bit DequantizeLinear needs opset {BLOCKED_DQ_OPSET} "
                f"(the model has {graph.opset}), and {reason}; use format=matmul-nbits or block_size=0 with bits=8"
            )
        logger.info("%s: raised the opset from %s to %d", self.name, graph.opset, BLOCKED_DQ_OPSET)
        return import_graph(converted)
