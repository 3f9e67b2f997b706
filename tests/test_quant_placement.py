"""Q/DQ placement of quantize-static: what onnxruntime fuses, and the structural rules."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import quant_models as qm
from onnxcomp.context import PassContext
from onnxcomp.data import ListDataset
from onnxcomp.pass_manager import PassManager
from onnxcomp.registry import build_pipeline
from ort_graph import optimized_ops


def quantize(model: onnx.ModelProto, samples: int = 12, **options) -> onnx.ModelProto:
    ctx = PassContext(template=model, data=ListDataset(qm.samples(model, samples)))
    spec = ["cleanup", {"quantize-static": options}]
    return PassManager(build_pipeline(spec)).run(model, ctx).model


def readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            out[name].append(node)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: node for node in model.graph.node for o in node.output}


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def input_dq(model: onnx.ModelProto, consumer: str, index: int = 0) -> onnx.NodeProto | None:
    """The DequantizeLinear feeding input ``index`` of node ``consumer`` (None if float)."""
    src = producers(model).get(node(model, consumer).input[index])
    return src if src is not None and src.op_type == "DequantizeLinear" else None


def test_cnn_runs_on_integer_kernels_only():
    ops = optimized_ops(quantize(qm.cnn()))
    # Every Conv, the residual Add, the Concat, the pooling and the classifier run on uint8:
    # one QuantizeLinear at the input, no float Conv/Gemm/Add anywhere.
    assert ops["QLinearConv"] == 6
    assert ops["QLinearAdd"] == 1 and ops["QLinearConcat"] == 1 and ops["QLinearGlobalAveragePool"] == 1
    assert ops["QGemm"] == 1 and ops["NhwcMaxPool"] == 1
    assert ops["QuantizeLinear"] == 1 and ops["DequantizeLinear"] == 0
    assert not {"Conv", "FusedConv", "Gemm", "Add", "Relu", "Clip"} & set(ops)


def test_relu_and_clip_are_folded_into_the_quantize():
    out = quantize(qm.cnn())
    ops = collections.Counter(n.op_type for n in out.graph.node)
    assert ops["Relu"] == 0 and ops["Clip"] == 0
    # The Q that replaced Relu after c0 reads c0 directly with zero point 0 (= uint8 qmin).
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c0")
    assert initializer(out, q.input[2]) == 0
    # Clip(0, 6): the range ends at or below 6.
    q1 = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1")
    assert 255 * initializer(out, q1.input[1]) <= 6.0 + 1e-5


def test_one_quantize_per_tensor_and_every_reader_reads_the_dequantize():
    out = quantize(qm.cnn())
    read = readers(out)
    for tensor, nodes in read.items():
        qs = [n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == tensor]
        assert len(qs) <= 1, f"{tensor} has {len(qs)} QuantizeLinear readers"
        if qs:
            others = [n.name for n in nodes if n.op_type != "QuantizeLinear"]
            assert not others, f"{tensor} is read by {others} beside its QuantizeLinear"


def test_concat_maxpool_reshape_share_one_scale_and_zero_point():
    out = quantize(qm.cnn())
    for name in ("concat", "pool", "reshape"):
        n = node(out, name)
        ins = [producers(out)[t] for t in n.input if t in producers(out) and producers(out)[t].op_type == "DequantizeLinear"]
        q_out = next(r for r in readers(out)[n.output[0]] if r.op_type == "QuantizeLinear")
        assert ins, f"{name} reads no DequantizeLinear"
        for dq in ins:
            assert (dq.input[1], dq.input[2]) == (q_out.input[1], q_out.input[2]), f"{name} requantizes"


def test_no_quantize_after_softmax():
    out = quantize(qm.attention())
    prod = producers(out)
    for n in out.graph.node:
        if n.op_type == "QuantizeLinear":
            assert n.input[0] not in prod or prod[n.input[0]].op_type != "Softmax"
    # The probabilities x V product stays float; the projections run on integers.
    assert input_dq(out, "mm_pv", 0) is None
    ops = optimized_ops(out)
    assert ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] >= 4
    assert "QLinearSoftmax" not in ops


def test_exclusions_by_name_pattern_and_op_type():
    out = quantize(qm.cnn(), exclude=["c[23]"], exclude_op_types=["Concat"])
    assert input_dq(out, "c2", 1) is None and input_dq(out, "c3", 1) is None  # float weights
    assert input_dq(out, "c4", 1) is not None
    assert input_dq(out, "concat", 0) is None and input_dq(out, "concat", 1) is None


@pytest.mark.parametrize(("policy", "layer"), [("first_layer", "c0"), ("last_layer", "fc")])
def test_first_and_last_layer_policies(policy, layer):
    out = quantize(qm.cnn(), **{policy: "float"})
    assert input_dq(out, layer, 1) is None
    assert input_dq(out, "c1", 1) is not None


def test_excluded_conv_stays_float_in_onnxruntime():
    # A float Conv between quantized ones reads a DequantizeLinear and feeds a QuantizeLinear:
    # onnxruntime would quantize its weights per tensor by itself unless the input DQ is
    # per channel. The Conv must stay a float kernel.
    out = quantize(qm.cnn(), exclude=["c1"])
    ops = optimized_ops(out)
    assert ops["QLinearConv"] == 5
    assert ops["Conv"] + ops["FusedConv"] == 1
