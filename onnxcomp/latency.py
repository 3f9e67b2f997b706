"""Latency measurement that is fair on a shared, noisy machine.

Models are timed *interleaved* in one process — run A, run B, run A, run B … —
on the same batch-1 feed, so background load hits both alike; medians are
reported and the ratio between them is the number to read. Tests never assert
wall-clock times; benchmarks print these ratios.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping
from typing import Any

import onnx

from .data import Feed
from .errors import DataError
from .runtime import OptLevel, create_session, run


@dataclasses.dataclass
class LatencyStats:
    """One model's timing.

    ``ratio`` (with a reference model) is the median over rounds of this
    model's time over the reference's *in the same round*: a load burst slows
    both runs of a round alike and cancels, so it is steadier than the ratio
    of the medians (re-timing a pruned EfficientNet-Lite1 six times for 3 s
    under load: 0.714-0.735 against 0.705-0.753). Without interleaving it is
    the ratio of the medians.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    ratio: float | None = None
    ratio_p10: float | None = None
    ratio_p90: float | None = None
    """The 10th and 90th percentiles of the per-round ratios (interleaved runs only)."""

    @property
    def within_noise(self) -> bool:
        """The per-round ratios straddle 1: the two models are not told apart on this machine."""
        return self.ratio_p10 is not None and self.ratio_p90 is not None and self.ratio_p10 <= 1.0 <= self.ratio_p90

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def measure_latency(
    models: Mapping[str, onnx.ModelProto | bytes | str],
    feed: Feed,
    *,
    min_runs: int = 10,
    max_runs: int = 200,
    budget_s: float = 3.0,
    warmup: int = 3,
    intra_op_threads: int | None = None,
    level: OptLevel = OptLevel.ALL,
    interleaved: bool = True,
    reference: str | None = None,
) -> dict[str, LatencyStats]:
    """Median latency per model, measured interleaved on ``feed``.

    Runs at least ``min_runs`` rounds and stops after ``budget_s`` seconds or
    ``max_runs`` rounds. With ``interleaved=False`` each model is loaded,
    timed and released in turn (only one in memory; less fair under load).

    Sessions run without thread spinning: by default onnxruntime's idle
    intra-op threads busy-wait for the next run, so the threads of the
    session that just ran take cores from the one running next. On a 2-vCPU
    machine, four interleaved EfficientNet-Lite1 sessions (the unpruned model
    and three copies pruned alike) read 13.7-22 ms for the unpruned model and
    0.53-0.94 of it for the same pruned model across repeats; without
    spinning 10.2-10.4 ms and 0.83-0.85, whether two or four are interleaved.
    Absolute times are therefore those of a session without spinning.
    """
    if reference is not None and reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models")
    loop = dict(min_runs=min_runs, max_runs=max_runs, budget_s=budget_s, warmup=warmup)

    def session(model):
        return create_session(model, level=level, intra_op_threads=intra_op_threads, spinning=False)

    if interleaved:
        times = _timed_rounds({name: session(model) for name, model in models.items()}, feed, **loop)
    else:  # one session alive at a time
        times = {name: _timed_rounds({name: session(model)}, feed, **loop)[name] for name, model in models.items()}
    stats = {name: _stats(samples) for name, samples in times.items()}
    if reference is not None:
        base = times[reference]
        for name, samples in times.items():
            if interleaved:
                ratios = _stats([t / b for t, b in zip(samples, base)])
                stats[name].ratio, stats[name].ratio_p10, stats[name].ratio_p90 = ratios.median_ms, ratios.p10_ms, ratios.p90_ms
            else:
                stats[name].ratio = stats[name].median_ms / stats[reference].median_ms
    return stats


def _timed_rounds(
    sessions: Mapping[str, Any], feed: Feed, *, min_runs: int, max_runs: int, budget_s: float, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per run of each session, one run of each per round (see :func:`measure_latency`)."""
    for name, session in sessions.items():
        for _ in range(warmup):
            run(session, None, feed, error=DataError, what=f"model '{name}' on the latency sample")
    times: dict[str, list[float]] = {name: [] for name in sessions}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_runs and (rounds < min_runs or time.perf_counter() - start < budget_s):
        for name, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1000.0)
        rounds += 1
    return times


def _stats(samples: list[float]) -> LatencyStats:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return LatencyStats(statistics.median(ordered), pick(0.1), pick(0.9), len(ordered))
