"""Weight-only int8/int4 block quantization (quantize-weights)."""

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
import onnxcomp
from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.pass_manager import Check, PassManager
from onnxcomp.quantization.qparams import sqnr_db
from onnxcomp.quantization.weight_only import block_quantize, pack_matmul_nbits
from onnxcomp.registry import create_pass
from ort_graph import optimized_ops, relative_rms_error


def matmul_model(k: int = 72, n: int = 48, seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (k, n)).astype(np.float32)
    b = rng.normal(0, 0.1, n).astype(np.float32)
    m = builders.model(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
        [builders.value("x", ["N", 5, k])],
        [builders.value("y", ["N", 5, n])],
        [builders.tensor("w", w), builders.tensor("b", b)],
        opset=opset,
        metadata={"source": "test"},
    )
    return m, w


def run_pass(m, **options):
    options.setdefault("min_weight_elements", 0)
    p = create_pass("quantize-weights", options)
    result = PassManager([p], checks=(Check.CHECKER, Check.ORT)).run(m, PassContext(template=m))
    return result.model, result.steps[-1]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_matmul_nbits_packing_matches_numpy(bits, symmetric):
    # K=72 is not a multiple of the block (16): the last block is padded.
    m, w = matmul_model()
    q, _ = run_pass(m, bits=bits, symmetric=symmetric, block_size=16, format="matmul-nbits", accuracy_level=0)
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits", "Add"]
    assert q.opset_import[0].version == 17  # the contrib op needs no opset change
    x = np.random.default_rng(1).normal(0, 1, (2, 5, 72)).astype(np.float32)
    expected = x @ block_quantize(w, bits=bits, block_size=16, symmetric=symmetric, clip_search=True).dequantized()
    bias = builders.run(m, {"x": np.zeros_like(x)})[0]
    # accuracy_level 0 computes in float: only float summation order differs from numpy.
    np.testing.assert_allclose(builders.run(q, {"x": x})[0] - bias, expected, atol=2e-4)


def test_nibble_layout_low_first():
    w = np.zeros((32, 1), np.float32)
    w[0, 0], w[1, 0] = 7.0, -7.0  # codes 15 and 1 (symmetric: q + 8)
    packed, scales, zero = pack_matmul_nbits(block_quantize(w, bits=4, block_size=32, symmetric=True, clip_search=False))
    assert packed.shape == (1, 1, 16) and scales.shape == (1, 1) and zero is None
    assert packed[0, 0, 0] == 0x1F  # first code in the low nibble
    assert np.all(packed[0, 0, 1:] == 0x88)  # zeros are code 8


def test_blocked_dequantize_linear_raises_opset_and_fuses():
    m, _ = matmul_model()
    q, step = run_pass(m, bits=4, symmetric=False, block_size=16)
    assert step.summary["opset"] == "raised to 21" and q.opset_import[0].version == 21
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 0, "block_size": 16}
    ops = optimized_ops(q)
    assert ops["MatMulNBits"] == 1 and ops["MatMul"] == 0 and ops["DequantizeLinear"] == 0, ops


def test_per_channel_int8_keeps_opset():
    m, _ = matmul_model()
    q, step = run_pass(m, bits=8, block_size=0)
    assert "opset" not in step.summary and q.opset_import[0].version == 17
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in dq.attribute} == {"axis": 1}


@pytest.mark.parametrize(
    "options, bound",
    [
        # int8, blocks of 32: ~0.5 % RMS (0.7 % at ORT_ENABLE_ALL, where the fused MatMulNBits
        # also quantizes activations per block at run time).
        ({"bits": 8}, 0.01),
        # int4 asymmetric blocks of 16: 15 steps per block, ~6 % RMS; a layout bug gives ~100 %.
        ({"bits": 4, "symmetric": False, "block_size": 16}, 0.1),
    ],
)
def test_error_bounds(options, bound):
    m, _ = matmul_model(k=128, n=64)
    q, _ = run_pass(m, **options)
    feed = builders.feed_for(m, seed=4, batch=3)
    for optimized in (False, True):
        assert relative_rms_error(builders.run(m, feed)[0], builders.run(q, feed, optimized=optimized)[0]) < bound


def test_gemm_with_alpha_beta_and_transposed_weight():
    rng = np.random.default_rng(2)
    m = builders.model(
        [helper.make_node("Gemm", ["x", "g", "c"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)],
        [builders.value("x", ["N", 64])],
        [builders.value("y", ["N", 24])],
        [builders.tensor("g", rng.normal(0, 1, (24, 64)).astype(np.float32)), builders.tensor("c", rng.normal(0, 1, 24).astype(np.float32))],
    )
    q, _ = run_pass(m, bits=8, block_size=0)
    assert "Gemm" not in builders.ops(q)
    feed = builders.feed_for(m, seed=1, batch=4)
    assert relative_rms_error(builders.run(m, feed)[0], builders.run(q, feed)[0]) < 0.01


def test_clip_search_never_worse_per_tensor():
    w = np.random.default_rng(3).standard_t(3, (256, 32)).astype(np.float32)  # heavy tails
    plain = block_quantize(w, bits=4, block_size=32, symmetric=True, clip_search=False)
    searched = block_quantize(w, bits=4, block_size=32, symmetric=True, clip_search=True)
    # the search keeps factor 1.0 unless a smaller range is better for that block
    assert sqnr_db(w, searched.dequantized()) > sqnr_db(w, plain.dequantized()) + 0.5


def test_second_run_changes_nothing():
    m, _ = matmul_model()
    q, _ = run_pass(m, bits=4)
    again, step = run_pass(q, bits=4)
    assert not step.modified and builders.ops(again) == builders.ops(q)


def test_optimize_keeps_metadata_and_loads_everywhere():
    m, _ = matmul_model(k=64, n=64)
    result = onnxcomp.optimize(m, [{"quantize-weights": {"bits": 4}}], latency=False)
    assert {p.key: p.value for p in result.model.metadata_props} == {"source": "test"}
    assert set(result.report.verification.loads.values()) == {"ok"}
    onnx.checker.check_model(result.model)


def test_opset_conversion_failure_is_a_clear_refusal(monkeypatch):
    m, _ = matmul_model()
    before = m.SerializeToString()

    def refuse(model, target):
        raise RuntimeError("No adapter for op Foo")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    with pytest.raises(UsageError, match="needs opset 21.*No adapter for op Foo.*format=matmul-nbits"):
        run_pass(m, bits=4)
    assert m.SerializeToString() == before


def test_invalid_options():
    with pytest.raises(UsageError, match="bits"):
        create_pass("quantize-weights", {"bits": 3})
    with pytest.raises(UsageError, match="block_size"):
        create_pass("quantize-weights", {"block_size": 24})
    with pytest.raises(UsageError, match="per-channel"):
        create_pass("quantize-weights", {"block_size": 0, "format": "matmul-nbits"})
