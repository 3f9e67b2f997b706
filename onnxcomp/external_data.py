"""Weights that stay on disk: "pinned" external data.

A model saved with external data (necessarily so above 2 GiB) is loaded
without reading its weights: after :func:`onnxcomp.model_io.check_external_data`
has validated every reference, each external tensor's ``location`` is rewritten
to the absolute path of the validated file. Such a tensor is *pinned*: its bytes
are read only when a pass asks for its values (``numpy_helper.to_array`` reads
absolute locations), and when the model is saved they are streamed from the
source file into the new data file in chunks. A pipeline that touches a few
weights of a large model therefore holds only those in memory.

The ONNX checker and onnxruntime refuse absolute locations, so a pinned model
is checked with its weights stubbed (see :func:`onnxcomp.model_io.check_model`)
and handed to onnxruntime as a saved copy.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx

CHUNK = 64 << 20  # bytes copied at a time when streaming weights between files


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL


def is_pinned(tensor: onnx.TensorProto) -> bool:
    """External data at an absolute, already validated location."""
    return is_external(tensor) and os.path.isabs(external_info(tensor).get("location", ""))


def pin(tensors: Iterator[onnx.TensorProto], base_dir: Path) -> int:
    """Rewrite the (validated, relative) locations of external ``tensors`` to absolute paths.

    Returns:
        How many tensors were pinned.
    """
    base = Path(os.path.realpath(base_dir))
    count = 0
    for tensor in tensors:
        if not is_external(tensor) or is_pinned(tensor):
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = os.path.realpath(base / entry.value)
        count += 1
    return count


def _span(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    info = external_info(tensor)
    length = int(info["length"]) if "length" in info else None
    return info["location"], int(info.get("offset", 0)), length


def read_pinned(tensor: onnx.TensorProto) -> bytes:
    """The bytes of a pinned tensor."""
    location, offset, length = _span(tensor)
    with open(location, "rb") as f:
        f.seek(offset)
        return f.read() if length is None else f.read(length)


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values, reading pinned data from disk (``numpy_helper.to_array``
    itself refuses absolute locations)."""
    if not is_pinned(tensor):
        return onnx.numpy_helper.to_array(tensor)
    loaded = onnx.TensorProto()
    loaded.CopyFrom(tensor)
    loaded.raw_data = read_pinned(tensor)
    del loaded.external_data[:]
    loaded.data_location = onnx.TensorProto.DEFAULT
    return onnx.numpy_helper.to_array(loaded)


def copy_pinned(tensor: onnx.TensorProto, out: BinaryIO) -> int:
    """Stream a pinned tensor's bytes into ``out``; returns how many were copied."""
    location, offset, length = _span(tensor)
    copied = 0
    with open(location, "rb") as f:
        f.seek(offset)
        while length is None or copied < length:
            want = CHUNK if length is None else min(CHUNK, length - copied)
            block = f.read(want)
            if not block:
                break
            out.write(block)
            copied += len(block)
    return copied


@contextlib.contextmanager
def embedded(tensors: list[onnx.TensorProto]) -> Iterator[None]:
    """Temporarily load pinned ``tensors`` into ``raw_data`` (for a single-file save)."""
    saved = []
    for tensor in tensors:
        if is_pinned(tensor):
            entries = [(e.key, e.value) for e in tensor.external_data]
            tensor.raw_data = read_pinned(tensor)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            saved.append((tensor, entries))
    try:
        yield
    finally:
        for tensor, entries in saved:
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in entries:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value


def materialize(tensors: Iterator[onnx.TensorProto]) -> None:
    """Load pinned tensors into memory for good (small models, self-contained protos)."""
    for tensor in tensors:
        if is_pinned(tensor):
            tensor.raw_data = read_pinned(tensor)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
