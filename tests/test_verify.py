"""Verification statistics, tolerance gates and latency measurement (no time asserts)."""

import numpy as np
import pytest
from onnx import helper

import builders
from builders import tensor, value
from onnxcomp.data import ListDataset
from onnxcomp.errors import DataError, VerificationError
from onnxcomp.latency import measure_latency
from onnxcomp.verify import check_loads, check_tolerances, compare_models


def _scaled(factor: float):
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"])]
    return builders.model(nodes, [value("x", ["N", 4])], [value("y", ["N", 4])], [tensor("k", np.float32(factor))])


def _data(n=3):
    rng = np.random.default_rng(0)
    return ListDataset([{"x": rng.normal(size=(2, 4)).astype(np.float32)} for _ in range(n)])


def test_identical_models_compare_equal():
    (c,) = compare_models(_scaled(2.0), _scaled(2.0), _data())
    assert c.max_abs == 0 and c.mean_abs == 0 and c.cosine_min == pytest.approx(1.0)
    assert c.samples == 3 and c.elements == 24 and c.top1_agreement == 1.0


def test_errors_are_measured_exactly():
    data = _data()
    (c,) = compare_models(_scaled(1.0), _scaled(1.1), data)
    xs = np.stack([s["x"] for s in data])
    assert c.max_abs == pytest.approx(0.1 * np.abs(xs).max(), rel=1e-5)
    assert c.mean_abs == pytest.approx(0.1 * np.abs(xs).mean(), rel=1e-5)
    assert c.cosine_min == pytest.approx(1.0), "a positive scale keeps the direction"
    with pytest.raises(VerificationError, match="differs from the original by up to"):
        check_tolerances([c], max_abs=0.01)
    check_tolerances([c], max_abs=1.0, min_cosine=0.999)


def test_sign_flip_fails_cosine_gate():
    (c,) = compare_models(_scaled(1.0), _scaled(-1.0), _data())
    assert c.cosine_mean == pytest.approx(-1.0)
    assert c.top1_agreement < 1.0
    with pytest.raises(VerificationError, match="cosine similarity"):
        check_tolerances([c], min_cosine=0.99)


def test_shape_mismatch_and_failing_original_are_reported():
    wider = builders.model([helper.make_node("Concat", ["x", "x"], ["y"], axis=1)], [value("x", ["N", 4])], [value("y", ["N", 8])])
    with pytest.raises(VerificationError, match="has shape \\[2, 8\\], the original gives \\[2, 4\\]"):
        compare_models(_scaled(1.0), wider, _data())
    reshape_to_3 = builders.model([helper.make_node("Reshape", ["x", "s"], ["y"])], [value("x", ["N", 4])], [value("y", ["N", 4])], [tensor("s", np.array([3, -1], np.int64))])
    with pytest.raises(DataError, match="the original model on sample 0 fails in onnxruntime"):
        compare_models(reshape_to_3, _scaled(1.0), _data())


def test_check_loads_reports_every_level():
    loads = check_loads(_scaled(1.0))
    assert loads == {"disabled": "ok", "basic": "ok", "extended": "ok", "all": "ok"}


def test_latency_measures_both_models_interleaved():
    stats = measure_latency({"a": _scaled(1.0), "b": _scaled(2.0)}, {"x": np.ones((1, 4), np.float32)}, min_runs=5, max_runs=5)
    assert set(stats) == {"a", "b"}
    assert stats["a"].runs == stats["b"].runs == 5
    assert 0 < stats["a"].p10_ms <= stats["a"].median_ms <= stats["a"].p90_ms


def test_sequential_comparison_matches_side_by_side():
    side = compare_models(_scaled(1.0), _scaled(1.1), _data())
    one_by_one = compare_models(_scaled(1.0), _scaled(1.1), _data(), sequential=True)
    assert [c.to_dict() for c in side] == [c.to_dict() for c in one_by_one]


def test_latency_one_model_at_a_time():
    stats = measure_latency({"a": _scaled(1.0), "b": _scaled(2.0)}, {"x": np.ones((1, 4), np.float32)}, min_runs=3, max_runs=3, interleaved=False)
    assert stats["a"].runs == stats["b"].runs == 3


def test_latency_sessions_do_not_spin(monkeypatch):
    # Spinning idle threads of one interleaved session take cores from the next (see measure_latency).
    import onnxcomp.latency as latency
    from onnxcomp.runtime import session_options

    seen = []
    real = latency.create_session
    monkeypatch.setattr(latency, "create_session", lambda *a, **k: seen.append(k.get("spinning")) or real(*a, **k))
    latency.measure_latency({"a": _scaled(1.0), "b": _scaled(2.0)}, {"x": np.ones((1, 4), np.float32)}, min_runs=2, max_runs=2)
    assert seen == [False, False]
    assert session_options(spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_latency_ratio_is_paired_per_round_against_the_reference():
    feed = {"x": np.ones((1, 4), np.float32)}
    models = {"a": _scaled(1.0), "b": _scaled(2.0)}
    stats = measure_latency(models, feed, min_runs=7, max_runs=7, reference="a")
    assert stats["a"].ratio == 1.0  # each round's time over itself
    assert stats["b"].ratio is not None and stats["b"].ratio > 0
    apart = measure_latency(models, feed, min_runs=3, max_runs=3, interleaved=False, reference="b")
    assert apart["a"].ratio == pytest.approx(apart["a"].median_ms / apart["b"].median_ms)
    assert measure_latency(models, feed, min_runs=2, max_runs=2)["b"].ratio is None
    with pytest.raises(ValueError, match="reference 'c'"):
        measure_latency(models, feed, reference="c")
