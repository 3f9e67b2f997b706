"""On-disk cache for benchmark assets, with atomic writes.

Exported models and unpacked archives are expensive to build, so they are
kept in a cache directory between runs. Every entry is first written under a
temporary name in the same directory and moved into place with
:func:`os.replace`, so an interrupted export never leaves a partial file that
a later run would mistake for a complete one.

The cache directory is ``$ONNXCOMP_BENCH_CACHE`` when that variable is set,
otherwise ``~/.cache/onnxcomp-bench``. Delete it (or a single entry) to force
a rebuild.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_VAR = "ONNXCOMP_BENCH_CACHE"
DEFAULT_DIR = Path("~/.cache/onnxcomp-bench")


def cache_dir() -> Path:
    """Returns the cache directory, creating it if needed.

    Returns:
        ``$ONNXCOMP_BENCH_CACHE`` if set and non-empty, else
        ``~/.cache/onnxcomp-bench``, as an absolute path.
    """
    root = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yields a temporary path that replaces ``final`` only on success.

    The temporary path lives in the same directory as ``final`` (so the rename
    is atomic on one file system) and does not exist yet: the caller creates a
    file or a directory there. If the block raises, the temporary entry is
    removed and ``final`` is left untouched.

    Args:
        final: Destination path of the file or directory.

    Yields:
        The temporary path to write to.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to {tmp}")
        if tmp.is_dir() and final.is_dir():
            # Another process finished the same entry first; keep theirs.
            logger.debug("cache entry %s appeared concurrently; keeping it", final)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def cached(name: str, build: Callable[[Path], None]) -> Path:
    """Returns the cache entry ``name``, building it first if it is missing.

    Args:
        name: File or directory name inside :func:`cache_dir`.
        build: Called with a temporary path to create the entry at (a file or
            a directory). It should raise if the result is not valid; the
            entry is published only when it returns normally.

    Returns:
        Path of the complete cache entry.
    """
    final = cache_dir() / name
    if final.exists():
        logger.debug("cache hit: %s", final)
        return final
    logger.info("building cache entry %s", final)
    with atomic_path(final) as tmp:
        build(tmp)
    return final
