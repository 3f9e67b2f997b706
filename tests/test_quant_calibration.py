"""Calibration statistics: in-graph reductions, streaming histograms, range methods, files, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import quant_models as qm
from onnxcomp.activations import session_with_outputs
from onnxcomp.data import ListDataset, ReiterableDataset
from onnxcomp.errors import DataError
from onnxcomp.quantization.calibration import Observation, collect_statistics
from onnxcomp.quantization.observers import (
    Accumulator,
    RangeMethod,
    Statistics,
    quantization_error,
    tensor_range,
)
from onnxcomp.quantization.qparams import QuantType

OBSERVED = [Observation("x"), Observation("c0"), Observation("r0", nonnegative=True, channel_axis=1), Observation("probs", True)]


def test_in_graph_reductions_match_the_tensors():
    m = qm.cnn()
    data = qm.samples(m, 6)
    stats = collect_statistics(m, ListDataset(data), OBSERVED)
    session = session_with_outputs(m, ["x", "c0", "r0", "probs"])
    values = [session.run(["x", "c0", "r0", "probs"], f) for f in data]
    for i, name in enumerate(["x", "c0", "r0", "probs"]):
        stacked = np.concatenate([v[i].ravel() for v in values])
        t = stats.index(name)
        assert stats.maximum[t] == pytest.approx(stacked.max(), rel=1e-6)
        if name in ("x", "c0"):  # minimum computed in the graph as -max(-x)
            assert stats.minimum[t] == pytest.approx(stacked.min(), rel=1e-6)
        assert stats.counts[t].sum() > 0
    means = np.mean([v[2].mean(axis=(0, 2, 3)) for v in values], axis=0)
    np.testing.assert_allclose(stats.channel_mean("r0"), means, rtol=1e-5)
    assert stats.samples == 6


def test_histogram_growth_keeps_every_count_and_covers_the_range():
    rng = np.random.default_rng(0)
    acc = Accumulator(["a", "b"], bins=512)
    total = 0
    for i in range(40):
        a = rng.normal(0, 1 + i, 1000)  # range grows: the window re-bins many times
        b = np.abs(rng.normal(0, 1, 1000)) * (i + 1)
        acc.update([a.min(), b.min()], [a.max(), b.max()], [a, b])
        total += 1000
    stats = acc.result()
    np.testing.assert_array_equal(stats.counts.sum(axis=1), [total, total])
    for t in range(2):
        lo = stats.start[t] * stats.width[t]
        hi = (stats.start[t] + 512) * stats.width[t]
        assert lo <= stats.minimum[t] and stats.maximum[t] < hi
    assert stats.start[1] == 0  # non-negative data keeps its window anchored at 0


def _gaussian_stats(samples: int = 50, n: int = 20000) -> tuple[Statistics, np.ndarray]:
    rng = np.random.default_rng(1)
    acc = Accumulator(["g"])
    everything = []
    for _ in range(samples):
        v = rng.normal(0.5, 1.0, n)
        v[:3] *= 8  # a few outliers
        acc.update([v.min()], [v.max()], [v])
        everything.append(v)
    return acc.result(), np.concatenate(everything)


def test_range_methods_against_numpy():
    stats, values = _gaussian_stats()
    lo, hi = tensor_range(stats, 0, RangeMethod.MINMAX)
    assert (lo, hi) == (values.min(), values.max())
    lo, hi = tensor_range(stats, 0, RangeMethod.PERCENTILE, percentile=99.0)
    # Histogram percentiles: bin width is range / 3072, so within 0.5 % of the range.
    tolerance = 0.005 * (values.max() - values.min())
    assert abs(hi - np.percentile(values, 99.0)) < tolerance
    assert abs(lo - np.percentile(values, 1.0)) < tolerance
    ema_lo, ema_hi = tensor_range(stats, 0, RangeMethod.MOVING_AVERAGE)
    assert values.min() <= ema_lo < ema_hi <= values.max()


@pytest.mark.parametrize("method", [RangeMethod.MSE, RangeMethod.ENTROPY, RangeMethod.PERCENTILE])
def test_clipping_methods_clip_outliers_and_mse_beats_minmax(method):
    stats, values = _gaussian_stats()
    lo, hi = tensor_range(stats, 0, method, percentile=99.99)
    assert values.min() <= lo and hi <= values.max()
    assert hi < values.max()  # the 8x outliers are clipped
    centers, counts = stats.histogram(0)
    errors = quantization_error(centers, counts, np.array([lo, values.min()]), np.array([hi, values.max()]), QuantType.UINT8, False)
    if method is RangeMethod.MSE:
        assert errors[0] < errors[1]


def test_statistics_round_trip(tmp_path):
    m = qm.cnn()
    stats = collect_statistics(m, ListDataset(qm.samples(m, 4)), OBSERVED, meta={"model": "abc"})
    path = tmp_path / "s.npz"
    stats.save(path)
    back = Statistics.load(path)
    assert back.names == stats.names and back.samples == 4 and back.meta["model"] == "abc"
    for field in ("minimum", "maximum", "ema_min", "ema_max", "counts", "width", "start"):
        np.testing.assert_array_equal(getattr(back, field), getattr(stats, field))
    np.testing.assert_array_equal(back.channel_mean("r0"), stats.channel_mean("r0"))
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, no leftovers


def test_not_a_statistics_file_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, header=np.array("{}"))
    with pytest.raises(ValueError, match="statistics"):
        Statistics.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="statistics"):
        Statistics.load(tmp_path / "junk.npz")


def test_failing_model_run_names_the_sample():
    m = qm.conv_stack()
    samples = qm.samples(m, 3)
    samples[2] = {"x": np.zeros((1, 16, 5, 5), np.float32)}  # a shape the graph cannot take
    with pytest.raises(DataError, match="sample 2"):
        collect_statistics(m, ListDataset(samples), [Observation("c0")])


def _peak_bytes(model, count: int) -> int:
    """Peak Python-heap bytes (numpy arrays included) while calibrating on ``count`` generated samples."""

    class Generated:
        def __iter__(self):
            rng = np.random.default_rng(0)
            for _ in range(count):
                yield {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}

        def __len__(self):
            return count

    data = ReiterableDataset(Generated(), "generated")
    observed = [Observation(n) for n in ("x", "c0", "c1", "a", "d", "b", "s0", "c3", "cat", "c4", "g", "logits")]
    tracemalloc.start()
    try:
        collect_statistics(model, data, observed, sample_size=1024)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_calibration_memory_is_flat_in_the_number_of_samples():
    m = qm.cnn()
    small, large = _peak_bytes(m, 20), _peak_bytes(m, 400)
    # 20x the samples: peak memory may not grow by more than 10 % (statistics are fixed-size;
    # keeping the samples' activations would grow it ~20x).
    assert large <= 1.10 * small, (small, large)


def test_entropy_is_not_fooled_by_the_zero_spike_of_relu_outputs():
    rng = np.random.default_rng(2)
    acc = Accumulator(["relu"])
    for _ in range(30):
        v = np.maximum(rng.normal(0, 1, 20000), 0)  # half the values are exactly 0
        acc.update([v.min()], [v.max()], [v])
    lo, hi = tensor_range(acc.result(), 0, RangeMethod.ENTROPY)
    # KL thresholds of a unit half-normal sit around 3-4 sigma; with the zero spike left in
    # the divergence collapsed the range to the smallest candidate (~1/4 of the maximum).
    assert lo == 0 and 2.5 < hi <= acc.result().maximum[0]
