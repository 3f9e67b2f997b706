"""Models whose weights live in an external .data file, as every model over 2 GB must: each
compression that runs the model in onnxruntime (calibration, sweeps) must work on them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcomp.cli import main


@pytest.fixture
def external_cls(tmp_path):
    """PP-OCRv5's direction classifier, its weights made initializers and saved in cls.onnx.data."""
    models = pytest.importorskip("benchmarks.assets.models")
    try:
        source = models.ppocr_model("cls")
    except ModuleNotFoundError as err:
        pytest.skip(str(err))
    model = onnx.load(str(source))
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"]:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)  # Paddle keeps weights in Constant nodes; exporters of big models do not
        model.graph.node.remove(node)
    onnx.save(model, str(tmp_path / "cls.onnx"), save_as_external_data=True, location="cls.onnx.data")  # onnx's default: weights over 1 kB
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    shape[2:] = [48, 192]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", **{model.graph.input[0].name: rng.uniform(-1, 1, size=(10, *shape[1:])).astype(np.float32)})
    return tmp_path


@pytest.mark.parametrize("mode", ["int8", "int8-mixed"])
def test_static_int8_of_an_external_data_model(external_cls, capsys, mode):
    """onnxruntime refused the calibration model ("Absolute path not allowed for external data location")."""
    out = external_cls / f"q-{mode}.onnx"
    code = main(["optimize", str(external_cls / "cls.onnx"), "-o", str(out), "--calib", str(external_cls / "calib.npz"),
                 "--quantize", mode, "--no-latency", "--accept-drop"])  # fmt: skip
    stderr = capsys.readouterr().err
    assert code == 0, stderr
    assert (external_cls / f"q-{mode}.onnx.data").exists()  # the input's layout is kept
    quantized = onnx.load(str(out))
    assert any(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
