"""``onnxcomp inspect --prunable``: the dependency groups of a model and why some are frozen.

The model is first put through the ``cleanup`` preset in memory, since that is
what ``--prune`` analyses (batch norms, pads and constant shape sub-graphs
folded away).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from ..context import PassContext
from ..ir import import_graph
from ..model_io import load_model
from ..probe import probe_feed
from .analysis import analyze
from .groups import build_groups
from .shapes import concrete_shapes


@dataclasses.dataclass
class PrunableReport:
    groups: list[dict[str, Any]]
    assumed_dims: dict[str, int]

    @property
    def units(self) -> int:
        return sum(g["units"] for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "prunable_units": self.units, "assumed_dims": self.assumed_dims}

    def render(self) -> str:
        prunable = [g for g in self.groups if g["units"] > 1]
        lines = [
            (
                f"{len(self.groups)} dependency groups, {len(prunable)} prunable, "
                f"{self.units:,} prunable units (channels or heads); analysed after the cleanup preset"
            )
        ]
        if self.assumed_dims:
            lines.append("assumed input dims: " + ", ".join(f"{k}={v}" for k, v in self.assumed_dims.items()))
        lines.append("")
        lines.append(f"{'units':>7} {'frozen':>7} {'layers':>6}  group")
        for g in self.groups:
            lines.append(f"{g['units']:>7,} {g['frozen_channels']:>7,} {len(g['layers']):>6}  {g['name']}")
            for reason in g["frozen_reasons"][:3]:
                lines.append(f"{'':>23}frozen: {reason}")
            if len(g["frozen_reasons"]) > 3:
                lines.append(f"{'':>23}frozen: ... {len(g['frozen_reasons']) - 3} more reasons")
        return "\n".join(lines)


def describe_prunable(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> PrunableReport:
    """Dependency groups of ``model`` as ``--prune`` would see them."""
    from ..pass_manager import PassManager
    from ..registry import build_pipeline

    loaded = model if isinstance(model, onnx.ModelProto) else load_model(model)
    with PassContext(template=loaded) as ctx:
        cleaned = PassManager(build_pipeline(["cleanup"]), checks=()).run(loaded, ctx).model
    feed, assumed = probe_feed(cleaned, None, input_shapes)
    graph = import_graph(cleaned)
    deps = analyze(graph, concrete_shapes(cleaned, feed))
    return PrunableReport([g.to_dict() for g in build_groups(deps)], assumed)
