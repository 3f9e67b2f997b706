"""Structured pruning on real architectures: the ONNX model zoo networks that ship with onnx.

onnx's backend test data holds "light" copies of zoo models (ResNet-50, DenseNet-121, Inception v2,
SqueezeNet, ShuffleNet) whose weights are ``ConstantOfShape`` nodes filling 0.02; here they become
seeded random initializers so that magnitudes differ. The check is exact equivalence: pruning must
do nothing but remove channels, so the pruned model equals the original with the removed channels'
producing weights and biases set to zero (compared on logits, before any final Softmax). This
covers residual bottlenecks, dense concat chains, inception branches, fire modules and grouped
convolutions around a channel shuffle as exported by real tools, not as built by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders
import onnxcomp

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

# name -> groups at least pruned at 30 % (and the construct the model exercises)
ARCHITECTURES = {
    "resnet50": 30,  # residual bottlenecks
    "densenet121": 100,  # every layer's output concatenated into all later ones
    "inception_v2": 60,  # four-branch concats
    "squeezenet": 20,  # fire modules: two expand convs concatenated
    "shufflenet": 10,  # grouped 1x1 convs around a channel shuffle
}


def materialized(path: Path, seed: int = 0) -> onnx.ModelProto:
    """The light model with its ConstantOfShape weights as seeded initializers and logits as output."""
    model = onnx.load(str(path))
    graph = model.graph
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    positive = {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (1, 4)}
    weights, kept = [], []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = tuple(int(d) for d in shapes[node.input[0]])
            name = node.output[0]
            if name in positive:  # BN scale and variance
                value = rng.uniform(0.5, 1.5, shape)
            else:
                value = rng.normal(0, 1 / np.sqrt(max(1, int(np.prod(shape[1:])))), shape)
            weights.append(numpy_helper.from_array(value.astype(np.float32), name))
        else:
            kept.append(node)
    if kept[-1].op_type == "Softmax":  # a saturated softmax would hide differences
        graph.output[0].name = kept.pop().input[0]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    inputs = [i for i in graph.input if i.name in used and i.name not in {w.name for w in weights}]
    del graph.input[:]
    graph.input.extend(inputs)
    initializers = [t for t in [*graph.initializer, *weights] if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs
    onnx.checker.check_model(model)
    return model


def zeroed(model: onnx.ModelProto, plan: dict) -> onnx.ModelProto:
    """``model`` with every output channel the plan removes zeroed (the plan lists weights and biases)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    for name, entry in plan["weights"].items():
        keep = entry["keep"].get("0")
        if keep is not None:
            value = numpy_helper.to_array(inits[name]).copy()
            value[np.setdiff1d(np.arange(value.shape[0]), keep)] = 0
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return model


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_pruning_a_zoo_architecture_only_removes_channels(name):
    cleaned = onnxcomp.optimize(materialized(LIGHT / f"light_{name}.onnx"), ["cleanup"], latency=False, verify=False).model
    prune = {"prune-channels": {"ratio": 0.3, "criterion": "l2", "reconstruction": "none", "round_to": 1}}
    result = onnxcomp.optimize(cleaned, ["cleanup", prune], latency=False, verify=False)
    summary = next(s for s in result.report.steps if s.name == "prune-channels").summary
    assert summary["groups_pruned"] >= ARCHITECTURES[name], summary
    assert result.report.after.macs < 0.9 * result.report.before.macs
    reference = zeroed(cleaned, result.report.artifacts["prune-channels"]["plan"])
    feed = builders.feed_for(reference, seed=1, batch=1)
    (expected,), (actual,) = builders.run(reference, feed), builders.run(result.model, feed)
    # the only change is fewer exact-zero terms in each sum; 1e-5 of the logits' scale absorbs the order
    np.testing.assert_allclose(actual, expected, atol=1e-5 * float(np.abs(expected).max()), rtol=0)
