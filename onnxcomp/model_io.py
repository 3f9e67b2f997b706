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
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import InputError, OutputError

logger = logging.getLogger(__name__)

PROTOBUF_LIMIT = 2**31 - 1
"""Largest protobuf message; larger models must keep weights in external data."""

EXTERNAL_DATA_THRESHOLD = 1024
"""Tensors at least this many bytes go to the external-data file when one is used."""

MIN_SUPPORTED_OPSET = 7


def load_model(path: str | os.PathLike, *, load_external_data: bool = True) -> onnx.ModelProto:
    """Load and validate an ONNX model file.

    Args:
        path: The ``.onnx`` file.
        load_external_data: Read external tensors into memory. With False, the
            references are still validated but the data stays on disk.

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
    check_external_data(model, path.parent, source=str(path))
    if load_external_data and uses_external_data(model):
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
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
    """Run the ONNX checker, turning its failure into a one-line :class:`InputError`."""
    try:
        if model_byte_size(model) > PROTOBUF_LIMIT:
            with tempfile.TemporaryDirectory(prefix="onnxcomp-check-") as tmp:
                tmp_path = Path(tmp) / "model.onnx"
                save_model(model, tmp_path)
                onnx.checker.check_model(str(tmp_path))
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{source}: fails the ONNX checker: {first}") from err
    except UnicodeDecodeError as err:  # the checker's message quotes a corrupt, non-UTF-8 name
        raise InputError(f"{source}: fails the ONNX checker: a name is not valid UTF-8 (corrupt file?)") from err


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
    return any(_is_external(t) for t in iter_tensors(model))


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


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
        if not _is_external(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        where = f"{source}: tensor '{tensor.name}' external data '{location}'"
        if not location:
            raise InputError(f"{where}: no location given")
        rel = Path(location)
        if rel.is_absolute() or location.startswith(("/", "\\")) or ".." in rel.parts:
            raise InputError(f"{where}: refused, the location must stay inside the model's folder")
        target = Path(os.path.realpath(base_real / rel))
        if base_real != target and base_real not in target.parents:
            raise InputError(f"{where}: refused, it resolves outside the model's folder")
        if not target.is_file():
            raise InputError(f"{where}: file not found next to the model")
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
            None (the default) does so only when the model is too large for a
            single protobuf.
        protect: Files that must not be overwritten (the input model).

    Returns:
        The destination path.

    Raises:
        OutputError: The destination is protected, is a directory, its folder
            does not exist or is not writable, or writing failed (disk full).
    """
    path = Path(path)
    for protected in protect:
        if _same_file(path, Path(protected)):
            raise OutputError(
                f"{path}: refusing to overwrite the input model; choose another output "
                "(or pass --overwrite-input)"
            )
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} does not exist")
    if external_data is None:
        external_data = model_byte_size(model) > PROTOBUF_LIMIT - (1 << 24)
    data_name = f"{path.name}.data"
    with _temporary_sibling(path) as tmp_model, _temporary_sibling(path.with_name(data_name)) as tmp_data:
        try:
            if external_data:
                _write_external(model, tmp_model, tmp_data, data_name)
            else:
                _write_bytes(tmp_model, model.SerializeToString())
            if external_data:
                os.replace(tmp_data, path.with_name(data_name))
            os.replace(tmp_model, path)
        except OSError as err:
            raise OutputError(f"{path}: cannot write ({err.strerror or err})") from err
    _fsync_dir(folder)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    """A temporary file name beside ``path``, removed on exit unless renamed away."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise OutputError(f"{path}: cannot write in {folder} ({err.strerror or err})") from err
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_external(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Serialize with large tensors moved to ``data_path``, then restore them in memory."""
    moved: list[tuple[onnx.TensorProto, bytes, bool]] = []
    try:
        with open(data_path, "wb") as data_file:
            for tensor in iter_tensors(model):
                if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_DATA_THRESHOLD:
                    continue
                raw = tensor.raw_data
                had_location = tensor.HasField("data_location")
                offset = data_file.tell()
                pad = (-offset) % 4096  # page-aligned so runtimes can memory-map
                data_file.write(b"\0" * pad)
                data_file.write(raw)
                moved.append((tensor, raw, had_location))
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for key, value in (("location", location), ("offset", offset + pad), ("length", len(raw))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, str(value)
            data_file.flush()
            os.fsync(data_file.fileno())
        _write_bytes(model_path, model.SerializeToString())
    finally:
        for tensor, raw, had_location in moved:
            del tensor.external_data[:]
            if had_location:
                tensor.data_location = onnx.TensorProto.DEFAULT
            else:
                tensor.ClearField("data_location")
            tensor.raw_data = raw


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
        if _is_external(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location and location not in seen:
                seen.add(location)
                with contextlib.suppress(OSError):
                    total += (path.parent / location).stat().st_size
    return total
