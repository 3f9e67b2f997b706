"""Cross-layer equalization (data-free) before quantization.

Rescales the channels between consecutive convolutions (Conv -> [Relu] ->
Conv or depthwise Conv) so both layers' per-channel weight ranges match; the
float function is unchanged. See :mod:`onnxcomp.quantization.equalization`.
Runs after batch-norm folding (FOLD stage) and before quantization.
"""

from __future__ import annotations

import dataclasses

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.quantization.equalization import equalize


@dataclasses.dataclass(frozen=True)
class EqualizeCrossLayerConfig(PassConfig):
    """Attributes:
        iterations: Sweeps over all pairs at most (chains need several).
    """

    iterations: int = 20

    def validate(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


class EqualizeCrossLayer(Pass):
    """Equalize per-channel weight ranges of consecutive convolutions (function unchanged)."""

    name = "equalize-cross-layer"
    Config = EqualizeCrossLayerConfig
    stage = Stage.FOLD
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        pairs, changed = equalize(graph, iterations=self.config.iterations)
        return PassResult(graph, changed > 0, {"pairs": pairs, "pairs_equalized": changed})
