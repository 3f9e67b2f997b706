"""Sensitivity analysis, mixed precision (max_drop), output metrics and the per-tensor SQNR report."""

from __future__ import annotations

import numpy as np
import pytest

import quant_models as qm
from onnxcomp.context import PassContext
from onnxcomp.data import ListDataset
from onnxcomp.pass_manager import PassManager
from onnxcomp.quantization.holdout import split_holdout
from onnxcomp.quantization.sensitivity import Metric, choose_float_layers, sample_drop
from onnxcomp.registry import build_pipeline


def run(model, samples, **options):
    ctx = PassContext(template=model, data=ListDataset(samples))
    out = PassManager(build_pipeline(["cleanup", {"quantize-static": options}])).run(model, ctx).model
    return out, ctx.artifacts["quantize-static"]


def test_metrics():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    assert sample_drop([logits], [logits], Metric.KL) == pytest.approx(0.0, abs=1e-12)
    assert sample_drop([logits], [logits[:, ::-1]], Metric.TOP1) == 0.5
    assert sample_drop([logits], [-logits], Metric.COSINE) == pytest.approx(2.0)
    probs = np.array([[0.5, 0.5]])
    # Probabilities are compared as they are: KL([.5,.5] || [.9,.1]).
    expected = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
    assert sample_drop([probs], [np.array([[0.9, 0.1]])], Metric.KL) == pytest.approx(expected, rel=1e-6)


def test_greedy_choice_skips_layers_that_do_not_help():
    cost = {"a": 0.05, "b": 0.02, "c": 0.0}  # drop contributed by each layer when int8

    def with_float(names):
        return sum(v for k, v in cost.items() if k not in names) + (0.01 if "c" in names else 0.0)

    def only(name):
        return {"a": 0.05, "b": 0.02, "c": 0.03}[name]  # c *looks* sensitive but keeping it float hurts

    result = choose_float_layers(list(cost), with_float, only, max_drop=0.001)
    assert result.float_layers == ["a", "b"]
    assert result.drop == pytest.approx(0.0) and result.all_int8_drop == pytest.approx(0.07)
    assert [name for name, _ in result.history] == ["a", "c", "b"]


def test_max_drop_keeps_the_most_sensitive_layers_float():
    m = qm.conv_stack(seed=4, layers=4)
    samples = qm.samples(m, 40)
    _, plain = run(m, samples, max_drop=1.0, metric="cosine")
    assert plain["mixed_precision"]["float_layers"] == []
    all_int8 = plain["mixed_precision"]["all_int8_drop"]
    target = all_int8 / 3
    out, artifacts = run(m, samples, max_drop=target, metric="cosine")
    mp = artifacts["mixed_precision"]
    assert mp["held_out_samples"] == 8 and artifacts["calibration_samples"] == 32
    assert set(mp["sensitivity"]) == {"conv0", "conv1", "conv2", "conv3"}
    assert mp["float_layers"] and mp["drop"] <= target
    most_sensitive = max(mp["sensitivity"], key=mp["sensitivity"].get)
    assert mp["float_layers"][0] == most_sensitive
    float_weights = {t.name for t in out.graph.initializer}
    for name in mp["float_layers"]:
        layer = next(n for n in out.graph.node if n.name == name)
        assert layer.input[1] in float_weights  # the original float weight, no DequantizeLinear


def test_sqnr_report_covers_every_quantized_tensor_in_graph_order():
    m = qm.cnn()
    out, artifacts = run(m, qm.samples(m, 8))
    rows = artifacts["sqnr"]
    dq_count = sum(1 for n in out.graph.node if n.op_type == "QuantizeLinear")
    assert len(rows) == dq_count
    assert rows[0]["tensor"] == "x" and rows[0]["op"] == "input"
    values = [r["sqnr_db"] for r in rows]
    assert all(isinstance(v, float) and 10 < v < 80 for v in values), values
    # Error accumulates: the first tensor (the input) is better than the last.
    assert values[0] > values[-1]


def test_split_holdout():
    data = ListDataset([{"i": np.array(i)} for i in range(23)])
    calib, held = split_holdout(data, every=5, limit=3)
    assert [int(f["i"]) for f in held] == [4, 9, 14]
    assert [int(f["i"]) for f in calib] == [i for i in range(23) if i not in (4, 9, 14)]
    assert calib.size() == 20
    small, held_small = split_holdout(ListDataset([{"i": np.array(0)}]), every=5, limit=3)
    assert len(held_small) == 1 and len(list(small)) == 1
