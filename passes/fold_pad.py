"""Folding explicit zero ``Pad`` nodes into the convolution or pooling that reads them.

PyTorch exports of TF-style "same" padding (EfficientNet, MobileNet ports) and
Paddle exports put a ``Pad`` before ``Conv``. A constant-mode pad of zeros on
the spatial axes only is exactly what the layer's own ``pads`` attribute does,
so it is added there and the node removed; the layer then reads the unpadded
tensor (one less full-size copy, and for a quantizer one less float op between
integer kernels).

Conditions: ``mode`` is ``constant`` with value 0 (absent counts as 0); pads
are constant, non-negative, and zero on the batch and channel axes; the
reader is a ``Conv`` (or an ``AveragePool`` with ``count_include_pad=1``) with
explicit pads (not ``auto_pad`` other than ``NOTSET``); the padded tensor is
read by that node only. ``MaxPool`` is not a target: it pads with -inf.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.graph import bypass_node, constant_value, is_graph_output, is_onnx_op
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FoldPadConfig(PassConfig):
    pass


class FoldPad(Pass):
    """Fold zero constant Pad nodes into the following Conv's pads."""

    name = "fold-pad"
    Config = FoldPadConfig
    stage = Stage.ANY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        folded = 0
        for pad in [n for n in graph.nodes if is_onnx_op(n, "Pad")]:
            reason = _fold(graph, pad)
            if reason is None:
                folded += 1
            else:
                logger.debug("Pad %s not folded: %s", pad.name, reason)
        return PassResult(graph, folded > 0, {"pads_folded": folded})


def _pads_of(pad: gs.Node) -> np.ndarray | None:
    if len(pad.inputs) >= 2 and pad.inputs[1].name:
        value = constant_value(pad.inputs[1])
        if value is None:
            return None
        if len(pad.inputs) >= 4 and pad.inputs[3].name:  # opset 18 axes input
            return None
        return np.asarray(value, dtype=np.int64).reshape(-1)
    pads = pad.attrs.get("pads")
    return None if pads is None else np.asarray(pads, dtype=np.int64)


def _fill_is_zero(pad: gs.Node) -> bool:
    if len(pad.inputs) >= 3 and pad.inputs[2].name:
        value = constant_value(pad.inputs[2])
        return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == 0.0
    return float(pad.attrs.get("value", 0.0) or 0.0) == 0.0


def _fold(graph: gs.Graph, pad: gs.Node) -> str | None:
    mode = pad.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant" or not _fill_is_zero(pad):
        return "not a zero constant pad"
    pads = _pads_of(pad)
    if pads is None or pads.size % 2 or np.any(pads < 0):
        return "pads are not constant and non-negative"
    out = pad.outputs[0]
    if len(out.outputs) != 1 or is_graph_output(graph, out):
        return "padded tensor has several readers"
    reader = out.outputs[0]
    rank = pads.size // 2
    begins, ends = pads[:rank], pads[rank:]
    if rank < 3 or begins[0] or begins[1] or ends[0] or ends[1]:
        return "pads touch the batch or channel axis"
    if reader.inputs[0] is not out:
        return "the padded tensor is not the reader's data input"
    if is_onnx_op(reader, "Conv"):
        pass
    elif is_onnx_op(reader, "AveragePool") and reader.attrs.get("count_include_pad", 0):
        pass
    else:
        return f"reader {reader.op} cannot absorb the padding"
    auto_pad = reader.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "", None):
        return f"reader uses auto_pad={auto_pad}"
    spatial = rank - 2
    existing = np.asarray(reader.attrs.get("pads", [0] * (2 * spatial)), dtype=np.int64)
    if existing.size != 2 * spatial:
        return "reader pads have an unexpected length"
    added = np.concatenate([begins[2:], ends[2:]])
    if not bypass_node(graph, pad, pad.inputs[0]):
        return "pad output cannot be bypassed"
    reader.attrs["pads"] = [int(v) for v in existing + added]
    return None
