"""BatchNormalization folding into the preceding linear layer.

At inference ``BatchNormalization`` is the per-channel affine map
``y = s * (x - mean) + beta`` with ``s = gamma / sqrt(var + epsilon)``
(``epsilon`` from the node, default 1e-5 per the spec), i.e. ``y = s * x + t``
with ``t = beta - s * mean``. It folds into a preceding Conv, ConvTranspose
(with ``group``), Gemm (respecting ``transB``) or MatMul(+Add) by the algebra
and guards of :mod:`onnxcomp.affine`.

Extra guards here: the batch norm is in inference mode with only its first
output read and constant parameters; for MatMul the product must be known to
be 2-D, since the batch-norm channel axis is axis 1 and must be the MatMul's
last axis.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.affine import ChannelAffine, fold_affine, linear_layer_of
from onnxcomp.context import PassContext
from onnxcomp.graph import Namer, constant_value, is_onnx_op
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FoldBatchNormConfig(PassConfig):
    pass


class FoldBatchNorm(Pass):
    """Fold inference-mode BatchNormalization into Conv/ConvTranspose/Gemm/MatMul."""

    name = "fold-batchnorm"
    Config = FoldBatchNormConfig
    stage = Stage.FOLD
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        norms = [n for n in graph.nodes if is_onnx_op(n, "BatchNormalization")]
        if not norms:
            return PassResult(graph, False, {"remaining": 0})
        if any(is_onnx_op(n, "MatMul") for n in graph.nodes):
            ctx.infer_shapes(graph)
        namer = Namer(graph)
        folded: Counter[str] = Counter()
        for bn in norms:
            affine = batchnorm_affine(bn)
            reason = affine if isinstance(affine, str) else _matmul_rank_problem(graph, bn)
            if reason is None:
                layer_op, reason = fold_affine(graph, bn, affine, namer)
                if layer_op:
                    folded[f"into_{layer_op}"] += 1
            if reason is not None:
                logger.debug("batch norm %s not folded: %s", bn.name, reason)
        remaining = sum(is_onnx_op(n, "BatchNormalization") for n in graph.nodes)
        return PassResult(graph, sum(folded.values()) > 0, {**dict(folded), "remaining": remaining})


def batchnorm_affine(bn: gs.Node) -> ChannelAffine | str:
    """The batch norm as ``y = s * x + t``, or the reason it is not a constant affine map."""
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1"
    if any(o.outputs for o in bn.outputs[1:] if o.name):
        return "running statistics outputs are read"
    params = [constant_value(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "parameters are not constants"
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    scale = gamma / np.sqrt(var + eps)
    return ChannelAffine(scale=scale, shift=beta - scale * mean)


def _matmul_rank_problem(graph: gs.Graph, bn: gs.Node) -> str | None:
    found = linear_layer_of(graph, bn.inputs[0])
    if isinstance(found, str) or found[0].op != "MatMul":
        return None
    shape = found[0].outputs[0].shape
    if shape is None or len(shape) != 2:
        return "MatMul output is not known to be 2-D"
    return None
