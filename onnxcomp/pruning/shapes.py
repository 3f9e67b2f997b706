"""Concrete tensor shapes for the dependency analysis.

The analysis reasons about reshapes and broadcasting, which needs every
tensor's dims as integers. They come from one probe input: the first
calibration sample when there is data, otherwise random data of the model's
input shapes (a dynamic leading dim is a batch of 1; other dynamic dims must be
given or default to :data:`onnxcomp.probe.PROBE_DIM`). ONNX shape inference with those input
dims resolves most tensors; the rest are measured by running the model once in
onnxruntime.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..activations import expose_outputs
from ..data import Feed
from ..errors import DataError
from ..runtime import OptLevel, create_session
from ..shapes import infer_model_shapes, shape_of, value_infos

logger = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]


def concrete_shapes(model: onnx.ModelProto, feed: Feed) -> Shapes:
    """Integer shapes of every tensor of ``model`` for the input ``feed``.

    Raises:
        DataError: onnxruntime cannot run the model on the probe input.
    """
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for vi in fixed.graph.input:
        if vi.name in feed:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in np.shape(feed[vi.name]):
                dims.add().dim_value = int(d)
    known: Shapes = {}
    for name, vi in value_infos(infer_model_shapes(fixed)).items():
        shape = shape_of(vi)
        if shape is not None and all(isinstance(d, int) for d in shape):
            known[name] = tuple(int(d) for d in shape)
    for tensor in model.graph.initializer:
        known[tensor.name] = tuple(int(d) for d in tensor.dims)
    for name, value in feed.items():
        known[name] = tuple(int(d) for d in np.shape(value))
    missing = sorted(
        {o for n in model.graph.node for o in n.output if o and o not in known}
    )
    if missing:
        known.update(_measure(model, feed, missing))
    return known


def _measure(model: onnx.ModelProto, feed: Feed, names: list[str]) -> Shapes:
    probe = expose_outputs(model, names)
    session = create_session(probe, level=OptLevel.DISABLED)
    available = {o.name for o in session.get_outputs()}
    wanted = [n for n in names if n in available]
    try:
        values = session.run(wanted, feed)
    except Exception as err:  # onnxruntime raises several unrelated types
        raise DataError(f"cannot run the model on the probe input to measure shapes: {err}") from err
    return {n: tuple(int(d) for d in np.shape(v)) for n, v in zip(wanted, values)}
