"""The Ray backend on a local Ray instance (needs ``onnxcomp[ray]``; skipped without Ray)."""

from __future__ import annotations

import numpy as np
import pytest
from test_distill_export import data_file, samples, shard_bytes, teacher_file

from onnxcomp.distill import ExportConfig, TeacherOutputs, export_teacher
from onnxcomp.errors import DataError, UsageError

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (export_teacher reuses an initialized Ray)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_export_is_byte_identical_to_local(tmp_path, local_ray):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(top_k=4, temperature=2.0, features=("p",), samples_per_shard=4, batch_size=3,
                          augment="crop-flip", views=2)
    export_teacher(teacher, data, tmp_path / "local", config)
    summary = export_teacher(teacher, data, tmp_path / "ray", config, backend="ray", workers=2)
    assert summary.complete and summary.written == list(range(6))
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    assert len(TeacherOutputs(tmp_path / "ray")) == 2 * len(samples())


def test_ray_worker_errors_keep_their_class_and_finished_shards(tmp_path, local_ray):
    x = samples()
    x[13, 0, 0, 0] = np.nan  # validation of sample 13 fails inside a worker
    data = data_file(tmp_path, x)
    with pytest.raises(DataError, match="sample 13: input 'x' contains NaN"):
        export_teacher(teacher_file(tmp_path), data, tmp_path / "out", ExportConfig(samples_per_shard=4), backend="ray", workers=1)
    shards = sorted(p.name for p in (tmp_path / "out" / "shards").iterdir())
    assert "000003" not in shards and "000000" in shards  # shard 3 (samples 12..15) failed; earlier ones are complete
    x[13, 0, 0, 0] = 0.0
    summary = export_teacher(teacher_file(tmp_path), data_file(tmp_path, x, "fixed.npz"), tmp_path / "fixed", ExportConfig(samples_per_shard=4), backend="ray")
    assert summary.complete


def test_unpicklable_data_is_refused_before_anything_is_written(tmp_path):
    generator = ({"x": samples(1)} for _ in range(2))
    with pytest.raises(UsageError, match="re-opens the data in each worker"):
        export_teacher(teacher_file(tmp_path), generator, tmp_path / "out", ExportConfig(), backend="ray")
    assert not (tmp_path / "out").exists()
