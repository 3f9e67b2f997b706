"""The Python API: ``onnxcomp.optimize`` and ``onnxcomp.inspect``.

``optimize`` is what ``onnxcomp optimize`` runs: load and validate the model,
open and validate the data, build the pipeline through the registry, run it,
verify the result against the original in onnxruntime, measure both, and only
then write the output (atomically). A run that fails anywhere writes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from . import __version__, holdout
from .analysis import ModelStats, model_stats
from .context import PassContext
from .data import Dataset, InputSpec, RandomDataset, ValidatedDataset, input_specs, open_data, resolve_shapes
from .errors import DataError, NothingCompressedError, OnnxcompError, QualityError, UsageError, VerificationError
from .latency import measure_latency
from .memory import release_free_memory
from .model_io import (
    StagedModel,
    check_model,
    check_output_path,
    file_size_with_data,
    load_model,
    model_byte_size,
    uses_external_data,
)
from .pass_manager import Check, PassManager
from .probe import gather_bounds, probe_shapes
from .progress import ProgressFactory, null_progress
from .quality import MetricChoice, Quality
from .recipe import load_recipe
from .registry import build_pipeline
from .report import OptimizeReport, VerificationSummary
from .verify import check_loads, check_tolerances, verify_models

DEFAULT_PIPELINE: tuple[str, ...] = ("cleanup",)
RANDOM_SAMPLES = 8


@dataclasses.dataclass
class OptimizeResult:
    model: onnx.ModelProto
    report: OptimizeReport
    output: Path | None


def optimize(
    model: str | os.PathLike | onnx.ModelProto,
    passes: Sequence[Any] | str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    data: Any = None,
    data_limit: int | None = None,
    verify_data: Any = None,
    verify_samples: int | None = 64,
    verify: bool = True,
    latency: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    image_options: Any = None,
    checks: Sequence[Check | str] | None = None,
    max_abs_error: float | None = None,
    min_cosine: float | None = None,
    metric: Any = None,
    max_drop: float | None = None,
    accept_drop: bool = False,
    verify_in_sample: bool = False,
    strict: bool = False,
    seed: int = 0,
    overwrite_input: bool = False,
    external_data: bool | None = None,
    progress: ProgressFactory = null_progress,
) -> OptimizeResult:
    """Compress ``model`` with a pipeline of passes and verify the result.

    Args:
        model: A path to an ``.onnx`` file, or a loaded ``ModelProto``.
        passes: The pipeline: a list of pass names, presets, one-key mappings
            ``{name: {options}}`` or Pass instances; one such name; or the
            path of a YAML recipe (a ``Path``, or a string ending in .yaml/.yml).
            Default: the ``cleanup`` preset.
        output: Where to write the result (atomically). None writes nothing.
        data: Calibration data (see :mod:`onnxcomp.data` for the sources).
        data_limit: Use at most this many calibration samples.
        verify_data: Data to verify on. Default: with ``data``, a held-out
            part of it (one sample in five, never used by the passes; see
            :mod:`onnxcomp.holdout`); without, random inputs (with a warning).
        verify_samples: Verify on at most this many samples (None: all).
        verify: Compare the result with the original in onnxruntime.
        latency: Measure batch-1 latency of both models, interleaved.
        input_shapes: Shapes for inputs with dynamic dims when no data is given.
        image_options: Preprocessing for image-folder data.
        checks: Invariants checked after every pass (default: the ONNX checker).
        max_abs_error: Fail (writing nothing) if any output differs more.
        min_cosine: Fail (writing nothing) if any output's worst-sample cosine
            similarity is lower.
        metric: What "still good" means (:mod:`onnxcomp.quality`): ``auto``
            (detected from the outputs), a task name (classification,
            detection, ctc, embedding, segmentation, features),
            ``"module:function"`` or a callable ``score(reference, candidate)``.
        max_drop: The quality budget: the largest drop of the metric allowed
            on real data (default per metric, see ``DEFAULT_MAX_DROP``).
            Exceeded: :class:`~onnxcomp.errors.QualityError`, nothing written.
        accept_drop: Write the model even when the budget is exceeded (the
            report says so).
        verify_in_sample: Verify on the calibration data itself instead of a
            held-out part (flattering: the passes fitted to it).
        strict: Fail (:class:`~onnxcomp.errors.NothingCompressedError`) when a
            requested compression changed nothing.
        seed: Seed for random choices and random verification data.
        overwrite_input: Allow ``output`` to be the input file.
        external_data: Force (True) or forbid (False) an external-data file;
            None decides by size.
        progress: Progress-bar factory (the CLI passes a tqdm one).

    Raises:
        OnnxcompError: Bad input, data, options, a failing pass, or a failed
            verification. Nothing has been written then.
    """
    started = time.perf_counter()
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise UsageError(f"max_drop must be a finite number >= 0, got {max_drop}")
    for name, threshold in (("max-abs-error", max_abs_error), ("min-cosine", min_cosine)):
        if threshold is not None and not math.isfinite(threshold):
            raise UsageError(f"--{name} must be a finite number, got {threshold}")
    from .outputs import check_run_paths

    check_run_paths(model, output=output, data=data, verify_data=verify_data, recipe=passes, overwrite_input=overwrite_input)
    quality_spec = MetricChoice.parse(metric)
    source_path = None if isinstance(model, onnx.ModelProto) else Path(model)
    original = model if isinstance(model, onnx.ModelProto) else load_model(model)
    check_model(original, source=str(source_path or "model"))
    specs = input_specs(original)
    manager = _pipeline_manager(passes, checks)
    protect = [source_path] if source_path is not None and not overwrite_input else []
    if output is not None:
        check_output_path(Path(output), protect)

    with PassContext(template=original, seed=seed, progress=progress, metric=quality_spec) as ctx:
        calib = open_data(data, specs, image_options=image_options, limit=data_limit, workdir=ctx.workdir) if data is not None else None
        held_out = None
        if calib is not None and verify_data is None and not verify_in_sample:
            parts = holdout.split(calib, seed=seed, limit=verify_samples)
            if parts is not None:
                ctx.data, held_out = parts
        if ctx.data is None:
            ctx.data = calib
        check_data, random_data = _verification_data(
            specs, original, verify_data, calib, verify_samples, input_shapes, image_options, seed, ctx
        ) if held_out is None else (held_out, False)
        reads_before = calib.passes if calib is not None else 0
        result = manager.run(original, ctx)
        optimized = result.model
        if held_out is not None and calib.passes == reads_before:
            # No pass went through the data: all of it is unseen, verify on all of it.
            check_data, random_data = _verification_data(
                specs, original, None, calib, verify_samples, input_shapes, image_options, seed, ctx
            )
        if verify_data is None and held_out is None and calib is not None and calib.passes:
            why = "asked" if verify_in_sample else f"fewer than {holdout.MIN_SAMPLES} samples, none held out"
            ctx.warn(
                f"verified on the calibration data the passes fitted to (in-sample: {why}); "
                "give --verify-data HELD_OUT for errors on unseen inputs"
            )
        _nothing_compressed(result.steps, ctx, strict)
        release_free_memory()  # the pipeline's intermediate copies of the weights
        check_model(optimized, source="optimized model")

        stage_at = Path(output) if output is not None else ctx.workdir / "optimized.onnx"
        if external_data is None and uses_external_data(original):
            external_data = True  # keep the input's layout: weights in a .data file
        with StagedModel(optimized, stage_at, external_data=external_data, protect=protect) as staged:
            release_free_memory()
            # onnxruntime reads both models from disk: the input file as given,
            # the result as staged (so large weights are never serialized twice).
            reference = source_path if source_path is not None else original
            report = OptimizeReport(
                onnxcomp_version=__version__,
                input=str(source_path) if source_path else None,
                output=str(output) if output is not None else None,
                pipeline=manager.describe(),
                steps=result.steps,
                before=model_stats(original, sample=check_data.first()),
                after=model_stats(optimized, sample=check_data.first()),
                file_bytes_before=file_size_with_data(source_path) if source_path else model_byte_size(original),
                file_bytes_after=file_size_with_data(staged.path),
                warnings=ctx.warnings,  # the passes' and this function's
                artifacts=_plain_artifacts(ctx.artifacts),
            )
            large = max(report.before.weight_bytes, report.after.weight_bytes) > LARGE_MODEL_BYTES
            guessed = ctx.artifacts.pop("verification_shapes_guessed", False)
            try:
                if verify:
                    budget = None if random_data else max_drop
                    quality = functools.partial(_quality_for, quality_spec, budget, random_data)
                    report.verification = _verify(reference, staged.path, check_data, random_data, large, progress, quality)
                if latency:
                    _measure_latency(report, reference, staged.path, check_data.first(), large)
            except DataError as err:
                if not guessed:
                    raise
                report.verification = None
                ctx.warn(f"not verified: the original model does not run on the assumed input sizes ({err}); "
                         "give --input-shape or --calib to verify")  # fmt: skip
            _gate(report, max_abs_error, min_cosine)
            _quality_gate(report, accept_drop, ctx)
            written = staged.commit() if output is not None else None
        report.seconds = time.perf_counter() - started
        return OptimizeResult(model=optimized, report=report, output=written)


LARGE_MODEL_BYTES = 1 << 30
"""Above this many bytes of weights, the two models are run one after the other
(not side by side) so that only one is in memory at a time."""


def _pipeline_manager(passes: Sequence[Any] | str | os.PathLike | None, checks: Sequence[Check | str] | None) -> PassManager:
    """A path (any ``os.PathLike``, or a string ending in .yaml/.yml) is a recipe;
    another string is one pass or preset name; anything else a pipeline spec."""
    recipe_checks = None
    if isinstance(passes, os.PathLike) or isinstance(passes, str) and Path(passes).suffix.lower() in (".yaml", ".yml"):
        recipe = load_recipe(passes)
        elements, recipe_checks = recipe.elements, recipe.checks
    elif isinstance(passes, str):
        elements = build_pipeline([passes])
    else:
        elements = build_pipeline(passes if passes is not None else DEFAULT_PIPELINE)
    return PassManager(elements, checks=checks if checks is not None else (recipe_checks or (Check.CHECKER,)))


def _verify(reference, candidate: Path, data: Dataset, random_data: bool, large: bool, progress, quality) -> VerificationSummary:
    compared = verify_models(reference, candidate, data, progress=progress, sequential=large, quality=quality)
    outputs = compared.outputs
    return VerificationSummary(
        data=data.description,
        random_data=random_data,
        samples=outputs[0].samples if outputs else 0,
        outputs=outputs,
        loads=check_loads(candidate),
        quality=compared.quality,
    )


def _quality_for(choice: MetricChoice, max_drop: float | None, random_data: bool, names, values) -> Quality:
    """The run's quality measure; on random inputs there is no budget (they mean nothing to the task)."""
    quality = Quality.for_outputs(choice, names, values, max_drop=max_drop)
    if random_data:
        quality.max_drop = None
    return quality


FEW_SAMPLES = 10
"""Below this many samples behind a quality headline, the report says how coarse it is."""

NEXT_STEPS: dict[str, str] = {
    "prune-channels": "a lower --prune ratio, calibration data closer to what the model will see, or fine-tuning",
    "quantize-static": "--quantize int8-mixed (keeps the most sensitive layers float) or int8-accurate",
    "quantize-dynamic": "--quantize int8-weights or fp16",
    "quantize-weights": "--quantize int8-weights (instead of int4) or fp16",
    "convert-fp16": "keeping the sensitive ops float32 (convert-fp16 options in a recipe)",
    "sparsify": "a lower sparsity",
    "quantize-codebook": "more codebook levels (codebook-256)",
}
"""Per compression pass, what usually helps when it broke the quality budget."""


def _quality_gate(report: OptimizeReport, accept_drop: bool, ctx: PassContext) -> None:
    v = report.verification
    q = v.quality if v is not None else None
    if q is not None and q.result.value is None and q.max_drop is not None:
        ctx.warn(
            f"the {q.metric} metric had nothing to measure on {v.data} (e.g. no detections, no text read), "
            "so the quality budget was not applied; verify on data where the model finds something"
        )
    if q is not None and q.result.value is not None and q.max_drop is not None:
        basis = q.result.details.get("basis", q.samples)
        if isinstance(basis, int) and basis < FEW_SAMPLES:
            ctx.warn(
                f"the {q.metric} headline rests on {basis} sample(s) of {v.data}: one sample moves it by "
                f"{1 / max(basis, 1):.0%}; give more held-out data (--verify-data) for a budget that means something"
            )
    if q is None or q.within_budget:
        return
    r = q.result
    culprits = [s.name for s in report.steps if s.modified and s.compresses] or [s.name for s in report.steps if s.modified]
    hints = [NEXT_STEPS[name] for name in dict.fromkeys(culprits) if name in NEXT_STEPS]
    message = (
        f"quality budget exceeded: {r.headline} {r.value:.4g} (drop {r.drop:.4g} > max drop {q.max_drop:g}, "
        f"metric {q.metric}) on {q.samples} sample(s) of {v.data}"
        + (f", after {', '.join(dict.fromkeys(culprits))}" if culprits else "")
        + (f"; try {'; or '.join(hints)}" if hints else "")
        + "; --max-drop sets the budget, --accept-drop writes the model anyway"
    )
    if accept_drop:
        ctx.warn(message.replace("quality budget exceeded", "written although the quality budget is exceeded").split("; --max-drop")[0])
        return
    err = QualityError(message + "; nothing was written")
    err.report = report  # type: ignore[attr-defined]
    raise err


def _nothing_compressed(steps, ctx: PassContext, strict: bool) -> None:
    """Say (or with ``strict`` fail) when a requested compression pass changed nothing."""
    asked = list(dict.fromkeys(s.name for s in steps if s.compresses))
    idle = [name for name in asked if not any(s.modified for s in steps if s.name == name)]
    if not idle:
        return
    message = (
        f"{', '.join(idle)} changed nothing: the model is not compressed by {'it' if len(idle) == 1 else 'them'}"
        " (the pass reports why with -v; e.g. no layer it handles, or compute inside If/Loop branches)"
    )
    if strict:
        raise NothingCompressedError(message + "; --strict: nothing was written")
    ctx.warn(message)


def _measure_latency(report: OptimizeReport, reference, candidate: Path, sample, large: bool) -> None:
    timings = measure_latency({"before": reference, "after": candidate}, sample, interleaved=not large, reference="before")
    report.latency_before, report.latency_after = timings["before"], timings["after"]
    report.latency_interleaved = not large


def _verification_data(
    specs: list[InputSpec],
    model: onnx.ModelProto,
    verify_data: Any,
    calib: ValidatedDataset | None,
    limit: int | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    image_options: Any,
    seed: int,
    ctx: PassContext,
) -> tuple[Dataset, bool]:
    if verify_data is not None:
        return open_data(verify_data, specs, image_options=image_options, limit=limit, workdir=ctx.workdir), False
    if calib is not None:
        return ValidatedDataset(calib.inner, specs, limit=_min_limit(calib.limit, limit)), False
    try:
        shapes, assumed = resolve_shapes(specs, input_shapes)
    except DataError:
        # Dynamic dims no data resolves (every PP-OCR model, most detectors): verify on probe
        # sizes; the cleanup passes need no data, so the main command must not refuse for lack of it.
        shapes, assumed = probe_shapes(specs, input_shapes)
        ctx.artifacts["verification_shapes_guessed"] = True
    count = RANDOM_SAMPLES if limit is None else min(RANDOM_SAMPLES, limit)
    random = RandomDataset(specs, shapes, count, seed, int_high=gather_bounds(model))
    message = f"no data given: verified on {count} random inputs; errors on real data will differ (give --calib)"
    if assumed:
        message += "; assumed " + ", ".join(f"{k}={v}" for k, v in assumed.items())
    ctx.warn(message)
    return ValidatedDataset(random, specs), True


def _min_limit(a: int | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _gate(report: OptimizeReport, max_abs_error: float | None, min_cosine: float | None) -> None:
    v = report.verification
    if v is None:
        return
    failed = {k: e for k, e in v.loads.items() if e != "ok"}
    try:
        if failed:
            level, error = next(iter(failed.items()))
            raise VerificationError(f"optimized model does not load in onnxruntime at level '{level}': {error}")
        check_tolerances(v.outputs, max_abs=max_abs_error, min_cosine=min_cosine)
    except VerificationError as err:
        err.report = report  # type: ignore[attr-defined]
        raise


def _plain_artifacts(artifacts: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of what passes left in the context."""
    import json

    plain = {}
    for key, value in artifacts.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        plain[key] = value
    return plain


def inspect(
    model: str | os.PathLike | onnx.ModelProto,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelStats:
    """Statistics of a model: opset, I/O, op histogram, parameters, MACs per layer."""
    loaded = model if isinstance(model, onnx.ModelProto) else load_model(model)
    stats = model_stats(loaded, input_shapes=input_shapes)
    if not isinstance(model, onnx.ModelProto):
        stats.serialized_bytes = file_size_with_data(model)
    return stats


__all__ = ["optimize", "inspect", "OptimizeResult", "OnnxcompError"]
