"""Non-uniform (codebook) weight quantization for smaller model files.

Every large float initializer becomes uint8 indices (4-bit ones packed two per
byte) into a codebook of 16 or 256 levels — k-means fitted, or powers of two —
plus a decoder of standard ops on constants that onnxruntime folds back into
the float weight when the session is created (see
:mod:`onnxcomp.quantization.codebook`). Inference then runs the original
kernels on the decoded weights, at the original speed and memory: this is a
storage feature (download size, disk), honestly nothing more. 16 levels store
~1/8 of float32, 256 levels ~1/4, before any zip/gzip.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.graph import Namer, is_graph_input, is_graph_output, replace_all_uses
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.quantization.codebook import Granularity, Levels, add_decoder, encode
from onnxcomp.quantization.qparams import sqnr_db

logger = logging.getLogger(__name__)

DECODER_OPSET = 11  # BitShift, GatherElements


@dataclasses.dataclass(frozen=True)
class QuantizeCodebookConfig(PassConfig):
    """Options of codebook quantization.

    Attributes:
        levels: Codebook size, 16 (4-bit indices) or 256 (8-bit indices).
        method: ``kmeans`` (fitted levels) or ``power-of-two`` (``0, ±s/2^j``).
        granularity: ``auto`` (per tensor, the better of ``tensor`` and
            ``channel-scaled``), ``tensor``, ``channel-scaled`` or ``channel`` (see :class:`~onnxcomp.quantization.codebook.Granularity`).
        min_elements: Smaller initializers (biases, norms) stay float.
        exclude: Initializer names to keep.
    """

    levels: int = 256
    method: Levels = Levels.KMEANS
    granularity: Granularity = Granularity.AUTO
    min_elements: int = 4096
    exclude: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.levels not in (16, 256):
            raise ValueError(f"levels must be 16 or 256, got {self.levels}")
        if self.min_elements < 1:
            raise ValueError("min_elements must be >= 1")


class QuantizeCodebook(Pass):
    """Store large weights as codebook indices, decoded by constant-folded standard ops at load."""

    name = "quantize-codebook"
    Config = QuantizeCodebookConfig
    stage = Stage.QUANTIZE
    changes_shapes = False  # the decoded weight keeps the initializer's shape and dtype

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        config: QuantizeCodebookConfig = self.config
        weights = [t for t in graph.tensors().values() if self._selected(graph, t)]
        if not weights:
            return PassResult(graph, False, {"tensors": 0})
        if (graph.opset or 0) < DECODER_OPSET:
            raise UsageError(f"{self.name}: the decoder needs opset >= {DECODER_OPSET}, the model has {graph.opset}")
        namer = Namer(graph)
        bits = 4 if config.levels == 16 else 8
        sqnr = {}
        stored = original = 0
        bar = ctx.progress(len(weights), "codebook", "tensor")
        for tensor in weights:
            values = np.asarray(tensor.values, dtype=np.float32)
            coded = encode(values, levels=config.levels, method=config.method, granularity=config.granularity, seed=ctx.seed)
            sqnr[tensor.name] = sqnr_db(values, coded.decoded())
            decoded = add_decoder(graph, namer, tensor.name, coded, bits=bits)
            replace_all_uses(graph, tensor, decoded)
            original += values.nbytes
            stored += -(-coded.indices.size * bits // 8) + coded.codebook.nbytes + (0 if coded.scale is None else coded.scale.nbytes)
            bar.update(1)
        bar.close()
        graph.cleanup()
        ctx.artifacts[self.name] = {"weight_sqnr_db": {k: round(float(v), 2) for k, v in sqnr.items()}}
        return PassResult(
            graph,
            True,
            {
                "tensors": len(weights),
                "weight_bytes_before": original,
                "weight_bytes_after": stored,
                "min_weight_sqnr_db": round(float(min(sqnr.values())), 1),
            },
        )

    def _selected(self, graph: gs.Graph, tensor: gs.Tensor) -> bool:
        return (
            isinstance(tensor, gs.Constant)
            and tensor.name not in self.config.exclude
            and tensor.dtype is not None
            and np.dtype(tensor.dtype) == np.float32
            and int(np.prod(tensor.shape, dtype=np.int64)) >= self.config.min_elements
            and bool(tensor.outputs)
            and not is_graph_input(graph, tensor)
            and not is_graph_output(graph, tensor)
        )
