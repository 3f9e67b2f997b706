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


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    size = _build(folder)
    assert size > 2**31
    yield folder / "big.onnx", size
    for path in folder.iterdir():
        path.unlink()


def _optimize_in_child(source, output, *extra):
    """Run ``onnxcomp optimize`` in a child process; returns its peak RSS in bytes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(
        [sys.executable, "-m", "onnxcomp", "optimize", str(source), "-o", str(output), "--no-latency", "-q", *extra],
        capture_output=True, text=True, timeout=3600,
    )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert result.returncode == 0, result.stderr
    assert before < peak, "this child must be the one that set the measured peak"
    return peak * 1024


def test_cleanup_of_a_model_over_2gb_with_bounded_memory(big_model, tmp_path):
    source, size = big_model
    out = tmp_path / "big.opt.onnx"
    peak = _optimize_in_child(source, out)
    print(f"\ncleanup: model {size / 2**30:.2f} GiB, peak RSS {peak / 2**30:.2f} GiB ({peak / size:.2f}x)")
    assert peak < 1.5 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    optimized = load_model(out)
    assert {p.key: p.value for p in optimized.metadata_props} == {"vocabulary": "kept"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.opt.onnx", "big.opt.onnx.data"]
    assert (tmp_path / "big.opt.onnx.data").stat().st_size >= size


def test_weight_quantization_of_a_model_over_2gb_with_bounded_memory(big_model, tmp_path):
    """int8 weight-only: the float reference session of the verification (one copy of
    the model in onnxruntime) dominates the peak; measured 0.92x of the model size."""
    source, size = big_model
    out = tmp_path / "big.int8.onnx"
    peak = _optimize_in_child(source, out, "--quantize", "int8-weights")
    print(f"\nint8-weights: model {size / 2**30:.2f} GiB, peak RSS {peak / 2**30:.2f} GiB ({peak / size:.2f}x)")
    assert peak < 1.75 * size, f"peak {peak / 2**30:.2f} GiB for a {size / 2**30:.2f} GiB model"
    data_bytes = (tmp_path / "big.int8.onnx.data").stat().st_size
    assert data_bytes < 0.3 * size, "int8 weights (plus per-block scales) are about a quarter of float32"
    assert {p.key: p.value for p in load_model(out).metadata_props} == {"vocabulary": "kept"}
