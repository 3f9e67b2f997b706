"""``onnxcomp distill``: export a teacher's outputs, inspect and verify exports, train students on them.

Only click is imported at module level, so registering the group keeps
``onnxcomp --help`` fast; the work is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_common import State, apply_verbosity, image_options_flags, image_options_from, progress_factory, verbosity
from ..errors import INTERRUPTED, Interrupted, UsageError


@click.group("distill")
def distill() -> None:
    """Knowledge distillation: export a teacher's outputs for training students."""


def _parse_part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects I/N (e.g. 2/4), got '{text}'") from None
    if not (n >= 1 and 1 <= i <= n):
        raise UsageError(f"--shard {text}: expected 1 <= I <= N")
    return i, n


@distill.command("export")
@click.argument("teacher", type=click.Path(path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Samples: .npz, folder of .npy/.npz, or image folder (as --calib).")
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path),
    help="Export folder (created; an unfinished export of the same plan is resumed).",
)
@click.option("--logits", "logits", multiple=True, metavar="NAME", help="Teacher output stored as logits (repeatable) [default: all graph outputs].")
@click.option("--feature", "features", multiple=True, metavar="NAME", help="Intermediate tensor stored as is (repeatable).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True, help="Precision of stored float tensors.")
@click.option("--top-k", "top_k", type=click.IntRange(min=1), help="Store only the K largest logits (values + class indices).")
@click.option("--temperature", type=float, help="Also store softmax(logits / T).")
@click.option("--probabilities", is_flag=True, help="The teacher outputs probabilities; store log(p) as logits.")
@click.option("--class-axis", type=int, default=-1, show_default=True, help="Class axis of the teacher output (batch axis counted).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Samples per onnxruntime run.")
@click.option("--shard-size", "samples_per_shard", type=click.IntRange(min=1), help="Samples per shard [default: ~64 MiB of outputs].")
@click.option("--shard", "part", metavar="I/N", help="Export only part I of N (1-based) of the shards.")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--augment", metavar="SPEC", help="Augmented views, e.g. crop-flip or crop-flip:scale=0.5-1,flip=0.")
@click.option("--views", type=click.IntRange(min=1), default=1, show_default=True, help="Augmented views per sample.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the augmentation.")
@click.option(
    "--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="ray: shards as Ray Data tasks (pip install onnxcomp[ray]).",
)
@click.option("--ray-address", help="Ray cluster address [default: start a local Ray instance].")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel Ray tasks [default: cluster CPUs].")
@verbosity
def export_command(teacher: Path, data: Path, out: Path, logits, features, dtype, top_k, temperature, probabilities,
                   class_axis, batch_size, samples_per_shard, part, limit, augment, views, seed, backend, ray_address,
                   workers, verbose: int, quiet: bool, **image) -> None:  # fmt: skip
    """Run TEACHER over --data and store its outputs in --output."""
    apply_verbosity(verbose, quiet)
    from .config import ExportConfig
    from .export import export_teacher

    config = ExportConfig(
        logits=logits, features=features, dtype=dtype, top_k=top_k, temperature=temperature,
        probabilities=probabilities, class_axis=class_axis, batch_size=batch_size,
        samples_per_shard=samples_per_shard, views=views, augment=augment, seed=seed,
    )
    try:
        summary = export_teacher(
            teacher, data, out, config, part=_parse_part(part), image_options=image_options_from(image), limit=limit,
            backend=backend, ray_address=ray_address, workers=workers, progress=progress_factory(),
        )
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM: say what was kept
        raise Interrupted(_interrupted(out)) from err
    if not State.quiet:
        click.echo(summary.render())


def _interrupted(out: Path) -> str:
    from .manifest import MANIFEST_NAME
    from .shards import SHARDS_DIR

    if not (out / MANIFEST_NAME).exists():
        return INTERRUPTED
    shards = out / SHARDS_DIR
    kept = sum(1 for p in shards.iterdir() if p.is_dir()) if shards.is_dir() else 0
    return f"interrupted; {kept} finished shard(s) kept in {out}, nothing half-written; run the same command again to resume"


image_options_flags(export_command)


def _parse_pairs(texts) -> dict[str, str]:
    pairs = {}
    for text in texts:
        student, sep, teacher = text.partition("=")
        if not sep or not student or not teacher:
            raise UsageError(f"--pair expects STUDENT_OUTPUT=TEACHER_OUTPUT, got '{text}'")
        pairs[student] = teacher
    return pairs


@distill.command("train")
@click.argument("student", type=click.Path(path_type=Path))
@click.option("--teacher-outputs", "export", required=True, type=click.Path(path_type=Path), help="The folder 'distill export' wrote.")
@click.option(
    "--data", required=True, type=click.Path(path_type=Path),
    help="The samples the export was made from (checked: count and SHA-256 per shard).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Trained model [default: STUDENT.trained.onnx].")
@click.option("--epochs", type=click.IntRange(min=1), help="Passes over the data [default: 10 when no budget is given].")
@click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps at most.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="Wall-clock minutes at most.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True, help="Adam's learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Adam's L2 penalty.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per optimizer step.")
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True),
    help="KD temperature [default: the export's --temperature, else 4].",
)
@click.option("--labels", type=click.Path(path_type=Path), help="Class labels, one per sample (.npy, export order; -100 = none).")
@click.option(
    "--label-weight", type=click.FloatRange(0, 1), default=0.1, show_default=True,
    help="With --labels: loss = (1 - W) * KD + W * cross-entropy.",
)
@click.option("--pair", "pairs", multiple=True, metavar="STUDENT=TEACHER", help="Pair a student output with a teacher output of another name (repeatable).")
@click.option("--heldout", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of samples held out for early stopping (the best weights on them are kept).")
@click.option("--limit", type=click.IntRange(min=1), help="The --limit the export used.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffle order.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads [default: torch's setting].")
@click.option("--no-data-check", is_flag=True, help="Skip hashing the data against the export (the sample count is still checked).")
@verbosity
def train_command(student: Path, export: Path, data: Path, output: Path | None, epochs, steps, minutes, lr, weight_decay, batch_size,
                  temperature, labels, label_weight, pairs, heldout, limit, seed, threads, no_data_check,
                  verbose: int, quiet: bool) -> None:  # fmt: skip
    """Train the ONNX model STUDENT against the teacher outputs exported in --teacher-outputs."""
    apply_verbosity(verbose, quiet)
    from ..outputs import check_outputs_distinct
    from . import train

    output = output if output is not None else student.with_name(f"{student.stem}.trained.onnx")
    check_outputs_distinct(
        {"the student": student, "the teacher outputs (--teacher-outputs)": export, "the data (--data)": data,
         "the labels (--labels)": labels},
        {"the output (-o)": output, "its weights file": output.with_name(f"{output.name}.data")},
    )  # fmt: skip
    _, report = train(
        student, export, data, output=output, epochs=epochs, steps=steps, minutes=minutes, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
        temperature=temperature, labels=labels, label_weight=label_weight, pairs=_parse_pairs(pairs), limit=limit,
        heldout=heldout, seed=seed, threads=threads, check_data=not no_data_check, progress=progress_factory(),
    )  # fmt: skip
    if not State.quiet:
        click.echo(report.summary())


@distill.command("info")
@click.argument("export", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest.")
def info_command(export: Path, as_json: bool) -> None:
    """Describe the export in EXPORT (without reading its shards)."""
    from .manifest import read_manifest
    from .shards import check_shard

    manifest = read_manifest(export)
    if as_json:
        click.echo(manifest.to_json().decode().rstrip())
        return
    plan = manifest.plan
    present = sum(1 for k in range(manifest.shard_count) if check_shard(export, manifest, k, checksums=False)[0] is not None)
    click.echo(f"teacher   sha256 {manifest.teacher_sha256}")
    click.echo(f"samples   {manifest.samples} x {manifest.views} view(s) = {manifest.rows} rows")
    click.echo(f"shards    {present} of {manifest.shard_count} present ({manifest.samples_per_shard} samples each)")
    settings = plan["settings"]
    click.echo("settings  " + ", ".join(f"{k}={v}" for k, v in settings.items() if v not in (None, False, [])))
    for tensor in manifest.tensors:
        click.echo(f"  {tensor.key:<32} {tensor.kind:<13} {tensor.dtype:<8} {list(tensor.shape)}")


@distill.command("verify")
@click.argument("export", type=click.Path(path_type=Path))
@click.option("--teacher", type=click.Path(path_type=Path), help="Check that the export was made with this model.")
@click.option("--data", type=click.Path(path_type=Path), help="Check that the export was made from these samples.")
@click.option("--limit", type=click.IntRange(min=1), help="The --limit the export used.")
@verbosity
def verify_command(export: Path, teacher: Path | None, data: Path | None, limit: int | None, verbose: int, quiet: bool, **image) -> None:
    """Check EXPORT: complete, every shard checksum, optionally the teacher and the data."""
    apply_verbosity(verbose, quiet)
    from .reader import TeacherOutputs

    outputs = TeacherOutputs(export, verify="open")
    checked = [f"{len(outputs)} rows in {outputs.manifest['plan']['shards']['count']} shards, checksums ok"]
    if teacher is not None:
        outputs.check_teacher(teacher)
        checked.append("teacher matches")
    if data is not None:
        defaults = {"image_layout": "auto", "image_order": "RGB", "image_resize": "crop"}
        explicit = any(image[k] is not None for k in ("image_size", "image_mean", "image_std", "image_scale")) or any(
            image[k] != v for k, v in defaults.items()
        )
        outputs.check_data(data, image_options=image_options_from(image) if explicit else None, limit=limit)
        checked.append("data matches")
    if not State.quiet:
        click.echo(f"{export}: " + "; ".join(checked))


image_options_flags(verify_command)
