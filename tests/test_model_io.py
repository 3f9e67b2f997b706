"""Model loading validation, atomic saving, external data and field preservation."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from onnxcomp.errors import InputError, OutputError
from onnxcomp.external_data import to_array
from onnxcomp.ir import export_model, import_graph
from onnxcomp.model_io import load_model, save_model


@pytest.fixture
def good_model_path(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    onnx.save(builders.conv_bn_relu(), str(path))
    return path


def test_load_valid_model(good_model_path):
    model = load_model(good_model_path)
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Relu"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "file is empty"),
        (lambda p: (p.write_bytes(os.urandom(4096)), p)[1], "not an ONNX model"),
        (lambda p: (p.write_bytes(onnx.numpy_helper.from_array(np.ones(3, np.float32)).SerializeToString()), p)[1], "not an ONNX model"),
    ],
    ids=["missing", "directory", "empty", "random-bytes", "tensor-not-model"],
)
def test_load_rejects_bad_files(tmp_path, make, message):
    path = make(tmp_path / "bad.onnx")
    with pytest.raises(InputError, match=message):
        load_model(path)


def test_load_rejects_truncated_model(tmp_path, good_model_path):
    data = good_model_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not an ONNX model|truncated|graph"):
        load_model(truncated)


def test_load_rejects_unknown_opset(tmp_path):
    model = builders.conv_bn_relu()
    model.opset_import[0].version = 999
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InputError, match="opset 999 is newer"):
        load_model(path)


def _with_external(model: onnx.ModelProto, folder: Path, location: str, *, write: bytes | None = None) -> Path:
    """Point the weight 'w' at external data ``location`` (optionally writing ``write`` there)."""
    w = next(t for t in model.graph.initializer if t.name == "w")
    raw = w.raw_data or onnx.numpy_helper.to_array(w).tobytes()
    w.ClearField("raw_data")
    del w.float_data[:]
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    if write is not None:
        (folder / location).write_bytes(write if write else raw)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _weight_bytes() -> bytes:
    model = builders.conv_bn_relu()
    w = next(t for t in model.graph.initializer if t.name == "w")
    return onnx.numpy_helper.to_array(w).tobytes()


def test_external_data_inside_folder_loads(tmp_path):
    path = _with_external(builders.conv_bn_relu(), tmp_path, "weights.bin", write=_weight_bytes())
    model = load_model(path, load_external_data=True)
    builders.assert_same_outputs(builders.conv_bn_relu(), model, builders.feed_for(model), atol=0)


def test_external_data_stays_on_disk_until_saved(tmp_path):
    """By default external weights are pinned, not read; saving streams them into the new file."""
    source = tmp_path / "src"
    source.mkdir()
    path = _with_external(builders.conv_bn_relu(), source, "weights.bin", write=_weight_bytes())
    model = load_model(path)
    w = next(t for t in model.graph.initializer if t.name == "w")
    assert not w.raw_data and os.path.isabs(next(e.value for e in w.external_data if e.key == "location"))
    np.testing.assert_array_equal(to_array(w).reshape(-1).view(np.uint8), np.frombuffer(_weight_bytes(), np.uint8))
    out = save_model(model, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx.data").exists(), "pinned weights are written to the new data file"
    copy = load_model(out, load_external_data=True)
    builders.assert_same_outputs(builders.conv_bn_relu(), copy, builders.feed_for(copy), atol=0)
    single = save_model(model, tmp_path / "single.onnx", external_data=False)
    builders.assert_same_outputs(builders.conv_bn_relu(), onnx.load(str(single)), builders.feed_for(copy), atol=0)
    assert not w.raw_data, "saving must not change the in-memory model"


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_folder_refused(tmp_path, location):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(_weight_bytes())
    path = _with_external(builders.conv_bn_relu(), folder, location)
    with pytest.raises(InputError, match="refused"):
        load_model(path)


def test_external_data_symlink_out_of_folder_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(_weight_bytes())
    (folder / "weights.bin").symlink_to(secret)
    path = _with_external(builders.conv_bn_relu(), folder, "weights.bin")
    with pytest.raises(InputError, match="outside the model's folder"):
        load_model(path)


def test_external_data_missing_or_short(tmp_path):
    path = _with_external(builders.conv_bn_relu(), tmp_path, "weights.bin")
    with pytest.raises(InputError, match="file not found"):
        load_model(path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match="too short"):
        load_model(path)


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    model = builders.conv_bn_relu()
    out = save_model(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    assert onnx.load(str(out)) == model


def test_save_refuses_to_overwrite_protected_input(good_model_path):
    before = good_model_path.read_bytes()
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        save_model(builders.resnet_block(), good_model_path, protect=[good_model_path])
    assert good_model_path.read_bytes() == before


def test_save_into_missing_folder_fails_cleanly(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_model(builders.conv_bn_relu(), tmp_path / "nope" / "out.onnx")


def test_save_with_external_data_round_trips_and_keeps_model_in_memory(tmp_path):
    model = builders.resnet_block()
    snapshot = model.SerializeToString()
    out = save_model(model, tmp_path / "big.onnx", external_data=True)
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    assert model.SerializeToString() == snapshot, "saving must not modify the in-memory model"
    reloaded = load_model(out, load_external_data=True)
    builders.assert_same_outputs(model, reloaded, builders.feed_for(model), atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]


def test_export_keeps_model_level_fields():
    model = builders.conv_bn_relu()
    model.doc_string = "the doc"
    model.model_version = 7
    model.domain = "org.example"
    model.producer_version = "1.2.3"
    entry = model.metadata_props.add()
    entry.key, entry.value = "vocab", "a b c"
    exported = export_model(import_graph(model), model)
    assert exported.doc_string == "the doc"
    assert exported.model_version == 7
    assert exported.domain == "org.example"
    assert (exported.producer_name, exported.producer_version) == ("onnxcomp-tests", "1.2.3")
    assert {p.key: p.value for p in exported.metadata_props} == {"vocab": "a b c"}
    assert [i.name for i in exported.graph.input] == ["x"]
    assert [o.name for o in exported.graph.output] == ["y"]


def test_outputs_get_umask_permissions_not_private_temp_ones(tmp_path):
    out = save_model(builders.resnet_block(), tmp_path / "p.onnx", external_data=True)
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~mask)
    assert ((tmp_path / "p.onnx.data").stat().st_mode & 0o777) == (0o666 & ~mask)


def test_checker_catches_weight_data_of_the_wrong_size_without_copying_it():
    from onnxcomp.model_io import check_model

    nodes = [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])]
    w = np.ones((64, 64), np.float32)  # 16 KiB: stubbed for the checker, its size checked here
    model = builders.model(nodes, [builders.value("x", [1, 64])], [builders.value("y", [1, 64])], [builders.tensor("w", w)])
    check_model(model)
    model.graph.initializer[0].raw_data = w.tobytes()[:-4]
    with pytest.raises(InputError, match="tensor 'w' stores about .* bytes of data but its shape \\[64, 64\\] and type need 16384"):
        check_model(model)
