"""Giving freed memory back to the operating system.

Exporting a large model builds protobuf copies of its weights that are freed
a moment later, and a pass's graph is freed only by the cycle collector;
glibc's allocator keeps such freed blocks in the process
(resident memory ratchets up with each copy) unless asked to trim. Calling
:func:`release_free_memory` after those phases keeps the peak of a long run
close to what is actually alive. It is a no-op where glibc is not used.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Collect unreachable objects, then return freed heap memory to the OS (glibc ``malloc_trim``).

    The collection matters: an onnx-graphsurgeon graph is full of reference
    cycles (nodes and tensors point at each other), so a dropped graph and the
    weights it holds are only freed by the cycle collector.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
