"""Pipelines built from ``onnxcomp optimize`` flags.

``--prune RATIO`` and ``--quantize MODE`` each expand to a list of pipeline
items (names resolved by :mod:`onnxcomp.registry`), placed after the cleanup
preset in stage order: cleanup, pruning, quantization.
"""

from __future__ import annotations

from typing import Any

from .errors import UsageError


def pipeline_from_flags(*, prune: float | None = None, quantize: str | None = None) -> list[Any]:
    """The pipeline spec for the given flags (cleanup always comes first)."""
    spec: list[Any] = ["cleanup"]
    if prune is not None:
        spec.extend(prune_items(prune))
    if quantize is not None:
        spec.extend(quantize_items(quantize))
    return spec


def prune_items(ratio: float) -> list[Any]:
    """Pipeline items for ``--prune RATIO``."""
    raise UsageError("--prune is not available in this build")


def quantize_items(mode: str) -> list[Any]:
    """Pipeline items for ``--quantize MODE``."""
    raise UsageError(f"--quantize {mode} is not available in this build")
