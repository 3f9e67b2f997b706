"""Folding zero constant Pad into Conv pads; negative cases keep the Pad."""

import numpy as np
import pytest
from onnx import helper

import builders
from builders import tensor, value


def _pad_conv(pads, mode="constant", fill=None, conv_pads=(0, 0, 0, 0)):
    rng = np.random.default_rng(0)
    inputs = ["x", "pads"] + (["fill"] if fill is not None else [])
    inits = [tensor("pads", np.asarray(pads, np.int64)), tensor("w", rng.normal(size=(4, 3, 3, 3)).astype(np.float32))]
    if fill is not None:
        inits.append(tensor("fill", np.float32(fill)))
    nodes = [
        helper.make_node("Pad", inputs, ["p"], mode=mode),
        helper.make_node("Conv", ["p", "w"], ["y"], pads=list(conv_pads)),
    ]
    return builders.model(nodes, [value("x", ["N", 3, 8, 8])], [value("y", ["N", 4, None, None])], inits)


def test_zero_pad_folds_into_conv():
    m = _pad_conv([0, 0, 1, 2, 0, 0, 2, 1], conv_pads=(1, 1, 1, 1))
    out, step = builders.apply_pass("fold-pad", m)
    assert builders.ops(out) == ["Conv"] and step.summary["pads_folded"] == 1
    conv = out.graph.node[0]
    assert list(next(a.ints for a in conv.attribute if a.name == "pads")) == [2, 3, 3, 2]
    builders.assert_same_outputs(m, out, builders.feed_for(m), atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], fill=1.0), dict(pads=[0, 1, 1, 1, 0, 0, 1, 1])],
    ids=["reflect", "nonzero-fill", "channel-pad"],
)
def test_pad_not_folded_when_semantics_differ(kwargs):
    m = _pad_conv(**kwargs)
    if kwargs["pads"][1]:  # channel padding changes the conv's input channels: make the weight fit
        w = next(t for t in m.graph.initializer if t.name == "w")
        w.CopyFrom(tensor("w", np.ones((4, 4, 3, 3), np.float32)))
    out, step = builders.apply_pass("fold-pad", m)
    assert "Pad" in builders.ops(out) and not step.modified
