"""A representative input for a model when no data is given.

Passes that must run a model once without calibration data (to measure
shapes, or to check an opset conversion) and the random verification data all
draw their inputs here, so integer inputs that index an embedding table stay
inside it everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from .data import Dataset, Feed, InputSpec, RandomDataset, input_specs, resolve_shapes
from .errors import DataError

PROBE_DIM = 64
"""Stand-in for dynamic non-batch input dims when neither data nor shapes are given."""


def gather_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Upper bounds for random integer inputs that index an embedding table.

    For an input read directly by ``Gather`` on a constant table, random
    indices must stay below the table's size on the gathered axis.
    """
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[0] not in sizes:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = sizes[node.input[0]]
        if dims and -len(dims) <= axis < len(dims):
            size = int(dims[axis])
            bounds[node.input[1]] = min(bounds.get(node.input[1], size), size)
    return bounds


def probe_feed(
    model: onnx.ModelProto,
    data: Dataset | None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> tuple[Feed, dict[str, int]]:
    """One input for ``model`` (the first sample of ``data`` when given), and the dims that had to be assumed.

    Without data the input is random: a dynamic leading dim is a batch of 1,
    other dynamic dims come from ``input_shapes`` or default to :data:`PROBE_DIM`.
    """
    if data is not None:
        return data.first(), {}
    specs = input_specs(model)
    try:
        shapes, assumed = resolve_shapes(specs, input_shapes)
    except DataError:
        shapes, assumed = probe_shapes(specs, input_shapes)
    feed = next(iter(RandomDataset(specs, shapes, 1, seed, int_high=gather_bounds(model))))
    return feed, assumed


def probe_shapes(
    specs: Sequence[InputSpec], overrides: Mapping[str, Sequence[int]] | None
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Shapes with every symbolic non-batch dim set to :data:`PROBE_DIM`."""
    symbols = {
        d: PROBE_DIM
        for spec in specs
        for axis, d in enumerate(spec.shape or ())
        if isinstance(d, str) and axis > 0 and not (overrides and spec.name in overrides)
    }
    shapes, assumed = resolve_shapes(specs, overrides, symbols)
    assumed.update(symbols)
    return shapes, assumed
