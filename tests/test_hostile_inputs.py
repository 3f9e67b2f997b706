"""Hostile input never makes onnxcomp read outside the user's files, hang or exhaust memory (issue 17).

Every reader of a model applies the same external-data containment rules
(``distill export`` hashing its teacher included); data files, recipes and
images are checked by their declared sizes before anything is allocated. Each
case ends in one ``onnxcomp: error:`` line, exit 2, nothing written, within
seconds. Cases that used to hang or take gigabytes run in a subprocess with a
timeout and a memory measurement.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

import builders
from onnxcomp.cli import main

_OPENED: list[str] = []
_WATCH: list[str] = []


def _audit(event, args):
    if event == "open" and _WATCH and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if any(name.endswith(w) for w in _WATCH):
            _OPENED.append(name)


sys.addaudithook(_audit)


@pytest.fixture
def watch_opens():
    """Record every open() of a path ending in one of the given names while the test runs."""
    _OPENED.clear()

    def watch(*names: str) -> list[str]:
        _WATCH[:] = names
        return _OPENED

    yield watch
    _WATCH.clear()
    _OPENED.clear()


def _cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _subprocess(args, cwd: Path, timeout: float = 60) -> tuple[int, str, float, int]:
    """Run the CLI in a child; returns exit code, stderr, seconds and the child's peak RSS in MiB."""
    started = time.monotonic()
    with open(cwd / ".stderr", "w+b") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "onnxcomp", *map(str, args)], cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr)
        peak_kib = 0
        while True:
            peak_kib = max(peak_kib, _high_water_kib(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > timeout:
                process.kill()
                os.wait4(process.pid, 0)
                pytest.fail(f"onnxcomp {' '.join(map(str, args))} still ran after {timeout} s")
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen
        stderr.seek(0)
        text = stderr.read().decode()
    os.unlink(cwd / ".stderr")
    return process.returncode, text, time.monotonic() - started, peak_kib // 1024


def _high_water_kib(pid: int) -> int:
    """The process's own peak RSS (VmHWM, reset at exec). ru_maxrss is not: it keeps the RSS the
    child had before exec, i.e. the forking pytest process's (714 MiB late in the full suite)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _assert_refused(code: int, err: str, pattern: str) -> None:
    import re

    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error:"), err
    assert re.search(pattern, lines[0]), err


@pytest.fixture
def model_path(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(builders.resnet_block(seed=3), str(path))
    return path


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- reading outside the user's files ------------------------------------------------------------


def _teacher_with_stray_location(folder: Path, location: str) -> Path:
    """A valid model whose first initializer (stored inline) also carries an ``external_data`` location."""
    model = builders.resnet_block(seed=1)
    entry = model.graph.initializer[0].external_data.add()
    entry.key, entry.value = "location", location
    path = folder / "teacher.onnx"
    onnx.save(model, str(path))
    return path


def test_distill_never_opens_a_stray_location_outside_the_model_folder(tmp_path, capsys, watch_opens):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    models = tmp_path / "a" / "b"
    models.mkdir(parents=True)
    teacher = _teacher_with_stray_location(models, "../../secret.txt")
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    opened = watch_opens("secret.txt")
    code, err = _cli(["distill", "export", teacher, "--data", data, "-o", tmp_path / "export", "-q"], capsys)
    assert code == 0, err
    code, err = _cli(["distill", "verify", tmp_path / "export", "--teacher", teacher, "-q"], capsys)
    assert code == 0, err
    assert opened == [], "a location on a tensor not marked EXTERNAL is never read"


def test_distill_does_not_hang_on_a_stray_location_at_dev_zero(tmp_path):
    teacher = _teacher_with_stray_location(tmp_path, "/dev/zero")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32))
    code, err, seconds, _ = _subprocess(["distill", "export", teacher, "--data", "d.npz", "-o", "export", "-q"], tmp_path, timeout=60)
    assert code == 0, err


def test_null_byte_in_an_external_data_location(tmp_path, capsys):
    model = builders.resnet_block(seed=1)
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    for entry in proto.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "w\0.bin"
    onnx.save(proto, str(tmp_path / "m.onnx"))
    code, err = _cli(["inspect", tmp_path / "m.onnx"], capsys)
    _assert_refused(code, err, "null byte")


# -- bounded memory and time ------------------------------------------------------------------------


def _npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def test_npz_zip_bomb_is_refused_before_inflating(tmp_path, model_path):
    shape = (100_000, 3, 16, 16)  # 293 MiB of zeros in a ~300 KB file
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(_npy_header(shape))
            chunk = bytes(32 << 20)
            left = int(np.prod(shape)) * 4
            while left > 0:
                member.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
    before = _listing(tmp_path)
    code, err, seconds, peak = _subprocess(
        ["optimize", model_path, "-o", "out.onnx", "--calib", "bomb.npz", "--no-latency", "-q"], tmp_path, timeout=60
    )
    _assert_refused(code, err, "zip bomb")
    assert peak < 250, f"peak RSS {peak} MiB: the archive was inflated"
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("container", ["npz", "npy-folder"])
def test_header_declaring_1e14_elements(tmp_path, model_path, capsys, container):
    body = _npy_header((10**14 // 768, 3, 16, 16)) + bytes(1024)
    if container == "npz":
        data = tmp_path / "huge.npz"
        with zipfile.ZipFile(data, "w") as archive:
            archive.writestr("x.npy", body)
    else:
        data = tmp_path / "samples"
        data.mkdir()
        (data / "0.npy").write_bytes(body)
    before = _listing(tmp_path)
    code, err = _cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--calib", data, "--no-latency", "-q"], capsys)
    _assert_refused(code, err, "declares shape .* truncated or corrupt")
    assert _listing(tmp_path) == before


def _billion_laughs() -> str:
    lines = ["passes: [cleanup]", "checks:", '  - - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghi":
        lines.append(f"    - &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("recipe", ["billion-laughs", "/dev/zero", "fifo"])
def test_recipes_that_used_to_hang_or_exhaust_memory(tmp_path, model_path, recipe):
    if recipe == "billion-laughs":
        path = tmp_path / "laughs.yaml"
        path.write_text(_billion_laughs())
        message = "more than .* YAML nodes"
    elif recipe == "fifo":
        path = tmp_path / "recipe.yaml"
        os.mkfifo(path)
        message = "not a regular file"
    else:
        path = Path(recipe)
        message = "not a regular file"
    code, err, seconds, peak = _subprocess(
        ["optimize", model_path, "-o", "out.onnx", "--recipe", path, "--no-latency", "-q"], tmp_path, timeout=60
    )
    _assert_refused(code, err, message)
    assert peak < 250, f"peak RSS {peak} MiB"
    assert not (tmp_path / "out.onnx").exists()


def test_deeply_nested_recipe(tmp_path, model_path, capsys):
    path = tmp_path / "deep.yaml"
    path.write_text("passes: " + "[" * 5000 + "]" * 5000 + "\n")
    started = time.perf_counter()
    code, err = _cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--recipe", path, "-q"], capsys)
    _assert_refused(code, err, "nested deeper than")
    assert time.perf_counter() - started < 20


@pytest.mark.parametrize("source", ["fifo", "/dev/zero"])
def test_calibration_data_that_is_not_a_file(tmp_path, model_path, capsys, source):
    if source == "fifo":
        path = tmp_path / "calib.npz"
        os.mkfifo(path)
    else:
        path = Path(source)
    code, err = _cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--calib", path, "--no-latency", "-q"], capsys)
    _assert_refused(code, err, "not a regular file or a folder")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("command", ["inspect", "optimize"])
def test_negative_dim_in_an_initializer(tmp_path, capsys, command):
    model = builders.resnet_block(seed=3)
    model.graph.initializer[0].dims[0] = -1
    path = tmp_path / "neg.onnx"
    onnx.save(model, str(path))
    args = [command, path] + (["-o", tmp_path / "out.onnx", "-q"] if command == "optimize" else [])
    code, err = _cli(args, capsys)
    _assert_refused(code, err, "tensor 'w0' has a negative dimension")
    assert not (tmp_path / "out.onnx").exists()


def _png(path: Path, width: int, height: int, extra: bytes = b"") -> None:
    """A 1-bit greyscale PNG of zeros: tiny on disk whatever its declared size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" + bytes((width + 7) // 8)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("bomb", ["pixels", "pixels-warning", "ztxt"])
def test_image_decompression_bombs(tmp_path, model_path, capsys, bomb):
    pytest.importorskip("PIL")
    images = tmp_path / "images"
    images.mkdir()
    if bomb == "pixels":
        _png(images / "a.png", 20_000, 20_000)  # 400 M pixels: Pillow raises
        message = "decompression bomb"
    elif bomb == "pixels-warning":
        _png(images / "a.png", 10_000, 10_000)  # 100 M pixels: Pillow only warns, and would decode 300 MB
        message = "decompression bomb"
    else:
        text = b"comment\0\0" + zlib.compress(bytes(64 << 20), 9)  # 64 MiB of text in 64 KB
        _png(images / "a.png", 16, 16, struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text) & 0xFFFFFFFF))
        message = "not a readable image"
    started = time.perf_counter()
    code, err = _cli(["optimize", model_path, "-o", tmp_path / "out.onnx", "--calib", images, "--no-latency", "-q"], capsys)
    _assert_refused(code, err, message)
    assert time.perf_counter() - started < 20
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("shape", [[100_000, 100_000], [2] * 100], ids=["1e10-elements", "rank-100"])
def test_inputs_too_large_for_random_verification_data(tmp_path, capsys, shape):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    started = time.perf_counter()
    code, err = _cli(["optimize", path, "-o", tmp_path / "out.onnx", "--no-latency", "-q"], capsys)
    _assert_refused(code, err, "more than the .* allowed|has rank 100")
    assert time.perf_counter() - started < 20
    assert not (tmp_path / "out.onnx").exists()
