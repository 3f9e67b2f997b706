"""Codebook (non-uniform) weight quantization for storage (quantize-codebook)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import builders
import onnxcomp
from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.quantization.codebook import Granularity, Levels, encode, kmeans_1d, power_of_two_levels
from onnxcomp.quantization.qparams import QuantType, dequantize, quantize, sqnr_db, weight_params
from onnxcomp.registry import create_pass
from ort_graph import optimized_ops


def conv_gemm(seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[N,3,8,8] -> Conv w[8,3,3,3] -> Relu -> Flatten -> Gemm g[10,512] (transB) -> y."""
    rng = np.random.default_rng(seed)
    weights = {
        "w": rng.laplace(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "g": rng.laplace(0, 0.05, (10, 512)).astype(np.float32),
        "b": rng.normal(0, 0.1, 10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g", "b"], ["y"], name="fc", transB=1),
    ]
    m = builders.model(
        nodes, [builders.value("x", ["N", 3, 8, 8])], [builders.value("y", ["N", 10])],
        [builders.tensor(k, v) for k, v in weights.items()], metadata={"source": "test"},
    )  # fmt: skip
    return m, weights


def run_pass(m, **options):
    options.setdefault("min_elements", 100)
    ctx = PassContext(template=m)
    result = PassManager([create_pass("quantize-codebook", options)], checks=(Check.CHECKER, Check.ORT)).run(m, ctx)
    return result.model, result.steps[-1], ctx


def with_weights(m: onnx.ModelProto, replaced: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        if t.name in replaced:
            t.CopyFrom(onnx.numpy_helper.from_array(replaced[t.name], t.name))
    return out


@pytest.mark.parametrize(
    "levels, granularity",
    [(256, "tensor"), (16, "tensor"), (256, "channel-scaled"), (16, "channel-scaled"), (16, "channel"), (16, "auto")],
)
def test_decoder_rebuilds_exactly_the_encoded_weights(levels, granularity):
    # per channel, the conv weight has 27 values per channel: an odd count exercises the nibble padding.
    m, weights = conv_gemm()
    q, step, _ = run_pass(m, levels=levels, granularity=granularity)
    assert step.summary["tensors"] == 2  # w (216) and g (5120); the bias is below min_elements
    mode = Granularity(granularity)
    decoded = {k: encode(weights[k], levels=levels, method=Levels.KMEANS, granularity=mode).decoded() for k in ("w", "g")}
    feed = builders.feed_for(m, seed=2, batch=2)
    for optimized in (False, True):
        np.testing.assert_allclose(
            builders.run(q, feed, optimized=optimized)[0], builders.run(with_weights(m, decoded), feed)[0], atol=1e-5
        )


def test_onnxruntime_folds_the_decoder_at_load():
    m, _ = conv_gemm()
    q, _, _ = run_pass(m, levels=16)
    assert "BitShift" in builders.ops(q) and "Gather" in builders.ops(q)
    basic = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert optimized_ops(q, basic) == optimized_ops(m, basic)  # inference runs the original graph
    assert optimized_ops(q) == optimized_ops(m)


@pytest.mark.parametrize("levels, ratio", [(256, 4), (16, 8)])
def test_stored_weight_bytes(levels, ratio):
    m, _ = conv_gemm()
    q, step, _ = run_pass(m, levels=levels, granularity="channel-scaled")
    index_bytes = sum(len(t.raw_data) for t in q.graph.initializer if "_idx" in t.name)
    # one byte, or half a byte, per weight; 4-bit rows (8 of 27 values, 10 of 512) are padded to whole bytes
    assert index_bytes == (8 * 14 + 10 * 256 if levels == 16 else 216 + 5120)
    codebooks, channel_scales = 2 * levels * 4, (8 + 10) * 4  # at most: channel-scaled
    assert step.summary["weight_bytes_after"] <= step.summary["weight_bytes_before"] / ratio + codebooks + channel_scales + 1


def test_kmeans_beats_a_uniform_grid_on_heavy_tailed_weights():
    w = np.random.default_rng(0).laplace(0, 1, 200_000).astype(np.float32)
    params = weight_params(w, QuantType.INT8, axis=None, symmetric=True)
    uniform = sqnr_db(w, dequantize(quantize(w, params), params))
    centroids = kmeans_1d(w, 256)
    kmeans = sqnr_db(w, centroids[np.searchsorted((centroids[1:] + centroids[:-1]) / 2, w)])
    # Lloyd-Max levels follow the density; on a Laplacian they gain several dB over 255 uniform steps.
    assert kmeans > uniform + 3.0, (kmeans, uniform)


def test_channel_scales_help_when_channel_ranges_differ():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (32, 64)) * np.logspace(-2, 1, 32)[:, None]  # like BN-folded conv channels
    plain = encode(w, levels=16, method=Levels.KMEANS, granularity=Granularity.TENSOR).decoded()
    scaled = encode(w, levels=16, method=Levels.KMEANS, granularity=Granularity.CHANNEL_SCALED).decoded()
    auto = encode(w, levels=16, method=Levels.KMEANS, granularity=Granularity.AUTO).decoded()
    assert np.sum((auto - w) ** 2) <= min(np.sum((plain - w) ** 2), np.sum((scaled - w) ** 2))
    # relative error per channel: small channels get no levels of their own in one shared codebook
    relative = lambda d: np.median(np.linalg.norm(d - w, axis=1) / np.linalg.norm(w, axis=1))  # noqa: E731
    assert relative(scaled) < 0.5 * relative(plain)


def test_power_of_two_levels_are_a_shift_grid():
    w = np.random.default_rng(1).normal(0, 1, 10_000)
    levels = power_of_two_levels(w, 16)
    assert levels.size == 16 and 0.0 in levels
    positive = np.unique(levels[levels > 0])
    np.testing.assert_allclose(positive[1:] / positive[:-1], 2.0)
    np.testing.assert_array_equal(np.sort(-levels[levels < 0]), positive[: (levels < 0).sum()])


def test_second_run_changes_nothing():
    m, _ = conv_gemm()
    q, _, _ = run_pass(m, levels=16)
    again, step, _ = run_pass(q, levels=16)
    assert not step.modified and builders.ops(again) == builders.ops(q)


def test_optimize_keeps_metadata_and_loads_everywhere():
    m, _ = conv_gemm()
    result = onnxcomp.optimize(m, [{"quantize-codebook": {"levels": 16, "min_elements": 100}}], latency=False)
    onnx.checker.check_model(result.model)
    assert {p.key: p.value for p in result.model.metadata_props} == {"source": "test"}
    assert set(result.report.verification.loads.values()) == {"ok"}


def test_invalid_levels():
    with pytest.raises(UsageError, match="levels"):
        create_pass("quantize-codebook", {"levels": 64})
