"""Small seeded models and helpers shared by the tests.

Models are built with ``onnx.helper`` so every test states exactly the graph it
exercises; outputs are compared in onnxruntime with graph optimizations
disabled, so the comparison sees the graph as written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper  # noqa: F401 (re-exported for tests)

OPSET = 17


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = OPSET,
    name: str = "test",
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxcomp-tests")
    m.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = m.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(m)
    return m


def value(name: str, shape: Sequence, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def session(m: onnx.ModelProto, *, optimized: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(m: onnx.ModelProto, feed: dict[str, np.ndarray], *, optimized: bool = False) -> list[np.ndarray]:
    return session(m, optimized=optimized).run(None, feed)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feed: dict[str, np.ndarray], *, atol: float, rtol: float = 0.0) -> None:
    for x, y in zip(run(a, feed), run(b, feed), strict=True):
        np.testing.assert_allclose(y, x, atol=atol, rtol=rtol)


def ops(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def bn_params(rng: np.random.Generator, channels: int, prefix: str) -> list[onnx.TensorProto]:
    """Non-trivial batch-norm parameters (scale, bias, mean, var)."""
    return [
        tensor(f"{prefix}_scale", rng.uniform(0.5, 1.5, channels).astype(np.float32)),
        tensor(f"{prefix}_bias", rng.normal(0, 0.5, channels).astype(np.float32)),
        tensor(f"{prefix}_mean", rng.normal(0, 0.5, channels).astype(np.float32)),
        tensor(f"{prefix}_var", rng.uniform(0.2, 2.0, channels).astype(np.float32)),
    ]


def conv_bn_relu(seed: int = 0, channels: int = 8, *, bias: bool = True, group: int = 1) -> onnx.ModelProto:
    """x[1,4,8,8] -> Conv(3x3) -> BatchNormalization -> Relu -> y."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (channels, 4 // group, 3, 3)).astype(np.float32)
    inits = [tensor("w", w), *bn_params(rng, channels, "bn")]
    conv_inputs = ["x", "w"]
    if bias:
        inits.append(tensor("b", rng.normal(0, 0.1, channels).astype(np.float32)))
        conv_inputs.append("b")
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["n"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    return model(nodes, [value("x", ["N", 4, 8, 8])], [value("y", ["N", channels, 8, 8])], inits)


def resnet_block(seed: int = 0) -> onnx.ModelProto:
    """A small ResNet-style classifier with a residual Add, used for MAC counts.

    x[N,3,16,16] -> Conv 3->8 3x3 s1 p1 -> BN -> Relu (a)
                 -> Conv 8->8 3x3 p1 -> BN -> Relu -> Conv 8->8 3x3 p1 -> BN -> Add(a) -> Relu
                 -> GlobalAveragePool -> Flatten -> Gemm 8->10 (transB=1) -> logits
    """
    rng = np.random.default_rng(seed)
    inits = [
        tensor("w0", rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)),
        tensor("w1", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)),
        tensor("w2", rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)),
        tensor("fc_w", rng.normal(0, 0.3, (10, 8)).astype(np.float32)),
        tensor("fc_b", rng.normal(0, 0.1, 10).astype(np.float32)),
        *bn_params(rng, 8, "bn0"),
        *bn_params(rng, 8, "bn1"),
        *bn_params(rng, 8, "bn2"),
    ]

    def bn(i, src, dst):
        return helper.make_node(
            "BatchNormalization", [src, f"bn{i}_scale", f"bn{i}_bias", f"bn{i}_mean", f"bn{i}_var"], [dst], name=f"bn{i}"
        )

    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        bn(0, "c0", "n0"),
        helper.make_node("Relu", ["n0"], ["a"], name="relu0"),
        helper.make_node("Conv", ["a", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        bn(1, "c1", "n1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        bn(2, "c2", "n2"),
        helper.make_node("Add", ["n2", "a"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return model(nodes, [value("x", ["N", 3, 16, 16])], [value("logits", ["N", 10])], inits)


def feed_for(m: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Random float inputs for ``m`` (symbolic dims become ``batch``)."""
    rng = np.random.default_rng(seed)
    init = {t.name for t in m.graph.initializer}
    feed = {}
    for vi in m.graph.input:
        if vi.name in init:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feed[vi.name] = rng.normal(0, 1, dims).astype(dtype)
    return feed


def apply_pass(pass_name: str, m: onnx.ModelProto, options: dict | None = None, *, data=None):
    """Run one registered pass through a PassManager (with the checker) and return
    ``(model, step record)``."""
    from onnxcomp.context import PassContext
    from onnxcomp.pass_manager import PassManager
    from onnxcomp.registry import create_pass

    manager = PassManager([create_pass(pass_name, options or {})], checks=("checker",))
    with PassContext(template=m, data=data) as ctx:
        result = manager.run(m, ctx)
    return result.model, result.steps[0]
