"""The sparsify pass: unstructured magnitude sparsity and N:M patterns."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

import builders
from onnxcomp.context import PassContext
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.registry import create_pass


def mixed_model(seed: int = 0) -> onnx.ModelProto:
    """Conv (16x8x3x3) -> Relu -> GlobalAveragePool -> Flatten -> MatMul (16x12, ten
    times smaller weights) -> MatMul (12x6) -> y."""
    rng = np.random.default_rng(seed)
    inits = [
        builders.tensor("conv_w", rng.normal(0, 1.0, (16, 8, 3, 3)).astype(np.float32)),
        builders.tensor("fc1_w", rng.normal(0, 0.1, (16, 12)).astype(np.float32)),
        builders.tensor("fc2_w", rng.normal(0, 1.0, (12, 6)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("MatMul", ["f", "fc1_w"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "fc2_w"], ["y"], name="fc2"),
    ]
    return builders.model(nodes, [builders.value("x", [1, 8, 6, 6])], [builders.value("y", [1, 6])], inits)


def sparsify(model, **options):
    manager = PassManager([create_pass("sparsify", options)], checks=(Check.CHECKER, Check.ORT))
    result = manager.run(model, PassContext(template=model))
    return result.model, result.steps[0]


def weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_unstructured_zeroes_the_smallest_weights_of_each_layer():
    m = mixed_model()
    out, step = sparsify(m, sparsity=0.5, min_params=1)
    before, after = weights(m), weights(out)
    for name in before:
        zeroed = after[name] == 0
        assert zeroed.sum() == round(0.5 * before[name].size)
        assert np.abs(before[name][zeroed]).max() <= np.abs(before[name][~zeroed]).min()
        np.testing.assert_array_equal(after[name][~zeroed], before[name][~zeroed])
    assert step.modified and step.summary["sparsity"] == 0.5 and step.summary["layers"] == 3
    assert step.summary["zip_bytes_after"] < step.summary["zip_bytes_before"]
    assert "none in onnxruntime" in step.summary["speedup"]
    again, step2 = sparsify(out, sparsity=0.5, min_params=1)
    assert not step2.modified
    assert all(np.array_equal(a, b) for a, b in zip(weights(out).values(), weights(again).values()))


def test_global_threshold_spares_the_layer_with_large_weights():
    m = mixed_model()
    out, step = sparsify(m, sparsity=0.5, scope="global", min_params=1)
    assert step.modified and step.summary["sparsity"] == 0.5
    after = weights(out)
    total = sum(v.size for v in after.values())
    assert sum(int((v == 0).sum()) for v in after.values()) == round(0.5 * total)
    assert (after["fc1_w"] == 0).mean() > 0.9  # ten times smaller weights go first
    assert (after["conv_w"] == 0).mean() < 0.5


def test_two_four_pattern_along_the_reduction_axis():
    m = mixed_model()
    out, step = sparsify(m, pattern="n:m", n=2, m=4, min_params=1)
    after = weights(out)
    conv = np.moveaxis(after["conv_w"], 1, -1).reshape(-1, 4)  # input channels in runs of 4
    assert ((conv != 0).sum(axis=1) <= 2).all() and (conv == 0).mean() == 0.5
    fc1 = np.moveaxis(after["fc1_w"], 0, -1).reshape(-1, 4)  # MatMul [K, N]: runs along K
    assert ((fc1 != 0).sum(axis=1) <= 2).all()
    fc2 = np.moveaxis(after["fc2_w"], 0, -1).reshape(-1, 4)
    assert ((fc2 != 0).sum(axis=1) <= 2).all()
    assert step.summary["layers"] == 3


def test_skip_and_min_params_leave_layers_dense():
    m = mixed_model()
    out, step = sparsify(m, sparsity=0.5, skip=("fc*",), min_params=100)
    after, before = weights(out), weights(m)
    np.testing.assert_array_equal(after["fc1_w"], before["fc1_w"])
    np.testing.assert_array_equal(after["fc2_w"], before["fc2_w"])
    assert (after["conv_w"] == 0).mean() == 0.5 and step.summary["layers"] == 1
    builders.run(out, builders.feed_for(out))
