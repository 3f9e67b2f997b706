"""A model over 2 GiB (external data) goes through the pipeline with bounded memory.

The model is built on disk for the test (nine 8192x8192 float32 MatMul weights,
2.25 GiB, written from one repeated random block) and removed afterwards. The
CLI runs in a child process whose peak resident memory is read from
``getrusage``; it must stay well under twice the model size. The peak is
printed so the test log records it.
"""

import resource
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxcomp.model_io import load_model

pytestmark = pytest.mark.slow

N = 8192
LAYERS = 9


def _build(folder):
    block = (np.random.default_rng(0).standard_normal((N, N), dtype=np.float32) * np.float32(1 / np.sqrt(N))).tobytes()
    inits, nodes, x = [], [], "x"
    with open(folder / "big.onnx.data", "wb") as data:
        for i in range(LAYERS):
            offset = data.tell()
            data.write(block)
            tensor = onnx.TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[N, N], data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "big.onnx.data"), ("offset", str(offset)), ("length", str(len(block)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "vocabulary", "kept"
    (folder / "big.onnx").write_bytes(model.SerializeToString())
    return LAYERS * len(block)


def test_cleanup_of_a_model_over_2gb_with_bounded_memory(tmp_path):
    size = _build(tmp_path)
    assert size > 2**31
    out = tmp_path / "out"
    out.mkdir()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "optimize", str(tmp_path / "big.onnx"), "-o", str(out / "big.opt.onnx"), "--no-latency", "-q"],
        capture_output=True, text=True, timeout=1800,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert result.returncode == 0, result.stderr
    print(f"\nmodel {size / 2**30:.2f} GiB, peak RSS of the optimize run {peak / 2**30:.2f} GiB ({peak / size:.2f}x)")
    assert before * 1024 < peak, "the child's peak must be what was measured"
    assert peak < 1.5 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    optimized = load_model(out / "big.opt.onnx")
    assert {p.key: p.value for p in optimized.metadata_props} == {"vocabulary": "kept"}
    assert sorted(p.name for p in out.iterdir()) == ["big.opt.onnx", "big.opt.onnx.data"]
    assert (out / "big.opt.onnx.data").stat().st_size >= size
