"""Calibration and verification data: sources, validation, random stand-ins.

A :class:`Dataset` is a *re-iterable* source of feed dicts (input name -> numpy
array, batch dimension included), iterated once per calibration or verification
pass, so memory stays flat however many samples there are. Sources:

* an ``.npz`` whose keys are input names; arrays stack samples along axis 0
  (``[N, ...]`` with the model's rank: one sample per row; or rank + 1: one
  full feed per leading index);
* a folder of ``.npy`` (single-input models) or ``.npz`` files, one feed per
  file, in sorted order;
* a folder of images with preprocessing options (:mod:`onnxcomp.data_images`);
* in Python, a list/tuple of feed dicts, any re-iterable of them, a one-shot
  iterator or generator, or an onnxruntime ``CalibrationDataReader`` (one-shot
  sources are spooled to a scratch folder on first use).

Every sample is validated against the model's inputs: names, dtypes, rank,
static dims and the consistency of symbolic dims within a sample, and
finiteness of float data. Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import logging
import os
import re
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .errors import DataError
from .shapes import shape_of

logger = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input as the data must match it.

    Attributes:
        shape: Dims as ints (static), strings (symbolic) or None (unknown); the
            whole shape is None when even the rank is unknown.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...] | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor_type = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            raise DataError(f"input '{vi.name}' is not a tensor; only tensor inputs are supported")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        specs.append(InputSpec(vi.name, np.dtype(dtype), shape_of(vi)))
    return specs


def describe_inputs(specs: Sequence[InputSpec]) -> str:
    return ", ".join(s.describe() for s in specs)


class Dataset(abc.ABC):
    """A re-iterable source of feed dicts."""

    description: str = "data"

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Feed]: ...

    def size(self) -> int | None:
        """Number of samples if known without reading them, else None."""
        return None

    def first(self) -> Feed:
        for sample in self:
            return sample
        raise DataError(f"{self.description}: contains no samples")


class ListDataset(Dataset):
    def __init__(self, samples: Sequence[Feed], description: str = "list of samples"):
        self._samples = samples
        self.description = description

    def __iter__(self) -> Iterator[Feed]:
        yield from self._samples

    def size(self) -> int | None:
        return len(self._samples)


class ReiterableDataset(Dataset):
    """Wraps a Python re-iterable (each ``iter()`` starts over)."""

    def __init__(self, source: Iterable[Feed], description: str):
        self._source = source
        self.description = description

    def __iter__(self) -> Iterator[Feed]:
        return iter(self._source)

    def size(self) -> int | None:
        try:
            return len(self._source)  # type: ignore[arg-type]
        except TypeError:
            return None


class SpooledDataset(Dataset):
    """A one-shot iterator made re-iterable by spooling samples to a scratch folder.

    Samples are pulled from the source only once, written to ``folder`` as they
    arrive and read back by later (or concurrent partial) iterations, so a
    pass that stops early (e.g. peeking at the first sample) loses nothing.
    Memory stays flat in the number of samples.

    The spool is a new folder inside ``workdir`` (whose owner removes it), or
    without one a temporary folder removed with this dataset.
    """

    def __init__(self, source: Iterator[Feed], workdir: Path | None, description: str):
        self._source = source
        if workdir is not None:
            self._folder = Path(tempfile.mkdtemp(prefix="spool-", dir=workdir))
        else:
            self._folder = Path(tempfile.mkdtemp(prefix="onnxcomp-spool-"))
            weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        self._written = 0
        self._exhausted = False
        self.description = description

    def __iter__(self) -> Iterator[Feed]:
        index = 0
        while True:
            if index < self._written:
                with np.load(self._folder / f"{index:08d}.npz", allow_pickle=False) as data:
                    yield {k: data[k] for k in data.files}
            elif self._exhausted:
                return
            else:
                try:
                    sample = next(self._source)
                except StopIteration:
                    self._exhausted = True
                    return
                yield self._spool(sample, index)
            index += 1

    def _spool(self, sample: Any, index: int) -> Feed:
        if not isinstance(sample, Mapping):
            raise DataError(f"{self.description}: sample {index} is a {type(sample).__name__}, expected a dict")
        arrays = {str(k): np.asarray(v) for k, v in sample.items()}
        _refuse_objects(arrays, f"{self.description}: sample {index}")
        np.savez(self._folder / f"{index:08d}.npz", **arrays)
        self._written += 1
        return arrays

    def size(self) -> int | None:
        return self._written if self._exhausted else None


class NpzDataset(Dataset):
    """Samples stacked along axis 0 of the arrays of one ``.npz`` file."""

    def __init__(self, path: Path, specs: Sequence[InputSpec]):
        self.path = Path(path)
        self.description = str(path)
        self._specs = {s.name: s for s in specs}
        with _open_npz(self.path) as data:
            names = list(data.files)
            if not names:
                raise DataError(f"{self.path}: contains no arrays")
            _check_names(set(names), specs, str(self.path))
            headers = {name: data.header(name) for name in names}  # shapes and sizes, nothing loaded yet
            _check_budget(sum(h.nbytes for h in headers.values()), str(self.path))
            counts = {}
            for name in names:
                counts[name] = self._sample_count(name, headers[name])
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
            raise DataError(f"{self.path}: arrays hold different numbers of samples ({detail})")
        self._count = next(iter(counts.values()))
        if self._count == 0:
            raise DataError(f"{self.path}: contains no samples")

    def _sample_count(self, name: str, arr: np.ndarray | NpyHeader) -> int:
        spec = self._specs[name]
        rank = len(spec.shape) if spec.shape is not None else arr.ndim
        if arr.ndim == rank + 1:
            return arr.shape[0]
        if arr.ndim == rank and rank > 0:
            batch = spec.shape[0] if spec.shape is not None else None
            step = batch if isinstance(batch, int) and batch > 0 else 1
            if arr.shape[0] % step:
                raise DataError(f"{self.path}: '{name}' has {arr.shape[0]} rows, not a multiple of the model's batch {step}")
            return arr.shape[0] // step
        raise DataError(
            f"{self.path}: '{name}' has shape {list(arr.shape)}; expected samples stacked on axis 0 "
            f"for input {spec.describe()}"
        )

    def __iter__(self) -> Iterator[Feed]:
        with _open_npz(self.path) as data:
            arrays = {name: data[name] for name in data.files}
        for i in range(self._count):
            feed = {}
            for name, arr in arrays.items():
                spec = self._specs[name]
                rank = len(spec.shape) if spec.shape is not None else arr.ndim
                if arr.ndim == rank + 1:
                    feed[name] = arr[i]
                else:
                    batch = spec.shape[0] if spec.shape is not None else None
                    step = batch if isinstance(batch, int) and batch > 0 else 1
                    feed[name] = arr[i * step:(i + 1) * step]
            yield feed

    def size(self) -> int | None:
        return self._count


class FolderDataset(Dataset):
    """One feed per ``.npz`` (keys = input names) or ``.npy`` (single input) file."""

    def __init__(self, folder: Path, files: list[Path], specs: Sequence[InputSpec]):
        self.description = str(folder)
        self._files = files
        self._specs = list(specs)
        if any(f.suffix == ".npy" for f in files) and len(specs) != 1:
            raise DataError(
                f"{folder}: .npy samples need a single-input model; this one has "
                f"{len(specs)} inputs ({describe_inputs(specs)}); use .npz files keyed by input name"
            )

    def __iter__(self) -> Iterator[Feed]:
        for path in self._files:
            if path.suffix == ".npy":
                arr = _load_npy(path)
                feed = {self._specs[0].name: arr}
            else:
                with _open_npz(path) as data:
                    feed = {k: data[k] for k in data.files}
            yield _add_missing_batch_axis(feed, self._specs)

    def size(self) -> int | None:
        return len(self._files)


class RandomDataset(Dataset):
    """Seeded random samples of the right names, dtypes and shapes.

    Float inputs are standard normal; integer inputs whose name suggests a mask
    are ones, token-type ids zeros, other integers uniform in
    ``[0, int_high)``; booleans are random.
    """

    def __init__(self, specs: Sequence[InputSpec], shapes: Mapping[str, tuple[int, ...]], count: int, seed: int, int_high: Mapping[str, int] | None = None):
        self._specs = list(specs)
        self._shapes = dict(shapes)
        self._count = count
        self._seed = seed
        self._int_high = dict(int_high or {})
        self.description = f"{count} random samples"
        for spec in self._specs:
            _check_random_shape(spec, self._shapes[spec.name])

    def __iter__(self) -> Iterator[Feed]:
        rng = np.random.default_rng(self._seed)
        for _ in range(self._count):
            feed = {}
            for spec in self._specs:
                shape = self._shapes[spec.name]
                feed[spec.name] = _random_array(spec, shape, rng, self._int_high.get(spec.name, 100))
            yield feed

    def size(self) -> int | None:
        return self._count


MAX_RANK = 32
"""numpy arrays hold at most 64 dims (32 before numpy 2); no real model input comes near."""


def _check_random_shape(spec: InputSpec, shape: tuple[int, ...]) -> None:
    """Refuse to make a random sample numpy cannot hold or memory cannot (one line, before allocating)."""
    if len(shape) > MAX_RANK:
        raise DataError(f"input {spec.name} has rank {len(shape)}; onnxcomp handles inputs of rank {MAX_RANK} at most")
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * max(spec.dtype.itemsize, 8)  # generated in float64 / int64, then cast
    if nbytes > data_budget():
        raise DataError(
            f"a random sample of input {spec.name} {list(shape)} needs {_bytes(nbytes)}, more than the "
            f"{_bytes(data_budget())} allowed (half the memory available); give --calib data or a smaller --input-shape"
        )


def _random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, high: int) -> np.ndarray:
    name = spec.name.lower()
    kind = spec.dtype.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if kind in "iu":
        if "mask" in name:
            return np.ones(shape, dtype=spec.dtype)
        if "type" in name or "segment" in name:
            return np.zeros(shape, dtype=spec.dtype)
        return rng.integers(0, max(high, 1), size=shape).astype(spec.dtype)
    raise DataError(f"cannot make random data for input {spec.describe()}; give --calib data")


def resolve_shapes(
    specs: Sequence[InputSpec],
    overrides: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Concrete shapes for every input, for random data or MAC counting.

    Explicit ``overrides`` (input name -> shape) win; then named ``dims``
    (symbol -> value); a symbolic or unknown leading dim is assumed to be a
    batch of 1. Any other unresolved dim is an error.

    Returns:
        The shapes, and the assumptions made (``"input[axis]" -> value``).

    Raises:
        DataError: A dim cannot be resolved, or an override contradicts a
            static dim.
    """
    overrides = dict(overrides or {})
    dims = dict(dims or {})
    check_override_names(specs, overrides)
    shapes: dict[str, tuple[int, ...]] = {}
    assumed: dict[str, int] = {}
    for spec in specs:
        if spec.name in overrides:
            shape = tuple(int(d) for d in overrides[spec.name])
            _check_shape(spec, shape, f"--input-shape {spec.name}")
            shapes[spec.name] = shape
            for d, v in zip(spec.shape or (), shape):
                if isinstance(d, str):
                    dims.setdefault(d, v)
            continue
        if spec.shape is None:
            raise DataError(f"input {spec.describe()} has unknown rank; pass --input-shape {spec.name}:D0xD1x...")
        resolved = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                resolved.append(d)
            elif isinstance(d, str) and d in dims:
                resolved.append(int(dims[d]))
            elif axis == 0:
                resolved.append(1)
                assumed[f"{spec.name}[0]"] = 1
                if isinstance(d, str):
                    dims[d] = 1
            else:
                label = f"'{d}'" if isinstance(d, str) else "unknown"
                raise DataError(
                    f"input {spec.describe()} has a dynamic dim {label} at axis {axis} and no data to "
                    f"resolve it; pass --calib DATA or --input-shape {spec.name}:"
                    + "x".join(str(v) if isinstance(v, int) and v > 0 else "N" for v in spec.shape)
                )
        shapes[spec.name] = tuple(resolved)
    return shapes, assumed


def check_override_names(specs: Sequence[InputSpec], overrides: Mapping[str, Sequence[int]] | None) -> None:
    """Raise DataError when ``--input-shape`` names an input the model does not have."""
    unknown_names = sorted(set(overrides or {}) - {s.name for s in specs})
    if unknown_names:
        raise DataError(f"--input-shape names unknown input(s) {', '.join(unknown_names)}; model inputs: {describe_inputs(specs)}")


def parse_shape_overrides(texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` (or ``name:1,3,224,224``) strings."""
    out: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, sep, dims = text.rpartition(":")
        if not sep or not name or not dims:
            raise DataError(f"--input-shape '{text}': expected NAME:D0xD1x..., e.g. input:1x3x224x224")
        try:
            shape = tuple(int(d) for d in dims.replace(",", "x").split("x"))
        except ValueError:
            raise DataError(f"--input-shape '{text}': dims must be positive integers") from None
        if any(d <= 0 for d in shape):
            raise DataError(f"--input-shape '{text}': dims must be positive integers")
        out[name] = shape
    return out


class ValidatedDataset(Dataset):
    """Checks every sample of ``inner`` against the model's inputs as it streams.

    ``passes`` counts the iterations that ran to the end (``first()`` does
    not), so a caller can tell whether a pipeline went through the data
    (and verification on it is in-sample).

    Raises:
        DataError: On the first bad sample (its index and what was expected), or
            at the end of a pass that yielded no samples at all.
    """

    def __init__(self, inner: Dataset, specs: Sequence[InputSpec], limit: int | None = None):
        self.inner = inner
        self.specs = list(specs)
        self.limit = limit
        self.description = inner.description
        self.passes = 0

    def __iter__(self) -> Iterator[Feed]:
        count = 0
        source = iter(self.inner)
        if self.limit is not None:
            source = itertools.islice(source, self.limit)
        for sample in source:
            yield validate_sample(sample, self.specs, f"{self.description}: sample {count}")
            count += 1
        if count == 0:
            raise DataError(f"{self.description}: contains no samples")
        self.passes += 1

    def size(self) -> int | None:
        n = self.inner.size()
        if n is None:
            return self.limit
        return min(n, self.limit) if self.limit is not None else n


def validate_sample(sample: Any, specs: Sequence[InputSpec], where: str) -> Feed:
    """Check one feed dict; returns it as a dict of numpy arrays."""
    if not isinstance(sample, Mapping):
        raise DataError(f"{where}: is a {type(sample).__name__}, expected a dict of input name -> array")
    feed = {}
    for key, value in sample.items():
        try:
            feed[str(key)] = np.asarray(value)
        except Exception as err:  # noqa: BLE001 - anything numpy refuses is bad data
            raise DataError(f"{where}: input '{key}' is not array-like ({err})") from err
    _refuse_objects(feed, where)
    _check_names(set(feed), specs, where)
    symbols: dict[str, tuple[int, str]] = {}
    for spec in specs:
        arr = feed[spec.name]
        if arr.dtype != spec.dtype:
            hint = f" (convert with .astype(np.{spec.dtype.name}))" if spec.dtype.kind in "fiub" else ""
            raise DataError(f"{where}: input '{spec.name}' has dtype {arr.dtype}, the model expects {spec.dtype}{hint}")
        _check_shape(spec, arr.shape, f"{where}: input '{spec.name}'")
        for axis, d in enumerate(spec.shape or ()):
            if isinstance(d, str) and not anonymous_dim(d):
                if d in symbols and symbols[d][0] != arr.shape[axis]:
                    other_value, other_name = symbols[d]
                    raise DataError(
                        f"{where}: dim '{d}' is {arr.shape[axis]} in input '{spec.name}' but "
                        f"{other_value} in input '{other_name}'"
                    )
                symbols.setdefault(d, (arr.shape[axis], spec.name))
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            what = "NaN" if np.any(np.isnan(arr)) else "Inf"
            raise DataError(f"{where}: input '{spec.name}' contains {what}")
    return feed


_ANONYMOUS_DIM = re.compile(r"^(\?|-1|unk__\d+|unk_\d+|)$")


def anonymous_dim(name: str) -> bool:
    """Dim names exporters write for "unknown" (Paddle's ``?``, ``-1``, ``unk__N``, empty):
    markers, not symbols that must agree between axes and inputs."""
    return bool(_ANONYMOUS_DIM.match(name.strip()))


def _check_shape(spec: InputSpec, shape: Sequence[int], where: str) -> None:
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise DataError(f"{where}: has shape {list(shape)} (rank {len(shape)}), the model expects {spec.describe()}")
    for axis, (want, have) in enumerate(zip(spec.shape, shape)):
        if isinstance(want, int) and want > 0 and want != have:
            raise DataError(
                f"{where}: has shape {list(shape)}, the model expects {spec.describe()} (axis {axis} must be {want})"
            )
    if any(d == 0 for d in shape):
        raise DataError(f"{where}: has an empty dimension (shape {list(shape)})")


def _check_names(names: set[str], specs: Sequence[InputSpec], where: str) -> None:
    expected = {s.name for s in specs}
    missing = sorted(expected - names)
    extra = sorted(names - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks input(s) {', '.join(repr(m) for m in missing)}")
        if extra:
            parts.append(f"has unknown input(s) {', '.join(repr(e) for e in extra)}")
        raise DataError(f"{where}: {' and '.join(parts)}; the model's inputs are {describe_inputs(specs)}")


def _refuse_objects(arrays: Mapping[str, np.ndarray], where: str) -> None:
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise DataError(f"{where}: input '{name}' holds Python objects; only numeric arrays are accepted")


def _add_missing_batch_axis(feed: Feed, specs: Sequence[InputSpec]) -> Feed:
    """Let per-sample files omit a leading batch dim of 1 (or a dynamic one)."""
    out = dict(feed)
    for spec in specs:
        arr = out.get(spec.name)
        if arr is None or spec.shape is None or arr.ndim != len(spec.shape) - 1:
            continue
        lead = spec.shape[0]
        if not isinstance(lead, int) or lead in (0, 1):
            out[spec.name] = arr[np.newaxis]
    return out


class _NpzFile:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self._data = np.load(self.path, allow_pickle=False)
        except FileNotFoundError as err:
            raise DataError(f"{self.path}: no such file") from err
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{self.path}: not a readable .npz file ({' '.join(str(err).split())})") from err
        if not hasattr(self._data, "files"):
            raise DataError(f"{self.path}: is a single array, expected an .npz archive of named arrays")
        return _SafeNpz(self._data, self.path)

    def __exit__(self, *exc):
        self._data.close()


class _SafeNpz:
    """Access to an NpzFile that reports pickled or corrupt members as DataError.

    A member is read only after its ``.npy`` header (see :func:`read_npy_header`)
    and its declared sizes in the zip directory passed the checks of
    :func:`_check_declared`: a zip bomb or a header declaring more elements
    than the member holds is refused before anything is allocated.
    """

    def __init__(self, data, path: Path):
        self._data = data
        self._path = path
        self.files = list(data.files)
        self._headers: dict[str, NpyHeader] = {}

    def header(self, key: str) -> NpyHeader:
        """Shape, dtype and size of member ``key``, checked, without reading its data."""
        if key not in self._headers:
            names = set(self._data.zip.namelist())
            member = f"{key}.npy" if f"{key}.npy" in names else key
            where = f"{self._path}: array '{key}'"
            try:
                info = self._data.zip.getinfo(member)
                _check_declared(info.file_size, info.compress_size, where)
                with self._data.zip.open(member) as stream:
                    header = read_npy_header(stream, info.file_size, where)
            except (OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as err:
                raise DataError(f"{where} is corrupt ({' '.join(str(err).split())})") from err
            self._headers[key] = header
        return self._headers[key]

    def __getitem__(self, key: str) -> np.ndarray:
        _check_budget(self.header(key).nbytes, f"{self._path}: array '{key}'")
        try:
            return self._data[key]
        except ValueError as err:
            raise DataError(f"{self._path}: array '{key}' holds pickled Python objects; refused (only numeric arrays are read)") from err
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise DataError(f"{self._path}: array '{key}' is corrupt ({err})") from err


def _open_npz(path: Path) -> _NpzFile:
    return _NpzFile(Path(path))


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        with open(path, "rb") as stream:
            header = read_npy_header(stream, path.stat().st_size, str(path))
    except OSError as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from err
    _check_budget(header.nbytes, str(path))
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path}: holds pickled Python objects or is malformed; refused ({err})") from err
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: not a readable .npy file ({err})") from err


@dataclasses.dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header declares: the array's shape and dtype, and its size in bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= int(d)  # Python ints: a hostile shape cannot overflow
        return count * self.dtype.itemsize


BOMB_RATIO = 200
"""A zip member that inflates more than this many times (and past :data:`BOMB_MIN_BYTES`)
is refused as a zip bomb: numeric data, even images, never compresses this well."""

BOMB_MIN_BYTES = 256 << 20

MAX_ARRAY_BYTES: int | None = None
"""Largest data file or ``.npz`` read into memory at once; None: half the memory available."""


def read_npy_header(stream, size: int, where: str) -> NpyHeader:
    """Read and check the header of the ``.npy`` data in ``stream`` (``size`` bytes long).

    Raises:
        DataError: Not a .npy array, Python objects (pickles), or a shape
            that needs more bytes than the stream holds (truncated, or a
            header declaring 1e14 elements).
    """
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(stream)
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _fortran, dtype = read(stream)
        offset = stream.tell()
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as err:
        raise DataError(f"{where}: not a .npy array, or a corrupt one ({' '.join(str(err).split())[:200]})") from err
    if dtype.hasobject:
        raise DataError(f"{where}: holds pickled Python objects; refused (only numeric arrays are read)")
    if any(int(d) < 0 for d in shape):
        raise DataError(f"{where}: declares a negative dimension (shape {list(shape)}); corrupt file")
    header = NpyHeader(tuple(int(d) for d in shape), np.dtype(dtype))
    if header.nbytes > size - offset:
        raise DataError(
            f"{where}: declares shape {list(shape)} of {dtype} ({_bytes(header.nbytes)}) but holds only "
            f"{_bytes(max(size - offset, 0))} of data: truncated or corrupt"
        )
    return header


def _check_declared(file_size: int, compress_size: int, where: str) -> None:
    """Refuse a zip member by the sizes its directory entry declares, before inflating it."""
    if file_size > BOMB_MIN_BYTES and file_size > BOMB_RATIO * max(compress_size, 1):
        raise DataError(
            f"{where}: inflates {compress_size:,} bytes into {_bytes(file_size)} (more than {BOMB_RATIO}x): "
            "refused as a zip bomb; save real data with np.savez or np.savez_compressed"
        )
    _check_budget(file_size, where)


def _check_budget(nbytes: int, where: str) -> None:
    budget = data_budget()
    if nbytes > budget:
        raise DataError(
            f"{where}: needs {_bytes(nbytes)} in memory, more than the {_bytes(budget)} allowed "
            "(half the memory available); split the samples into a folder of per-sample .npz/.npy files"
        )


def data_budget() -> int:
    """Bytes of data one file may bring into memory (:data:`MAX_ARRAY_BYTES`)."""
    if MAX_ARRAY_BYTES is not None:
        return MAX_ARRAY_BYTES
    return _available_memory() // 2


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm"})


def open_data(
    source: Any,
    specs: Sequence[InputSpec],
    *,
    image_options: Any = None,
    limit: int | None = None,
    workdir: Path | None = None,
) -> ValidatedDataset:
    """Turn any supported data source into a validated, re-iterable dataset.

    Args:
        source: A path (.npz file, folder of samples or images) or a Python
            source (see the module docstring).
        specs: The model's inputs (:func:`input_specs`).
        image_options: :class:`onnxcomp.data_images.ImageOptions` for image folders.
        limit: Use at most this many samples.
        workdir: Scratch folder for spooling one-shot Python iterators. Without
            one, the dataset spools into a temporary folder of its own,
            removed when the dataset is garbage-collected.

    Raises:
        DataError: The source does not exist, is of an unknown kind, or its first
            sample does not fit the model.
    """
    if limit is not None and limit <= 0:
        raise DataError(f"sample limit must be positive, got {limit}")
    dataset = _raw_dataset(source, specs, image_options, workdir)
    validated = ValidatedDataset(dataset, specs, limit)
    validated.first()  # fail fast on an empty source or a bad first sample
    return validated


def _raw_dataset(source: Any, specs: Sequence[InputSpec], image_options: Any, workdir: Path | None) -> Dataset:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _path_dataset(Path(source), specs, image_options)
    if isinstance(source, Mapping):
        return ListDataset([source], "one feed dict")
    if isinstance(source, (list, tuple)):
        return ListDataset(list(source), f"list of {len(source)} samples")
    if hasattr(source, "get_next") and callable(source.get_next):
        return SpooledDataset(_reader_iterator(source), workdir, "CalibrationDataReader")
    if isinstance(source, Iterator):
        return SpooledDataset(source, workdir, "iterator of samples")
    if isinstance(source, Iterable):
        return ReiterableDataset(source, f"{type(source).__name__} of samples")
    raise DataError(
        f"unsupported data source {type(source).__name__}; give an .npz file, a folder, "
        "a list or iterable of feed dicts, or a CalibrationDataReader"
    )


def _reader_iterator(reader: Any) -> Iterator[Feed]:
    while True:
        sample = reader.get_next()
        if sample is None:
            return
        yield sample


def _path_dataset(path: Path, specs: Sequence[InputSpec], image_options: Any) -> Dataset:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if not path.is_file() and not path.is_dir():
        raise DataError(f"{path}: not a regular file or a folder (a FIFO or device is never read)")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return NpzDataset(path, specs)
        if path.suffix.lower() == ".npy":
            raise DataError(f"{path}: a single .npy is ambiguous; put samples in a folder or an .npz keyed by input name")
        raise DataError(f"{path}: unsupported data file; expected .npz, or a folder of .npy/.npz samples or images")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    arrays = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays and images:
        raise DataError(f"{path}: mixes array files and images; keep one kind per folder")
    if arrays:
        return FolderDataset(path, arrays, specs)
    if images:
        from .data_images import ImageFolderDataset, ImageOptions

        return ImageFolderDataset(path, images, specs, image_options or ImageOptions())
    raise DataError(f"{path}: folder contains no .npy/.npz samples or images")
