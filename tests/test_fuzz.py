"""Fuzzing the CLI with mutated models (hypothesis).

Whatever the mutation — flipped bytes, wrong op types, missing inputs,
inconsistent dims, NaN weights, removed nodes — the CLI must end with a
classified error (exit 1, 2 or 3) or succeed; never an uncaught exception,
never a traceback, never an output file for a run that failed. Each example is
bounded by a per-example deadline.
"""

import contextlib
import io
from datetime import timedelta

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
from onnxcomp.cli import main

BASE = builders.resnet_block(seed=0)
BASE_BYTES = BASE.SerializeToString()
OPS = ["Relu", "Conv", "Add", "Gemm", "BatchNormalization", "Reshape", "Identity", "Pad", "Concat", "Flatten", "Shape", "Cast"]
FUZZ = settings(
    max_examples=40,
    deadline=timedelta(seconds=60),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)


def _run(tmp_path, data: bytes) -> None:
    model = tmp_path / "m.onnx"
    out = tmp_path / "o.onnx"
    model.write_bytes(data)
    out.unlink(missing_ok=True)
    for args in (["inspect", model], ["optimize", model, "-o", out, "--no-latency", "-q"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main([str(a) for a in args])
        text = err.getvalue()
        assert "internal error" not in text and "Traceback" not in text, text
        assert code in (0, 1, 2, 3)
        if code != 0:
            assert len(text.strip().splitlines()) == 1, text
            if args[0] == "optimize":
                assert not out.exists(), "a failed run must not write its output"
    assert model.read_bytes() == data, "the input is never modified"


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(BASE_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_flipped_bytes(tmp_path, flips):
    data = bytearray(BASE_BYTES)
    for position, byte in flips:
        data[position] = byte
    _run(tmp_path, bytes(data))


def _mutate(model: onnx.ModelProto, kind: int, pick: int, choice: int) -> None:
    g = model.graph
    node = g.node[pick % len(g.node)]
    if kind == 0:
        node.op_type = OPS[choice % len(OPS)]
    elif kind == 1 and node.input:
        del node.input[choice % len(node.input)]
    elif kind == 2:
        tensor = g.initializer[pick % len(g.initializer)]
        if tensor.dims:
            tensor.dims[choice % len(tensor.dims)] = [0, 1, 2, 7, 100][choice % 5]
    elif kind == 3 and node.input:
        node.input[choice % len(node.input)] = (["x", "nope"] + [t.name for t in g.initializer])[choice % (2 + len(g.initializer))]
    elif kind == 4 and node.attribute:
        attribute = node.attribute[choice % len(node.attribute)]
        if attribute.ints:
            attribute.ints[0] = [-1, 0, 5, 1000][choice % 4]
        elif attribute.type == onnx.AttributeProto.INT:
            attribute.i = [-1, 0, 2, 1000][choice % 4]
        elif attribute.type == onnx.AttributeProto.FLOAT:
            attribute.f = [float("nan"), -1.0, 0.0, 1e30][choice % 4]
    elif kind == 5:
        tensor = g.initializer[pick % len(g.initializer)]
        try:
            values = onnx.numpy_helper.to_array(tensor).copy()
        except ValueError:  # dims already made inconsistent with the data by an earlier mutation
            return
        values.reshape(-1)[choice % values.size] = [np.nan, np.inf, 0.0, -1e30][choice % 4]
        tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
    elif kind == 6:
        dims = g.input[0].type.tensor_type.shape.dim
        dims[choice % len(dims)].dim_value = [0, 1, 5][choice % 3]
    elif kind == 7:
        g.node.remove(node)


@FUZZ
@given(mutations=st.lists(st.tuples(st.integers(0, 7), st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=3))
def test_structural_mutations(tmp_path, mutations):
    model = onnx.ModelProto()
    model.CopyFrom(BASE)
    for kind, pick, choice in mutations:
        if model.graph.node:
            _mutate(model, kind, pick, choice)
    _run(tmp_path, model.SerializeToString())
