"""Running passes: ordering rules, fixed-point iteration, invariant checks.

The manager imports the model into a mutable graph once, runs each pass on it,
and exports once at the end. After every pass that changed the graph it can run
invariant checks (the ONNX checker, strict shape inference, an onnxruntime load);
a failure names the pass and the passes that ran before it, with the original
error chained, so a broken rewrite is found where it happened rather than at the
end of a long pipeline.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from .context import PassContext
from .errors import OnnxcompError, PassError, UsageError
from .ir import import_graph
from .memory import release_free_memory
from .model_io import check_model
from .pass_base import Pass, Stage
from .runtime import OptLevel, create_session
from .shapes import clear_intermediate_shapes, stub_large_tensors

logger = logging.getLogger(__name__)


class Check(enum.Enum):
    """Invariants the manager can verify after a pass."""

    CHECKER = "checker"
    SHAPES = "shape-inference"
    ORT = "ort-load"


@dataclasses.dataclass(frozen=True)
class FixedPoint:
    """Run ``passes`` in order, repeatedly, until none of them modifies the graph.

    Used for cleanup passes that enable each other (folding a constant exposes
    a no-op, removing it exposes a foldable batch norm). ``max_iterations``
    bounds the loop; reaching it is logged, not an error.
    """

    passes: tuple[Pass, ...]
    max_iterations: int = 5

    def __post_init__(self) -> None:
        if self.max_iterations < 1:
            raise UsageError("fixed-point iteration needs max_iterations >= 1")
        stages = {p.stage for p in self.passes} - {Stage.ANY}
        if len(stages) > 1:
            raise UsageError(
                "a fixed-point group may only mix cleanup passes with passes of one stage, got "
                + ", ".join(sorted(s.name.lower() for s in stages))
            )

    def describe(self) -> str:
        return "fixed-point(" + ", ".join(p.describe() for p in self.passes) + ")"


Element = Pass | FixedPoint


@dataclasses.dataclass
class StepRecord:
    """One pass execution, for reports."""

    name: str
    description: str
    modified: bool
    seconds: float
    summary: dict[str, Any]
    iteration: int | None = None
    compresses: bool = False
    """The pass compresses (prune, sparsify, quantize, convert stages), as opposed to cleanup."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class PipelineResult:
    model: onnx.ModelProto
    steps: list[StepRecord]

    @property
    def modified(self) -> bool:
        return any(step.modified for step in self.steps)


def validate_order(elements: Sequence[Element]) -> None:
    """Raise UsageError when a pass's stage comes before an earlier pass's stage.

    Cleanup passes (``Stage.ANY``) may run anywhere. Otherwise stages must not
    decrease: e.g. batch-norm folding runs before pruning, pruning before Q/DQ
    insertion, Q/DQ insertion before fp16 conversion.
    """
    last_stage, last_name = Stage.ANY, None
    for element in elements:
        members = element.passes if isinstance(element, FixedPoint) else (element,)
        for p in members:
            if p.stage == Stage.ANY:
                continue
            if p.stage < last_stage:
                raise UsageError(
                    f"pass '{p.name}' ({p.stage.name.lower()} stage) cannot run after "
                    f"'{last_name}' ({last_stage.name.lower()} stage); the order is "
                    + " -> ".join(s.name.lower() for s in Stage if s != Stage.ANY)
                )
            last_stage, last_name = p.stage, p.name


class PassManager:
    """Runs a validated sequence of passes (and fixed-point groups of passes).

    Args:
        elements: Passes and :class:`FixedPoint` groups, in order.
        checks: Invariants verified after every pass that modified the graph.
    """

    def __init__(self, elements: Iterable[Element], *, checks: Sequence[Check | str] = (Check.CHECKER,)):
        self.elements: list[Element] = list(elements)
        validate_order(self.elements)
        try:
            self.checks = tuple(Check(c) for c in checks)
        except ValueError as err:
            valid = ", ".join(c.value for c in Check)
            raise UsageError(f"unknown check: {err}; valid checks: {valid}") from err

    @property
    def passes(self) -> list[Pass]:
        flat: list[Pass] = []
        for element in self.elements:
            flat.extend(element.passes if isinstance(element, FixedPoint) else (element,))
        return flat

    def describe(self) -> list[str]:
        return [e.describe() for e in self.elements]

    def run(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PipelineResult:
        """Run the pipeline on ``model`` (which is not modified) and export the result."""
        ctx = ctx if ctx is not None else PassContext(template=model)
        for p in self.passes:
            if p.needs_data and ctx.data is None:
                ctx.require_data(p.name)
        graph = import_graph(model)
        steps: list[StepRecord] = []
        for element in self.elements:
            if isinstance(element, FixedPoint):
                graph = self._run_fixed_point(element, graph, ctx, steps)
            else:
                graph, _ = self._run_one(element, graph, ctx, steps, None)
        out = ctx.export(graph)
        return PipelineResult(model=out, steps=steps)

    def _run_fixed_point(
        self, group: FixedPoint, graph: gs.Graph, ctx: PassContext, steps: list[StepRecord]
    ) -> gs.Graph:
        for iteration in range(1, group.max_iterations + 1):
            changed = False
            for p in group.passes:
                graph, modified = self._run_one(p, graph, ctx, steps, iteration)
                changed |= modified
            if not changed:
                return graph
        logger.info("%s stopped after %d iterations", group.describe(), group.max_iterations)
        return graph

    def _run_one(
        self,
        p: Pass,
        graph: gs.Graph,
        ctx: PassContext,
        steps: list[StepRecord],
        iteration: int | None,
    ) -> tuple[gs.Graph, bool]:
        before = [s.name for s in steps]
        logger.debug("running %s", p.describe())
        start = time.perf_counter()
        try:
            result = p.call(graph, ctx)
        except (OnnxcompError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:
            raise PassError(
                f"pass '{p.describe()}' failed{_after(before)}: {_first_line(err)}"
            ) from err
        seconds = time.perf_counter() - start
        if result.modified and p.changes_shapes:
            clear_intermediate_shapes(result.graph)
        steps.append(
            StepRecord(
                p.name, p.describe(), bool(result.modified), seconds, dict(result.summary), iteration,
                compresses=p.stage >= Stage.PRUNE,
            )  # fmt: skip
        )
        logger.info(
            "%s: %s in %.2fs %s",
            p.describe(),
            "modified" if result.modified else "no change",
            seconds,
            result.summary or "",
        )
        if result.modified and self.checks:
            self._check(result.graph, ctx, p, before)
        return result.graph, bool(result.modified)

    def _check(self, graph: gs.Graph, ctx: PassContext, p: Pass, before: list[str]) -> None:
        model = ctx.export(graph)
        try:
            for check in self.checks:
                try:
                    run_check(check, model)
                except Exception as err:
                    raise PassError(
                        f"check '{check.value}' failed after pass '{p.describe()}'"
                        f"{_after(before)}: {_first_line(err)}"
                    ) from err
        finally:
            del model
            release_free_memory()


def run_check(check: Check, model: onnx.ModelProto) -> None:
    """Raise if ``model`` violates ``check``."""
    if check is Check.CHECKER:
        check_model(model)
    elif check is Check.SHAPES:
        onnx.shape_inference.infer_shapes(stub_large_tensors(model), check_type=True, strict_mode=True)
    elif check is Check.ORT:
        create_session(model, level=OptLevel.ALL)


def _after(before: list[str]) -> str:
    if not before:
        return " (first pass)"
    shown = before[-8:]
    more = f"{len(before) - len(shown)} more, " if len(before) > len(shown) else ""
    return f" (after {more}{', '.join(shown)})"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text[:400] + "…") if len(text) > 400 else (text or type(err).__name__)
