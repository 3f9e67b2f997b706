"""Ray backend: shards as Ray Data tasks on an existing (or a local) cluster.

The driver plans the export as usual (probe, manifest, finished shards); the
pending shard indices become a Ray Dataset, and ``map_batches`` runs a
callable class on them: each actor loads the teacher into an onnxruntime
session once, re-opens the data, and for every shard it receives runs the
same :class:`ShardProducer` as the local backend, writing the shard directly
into the export folder. Shards are therefore byte-identical to a local export.

Requirements: ``pip install 'onnxcomp[ray]'``; the data must be re-openable in
the workers (a path, or a picklable list of samples) and the data and export
paths must be the same on every node (a local instance, or a shared
filesystem). One onnxruntime thread per actor; ``workers`` actors (default:
the cluster's CPUs).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from typing import Any

import numpy as np
import onnx

from .. import errors
from ..errors import OnnxcompError, UsageError
from ..progress import ProgressBar

logger = logging.getLogger(__name__)


class _ShardTask:
    """Ray Data callable class: exports the shards of each batch of indices."""

    def __init__(self, model_bytes, data, image_options, limit, manifest: dict, config, batch_size: int, out: str):
        from ..data import input_specs, open_data
        from .augment import parse_augment
        from .manifest import Manifest
        from .producer import ShardProducer
        from .runner import TeacherRunner

        model = onnx.load_from_string(model_bytes)
        specs = input_specs(model)
        self.dataset = open_data(data, specs, image_options=image_options, limit=limit)
        self.manifest = Manifest.from_dict(manifest, "manifest sent to the Ray worker")
        settings = self.manifest.plan["settings"]
        runner = TeacherRunner(model, [*settings["logits"], *settings["features"]], specs, batch_size=batch_size, intra_op_threads=1)
        runner.batch_size = batch_size  # the driver's probe already decided whether batching is safe
        augment = parse_augment(config.augment).bind(specs) if config.augment else None
        self.producer = ShardProducer(runner, self.manifest, config, augment, out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .samples import iter_range

        records, errors = [], []
        for index in batch["shard"]:
            start, stop = self.manifest.shard_samples(int(index))
            try:
                record = self.producer.export(int(index), iter_range(self.dataset, start, stop))
            except OnnxcompError as err:  # an expected failure travels back as data, class and message intact
                records.append("")
                errors.append(json.dumps([type(err).__name__, str(err)]))
                continue
            records.append(json.dumps(record))
            errors.append("")
        return {
            "shard": np.asarray(batch["shard"]),
            "record": np.asarray(records, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }


def check_ready(data: Any) -> None:
    """Raises UsageError unless Ray is installed and ``data`` can be sent to workers."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("the Ray backend needs Ray: pip install 'onnxcomp[ray]'") from None
    if not isinstance(data, (str, os.PathLike)):
        try:
            pickle.dumps(data)
        except Exception:  # noqa: BLE001 - anything that does not pickle
            raise UsageError("the Ray backend re-opens the data in each worker: give a path or a picklable list of samples") from None


def export_shards_ray(
    *,
    teacher: onnx.ModelProto,
    data: Any,
    image_options: Any,
    limit: int | None,
    manifest,
    config,
    batch_size: int,
    pending: list[int],
    out,
    address: str | None,
    workers: int | None,
    bar: ProgressBar,
) -> dict[int, dict]:
    """Write the ``pending`` shards with Ray; returns their records.

    Raises:
        UsageError: Ray is not installed, or the data cannot be sent to workers.
        OnnxcompError: The onnxcomp error a worker raised (same class and
            message); other worker failures as a one-line OnnxcompError.
    """
    check_ready(data)
    import ray
    import ray.data

    data_arg = os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else data
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    quiet_loggers = {name: logging.getLogger(name).level for name in ("ray", "ray.data")}
    for name in quiet_loggers:
        if logger.getEffectiveLevel() > logging.DEBUG:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        actors = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actors = min(actors, len(pending))
        shards = ray.data.from_items([{"shard": k} for k in pending], override_num_blocks=len(pending))
        results = shards.map_batches(
            _ShardTask,
            fn_constructor_kwargs={
                "model_bytes": teacher.SerializeToString(),
                "data": data_arg,
                "image_options": image_options,
                "limit": limit,
                "manifest": manifest.to_dict(),
                "config": config,
                "batch_size": batch_size,
                "out": os.path.abspath(out),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
        )
        logger.info("Ray backend: %d shard(s) on %d actor(s)", len(pending), actors)
        records: dict[int, dict] = {}
        try:
            for row in results.iter_rows():
                if row["error"]:
                    name, message = json.loads(row["error"])
                    raise getattr(errors, name, OnnxcompError)(message)
                record = json.loads(row["record"])
                records[record["index"]] = record
                bar.update(record["rows"][1] - record["rows"][0])
        except OnnxcompError:
            raise
        except Exception as err:  # Ray wraps unexpected worker failures in its own types
            raise OnnxcompError(f"Ray export failed: {type(err).__name__}: {_last_line(err)}") from err
        return records
    finally:
        for name, level in quiet_loggers.items():
            logging.getLogger(name).setLevel(level)
        if started_here:
            ray.shutdown()


def _last_line(err: BaseException) -> str:
    """Ray prefixes a worker's message with its traceback; keep the last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
