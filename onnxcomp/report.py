"""The report of an optimize run: JSON for pipelines, a table for people.

Everything but timings is deterministic for the same input, options and seed,
so two reports can be diffed (``--report`` output minus the ``timing`` keys).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .analysis import ModelStats
from .latency import LatencyStats
from .pass_manager import StepRecord
from .quality import QualityResult
from .verify import OutputComparison


@dataclasses.dataclass
class VerificationSummary:
    data: str
    random_data: bool
    samples: int
    outputs: list[OutputComparison]
    loads: dict[str, str]
    quality: QualityResult | None = None


@dataclasses.dataclass
class OptimizeReport:
    onnxcomp_version: str
    input: str | None
    output: str | None
    pipeline: list[str]
    steps: list[StepRecord]
    before: ModelStats
    after: ModelStats
    file_bytes_before: int | None
    file_bytes_after: int | None
    latency_before: LatencyStats | None = None
    latency_after: LatencyStats | None = None
    latency_interleaved: bool = True
    verification: VerificationSummary | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def latency_ratio(self) -> float | None:
        if self.latency_after and self.latency_after.ratio is not None:
            return self.latency_after.ratio  # paired per round (see LatencyStats)
        if self.latency_before and self.latency_after and self.latency_before.median_ms > 0:
            return self.latency_after.median_ms / self.latency_before.median_ms
        return None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["latency_ratio"] = self.latency_ratio
        if self.verification is not None and self.verification.quality is not None:
            data["verification"]["quality"] = self.verification.quality.to_dict()
        return _jsonable(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the JSON report atomically."""
        from .model_io import _temporary_sibling, _write_bytes

        path = Path(path)
        with _temporary_sibling(path) as tmp:
            _write_bytes(tmp, (self.to_json() + "\n").encode())
            os.replace(tmp, path)

    def render(self) -> str:
        """The before/after table printed by ``onnxcomp optimize``."""
        lines = []
        rows = [
            ("file size", _size(self.file_bytes_before), _size(self.file_bytes_after), _ratio(self.file_bytes_before, self.file_bytes_after)),
            ("weights", _size(self.before.weight_bytes), _size(self.after.weight_bytes), _ratio(self.before.weight_bytes, self.after.weight_bytes)),
            ("parameters", f"{self.before.params:,}", f"{self.after.params:,}", _ratio(self.before.params, self.after.params)),
            ("MACs", _count(self.before.macs), _count(self.after.macs), _ratio(self.before.macs, self.after.macs)),
            ("nodes", f"{self.before.nodes:,}", f"{self.after.nodes:,}", _ratio(self.before.nodes, self.after.nodes)),
        ]
        if self.latency_before and self.latency_after:
            rows.append(
                (
                    "latency (median)",
                    f"{self.latency_before.median_ms:.2f} ms",
                    f"{self.latency_after.median_ms:.2f} ms",
                    f"{self.latency_ratio:.3f}x" if self.latency_ratio is not None else "-",
                )
            )
        lines.append(_table(("", "before", "after", "after/before"), rows))
        if self.latency_before:
            how = (
                "interleaved runs per model (ratio: median of the per-round ratios)"
                if self.latency_interleaved
                else "runs per model, one model after the other"
            )
            lines.append(f"latency: batch 1, {self.latency_before.runs} {how}, onnxruntime all optimizations")
            after = self.latency_after
            if after is not None and after.ratio_p10 is not None:
                verdict = "within noise: not told apart on this machine" if after.within_noise else (
                    "faster" if after.ratio_p90 < 1.0 else "SLOWER than the original")
                lines.append(f"latency ratio per round: 10-90 % {after.ratio_p10:.3f}x-{after.ratio_p90:.3f}x ({verdict})")
        if self.verification is not None:
            v = self.verification
            lines.append("")
            source = "RANDOM inputs (give --calib for real data)" if v.random_data else v.data
            lines.append(f"verification on {v.samples} sample(s) from {source}:")
            out_rows = []
            for c in v.outputs:
                cos = "-" if c.cosine_mean is None else f"{c.cosine_mean:.6f} / {c.cosine_min:.6f}"
                top1 = "-" if c.top1_agreement is None else f"{c.top1_agreement:.1%}"
                if c.exact_match is not None:
                    cos = f"exact {c.exact_match:.1%}"
                out_rows.append((c.name, f"{c.max_abs:.3g}", f"{c.mean_abs:.3g}", cos, top1))
            lines.append(_table(("output", "max abs err", "mean abs err", "cosine mean / min", "top-1 agree"), out_rows))
            if v.quality is not None:
                lines.extend(_quality_lines(v.quality))
            bad = {k: v for k, v in v.loads.items() if v != "ok"}
            lines.append(
                "loads in onnxruntime at every optimization level"
                if not bad
                else "DOES NOT LOAD at: " + ", ".join(f"{k} ({e})" for k, e in bad.items())
            )
        steps = [s for s in self.steps if s.modified]
        if steps:
            lines.append("")
            lines.append("passes that changed the model:")
            for s in steps:
                detail = ", ".join(f"{k}={v}" for k, v in s.summary.items() if v not in (0, None, {}, []))
                it = f" [iteration {s.iteration}]" if s.iteration else ""
                lines.append(f"  {s.description}{it}: {detail}" if detail else f"  {s.description}{it}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


def _quality_lines(q: QualityResult) -> list[str]:
    """The metric, its value against the budget, and the worst feature of every output."""
    r = q.result
    chosen = "asked" if q.why.startswith("asked") else f"detected: {q.why}"
    if r.value is None:
        head = f"{r.headline}: nothing to measure on this data"
    else:
        budget = "no budget (random inputs)" if q.max_drop is None else (
            f"budget max drop {q.max_drop:g}: " + ("ok" if q.within_budget else "EXCEEDED")
        )
        head = f"{r.headline} {r.value:.4f} (drop {r.drop:.4f}; {budget})"
    lines = [f"quality ({q.metric}, {chosen}): {head}"]
    details = ", ".join(f"{k.replace('_', ' ')} {_number(v)}" for k, v in r.details.items() if v is not None)
    if details:
        lines.append(f"  {details}")
    for f in q.features:
        where = "" if f.axis is None else f" (feature axis {f.axis}, worst index {f.worst_index} of {f.features})"
        lines.append(f"  worst-feature error of {f.output}: {f.worst:.4g}{where}")
    return lines


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
    )
    return "\n".join([fmt(header), *(fmt(r) for r in rows)])


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def _ratio(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return "-"
    return f"{after / before:.3f}x"
