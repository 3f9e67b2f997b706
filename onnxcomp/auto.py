"""``--quantize auto``: try the quantization recipes that fit, keep the best within the budget.

Each candidate (a ``--quantize`` mode, after ``--prune`` when given) runs the
whole ``optimize`` pipeline, is verified on the same held-out data with the
run's quality metric, and is timed against the original (interleaved). The
kept candidate is the fastest (``target="latency"``) or smallest
(``target="size"``) of those within the quality budget; the report lists every
candidate with its numbers and why it was kept or dropped. A candidate that
fails, changes nothing, or breaks the budget is dropped, never written.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from .errors import DataError, InputError, NothingCompressedError, OnnxcompError, OutputError, QualityError, UsageError
from .model_io import StagedModel, check_output_path, uses_external_data
from .pipelines import pipeline_from_flags
from .progress import ProgressFactory, null_progress

logger = logging.getLogger(__name__)

CANDIDATES: tuple[str, ...] = ("int8", "int8-accurate", "int8-mixed", "int8-dynamic", "int8-weights", "int4-weights", "fp16")
"""The ``--quantize`` modes ``auto`` tries, in this order."""

NEEDS_DATA = {"int8", "int8-accurate", "int8-mixed"}


class Target(enum.Enum):
    """What ``auto`` minimises among the candidates within the quality budget."""

    LATENCY = "latency"
    SIZE = "size"


@dataclasses.dataclass
class Candidate:
    """One tried recipe and what came of it."""

    mode: str
    outcome: str  # "kept", "within budget", "over budget", "no effect", "failed", "skipped"
    reason: str = ""
    metric: str | None = None
    value: float | None = None
    drop: float | None = None
    latency_ratio: float | None = None
    size_ratio: float | None = None

    def row(self) -> tuple[str, ...]:
        number = lambda v, fmt: "-" if v is None else format(v, fmt)  # noqa: E731
        return (self.mode, number(self.value, ".4f"), number(self.drop, ".4f"), number(self.latency_ratio, ".3f"),
                number(self.size_ratio, ".3f"), self.outcome + (f": {self.reason}" if self.reason else ""))  # fmt: skip


def optimize_auto(
    model: str | os.PathLike,
    *,
    output: str | os.PathLike | None,
    prune: float | None = None,
    target: Target | str = Target.LATENCY,
    candidates: Sequence[str] = CANDIDATES,
    data: Any = None,
    progress: ProgressFactory = null_progress,
    **options: Any,
):
    """Run every candidate recipe, keep the best within the quality budget, write it.

    Args:
        model: The input model path.
        output: Where to write the kept candidate (None: write nothing).
        prune: Prune this ratio first in every candidate.
        target: ``latency`` or ``size``.
        candidates: ``--quantize`` modes to try.
        data: Calibration data; static int8 candidates need it (skipped without).
        options: Passed to :func:`onnxcomp.optimize` (metric, max_drop,
            verify_data, seed, ...).

    Returns:
        The kept candidate's :class:`~onnxcomp.api.OptimizeResult`; its report's
        ``artifacts["auto"]`` holds the table of candidates.

    Raises:
        QualityError: No candidate is within the budget (nothing written).
    """
    from .api import optimize

    target = Target(target) if isinstance(target, str) else target
    options.pop("strict", None)  # every candidate runs strict: one that changes nothing is dropped
    options.pop("accept_drop", None)  # a candidate over the budget is dropped, never kept
    unknown = [c for c in candidates if c == "auto" or c not in _modes()]
    if unknown:
        raise UsageError(f"auto: unknown candidate mode(s) {', '.join(unknown)}")
    if output is not None:
        check_output_path(Path(output), [Path(model)])
    tried: list[Candidate] = []
    best, best_key = None, None
    bar = progress(len(candidates), "auto: candidates", "recipe")
    try:
        for mode in candidates:
            if mode in NEEDS_DATA and data is None:
                tried.append(Candidate(mode, "skipped", "needs --calib data"))
                bar.update(1)
                continue
            candidate, result = _try(optimize, model, mode, prune, data, options)
            tried.append(candidate)
            if result is not None:
                key = candidate.latency_ratio if target is Target.LATENCY else candidate.size_ratio
                key = float("inf") if key is None else key
                if best_key is None or key < best_key:
                    best, best_key = result, key
            bar.update(1)
    finally:
        bar.close()
    if best is None:
        lines = "; ".join(f"{c.mode} {c.outcome}" + (f" ({c.reason})" if c.reason else "") for c in tried)
        raise QualityError(f"auto: no candidate is within the quality budget: {lines}; nothing was written")
    kept = next(c for c in tried if c.mode == best.report.artifacts["auto_mode"])
    kept.outcome = "kept"
    kept.reason = f"{'fastest' if target is Target.LATENCY else 'smallest'} within the budget"
    best.report.artifacts["auto"] = {"target": target.value, "candidates": [dataclasses.asdict(c) for c in tried]}
    best.report.artifacts.pop("auto_mode", None)
    if target is Target.LATENCY and best_key is not None and 1.0 < best_key < float("inf"):
        best.report.warnings.append(
            f"auto: the fastest candidate within the budget ({kept.mode}) runs {best_key:.3f}x the original's latency: "
            "no candidate makes this model faster on this machine"
        )
    if output is not None:
        best.output = _write(best.model, Path(output), Path(model))
        best.report.output = str(output)
    return best


def _modes() -> set[str]:
    from .pipelines import QUANTIZE_MODES

    return set(QUANTIZE_MODES)


def _try(optimize, model, mode: str, prune: float | None, data: Any, options: dict[str, Any]):
    """(candidate row, result or None): one recipe through the whole optimize pipeline, nothing written."""
    try:
        result = optimize(model, pipeline_from_flags(prune=prune, quantize=mode), output=None, data=data, strict=True, **options)
    except QualityError as err:
        report = getattr(err, "report", None)
        return _row(mode, "over budget", report, ""), None
    except NothingCompressedError:
        return Candidate(mode, "no effect", "no layer it quantizes"), None
    except (InputError, DataError, UsageError, OutputError):
        raise  # bad input, data or options fail every candidate alike: say so once, as optimize does
    except OnnxcompError as err:
        return Candidate(mode, "failed", " ".join(str(err).split())[:160]), None
    result.report.artifacts["auto_mode"] = mode
    return _row(mode, "within budget", result.report, ""), result


def _row(mode: str, outcome: str, report, reason: str) -> Candidate:
    candidate = Candidate(mode, outcome, reason)
    if report is None:
        return candidate
    q = report.verification.quality if report.verification is not None else None
    if q is not None:
        candidate.metric, candidate.value, candidate.drop = q.metric, q.result.value, q.result.drop
    candidate.latency_ratio = report.latency_ratio
    if report.file_bytes_before and report.file_bytes_after:
        candidate.size_ratio = report.file_bytes_after / report.file_bytes_before
    return candidate


def _write(model: onnx.ModelProto, output: Path, source: Path) -> Path:
    """Write the kept model as optimize would: weights in a .data file when the input keeps them so."""
    external = True if uses_external_data(onnx.load(str(source), load_external_data=False)) else None
    with StagedModel(model, output, external_data=external, protect=[source]) as staged:
        return staged.commit()


def render_candidates(artifact: dict[str, Any]) -> str:
    """The table of candidates, for the CLI."""
    from .report import _table

    rows = [Candidate(**c).row() for c in artifact["candidates"]]
    header = ("candidate", "metric", "drop", "latency", "size", "outcome")
    return f"auto (target {artifact['target']}):\n" + _table(header, rows)
