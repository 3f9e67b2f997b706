"""Shape and type inference as a pass.

Writes the shapes and element types that ``onnx.shape_inference`` can derive
(with data propagation, so shape sub-graphs of constants resolve) onto the
graph's tensors. Other passes rely on them (no-op detection, batch-norm folding
into MatMul, constant folding of ``Shape``). Large weights are stubbed during
inference, so this is cheap even for models over 2 GB.
"""

from __future__ import annotations

import dataclasses

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage


@dataclasses.dataclass(frozen=True)
class InferShapesConfig(PassConfig):
    pass


class InferShapes(Pass):
    """Annotate tensors with inferred shapes and dtypes; modified when any were new."""

    name = "infer-shapes"
    Config = InferShapesConfig
    stage = Stage.ANY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        changed = ctx.infer_shapes(graph)
        return PassResult(graph, changed > 0, {"tensors_annotated": changed})
