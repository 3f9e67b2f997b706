"""The prune-channels pass: options, reconstruction, plans, honesty of ``modified``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import builders
import onnxcomp
from onnxcomp.analysis import model_stats
from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.pipelines import pipeline_from_flags
from onnxcomp.pruning.plan import load_plan, write_plan
from onnxcomp.registry import create_pass


def conv_net(seed: int = 0, width: int = 32, head_scale: float = 1.0) -> onnx.ModelProto:
    """x[N,8,8,8] -> Conv 3x3 (width) -> Relu -> Conv 3x3 (width) -> Relu -> Conv 1x1 (8) -> y.

    Weights are seeded; ``head_scale`` scales the last conv (a weakly used
    second hidden layer when small).
    """
    rng = np.random.default_rng(seed)
    inits = [
        builders.tensor("w1", rng.normal(0, 0.2, (width, 8, 3, 3)).astype(np.float32)),
        builders.tensor("b1", rng.normal(0.1, 0.1, width).astype(np.float32)),
        builders.tensor("w2", rng.normal(0, 0.1, (width, width, 3, 3)).astype(np.float32)),
        builders.tensor("b2", rng.normal(0.1, 0.1, width).astype(np.float32)),
        builders.tensor("w3", (head_scale * rng.normal(0, 0.3, (8, width, 1, 1))).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    return builders.model(nodes, [builders.value("x", ["N", 8, 8, 8])], [builders.value("y", ["N", 8, 8, 8])], inits)


def samples(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0.3, 1.0, (1, 8, 8, 8)).astype(np.float32)} for _ in range(count)]


def prune(model, data=None, **options):
    options = {"round_to": 1, **options}
    manager = PassManager([create_pass("prune-channels", options)], checks=(Check.CHECKER, Check.ORT))
    ctx = PassContext(template=model, data=data)
    result = manager.run(model, ctx)
    return result.model, result.steps[0], ctx.artifacts["prune-channels"]


def relative_error(reference, candidate, data) -> float:
    num = den = 0.0
    for feed in data:
        (a,), (b,) = builders.run(reference, feed), builders.run(candidate, feed)
        num += float(np.sum((a - b) ** 2))
        den += float(np.sum(a**2))
    return num / den


def dataset(feeds):
    from onnxcomp.data import ListDataset

    return ListDataset(feeds)


def test_reconstruction_reduces_output_error_on_held_out_data():
    m = conv_net(seed=1)
    calib, held_out = dataset(samples(32, seed=2)), samples(8, seed=3)
    errors = {}
    for mode in ("none", "bias", "least-squares"):
        out, step, _ = prune(m, calib, ratio=0.5, criterion="l2", reconstruction=mode)
        assert step.summary["units_removed"] == 32
        errors[mode] = relative_error(m, out, held_out)
    # Same channels removed each time; each repair must beat the previous one by a margin.
    assert errors["bias"] < 0.9 * errors["none"], errors
    assert errors["least-squares"] < 0.9 * errors["bias"], errors


def test_default_criterion_and_reconstruction_follow_data():
    m = conv_net(seed=4)
    _, without, _ = prune(m, ratio=0.25)
    assert without.summary["criterion"] == "l2" and "layers_refitted" not in without.summary
    assert without.summary["allocation"] == "uniform"
    _, with_data, _ = prune(m, dataset(samples(8, seed=5)), ratio=0.25)
    assert with_data.summary["criterion"] == "contribution" and with_data.summary["layers_refitted"] == 2
    assert with_data.summary["allocation"] == "sensitivity"


def test_data_criteria_without_data_fail_clearly():
    with pytest.raises(UsageError, match="criterion 'activation' needs calibration data"):
        prune(conv_net(), ratio=0.25, criterion="activation")


def test_modified_is_honest():
    m = conv_net(seed=6)
    out, step, _ = prune(m, ratio=0.0)
    assert not step.modified and step.summary["units_removed"] == 0
    assert [t.name for t in out.graph.initializer] == [t.name for t in m.graph.initializer]
    _, step, _ = prune(m, ratio=0.5, skip=("conv*",))
    assert not step.modified
    _, step, _ = prune(m, ratio=0.5)
    assert step.modified


def single_conv() -> onnx.ModelProto:
    """x[N,8,8,8] -> Conv 1x1 (8) -> y: its only channels are the model's output."""
    w = np.random.default_rng(0).normal(size=(8, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    return builders.model(
        nodes, [builders.value("x", ["N", 8, 8, 8])], [builders.value("y", ["N", 8, 8, 8])], [builders.tensor("w", w)]
    )


def pruning_warnings(model, data=None, **options) -> list[str]:
    ctx = PassContext(template=model, data=data)
    PassManager([create_pass("prune-channels", options)]).run(model, ctx)
    return ctx.warnings


def test_pruning_without_data_warns_that_outputs_move():
    m = conv_net(seed=6)
    (warning,) = pruning_warnings(m, ratio=0.3, round_to=1)
    assert "no calibration data" in warning and "--prune-plan" in warning
    assert pruning_warnings(m, dataset(samples(8, seed=2)), ratio=0.3, round_to=1) == []


def test_a_request_that_removes_nothing_says_why():
    m = conv_net(seed=6)
    assert pruning_warnings(m, ratio=0.0) == []  # nothing asked, nothing to say
    (skipped,) = pruning_warnings(m, ratio=0.5, skip=("conv*",))
    assert "match skip ['conv*']" in skipped
    (frozen,) = pruning_warnings(single_conv(), ratio=0.5)
    assert "none of the 1 channel group(s) can be pruned" in frozen and "graph output" in frozen
    assert "inspect --prunable" in frozen
    (rounded,) = pruning_warnings(m, ratio=0.3, round_to=32)
    assert "round_to=32" in rounded


def kept(model: onnx.ModelProto, name: str) -> int:
    return {t.name: t for t in model.graph.initializer}[name].dims[0]


def test_skip_layer_ratios_and_round_to():
    m = conv_net(seed=7)
    out, _, _ = prune(m, ratio=0.5, skip=("conv2",), layer_ratios={"w1": 0.25})
    assert kept(out, "w1") == 24 and kept(out, "w2") == 32
    out, _, _ = prune(m, ratio=0.3, round_to=8)
    assert kept(out, "w1") == 24 and kept(out, "w2") == 24


def test_global_scope_prunes_groups_unevenly_to_the_same_total():
    m = conv_net(seed=8, width=32)
    rng = np.random.default_rng(9)
    w1 = numpy_helper.to_array(m.graph.initializer[0]).copy()
    w1[:16] *= rng.uniform(0.01, 0.05, (16, 1, 1, 1)).astype(np.float32)  # half of conv1's filters are tiny
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    out, step, _ = prune(m, ratio=0.25, scope="global", criterion="l2")
    assert step.summary["units_removed"] == 16
    assert kept(out, "w1") < 24 < kept(out, "w2")


def test_target_macs_is_met_and_estimated_exactly():
    m = conv_net(seed=10)
    feed = samples(1, seed=11)[0]
    out, step, artifacts = prune(m, ratio=0.0, target_macs=0.5)
    before = model_stats(m, sample=feed).macs
    after = model_stats(out, sample=feed).macs
    assert after <= 0.5 * before
    assert after == pytest.approx(artifacts["macs_kept_estimate"] * before, rel=1e-6)
    assert 0.0 < step.summary["ratio_found"] < 0.9


def specialist_net() -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv 1x1 (16) -> Relu -> Conv 1x1 (4) -> y, with three kinds of hidden unit:
    0-7 read input channels 0-2 (moderate head weights), 8-11 "specialists" read only
    input channel 3 (large head weights), 12-15 read channels 0-2 (tiny head weights)."""
    rng = np.random.default_rng(11)
    w1 = np.zeros((16, 4, 1, 1), np.float32)
    w1[:8, :3] = rng.uniform(0.5, 1.0, (8, 3, 1, 1))
    w1[8:12, 3] = 1.0
    w1[12:, :3] = rng.uniform(0.5, 1.0, (4, 3, 1, 1))
    w2 = np.zeros((4, 16, 1, 1), np.float32)
    w2[:, :8] = rng.normal(0, 0.3, (4, 8, 1, 1))
    w2[:, 8:12] = rng.normal(0, 1.0, (4, 4, 1, 1))
    w2[:, 12:] = rng.normal(0, 0.02, (4, 4, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    inits = [builders.tensor("w1", w1), builders.tensor("w2", w2)]
    return builders.model(nodes, [builders.value("x", ["N", 4, 6, 6])], [builders.value("y", ["N", 4, 6, 6])], inits)


def test_activation_shrinkage_keeps_channels_the_calibration_data_never_excite():
    # Calibration inputs leave channel 3 at zero (like greyscale photographs for a colour
    # feature); deployment inputs use it. Unshrunk, the specialists measure 0 and go first.
    m = specialist_net()
    rng = np.random.default_rng(12)
    deploy = [{"x": np.abs(rng.normal(0, 1, (1, 4, 6, 6))).astype(np.float32)} for _ in range(24)]
    calib = [{"x": f["x"] * np.array([1, 1, 1, 0], np.float32)[:, None, None]} for f in deploy[:16]]
    deploy = deploy[16:]
    errors, specialists = {}, {}
    for shrinkage in (0.0, 0.5):
        out, step, _ = prune(
            m, dataset(calib), ratio=0.25, criterion="contribution", allocation="uniform",
            reconstruction="none", activation_shrinkage=shrinkage,
        )  # fmt: skip
        assert step.summary["units_removed"] == 4 and step.summary["activation_shrinkage"] == shrinkage
        w1 = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}["w1"]
        specialists[shrinkage] = int(np.count_nonzero(w1[:, 3]))
        errors[shrinkage] = relative_error(m, out, deploy)
    assert specialists == {0.0: 0, 0.5: 4}, specialists
    assert errors[0.5] < 0.1 * errors[0.0], errors


def test_activation_shrinkage_out_of_range_is_refused():
    with pytest.raises(UsageError, match="activation_shrinkage must be in"):
        create_pass("prune-channels", {"activation_shrinkage": 1.5})


def test_sensitivity_allocation_prunes_the_insensitive_group_more():
    m = conv_net(seed=12)
    # The head reads 4 of conv2's 32 channels: conv2's group can lose most channels at little
    # cost, while every conv1 channel feeds those 4 through conv2.
    w3 = numpy_helper.to_array(m.graph.initializer[4]).copy()
    w3[:, 4:] *= 0.01
    m.graph.initializer[4].CopyFrom(numpy_helper.from_array(w3, "w3"))
    out, step, artifacts = prune(m, dataset(samples(16, seed=13)), ratio=0.4, allocation="sensitivity", reconstruction="none")
    assert set(artifacts["sensitivity"]) == {"conv1", "conv2"}
    assert kept(out, "w2") < kept(out, "w1")
    assert step.summary["units_removed"] >= 0.4 * 64


def test_compute_budget_is_allocated_per_mac_a_channel_ratio_per_channel():
    from onnxcomp.pruning.allocate import Allocator
    from onnxcomp.pruning.config import PruneChannelsConfig
    from onnxcomp.pruning.groups import Group
    from onnxcomp.pruning.sensitivity import Curve

    groups = [Group(i, f"g{i}", [f"g{i}"], [], 16, list(range(16 * i, 16 * i + 16)), {}, 0, []) for i in range(2)]
    config = PruneChannelsConfig(round_to=1)
    # g0 costs half the deviation per channel; a g1 channel carries 8x the MACs of a g0 channel.
    curves = {0: Curve((0.25, 0.5), (0.01, 0.02)), 1: Curve((0.25, 0.5), (0.02, 0.04))}
    by_channel = Allocator(groups, {}, config, curves=curves).ratios(0.25)
    per_mac = Allocator(groups, {}, config, curves=curves, unit_costs={0: 1.0, 1: 8.0}).ratios(0.25)
    assert by_channel == {0: 0.5, 1: 0.0}  # 8 of 32 channels, all from the less sensitive group
    assert per_mac == {0: 0.0, 1: 0.5}  # 4x the deviation for 8x the MACs


def test_target_macs_with_sensitivity_reports_the_per_mac_allocation():
    m = conv_net(seed=22)
    feed = samples(1, seed=23)[0]
    out, step, artifacts = prune(m, dataset(samples(16, seed=24)), target_macs=0.6, reconstruction="none")
    assert step.summary["allocation"] == "sensitivity" and step.summary["allocation_cost"] == "macs"
    assert model_stats(out, sample=feed).macs <= 0.6 * model_stats(m, sample=feed).macs
    _, plain, _ = prune(m, dataset(samples(16, seed=24)), ratio=0.3, reconstruction="none")
    assert "allocation_cost" not in plain.summary


def test_plan_round_trips_and_reapplies(tmp_path):
    m = conv_net(seed=14)
    data = dataset(samples(8, seed=15))
    out, _, artifacts = prune(m, data, ratio=0.5, reconstruction="none")
    plan = artifacts["plan"]
    path = tmp_path / "plan.json"
    write_plan(plan, path)
    assert load_plan(path) == json.loads(json.dumps(plan))
    assert plan["weights"]["w2"]["keep"]["0"] == plan["weights"]["w3"]["keep"]["1"]
    again, step, _ = prune(m, ratio=0.1, plan=str(path), reconstruction="none")
    assert step.modified
    for a, b in zip(out.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_plan_for_another_model_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    _, _, artifacts = prune(conv_net(seed=16, width=32), ratio=0.5)
    write_plan(artifacts["plan"], path)
    with pytest.raises(UsageError, match="keeps indices outside"):
        prune(conv_net(seed=16, width=16), plan=str(path))
    path.write_text('{"format": "something else"}')
    with pytest.raises(UsageError, match="not an onnxcomp pruning plan"):
        prune(conv_net(), plan=str(path))


def test_prune_flag_runs_through_optimize_and_reports():
    m = conv_net(seed=17)
    feeds = samples(8, seed=18)
    # Half of a random-weight net's channels: far beyond any quality budget; written on request.
    result = onnxcomp.optimize(m, pipeline_from_flags(prune=0.5), data=feeds, latency=False, accept_drop=True)
    assert not result.report.verification.quality.within_budget
    assert any("written although the quality budget is exceeded" in w for w in result.report.warnings)
    step = next(s for s in result.report.steps if s.name == "prune-channels")
    assert step.modified and result.report.after.params < result.report.before.params
    assert "plan" in result.report.artifacts["prune-channels"]
    assert all(v == "ok" for v in result.report.verification.loads.values())


def test_sensitivity_curves_are_reused_from_an_earlier_run(tmp_path):
    m = conv_net(seed=19, head_scale=0.05)
    data = dataset(samples(16, seed=20))
    first, _, artifacts = prune(m, data, ratio=0.4, reconstruction="none")
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps({"artifacts": {"prune-channels": artifacts}}))
    again, _, reused = prune(m, data, ratio=0.4, reconstruction="none", sensitivity_from=str(path))
    assert reused["sensitivity"] == artifacts["sensitivity"]
    assert [list(t.dims) for t in again.graph.initializer] == [list(t.dims) for t in first.graph.initializer]
    with pytest.raises(UsageError, match="no curve for group 'conv1'"):
        path.write_text(json.dumps({"sensitivity": {"elsewhere": {"0.5": 0.1}}}))
        prune(m, data, ratio=0.4, sensitivity_from=str(path))


def test_level_search_finds_the_smallest_level_meeting_a_target():
    from onnxcomp.pruning.allocate import search_level

    assert search_level(lambda lv: 1.0 - lv, 0.7, high=0.9) == pytest.approx(0.3, abs=1e-3)
    assert search_level(lambda lv: 1.0 - lv, 1.0, high=0.9) == 0.0
    assert search_level(lambda lv: 1.0 - 0.1 * lv, 0.5, high=0.9) == 0.9  # out of reach: the highest level


def test_latency_slope_is_fitted_through_no_pruning():
    from onnxcomp.pruning.latency_target import LatencyFit, fit_slope

    line = [(m, 1 - 0.8 * (1 - m)) for m in (0.9, 0.8, 0.7)]
    noisy = [(m, r + e) for (m, r), e in zip(line, (0.02, -0.02, 0.0))]
    assert fit_slope(line) == pytest.approx(0.8)
    assert fit_slope(noisy) == pytest.approx(0.8, abs=0.05)
    assert fit_slope([(1.0, 0.9)]) == 1.0  # nothing removed: no trend to fit
    assert fit_slope([(0.9, 1.5)]) == 0.2  # slower after pruning: noise, clipped
    assert LatencyFit(0.8, line).macs_for(0.76) == pytest.approx(0.7)


def test_latency_target_fits_interleaved_measurements():
    _, step, artifacts = prune(conv_net(seed=25), dataset(samples(8, seed=26)), target_latency=0.8, reconstruction="none")
    model = artifacts["latency_model"]
    assert len(model["measured"]) >= 3 and 0.2 <= model["slope"] <= 2.0
    assert all(0.0 < point["macs"] < 1.0 and point["latency"] > 0.0 for point in model["measured"])
    assert 0.0 < step.summary["ratio_found"] <= 0.9 and step.summary["allocation_cost"] == "macs"


def test_latency_target_already_met_prunes_nothing():
    _, step, _ = prune(conv_net(seed=21), ratio=0.3, target_latency=1.0)
    assert not step.modified and step.summary["ratio_found"] == 0.0
