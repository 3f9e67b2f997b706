"""The ``onnxcomp`` command line.

The CLI owns the terminal: logging format and level (``-v``/``-q``), progress
bars, tables. Every error onnxcomp raises on purpose becomes one line on stderr
and its exit code (see :mod:`onnxcomp.errors`); anything else is reported as an
internal error in one line too, with the traceback only under ``-vv``.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
from pathlib import Path

import click

from . import __version__
from .cli_common import State, apply_verbosity, image_options, image_options_flags, progress_factory, verbosity
from .errors import INTERRUPTED, Interrupted, OnnxcompError, UsageError
from .pipelines import QUANTIZE_MODES

logger = logging.getLogger("onnxcomp")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxcomp")
@verbosity
def cli(verbose: int, quiet: bool) -> None:
    """Compress ONNX models: cleanup, pruning, quantization, distillation export."""
    apply_verbosity(verbose, quiet)


def _input_shape_option(func):
    return click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        metavar="NAME:D0xD1x...",
        help="Concrete shape for an input with dynamic dims (repeatable).",
    )(func)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a summary.")
@click.option("--layers", is_flag=True, help="List MACs of every compute layer.")
@click.option("--prunable", is_flag=True, help="List the channel dependency groups --prune sees and why others are frozen.")
@_input_shape_option
@verbosity
def inspect(model: Path, as_json: bool, layers: bool, prunable: bool, input_shapes: tuple[str, ...], verbose: int, quiet: bool) -> None:
    """Summarize MODEL: opset, inputs/outputs, ops, parameters, size, MACs."""
    apply_verbosity(verbose, quiet)
    from .api import inspect as inspect_model
    from .data import parse_shape_overrides
    from .report import _count, _size

    if prunable:
        from .pruning.report import describe_prunable

        found = describe_prunable(model, input_shapes=parse_shape_overrides(input_shapes))
        click.echo(json.dumps(found.to_dict(), indent=2) if as_json else found.render())
        return

    stats = inspect_model(model, input_shapes=parse_shape_overrides(input_shapes))
    if as_json:
        click.echo(json.dumps(stats.to_dict(), indent=2, sort_keys=True))
        return
    click.echo(f"model      {model}")
    click.echo(f"opset      {stats.opset} (IR {stats.ir_version}){'  producer ' + stats.producer if stats.producer else ''}")
    for kind, values in (("input", stats.inputs), ("output", stats.outputs)):
        for v in values:
            shape = "?" if v["shape"] is None else "[" + ", ".join(str(d) for d in v["shape"]) + "]"
            click.echo(f"{kind:<10} {v['name']}: {v['dtype']} {shape}")
    click.echo(f"size       {_size(stats.serialized_bytes)} (weights {_size(stats.weight_bytes)})")
    click.echo(f"parameters {stats.params:,}")
    click.echo(f"nodes      {stats.nodes:,}")
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in stats.input_shapes.items())
    if stats.macs is not None:
        click.echo(f"MACs       {_count(stats.macs)} ({stats.macs:,}) for inputs {shapes}")
    else:
        click.echo(
            f"MACs       unknown: shapes of {len(stats.unresolved_layers)} layer(s) could not be resolved "
            "(dynamic dims: pass --input-shape; or ops without shape inference)"
        )
    if stats.assumed_dims:
        click.echo("assumed    " + ", ".join(f"{k}={v}" for k, v in stats.assumed_dims.items()))
    hist = ", ".join(f"{op} {n}" for op, n in stats.op_histogram.items())
    click.echo(f"ops        {hist}")
    if stats.metadata:
        click.echo("metadata   " + ", ".join(sorted(stats.metadata)))
    if layers:
        click.echo("")
        for layer in sorted(stats.layer_macs, key=lambda x: -x.macs):
            click.echo(f"  {layer.macs:>15,}  {layer.op:<14} {layer.node}")


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: MODEL.opt.onnx].")
@click.option("--calib", "calib", type=click.Path(path_type=Path), help="Calibration/verification data: .npz, folder of .npy/.npz, or image folder.")
@click.option("--calib-limit", type=click.IntRange(min=1), help="Use at most this many calibration samples.")
@click.option(
    "--verify-data", "verify_data", type=click.Path(path_type=Path),
    help="Held-out data to verify on (default: one --calib sample in five, held out from the passes).",
)
@click.option("--recipe", type=click.Path(path_type=Path), help="YAML recipe with the passes to run.")
@click.option("--passes", "pass_list", help="Comma-separated pass or preset names (instead of the default pipeline).")
@click.option(
    "--prune", "prune", type=float, metavar="RATIO",
    help="Structured pruning: remove this fraction of prunable channels (with --calib ranked by measured "
    "contribution and refitted; without, by magnitude, for fine-tuning).",
)  # fmt: skip
@click.option(
    "--quantize", "quantize", metavar="MODE",
    help=f"Quantization mode: {', '.join(sorted(QUANTIZE_MODES))} ('onnxcomp passes': what each runs), or auto "
    "(tries them, keeps the fastest or smallest within the quality budget).",
)
@click.option(
    "--finetune", is_flag=True,
    help="After --prune / --quantize int8*: recover accuracy by distillation from the original model on the "
    "--calib data (no labels), trained on the ONNX graph (quantization-aware for int8). Needs "
    "pip install 'onnxcomp[train]'.",
)
@click.option("--finetune-epochs", type=click.IntRange(min=1), help="Fine-tuning epochs [default: 3 when no budget is given].")
@click.option("--finetune-steps", type=click.IntRange(min=1), help="Fine-tuning optimizer steps at most.")
@click.option("--finetune-minutes", type=click.FloatRange(min=0, min_open=True), help="Fine-tuning wall-clock minutes at most.")
@click.option("--finetune-lr", type=click.FloatRange(min=0, min_open=True), help="Fine-tuning learning rate [default: 1e-4].")
@click.option(
    "--target", type=click.Choice(["latency", "size"]), default="latency", show_default=True,
    help="With --quantize auto: what to minimise among the candidates within the budget.",
)
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Also write the report as JSON.")
@click.option("--prune-plan", "plan_path", type=click.Path(path_type=Path), help="Also write the pruning plan (kept channels per weight) as JSON.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Compare with the original in onnxruntime.")
@click.option("--verify-samples", type=click.IntRange(min=1), default=64, show_default=True, help="Samples used for verification.")
@click.option("--latency/--no-latency", default=True, show_default=True, help="Measure batch-1 latency before/after.")
@click.option("--max-abs-error", type=float, help="Fail (writing nothing) if an output differs more than this.")
@click.option("--min-cosine", type=float, help="Fail (writing nothing) if an output's worst cosine similarity is lower.")
@click.option(
    "--metric", default="auto", show_default=True, metavar="NAME|MODULE:FUNC",
    help="What 'still good' means: auto (detected from the outputs), classification, detection, ctc, embedding, "
    "segmentation, features, or a function score(reference, candidate) -> float (higher is better).",
)
@click.option(
    "--max-drop", type=click.FloatRange(min=0.0), metavar="DROP",
    help="Quality budget: the largest drop of the metric on held-out data (defaults: classification 0.02 of "
    "top-1 agreement, detection 0.05, ctc 0.02, embedding 0.01 of cosine, segmentation 0.05 of IoU, "
    "features 0.25). Exceeded: exit 3, nothing written.",
)
@click.option("--accept-drop", is_flag=True, help="Write the model even when it exceeds the quality budget.")
@click.option(
    "--verify-in-sample", is_flag=True,
    help="Verify on the --calib data the passes fitted to, instead of holding out one sample in five.",
)
@click.option("--strict", is_flag=True, help="Fail (exit 4) when a requested compression changed nothing.")
@click.option(
    "--check", "checks", multiple=True, type=click.Choice(["checker", "shape-inference", "ort-load"]),
    help="Invariant checked after every pass (repeatable) [default: checker].",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite-input", is_flag=True, help="Allow the output to replace the input file.")
@_input_shape_option
@image_options_flags
@verbosity
def optimize(model: Path, output: Path | None, calib: Path | None, calib_limit: int | None, verify_data: Path | None, recipe: Path | None,
             pass_list: str | None, prune: float | None, quantize: str | None, finetune: bool,
             finetune_epochs: int | None, finetune_steps: int | None, finetune_minutes: float | None,
             finetune_lr: float | None, target: str, report_path: Path | None,
             plan_path: Path | None, verify: bool, verify_samples: int, latency: bool,
             max_abs_error: float | None, min_cosine: float | None, metric: str, max_drop: float | None,
             accept_drop: bool, verify_in_sample: bool, strict: bool, checks: tuple[str, ...], seed: int,
             overwrite_input: bool, input_shapes: tuple[str, ...], image_size, image_mean, image_std, image_scale,
             image_layout, image_order, image_resize, verbose: int, quiet: bool) -> None:  # fmt: skip
    """Optimize MODEL, verify it against the original, and write it."""
    apply_verbosity(verbose, quiet)
    from .api import optimize as run_optimize
    from .data import parse_shape_overrides
    from .pipelines import pipeline_from_flags

    if plan_path is not None and prune is None and recipe is None and not pass_list:
        raise UsageError("--prune-plan needs --prune (or a recipe/--passes with prune-channels)")
    budget = {"epochs": finetune_epochs, "steps": finetune_steps, "minutes": finetune_minutes, "lr": finetune_lr}
    finetune_options = {k: v for k, v in budget.items() if v is not None} if finetune else None
    if not finetune and any(v is not None for v in budget.values()):
        raise UsageError("--finetune-epochs/-steps/-minutes/-lr need --finetune")
    if finetune and quantize == "auto":
        raise UsageError("--finetune with --quantize auto is not supported; pick a mode (e.g. --quantize int8)")
    flags = prune is not None or quantize is not None or finetune
    chosen = [name for name, given in (("--recipe", recipe), ("--passes", pass_list), ("--prune/--quantize", flags)) if given]
    if len(chosen) > 1:
        raise UsageError(f"give only one of {', '.join(chosen)}")
    if recipe is not None:
        passes = recipe
    elif pass_list:
        passes = [p.strip() for p in pass_list.split(",") if p.strip()]
    elif quantize != "auto":
        passes = pipeline_from_flags(prune=prune, quantize=quantize, finetune=finetune_options)
    if output is None:
        output = model.with_name(f"{model.stem}.opt.onnx")
    from .outputs import check_run_paths

    check_run_paths(model, output=output, data=calib, verify_data=verify_data, recipe=recipe,
                    reports={"the report (--report)": report_path, "the pruning plan (--prune-plan)": plan_path},
                    overwrite_input=overwrite_input)
    images = image_options(image_size, image_mean, image_std, image_scale, image_layout, image_order, image_resize)
    if quantize == "auto":
        from .auto import optimize_auto

        run_optimize = functools.partial(optimize_auto, prune=prune, target=target)  # one pipeline per candidate
    else:
        run_optimize = functools.partial(run_optimize, passes=passes)
    try:
        result = run_optimize(
            model,
            output=output,
            data=calib,
            data_limit=calib_limit,
            verify_data=verify_data,
            verify=verify,
            verify_samples=verify_samples,
            latency=latency,
            input_shapes=parse_shape_overrides(input_shapes),
            image_options=images,
            checks=checks or None,
            max_abs_error=max_abs_error,
            min_cosine=min_cosine,
            metric=metric,
            max_drop=max_drop,
            accept_drop=accept_drop,
            verify_in_sample=verify_in_sample,
            strict=strict,
            seed=seed,
            overwrite_input=overwrite_input,
            progress=progress_factory(),
        )
    except OnnxcompError as err:
        report = getattr(err, "report", None)
        if report is not None and report_path is not None:
            report.write_json(report_path)
        raise
    if report_path is not None:
        result.report.write_json(report_path)
    if plan_path is not None:
        from .pruning.plan import write_plan_artifact

        write_plan_artifact(result.report.artifacts, plan_path)
    if not State.quiet:
        click.echo(result.report.render())
        if "auto" in result.report.artifacts:
            from .auto import render_candidates

            click.echo("\n" + render_candidates(result.report.artifacts["auto"]))
        click.echo(f"\nwrote {result.output}" + (f" and {report_path}" if report_path else ""))


@cli.command("passes")
@click.option("--json", "as_json", is_flag=True)
def list_passes(as_json: bool) -> None:
    """List the registered passes and their options."""
    from .pipelines import describe_quantize_modes
    from .registry import PRESETS, describe_passes

    rows = describe_passes()
    modes = describe_quantize_modes()
    if as_json:
        click.echo(json.dumps({"passes": rows, "presets": sorted(PRESETS), "quantize_modes": modes}, indent=2))
        return
    for row in rows:
        flags = " (needs --calib)" if row["needs_data"] else ""
        click.echo(f"{row['name']}  [{row['stage']}]{flags}\n    {row['summary']}")
        for opt in row["options"]:
            click.echo(f"    --  {opt['name']}: {opt['type']} = {opt['default']}")
    click.echo("presets: " + ", ".join(sorted(PRESETS)))
    click.echo("--quantize modes (after the cleanup preset):")
    for mode, runs in modes.items():
        click.echo(f"    {mode}: {runs}")


from .distill.cli import distill as _distill  # noqa: E402 - imports only click; the work loads on use

cli.add_command(_distill)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _raise_interrupt(signum, frame):
    raise Interrupted(f"interrupted by signal {signal.Signals(signum).name}; nothing was written")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``onnxcomp`` script; returns the exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    State.reset()
    try:
        cli.main(args=argv, prog_name="onnxcomp", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        cause = exc.__context__
        reason = str(cause) if isinstance(cause, Interrupted) else INTERRUPTED
        click.echo(f"onnxcomp: error: {reason}", err=True)
        return 130
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"onnxcomp: error: {_one_line(exc.format_message())}{hint}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"onnxcomp: error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code
    except OnnxcompError as exc:
        if State.verbose >= 2:
            logger.exception("traceback")
        click.echo(f"onnxcomp: error: {_one_line(str(exc))}", err=True)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        reason = str(exc) if isinstance(exc, Interrupted) else INTERRUPTED
        click.echo(f"onnxcomp: error: {reason}", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if State.verbose >= 2:
            logger.exception("traceback")
        click.echo(
            f"onnxcomp: internal error: {type(exc).__name__}: {_one_line(str(exc))[:500]} "
            "(run with -vv for the traceback; please report it)",
            err=True,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
