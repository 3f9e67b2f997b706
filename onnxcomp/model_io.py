"""Reading and writing ONNX models safely.

Loading validates the file before trusting it: it must exist, be a regular
non-empty file, parse as a ``ModelProto`` that has a graph and an opset, and any
external data it references must live inside the model's folder (no ``..``,
absolute paths or symlinks out of it, the known path-traversal class of ONNX
loader bugs) and be long enough for the offsets it claims.

Saving is atomic: the model (and its external-data file, for models that do not
fit in one 2 GiB protobuf) is written to temporary files in the destination
folder, flushed to disk, then renamed into place, so a crash or an interrupt never
leaves a half-written output behind, and the in-memory model is left unchanged.
Temporary files are named ``.<output name>.onnxcomp-<host>-<pid>-<random>.tmp``;
one left by a run that was killed (``kill -9``, power loss) is removed by the
next run writing the same output, once its process is gone (see
:func:`temporary_file`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .errors import InputError, OutputError
from .external_data import copy_pinned, embedded, external_info, is_external, is_pinned, materialize, pin

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
"""Largest protobuf message; larger models must keep weights in external data."""

EXTERNAL_DATA_THRESHOLD = 1024
"""Tensors at least this many bytes go to the external-data file when one is used."""

MIN_SUPPORTED_OPSET = 7


def load_model(path: str | os.PathLike, *, load_external_data: bool = False) -> onnx.ModelProto:
    """Load and validate an ONNX model file.

    Args:
        path: The ``.onnx`` file.
        load_external_data: Read external tensors into memory. By default they
            stay on disk, pinned to their validated absolute paths (see
            :mod:`onnxcomp.external_data`), and are read only when needed.

    Raises:
        InputError: The file is missing, not a regular file, empty, not an ONNX
            model, truncated, has an unsupported opset, or references external
            data that is missing, short, or outside the model's folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx model file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: file is empty")
    model = onnx.ModelProto()
    try:
        with open(path, "rb") as f:
            model.ParseFromString(f.read())
    except (DecodeError, ValueError, RuntimeError) as err:
        raise InputError(
            f"{path}: not an ONNX model, or a truncated one (protobuf parsing failed: {err})"
        ) from err
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from err
    _check_text_fields(model, source=str(path))
    validate_model_proto(model, source=str(path))
    check_tensor_dims(model, source=str(path))
    drop_stray_locations(model)
    check_external_data(model, path.parent, source=str(path))
    if uses_external_data(model):
        pin(iter_tensors(model), path.parent)
        if load_external_data:
            materialize(iter_tensors(model))
    return model


def _check_text_fields(model: onnx.ModelProto, *, source: str) -> None:
    """Refuse models whose names or other text fields are not valid UTF-8.

    Python protobuf hands such fields back as ``bytes`` instead of ``str``
    (a flipped byte in a corrupt file), which would break code far from here.
    Tensor payloads are not read.
    """
    from google.protobuf.descriptor import FieldDescriptor

    def bad(value) -> bool:
        return isinstance(value, bytes)

    def walk(message) -> None:
        if isinstance(message, onnx.TensorProto):
            texts = [message.name, *(e.key for e in message.external_data), *(e.value for e in message.external_data)]
            if any(bad(t) for t in texts):
                raise InputError(f"{source}: corrupt model: a tensor name is not valid UTF-8")
            return
        for field, value in message.ListFields():
            values = value if field.is_repeated else [value]
            if field.type == FieldDescriptor.TYPE_STRING and any(bad(v) for v in values):
                raise InputError(f"{source}: corrupt model: field '{field.name}' is not valid UTF-8")
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in values:
                    walk(item)

    walk(model)


def check_tensor_dims(model: onnx.ModelProto, *, source: str = "model") -> None:
    """Refuse stored tensors with a negative dimension (a corrupt file).

    Such a shape makes every size computed from it negative or wrong, so it is
    refused before anything allocates, reads or checks by it.

    Raises:
        InputError: Names the first such tensor and its shape.
    """
    for tensor in iter_tensors(model):
        if any(d < 0 for d in tensor.dims):
            raise InputError(
                f"{source}: corrupt model: tensor '{tensor.name}' has a negative dimension (shape {list(tensor.dims)})"
            )


def drop_stray_locations(model: onnx.ModelProto) -> int:
    """Remove ``external_data`` entries from tensors not marked EXTERNAL; returns how many tensors had some.

    ONNX ignores such entries, and so must every reader here: left in place,
    code that looks only at the entries (hashing, sizing) would open a path
    nobody validated (``../../etc/shadow``, ``/dev/zero``).
    """
    count = 0
    for tensor in iter_tensors(model):
        if tensor.external_data and not is_external(tensor):
            del tensor.external_data[:]
            count += 1
    return count


def external_data_files(model: onnx.ModelProto, base_dir: Path, *, source: str = "model") -> list[Path]:
    """The validated external-data files of ``model`` (resolved, sorted by location, each once).

    Only tensors marked EXTERNAL count (stray ``external_data`` entries on
    other tensors are ignored), and each location passes
    :func:`check_external_data` first, so nothing outside ``base_dir`` is named.

    Raises:
        InputError: As :func:`check_external_data`.
    """
    check_external_data(model, base_dir, source=source)
    base_real = Path(os.path.realpath(base_dir))
    locations = sorted({external_info(t)["location"] for t in iter_tensors(model) if is_external(t)})
    files: list[Path] = []
    for location in locations:
        resolved = Path(os.path.realpath(base_real / location))
        if resolved not in files:
            files.append(resolved)
    return files


def validate_model_proto(model: onnx.ModelProto, *, source: str = "model") -> None:
    """Reject protobufs that parsed but are not usable models.

    Raises:
        InputError: No graph, no IR version, no opset import, or an opset this
            onnx release does not know.
    """
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise InputError(f"{source}: not an ONNX model (no IR version or no graph)")
    if not model.opset_import:
        raise InputError(f"{source}: model declares no opset_import")
    if not model.graph.output:
        raise InputError(f"{source}: graph has no outputs")
    opset = default_opset(model)
    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        raise InputError(f"{source}: model does not import the default ONNX domain")
    if opset > newest:
        raise InputError(
            f"{source}: opset {opset} is newer than this onnx package supports ({newest}); "
            "upgrade onnx and onnxruntime"
        )
    if opset < MIN_SUPPORTED_OPSET:
        raise InputError(
            f"{source}: opset {opset} is not supported (need {MIN_SUPPORTED_OPSET} or newer)"
        )


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's version of the default (``ai.onnx``) domain, or None."""
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return None


def check_model(model: onnx.ModelProto, *, source: str = "model") -> None:
    """Run the ONNX checker, turning its failure into a one-line :class:`InputError`.

    Weights are never copied for the check (see :func:`_check_without_weights`),
    so this costs the same for a 2 GiB model as for a small one.
    """
    try:
        _check_without_weights(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{source}: fails the ONNX checker: {first}") from err
    except UnicodeDecodeError as err:  # the checker's message quotes a corrupt, non-UTF-8 name
        raise InputError(f"{source}: fails the ONNX checker: a name is not valid UTF-8 (corrupt file?)") from err


def _check_without_weights(model: onnx.ModelProto) -> None:
    """Check ``model`` with its large weights stood in for by a sparse file.

    The checker needs every tensor's data to exist and be long enough, and
    serializing a model to check it would copy every weight (twice: Python to
    C++). Large weights are therefore replaced by references into a sparse
    placeholder file of the right length (no disk blocks, no memory); the sizes
    of in-memory weights are checked here instead, from their serialized size.
    """
    from .shapes import STUB_LOCATION, stub_large_tensors

    stubbed = stub_large_tensors(model)
    stubs = [t for t in stubbed.graph.initializer if external_info(t).get("location") == STUB_LOCATION]
    if not stubs:
        onnx.checker.check_model(model)
        return
    originals = {t.name: t for t in model.graph.initializer}
    offset = 0
    for stub in stubs:
        original = originals[stub.name]
        length = _data_bytes(original)
        if not is_external(original) and original.HasField("raw_data"):
            _check_payload(original, length)
        _point_to(stub, "weights.bin", offset, length)
        offset += length
    with tempfile.TemporaryDirectory(prefix="onnxcomp-check-") as tmp:
        folder = Path(tmp)
        with open(folder / "weights.bin", "wb") as placeholder:
            placeholder.truncate(offset)
        _write_bytes(folder / "model.onnx", stubbed.SerializeToString())
        onnx.checker.check_model(str(folder / "model.onnx"))


def _data_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes the data of ``tensor`` occupies given its dims and type (4-bit types packed)."""
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4, onnx.TensorProto.FLOAT4E2M1):
        return (count + 1) // 2
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def _check_payload(tensor: onnx.TensorProto, expected: int) -> None:
    """Raise when an in-memory tensor's ``raw_data`` is not the size its dims and type say.

    Measured without copying the bytes: the tensor's serialized size minus that
    of the same tensor without ``raw_data`` is the field's tag, its length
    varint and the payload.
    """
    from .shapes import copy_fields

    rest = onnx.TensorProto()
    copy_fields(tensor, rest, skip={"raw_data"})
    field = tensor.ByteSize() - rest.ByteSize()
    want = 1 + len(_varint(expected)) + expected
    if field != want:
        raise onnx.checker.ValidationError(
            f"tensor '{tensor.name}' stores about {field} bytes of data but its shape {list(tensor.dims)} "
            f"and type need {expected}"
        )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def iter_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers and tensor attributes, subgraphs included."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in iter_tensors(model))


def has_pinned_data(model: onnx.ModelProto) -> bool:
    """Whether some weights of ``model`` are still on disk (see :mod:`.external_data`)."""
    return any(is_pinned(t) for t in iter_tensors(model))


def check_external_data(model: onnx.ModelProto, base_dir: Path, *, source: str = "model") -> None:
    """Check that every external-data reference is safe and satisfiable.

    Raises:
        InputError: A location that is absolute, escapes ``base_dir`` (directly
            or through a symlink), names a missing file, or whose offset and
            length run past the end of the file.
    """
    base_real = Path(os.path.realpath(base_dir))
    sizes: dict[Path, int] = {}
    for tensor in iter_tensors(model):
        if not is_external(tensor):
            continue
        info = external_info(tensor)
        location = info.get("location", "")
        where = f"{source}: tensor '{tensor.name}' external data '{location}'"
        if not location:
            raise InputError(f"{where}: no location given")
        if "\0" in location:
            raise InputError(f"{source}: tensor '{tensor.name}' external data location contains a null byte; corrupt model")
        rel = Path(location)
        if rel.is_absolute() or location.startswith(("/", "\\")) or ".." in rel.parts:
            raise InputError(f"{where}: refused, the location must stay inside the model's folder")
        target = Path(os.path.realpath(base_real / rel))
        if base_real != target and base_real not in target.parents:
            raise InputError(f"{where}: refused, it resolves outside the model's folder")
        if not target.exists():
            raise InputError(f"{where}: file not found next to the model")
        if not target.is_file():
            raise InputError(f"{where}: not a regular file (a folder, FIFO or device is never read)")
        if target not in sizes:
            sizes[target] = target.stat().st_size
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError as err:
            raise InputError(f"{where}: offset/length are not integers") from err
        if offset < 0 or (length is not None and length < 0):
            raise InputError(f"{where}: negative offset or length")
        end = offset + (length if length is not None else 0)
        if end > sizes[target] or (length is None and offset > sizes[target]):
            raise InputError(
                f"{where}: file is too short ({sizes[target]} bytes, tensor needs bytes up to {end})"
            )


def model_byte_size(model: onnx.ModelProto) -> int:
    """Serialized size of the model, computed without serializing it."""
    try:
        return model.ByteSize()
    except Exception:  # very large messages may refuse ByteSize in some protobuf builds
        return sum(len(t.raw_data) for t in iter_tensors(model)) + PROTOBUF_LIMIT


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protect: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write ``model`` to ``path`` atomically; the in-memory model is not changed.

    Args:
        model: The model to write.
        path: Destination ``.onnx`` file. Its folder must exist.
        external_data: Put large tensors in ``<name>.data`` next to the model.
            None (the default) does so when the model is too large for a single
            protobuf or its weights are still on disk (pinned).
        protect: Files that must not be overwritten (the input model).

    Returns:
        The destination path.

    Raises:
        OutputError: The destination is protected, is a directory, its folder
            does not exist or is not writable, or writing failed (disk full).
    """
    with StagedModel(model, path, external_data=external_data, protect=protect) as staged:
        return staged.commit()


def check_output_path(path: Path, protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Fail early if ``path`` cannot receive a model; returns its folder.

    Raises:
        OutputError: ``path`` is a protected file (the input), a directory, or
            its folder does not exist.
    """
    for protected in protect:
        if _same_file(path, Path(protected)):
            raise OutputError(
                f"{path}: refusing to overwrite the input model; choose another output (or pass --overwrite-input)"
            )
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    return folder


class StagedModel:
    """A model written next to its destination, usable before it is committed.

    The model (and its data file) are written to hidden temporary files in the
    destination folder; :attr:`path` is a complete model onnxruntime can load,
    so the result can be verified from disk before it replaces anything.
    :meth:`commit` moves it into place; leaving the ``with`` block without
    committing removes every temporary file.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        path: str | os.PathLike,
        *,
        external_data: bool | None = None,
        protect: Sequence[str | os.PathLike] = (),
    ):
        self.final = Path(path)
        self.folder = check_output_path(self.final, protect)
        if external_data is None:
            external_data = has_pinned_data(model) or model_byte_size(model) > PROTOBUF_LIMIT - (1 << 24)
        self.external = external_data
        self._temps: list[Path] = []
        self.path = self._temp(self.final.name)
        self._data = self._temp(f"{self.final.name}.data") if external_data else None
        try:
            if self._data is not None:
                _write_external(model, self.path, self._data, self._data.name)
            else:
                with embedded(list(iter_tensors(model))):
                    _write_bytes(self.path, model.SerializeToString())
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.final}: cannot write ({err.strerror or err})") from err
        except BaseException:
            self.discard()
            raise

    def _temp(self, name: str) -> Path:
        try:
            temp = temporary_file(self.folder, name)
        except OutputError:
            self.discard()
            raise
        self._temps.append(temp)
        return temp

    def commit(self) -> Path:
        """Move the staged files into place (data first, then the model) and return the path."""
        try:
            if self._data is not None:
                final_data = self.final.with_name(f"{self.final.name}.data")
                relinked = self._temp(self.final.name)
                staged = onnx.load(str(self.path), load_external_data=False)
                for tensor in iter_tensors(staged):
                    if is_external(tensor):
                        _set_location(tensor, final_data.name)
                _write_bytes(relinked, staged.SerializeToString())
                os.replace(self._data, final_data)
                os.replace(relinked, self.final)
            else:
                os.replace(self.path, self.final)
        except OSError as err:
            self.discard()
            raise OutputError(f"{self.final}: cannot write ({err.strerror or err})") from err
        self.discard()
        _fsync_dir(self.folder)
        return self.final

    def discard(self) -> None:
        for temp in self._temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        self._temps.clear()

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def _set_location(tensor: onnx.TensorProto, location: str) -> None:
    for entry in tensor.external_data:
        if entry.key == "location":
            entry.value = location


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


_STARTED = time.time()
"""When this process started using onnxcomp (temp files older than this and named with its pid are stale)."""

TEMP_TAG = "onnxcomp"


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24] or "host"


def temporary_file(folder: Path, name: str) -> Path:
    """Create an empty hidden temporary file for the output ``name`` in ``folder``.

    Its name, ``.<name>.onnxcomp-<host>-<pid>-<random>.tmp``, says whose it
    is, so that the stale temporary files of earlier runs writing the same
    output (killed before they could remove theirs) are removed first; see
    :func:`remove_stale_temporaries`.

    Raises:
        OutputError: The folder is missing or not writable.
    """
    remove_stale_temporaries(folder, name)
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{name}.{TEMP_TAG}-{_host_tag()}-{os.getpid()}-", suffix=".tmp", dir=folder)
    except OSError as err:
        raise OutputError(f"{folder / name}: cannot write in {folder} ({err.strerror or err})") from err
    os.close(fd)
    return Path(temp)


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove temporary files of the output ``name`` (and of ``name.data``) left by dead processes.

    Only files named as :func:`temporary_file` names them, created on this
    host, owned by this user, whose process no longer runs (or, carrying this
    process's pid, predate it: an earlier process with the same pid) are
    removed. Another run writing the same output at the same time keeps its
    files.

    Returns:
        The files removed.
    """
    pattern = re.compile(
        rf"^\.{re.escape(name)}(?:\.data)?\.{TEMP_TAG}-{re.escape(_host_tag())}-(\d+)-[A-Za-z0-9_]+\.tmp$"
    )
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        pid = int(match.group(1))
        if not entry.is_file(follow_symlinks=False) or info.st_uid != os.getuid():
            continue
        if process_alive(pid) and not (pid == os.getpid() and info.st_mtime < _STARTED):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            logger.info("removed %s, left by an earlier run that was interrupted", entry.path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (True when it cannot be told)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):
        return True  # someone else's process, or cannot tell: keep its files
    return True


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A temporary file name beside ``path``, removed on exit unless renamed away."""
    folder = path.parent if str(path.parent) else Path(".")
    tmp = temporary_file(folder, path.name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _default_mode() -> int:
    """Permissions a newly created file gets under the current umask (e.g. 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        os.fchmod(f.fileno(), _default_mode())  # mkstemp creates 0600; outputs get the usual permissions
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_external(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Write ``model`` with its initializers of at least ``EXTERNAL_DATA_THRESHOLD`` bytes in ``data_path``.

    The model file is a weightless skeleton (see
    :func:`onnxcomp.shapes.stub_large_tensors`) pointing into the data file;
    weights are written one at a time (pinned ones streamed from their source
    file), so neither the in-memory model changes nor more than one weight is
    copied at once. Every weight is page-aligned so runtimes can memory-map it.
    """
    from .shapes import STUB_LOCATION, stub_large_tensors

    skeleton = stub_large_tensors(model, threshold=EXTERNAL_DATA_THRESHOLD)
    originals = {t.name: t for t in model.graph.initializer}
    with open(data_path, "wb") as data_file:
        os.fchmod(data_file.fileno(), _default_mode())
        for stub in skeleton.graph.initializer:
            if external_info(stub).get("location") != STUB_LOCATION:
                continue
            original = originals[stub.name]
            data_file.write(b"\0" * ((-data_file.tell()) % 4096))
            offset = data_file.tell()
            if is_pinned(original):
                length = copy_pinned(original, data_file)
            elif is_external(original):
                raise OutputError(f"tensor '{original.name}' refers to external data that is not loaded or pinned")
            else:
                payload = original.raw_data if original.HasField("raw_data") else onnx.numpy_helper.to_array(original).tobytes()
                data_file.write(payload)
                length = len(payload)
                del payload
            _point_to(stub, location, offset, length)
        data_file.flush()
        os.fsync(data_file.fileno())
    _write_bytes(model_path, skeleton.SerializeToString())


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    tensor.data_location = onnx.TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_size_with_data(path: str | os.PathLike) -> int:
    """Bytes on disk of a model file plus the external-data files it references."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - size of an unreadable file is its own size
        return total
    seen: set[str] = set()
    for tensor in iter_tensors(model):
        if is_external(tensor):
            location = external_info(tensor).get("location")
            if location and location not in seen:
                seen.add(location)
                with contextlib.suppress(OSError):
                    total += (path.parent / location).stat().st_size
    return total
