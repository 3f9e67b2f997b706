"""Progress reporting that library code can use without owning the terminal.

Library code asks its context for ``progress(total, desc)`` and calls
``update(n)`` on what it gets back. By default that is a no-op; the CLI installs
a tqdm-backed factory that draws bars on stderr (and nothing when stderr is not
a terminal or ``-q`` is given).
"""

from __future__ import annotations

from typing import Protocol


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int | None, desc: str, unit: str = "it") -> ProgressBar: ...


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def null_progress(total: int | None, desc: str, unit: str = "it") -> ProgressBar:
    return _NullBar()


def tqdm_progress(total: int | None, desc: str, unit: str = "it") -> ProgressBar:
    """A tqdm bar on stderr that disappears when stderr is not a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None, dynamic_ncols=True)
