"""``export_teacher``: run a teacher over a dataset and store its outputs.

Order of work, so that bad input never leaves anything behind: load the
teacher, open and validate the data, check the requested tensor names, run the
teacher on the first sample (the probe fixes the stored shapes), and only then
create the output folder and its manifest. Shards are then written one by one,
each atomically; an interrupted run keeps its finished shards, and running the
same command again skips them (after checking that their input samples still
hash the same) and writes the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from ..data import Dataset, input_specs, open_data
from ..errors import DataError, OutputError, UsageError
from ..model_io import check_model, load_model
from ..progress import ProgressFactory, null_progress
from .augment import parse_augment
from .config import ExportConfig
from .files import output_error
from .manifest import MANIFEST_NAME, Manifest, create_or_match, teacher_sha256
from .plan import build_manifest
from .producer import ShardProducer
from .runner import TeacherRunner, check_tensor_names
from .samples import check_single_row, count_samples, iter_range, sample_ids
from .shards import PARTIAL_DIR, clear_partials, scan_shards, shard_dir
from .transforms import plan_tensors

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclasses.dataclass
class ExportSummary:
    """What one run of :func:`export_teacher` did.

    Attributes:
        written: Shards this run wrote. skipped: assigned shards that were
            already complete. missing: shards of the export still absent
            (other ``--shard`` parts, or a failed run).
        topk_saving: ``1 - bytes(top-k values + indices) / bytes(full logits)``
            in the stored precision, when top-k is used.
        setup_seconds: Part of ``seconds`` spent before the first shard
            (loading and hashing the teacher, validating the data, the probe).
    """

    out: Path
    samples: int
    rows: int
    shards: int
    written: list[int]
    skipped: list[int]
    missing: list[int]
    rows_written: int
    bytes_written: int
    seconds: float
    batch_size: int
    topk_saving: float | None = None
    setup_seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    def render(self) -> str:
        lines = [
            f"export     {self.out}  ({self.samples} samples, {self.rows} rows, {self.shards} shards)",
            f"this run   wrote {len(self.written)} shard(s), {self.rows_written} rows, {self.bytes_written / 2**20:.1f} MiB "
            f"in {self.seconds:.1f} s ({self.rows_per_second:.1f} rows/s, batch {self.batch_size}); "
            f"skipped {len(self.skipped)} finished shard(s)",
        ]
        if self.topk_saving is not None:
            lines.append(f"top-k      stores {100 * (1 - self.topk_saving):.1f}% of the full logits' bytes (saves {100 * self.topk_saving:.1f}%)")
        if self.missing:
            shown = ", ".join(str(i) for i in self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
            lines.append(f"status     incomplete: {len(self.missing)} shard(s) missing ({shown})")
        else:
            lines.append("status     complete")
        return "\n".join(lines)


def export_teacher(
    teacher: str | os.PathLike | onnx.ModelProto,
    data: Any,
    out: str | os.PathLike,
    config: ExportConfig | None = None,
    *,
    part: tuple[int, int] | None = None,
    image_options: Any = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
    progress: ProgressFactory = null_progress,
) -> ExportSummary:
    """Export a teacher's outputs over ``data`` into the folder ``out``.

    Args:
        teacher: ONNX model file or ModelProto.
        data: Any source :func:`onnxcomp.data.open_data` accepts (.npz, folder
            of samples or images, Python iterables); one sample per feed.
        out: Export folder; created if missing. An existing export of the same
            plan is resumed; a different one is refused.
        config: What to store (see :class:`ExportConfig`).
        part: ``(i, n)``, 1-based: export only the i-th of n contiguous blocks
            of shards, so that n processes or machines share the work.
        image_options: Preprocessing of image folders
            (:class:`onnxcomp.data_images.ImageOptions`); recorded in the manifest.
        limit: Use the first ``limit`` samples only.
        ids: One unique id per sample (default: file names for folder
            sources, else the sample index).
        preprocessing: Free-form description of how the arrays were made,
            recorded in the manifest (image folders record their options).
        backend: ``"local"`` or ``"ray"`` (shards as Ray Data tasks).
        ray_address: Ray cluster address (default: a local Ray instance).
        workers: Parallel Ray tasks (default: the cluster's CPUs).
        progress: Progress-bar factory.

    Raises:
        UsageError, InputError, DataError, OutputError: with one line; no
        shard is ever left half-written under its final name.
    """
    started = time.perf_counter()
    config = config or ExportConfig()
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "ray":
        from .ray_backend import check_ready

        check_ready(data)
    _check_part(part)
    model, sha = _load_teacher(teacher)
    specs = input_specs(model)
    augment = parse_augment(config.augment).bind(specs) if config.augment else None
    out = Path(out)
    _check_output_folder(out)
    with tempfile.TemporaryDirectory(prefix="onnxcomp-distill-") as scratch:
        dataset = open_data(data, specs, image_options=image_options, limit=limit, workdir=Path(scratch))
        sample_names = _resolve_ids(ids, dataset, count_samples(dataset))
        logit_names = list(config.logits) or [o.name for o in model.graph.output]
        check_tensor_names(model, logit_names, "logits tensor")
        check_tensor_names(model, config.features, "feature")
        runner = TeacherRunner(model, [*logit_names, *config.features], specs, batch_size=config.batch_size)
        first = dataset.first()
        check_single_row(first, 0)
        probe = runner.probe(augment.apply(first, augment.params(first, config.seed, 0, 0)) if augment else first)
        tensors = plan_tensors(config, probe, logit_names, view_params=len(augment.param_names) if augment else 0)
        manifest = build_manifest(
            model, sha, teacher, specs, config, augment, tensors, probe, logit_names, dataset, sample_names,
            image_options, preprocessing, runner.batch_size,
        )
        # Everything is validated: only now does anything get written.
        _make_folder(out)
        created = create_or_match(out, manifest)
        logger.info("%s manifest %s", "created" if created else "resuming from", out / MANIFEST_NAME)
        assigned = part_shards(manifest.shard_count, part)
        done, pending = scan_shards(
            out, manifest, assigned, checksums=True, error=OutputError, hint="; delete {folder} and run again to re-export it"
        )
        clear_partials(out, pending)
        producer = ShardProducer(runner, manifest, config, augment, out)
        bar = progress(sum(_row_count(manifest, k) for k in pending), "teacher outputs", "row")
        setup_seconds = time.perf_counter() - started
        try:
            if backend == "local":
                records = _export_local(producer, dataset, assigned, done, bar)
            elif pending:
                from .ray_backend import export_shards_ray

                _verify_done(producer, dataset, assigned, done)
                records = export_shards_ray(
                    teacher=model, data=data, image_options=image_options, limit=limit, manifest=manifest, config=config,
                    batch_size=runner.batch_size, pending=pending, out=out, address=ray_address, workers=workers, bar=bar,
                )
            else:
                records = {}
        finally:
            bar.close()
            with contextlib.suppress(OSError):
                (out / PARTIAL_DIR).rmdir()  # only when empty
    summary = ExportSummary(
        out=out,
        samples=manifest.samples,
        rows=manifest.rows,
        shards=manifest.shard_count,
        written=sorted(records),
        skipped=sorted(done),
        missing=[k for k in range(manifest.shard_count) if not shard_dir(out, k).is_dir()],
        rows_written=sum(r["rows"][1] - r["rows"][0] for r in records.values()),
        bytes_written=sum(f["bytes"] for r in records.values() for f in r["files"].values()),
        seconds=time.perf_counter() - started,
        batch_size=runner.batch_size,
        topk_saving=manifest.info.get("topk_saving"),
        setup_seconds=setup_seconds,
    )
    logger.info("distillation export: %s", summary.render())
    return summary


def _check_part(part: tuple[int, int] | None) -> None:
    if part is not None and not (len(part) == 2 and part[1] >= 1 and 1 <= part[0] <= part[1]):
        raise UsageError(f"shard part {part}: expected (i, n) with 1 <= i <= n")


def part_shards(count: int, part: tuple[int, int] | None) -> list[int]:
    """Shards of part ``i`` of ``n`` (1-based): the i-th of n contiguous, near-equal blocks."""
    if part is None:
        return list(range(count))
    _check_part(part)
    i, n = part
    block = list(range((i - 1) * count // n, i * count // n))
    if not block:
        logger.warning("part %d/%d gets no shard (the export has only %d); nothing to do", i, n, count)
    return block


def _load_teacher(teacher: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(teacher, onnx.ModelProto):
        check_model(teacher, source="teacher")
        return teacher, teacher_sha256(teacher)
    model = load_model(teacher)
    check_model(model, source=str(teacher))
    return model, teacher_sha256(teacher, loaded=model)


def _check_output_folder(out: Path) -> None:
    """Refuse an output that is a file or a folder of something else (before any work).

    The folder is listed before the manifest is looked for: another part
    starting at the same moment may be writing into it, and in an export
    nothing visible appears before the manifest, so a manifest missing after
    the listing means the listed files are not an export's.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if not out.is_dir():
        return
    try:
        others = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    except OSError as err:
        raise output_error(out, err) from err
    if others and not (out / MANIFEST_NAME).exists():
        raise OutputError(f"{out}: is not empty and holds no distillation export; choose a new or empty folder")


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(out, err) from err
    if not os.access(out, os.W_OK):
        raise OutputError(f"{out}: cannot write (folder is not writable)")


def _resolve_ids(ids: Sequence[str] | None, dataset: Dataset, count: int) -> list[str]:
    names = [str(i) for i in ids] if ids is not None else sample_ids(dataset, count)
    if len(names) != count:
        raise DataError(f"{len(names)} sample ids given for {count} samples")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"sample ids must be unique; '{dup}' repeats")
    return names


def _export_local(producer: ShardProducer, dataset: Dataset, assigned: Sequence[int], done: Mapping[int, dict], bar) -> dict[int, dict]:
    """Stream the assigned (contiguous) shards' samples once, writing the pending ones."""
    records: dict[int, dict] = {}
    pending = [k for k in assigned if k not in done]
    if not pending:
        return records  # nothing to write, so nothing can be mixed with other data
    _verify_done(producer, dataset, assigned, done)
    manifest = producer.manifest
    stream = iter_range(dataset, manifest.shard_samples(pending[0])[0], manifest.shard_samples(pending[-1])[1])
    for index in range(pending[0], pending[-1] + 1):
        if index in done:
            start, stop = manifest.shard_samples(index)
            for _ in itertools.islice(stream, stop - start):
                pass
        else:
            records[index] = producer.export(index, stream, bar)
            logger.info("wrote shard %d", index)
    return records


def _verify_done(producer: ShardProducer, dataset: Dataset, assigned: Sequence[int], done: Mapping[int, dict]) -> None:
    """Check that the finished shards' samples still hash as recorded (one streaming pass).

    Raises:
        DataError: The data changed since a finished shard was written, so
            writing more shards would mix two datasets.
    """
    if not done:
        return
    manifest = producer.manifest
    last = max(done)
    stream = iter_range(dataset, manifest.shard_samples(assigned[0])[0], manifest.shard_samples(last)[1])
    for index in range(assigned[0], last + 1):
        if index in done:
            digest = producer.inputs_digest(index, stream)
            if digest != done[index]["inputs_sha256"]:
                start, stop = manifest.shard_samples(index)
                raise DataError(
                    f"{producer.out}: the data changed since shard {index} (samples {start}..{stop - 1}) was exported; "
                    "export into a new folder"
                )
        else:
            start, stop = manifest.shard_samples(index)
            for _ in itertools.islice(stream, stop - start):
                pass


def _row_count(manifest: Manifest, index: int) -> int:
    start, stop = manifest.shard_rows(index)
    return stop - start
