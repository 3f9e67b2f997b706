"""Pipelines built from ``onnxcomp optimize`` flags.

``--prune RATIO`` and ``--quantize MODE`` each expand to a list of pipeline
items (names resolved by :mod:`onnxcomp.registry`), placed after the cleanup
preset in stage order: cleanup, pruning, quantization.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import UsageError

QUANTIZE_MODES: dict[str, Callable[[], list[Any]]] = {}
"""``--quantize MODE`` -> the pipeline items it expands to (filled in by the quantization work)."""

QUANTIZE_MODES["int8-dynamic"] = lambda: ["quantize-dynamic"]
QUANTIZE_MODES["int8-weights"] = lambda: [{"quantize-weights": {"bits": 8}}]
QUANTIZE_MODES["int4-weights"] = lambda: [{"quantize-weights": {"bits": 4, "symmetric": False}}]
QUANTIZE_MODES["fp16"] = lambda: ["convert-fp16"]
QUANTIZE_MODES["codebook-256"] = lambda: [{"quantize-codebook": {"levels": 256}}]
QUANTIZE_MODES["codebook-16"] = lambda: [{"quantize-codebook": {"levels": 16}}]
QUANTIZE_MODES["int8"] = lambda: ["quantize-static"]
QUANTIZE_MODES["int8-accurate"] = lambda: [
    "equalize-cross-layer",
    {"quantize-static": {"rounding": "reconstruct", "bias_correction": True}},
]
QUANTIZE_MODES["int8-mixed"] = lambda: [
    "equalize-cross-layer",
    {"quantize-static": {"rounding": "reconstruct", "bias_correction": True, "max_drop": 0.01, "metric": "auto"}},
]


TRAINABLE_MODES = ("int8", "int8-accurate", "int8-mixed")
"""``--quantize`` modes ``--finetune`` can train through (Q/DQ pairs as fake quantizers)."""


def pipeline_from_flags(
    *, prune: float | None = None, quantize: str | None = None, finetune: dict[str, Any] | None = None
) -> list[Any]:
    """The pipeline spec for the given flags (cleanup always comes first).

    ``finetune`` (options of the ``finetune`` pass, ``{}`` for its defaults)
    adds distillation fine-tuning after the last compression pass: after
    pruning it recovers the pruned model, after static int8 it is
    quantization-aware training of the Q/DQ model.
    """
    spec: list[Any] = ["cleanup"]
    if prune is not None:
        spec.extend(prune_items(prune))
    if quantize is not None:
        spec.extend(quantize_items(quantize))
    if finetune is not None:
        if prune is None and quantize is None:
            raise UsageError("--finetune recovers what --prune or --quantize changed: give one of them")
        if quantize is not None and quantize not in TRAINABLE_MODES:
            raise UsageError(
                f"--finetune trains pruned models and static int8 (QAT: {', '.join(TRAINABLE_MODES)}), not --quantize {quantize}"
            )
        spec.append({"finetune": dict(finetune)})
    return spec


def prune_items(ratio: float) -> list[Any]:
    """Pipeline items for ``--prune RATIO``: ``prune-channels`` removing that
    fraction of the prunable channels (whole heads for attention).

    With ``--calib`` data channels are ranked by their measured contribution,
    per-group ratios come from a sensitivity sweep and the consuming layers are
    refitted by least squares; without data the ranking is by weight magnitude
    (L2), every group loses the same ratio and nothing is refitted.
    """
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--prune expects a ratio in [0, 1), got {ratio:g}")
    return [{"prune-channels": {"ratio": ratio}}]


def describe_quantize_modes() -> dict[str, str]:
    """``--quantize`` mode -> the passes it runs, as one readable line each."""

    def item(spec: Any) -> str:
        if isinstance(spec, str):
            return spec
        ((name, options),) = spec.items()
        return f"{name}(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"

    return {mode: ", ".join(item(spec) for spec in build()) for mode, build in sorted(QUANTIZE_MODES.items())}


def quantize_items(mode: str) -> list[Any]:
    """Pipeline items for ``--quantize MODE``."""
    if mode not in QUANTIZE_MODES:
        valid = ", ".join(sorted(QUANTIZE_MODES)) or "none in this build"
        raise UsageError(f"unknown --quantize mode '{mode}'; valid modes: {valid}")
    return QUANTIZE_MODES[mode]()
