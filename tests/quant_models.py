"""Small seeded float models for the static-quantization tests.

Each states the graph it exercises in its docstring. Weights are He-initialized
so activations keep a sensible range through the layers; inputs are
``feed(model, seed)`` (standard normal, or the given shape).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import builders


def _conv_weight(rng: np.random.Generator, out_c: int, in_c: int, k: int) -> np.ndarray:
    return (rng.normal(0, 1, (out_c, in_c, k, k)) * np.sqrt(2.0 / (in_c * k * k))).astype(np.float32)


def _bias(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(0, 0.1, n).astype(np.float32)


def cnn(seed: int = 0, opset: int = builders.OPSET) -> onnx.ModelProto:
    """A CNN with the structures placement must handle::

        x[N,3,16,16] -> Conv c0 (3->8) -> Relu
          -> Conv c1 (8->8) -> Clip(0,6) -> MaxPool 2x2 -> a
          -> Conv dw (depthwise 8) -> Relu -> Conv c2 (8->8) -> b
          Add(a, b) -> Relu -> s
          Concat(s, Conv c3(s) -> Relu) -> Conv c4 (16->8) -> GlobalAveragePool
          -> Reshape [N,8] -> Gemm (transB=1) 8->5 -> Softmax -> probs
    """
    rng = np.random.default_rng(seed)
    inits = [
        builders.tensor("w0", _conv_weight(rng, 8, 3, 3)), builders.tensor("b0", _bias(rng, 8)),
        builders.tensor("w1", _conv_weight(rng, 8, 8, 3)), builders.tensor("b1", _bias(rng, 8)),
        builders.tensor("wdw", (rng.normal(0, 1, (8, 1, 3, 3)) * np.sqrt(2 / 9)).astype(np.float32)),
        builders.tensor("bdw", _bias(rng, 8)),
        builders.tensor("w2", _conv_weight(rng, 8, 8, 1)), builders.tensor("b2", _bias(rng, 8)),
        builders.tensor("w3", _conv_weight(rng, 8, 8, 3)), builders.tensor("b3", _bias(rng, 8)),
        builders.tensor("w4", _conv_weight(rng, 8, 16, 1)), builders.tensor("b4", _bias(rng, 8)),
        builders.tensor("fc_w", (rng.normal(0, 1, (5, 8)) * 0.5).astype(np.float32)),
        builders.tensor("fc_b", _bias(rng, 5)),
        builders.tensor("shape", np.array([-1, 8], dtype=np.int64)),
    ]
    clip_inputs = ["c1"]
    clip_attrs = {}
    if opset >= 11:
        inits += [builders.tensor("zero", np.array(0.0, np.float32)), builders.tensor("six", np.array(6.0, np.float32))]
        clip_inputs += ["zero", "six"]
    else:
        clip_attrs = {"min": 0.0, "max": 6.0}
    def conv(i, o, name, **kw):
        return helper.make_node("Conv", i, [o], name=name, **kw)
    nodes = [
        conv(["x", "w0", "b0"], "c0", "c0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        conv(["r0", "w1", "b1"], "c1", "c1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", clip_inputs, ["r1"], name="clip1", **clip_attrs),
        helper.make_node("MaxPool", ["r1"], ["a"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        conv(["a", "wdw", "bdw"], "d", "dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Relu", ["d"], ["rd"], name="relu_dw"),
        conv(["rd", "w2", "b2"], "b", "c2"),
        helper.make_node("Add", ["a", "b"], ["s0"], name="residual"),
        helper.make_node("Relu", ["s0"], ["s"], name="relu_s"),
        conv(["s", "w3", "b3"], "c3", "c3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Concat", ["s", "r3"], ["cat"], name="concat", axis=1),
        conv(["cat", "w4", "b4"], "c4", "c4"),
        helper.make_node("GlobalAveragePool", ["c4"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    return builders.model(
        nodes, [builders.value("x", ["N", 3, 16, 16])], [builders.value("probs", ["N", 5])], inits,
        opset=opset, metadata={"origin": "quant-tests"},
    )


def attention(seed: int = 0) -> onnx.ModelProto:
    """Single-head attention over x[N,T,16]::

        q = x @ Wq + bq ; k = x @ Wk ; v = x @ Wv
        p = Softmax(q @ Transpose(k)) ; o = (p @ v) @ Wo -> y
    """
    rng = np.random.default_rng(seed)
    inits = [builders.tensor(n, (rng.normal(0, 1, (16, 16)) / 4).astype(np.float32)) for n in ("wq", "wk", "wv", "wo")]
    inits.append(builders.tensor("bq", _bias(rng, 16)))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="mm_q"),
        helper.make_node("Add", ["q0", "bq"], ["q"], name="bias_q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="mm_k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="mm_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="mm_scores"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["o"], name="mm_pv"),
        helper.make_node("MatMul", ["o", "wo"], ["y"], name="mm_o"),
    ]
    return builders.model(nodes, [builders.value("x", ["N", 6, 16])], [builders.value("y", ["N", 6, 16])], inits)


def conv_stack(seed: int = 0, channels: int = 16, layers: int = 3, size: int = 12) -> onnx.ModelProto:
    """x[N,C,S,S] -> (Conv 3x3 C->C + bias -> Relu) * (layers-1) -> Conv 3x3 -> y (linear output)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    src = "x"
    for i in range(layers):
        inits += [builders.tensor(f"w{i}", _conv_weight(rng, channels, channels, 3)), builders.tensor(f"b{i}", _bias(rng, channels))]
        out = "y" if i == layers - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [out], name=f"conv{i}", pads=[1, 1, 1, 1]))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            src = f"r{i}"
    shape = ["N", channels, size, size]
    return builders.model(nodes, [builders.value("x", shape)], [builders.value("y", shape)], inits)


def samples(model: onnx.ModelProto, count: int, seed: int = 0, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of standard-normal inputs (symbolic dims = ``batch``)."""
    return [builders.feed_for(model, seed=seed * 100003 + i, batch=batch) for i in range(count)]
