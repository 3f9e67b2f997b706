"""Unstructured magnitude sparsity and N:M (2:4) patterns on layer weights.

Zeroes weights of Conv, ConvTranspose, Gemm and MatMul layers (private float
constants with at least ``min_params`` weights; ``skip`` globs exclude layers or
weights by name). The summary reports the sparsity reached over the targeted
weights and the whole model, and the compressed (zip) size before and after:
zeros compress well, but the ONNX file keeps dense tensors and **onnxruntime
does not run faster on sparse weights** (its CPU kernels are dense). N:M
patterns matter for runtimes with sparse kernels (2:4 on sparse tensor cores).

Running the pass again with the same options changes nothing: the smallest
weights are already the zeros.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.graph import attr, is_onnx_op, private_constant, set_constant
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage
from onnxcomp.pruning.sparsity import magnitude_keep, n_m_keep, threshold_for, zip_size

logger = logging.getLogger(__name__)

NO_SPEEDUP = "none in onnxruntime (sparse weights run on dense kernels)"


class Pattern(enum.Enum):
    UNSTRUCTURED = "unstructured"
    N_M = "n:m"


class SparsityScope(enum.Enum):
    """``local``: every layer reaches ``sparsity``; ``global``: one magnitude threshold for all."""

    LOCAL = "local"
    GLOBAL = "global"


@dataclasses.dataclass(frozen=True)
class SparsifyConfig(PassConfig):
    """Options of ``sparsify``.

    Attributes:
        sparsity: Fraction of the targeted weights zeroed (unstructured).
        pattern: ``unstructured`` or ``n:m`` (keep ``n`` of every ``m`` weights
            along the reduction axis; ``sparsity`` is then ``1 - n/m``).
        n: Weights kept per run (n:m).
        m: Run length (n:m).
        scope: ``local`` or ``global`` (unstructured only).
        skip: Glob patterns of layer or weight names left dense.
        min_params: Layers with fewer weights are left dense.
    """

    sparsity: float = 0.5
    pattern: Pattern = Pattern.UNSTRUCTURED
    n: int = 2
    m: int = 4
    scope: SparsityScope = SparsityScope.LOCAL
    skip: tuple[str, ...] = ()
    min_params: int = 1024

    def validate(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 < self.n < self.m:
            raise ValueError(f"n:m needs 0 < n < m, got {self.n}:{self.m}")
        if self.min_params < 1:
            raise ValueError(f"min_params must be >= 1, got {self.min_params}")


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _reduction_axis(node: gs.Node) -> int:
    """Axis of the weight that a layer sums over (its input channels/features)."""
    if node.op == "Conv":
        return 1
    if node.op == "Gemm":
        return 1 if attr(node, "transB", 0) else 0
    return 0  # MatMul [K, N], ConvTranspose [C_in, C_out/group, ...]


class Sparsify(Pass):
    """Zero weights by magnitude (unstructured, local or global) or in N:M patterns."""

    name = "sparsify"
    Config = SparsifyConfig
    stage = Stage.SPARSIFY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        layers = _targets(graph, self.config)
        zip_before = zip_size(ctx.export(graph))
        zeros_before = sum(int(np.count_nonzero(t.values == 0)) for t, _ in layers)
        targeted = sum(int(np.size(t.values)) for t, _ in layers)
        zeros_after = 0
        for (tensor, _), keep in zip(layers, _masks(layers, self.config)):
            values = np.asarray(tensor.values)
            pruned = np.where(keep, values, np.zeros_like(values))
            zeros_after += int(np.count_nonzero(pruned == 0))
            if not np.array_equal(pruned, values):
                set_constant(tensor, pruned)
        modified = zeros_after > zeros_before
        model_zeros, model_total = _float_zeros(graph)
        summary = {
            "layers": len(layers),
            "sparsity": round(zeros_after / targeted, 4) if targeted else 0.0,
            "model_sparsity": round(model_zeros / max(model_total, 1), 4),
            "zip_bytes_before": zip_before,
            "zip_bytes_after": zip_size(ctx.export(graph)) if modified else zip_before,
            "speedup": NO_SPEEDUP,
        }
        logger.info("sparsify: %s", summary)
        return PassResult(graph, modified, summary)


def _targets(graph: gs.Graph, config: SparsifyConfig) -> list[tuple[gs.Constant, int]]:
    """Weights to sparsify, with the axis N:M runs go along."""
    out = []
    for node in graph.nodes:
        if not is_onnx_op(node, *LAYER_OPS) or len(node.inputs) < 2:
            continue
        tensor = node.inputs[1]
        values = private_constant(graph, tensor)
        if values is None or values.dtype.kind != "f" or values.size < config.min_params:
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in config.skip for name in (node.name, tensor.name)):
            continue
        axis = _reduction_axis(node)
        if config.pattern is Pattern.N_M and values.shape[axis] % config.m:
            logger.debug("sparsify: %s left dense, reduction axis not a multiple of %d", node.name, config.m)
            continue
        out.append((tensor, axis))
    return out


def _masks(layers: list[tuple[gs.Constant, int]], config: SparsifyConfig) -> list[np.ndarray]:
    values = [np.asarray(t.values) for t, _ in layers]
    if config.pattern is Pattern.N_M:
        return [n_m_keep(v, axis, config.n, config.m) for v, (_, axis) in zip(values, layers)]
    if config.scope is SparsityScope.GLOBAL and values:
        threshold = threshold_for(values, config.sparsity)
        return [np.abs(v) > threshold for v in values]
    return [magnitude_keep(v, config.sparsity) for v in values]


def _float_zeros(graph: gs.Graph) -> tuple[int, int]:
    """(zeros, elements) over the float constants of the graph."""
    zeros = total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            values = np.asarray(tensor.values)
            if values.dtype.kind == "f":
                zeros += int(np.count_nonzero(values == 0))
                total += values.size
    return zeros, total
