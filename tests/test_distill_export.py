"""Distillation export: round trips, manifest, resume, shard parts, augmentation views, bad input."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import builders
from onnxcomp.distill import ExportConfig, TeacherOutputs, export_teacher
from onnxcomp.distill import files as distill_files
from onnxcomp.distill.augment import augmentation_from_manifest
from onnxcomp.distill.transforms import softmax, top_k_indices
from onnxcomp.errors import DataError, InputError, OutputError, UsageError

SAMPLES = 23


def teacher_file(tmp_path: Path, seed: int = 0) -> Path:
    """builders.resnet_block: x[N,3,16,16] -> logits[N,10]; 'a' is a Relu feature map [N,8,16,16]."""
    path = tmp_path / f"teacher{seed}.onnx"
    onnx.save(builders.resnet_block(seed), path)
    return path


def samples(n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 16, 16)).astype(np.float32)


def data_file(tmp_path: Path, x: np.ndarray | None = None, name: str = "data.npz") -> Path:
    path = tmp_path / name
    np.savez(path, x=samples() if x is None else x)
    return path


def reference(teacher: Path, x: np.ndarray, names=("logits",)) -> dict[str, np.ndarray]:
    """Teacher tensors one sample at a time, in a session set up like the exporter's (all optimizations)."""
    from onnxcomp.activations import session_with_outputs

    session = session_with_outputs(onnx.load(teacher), list(names))
    rows = [session.run(list(names), {"x": x[i:i + 1]}) for i in range(len(x))]
    return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(names)}


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every stored array file of an export (shard.json holds a timestamp, so it is left out)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "shards").rglob("*.npy"))}


def test_fp32_round_trip_is_exact(tmp_path):
    teacher, x = teacher_file(tmp_path), samples()
    summary = export_teacher(teacher, data_file(tmp_path), tmp_path / "out",
                             ExportConfig(features=("a",), samples_per_shard=5, batch_size=1))
    assert summary.complete and summary.shards == 5 and summary.rows_written == SAMPLES
    ref = reference(teacher, x, ("logits", "a"))
    outputs = TeacherOutputs(tmp_path / "out")
    got = outputs.take(range(SAMPLES))
    np.testing.assert_array_equal(got["logits"], ref["logits"])  # fp32 storage: bit-exact
    np.testing.assert_array_equal(got["a"], ref["a"])
    np.testing.assert_array_equal(outputs[17]["logits"], ref["logits"][17])


def test_batched_export_matches_single_runs(tmp_path):
    teacher, x = teacher_file(tmp_path), samples()
    summary = export_teacher(teacher, data_file(tmp_path), tmp_path / "out", ExportConfig(samples_per_shard=10, batch_size=4))
    assert summary.batch_size == 4
    got = TeacherOutputs(tmp_path / "out").take(range(SAMPLES))["logits"]
    # Batched GEMM/conv kernels may round differently from batch-1 runs: a few fp32 ulps.
    np.testing.assert_allclose(got, reference(teacher, x)["logits"], rtol=1e-5, atol=1e-5)


def test_fp16_round_trip_within_half_precision_rounding(tmp_path):
    teacher, x = teacher_file(tmp_path), samples()
    export_teacher(teacher, data_file(tmp_path), tmp_path / "out", ExportConfig(dtype="float16", samples_per_shard=8, batch_size=1))
    outputs = TeacherOutputs(tmp_path / "out")
    got = outputs.take(range(SAMPLES))["logits"]
    assert got.dtype == np.float16
    ref = reference(teacher, x)["logits"]
    # Round-to-nearest float16: relative error <= 2^-11 for normal values, absolute <= 2^-25 below 2^-14.
    bound = np.abs(ref) * 2.0**-11 + 2.0**-25
    assert np.all(np.abs(got.astype(np.float64) - ref) <= bound)


def test_topk_and_temperature_round_trip(tmp_path):
    teacher, x = teacher_file(tmp_path), samples()
    summary = export_teacher(teacher, data_file(tmp_path), tmp_path / "out",
                             ExportConfig(top_k=3, temperature=2.0, samples_per_shard=6, batch_size=1))
    assert summary.topk_saving == pytest.approx(1 - (3 * 4 + 3 * 4) / (10 * 4))
    outputs = TeacherOutputs(tmp_path / "out")
    assert set(outputs.keys) == {"logits.topk_values", "logits.topk_indices", "logits.topk_probs"}
    got = outputs.take(range(SAMPLES))
    ref = reference(teacher, x)["logits"].astype(np.float64)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(got["logits.topk_indices"], order)
    np.testing.assert_array_equal(got["logits.topk_values"], np.take_along_axis(ref, order, 1).astype(np.float32))
    full = softmax(ref, 2.0, axis=1)
    np.testing.assert_allclose(got["logits.topk_probs"], np.take_along_axis(full, order, 1), rtol=1e-6, atol=1e-7)
    # Bound of the top-k approximation: the renormalized top-k distribution differs from the full
    # softmax by at most the tail mass in total variation.
    tail = 1 - got["logits.topk_probs"].astype(np.float64).sum(axis=1)
    renorm = softmax(got["logits.topk_values"], 2.0, axis=1)
    approx = np.zeros_like(full)
    np.put_along_axis(approx, order, renorm, 1)
    tv = 0.5 * np.abs(approx - full).sum(axis=1)
    assert np.all(tv <= tail + 1e-6) and np.all(tail > 0)


def test_top_k_selection_equals_a_stable_argsort_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(300):
        classes = int(rng.integers(1, 60))  # k up to 59: both the argmax rounds (k <= 16) and the partition
        other = [int(d) for d in rng.integers(1, 4, size=rng.integers(0, 3))]
        axis = int(rng.integers(0, len(other) + 1))
        shape = (*other[:axis], classes, *other[axis:])
        z = rng.integers(-3, 3, size=shape).astype(np.float32)  # many ties
        if trial % 5 == 0:
            z[z == -3] = -np.inf  # non-finite values take the partition path
        k = int(rng.integers(1, classes + 1))
        expected = np.take(np.argsort(-z, axis=axis, kind="stable"), np.arange(k), axis=axis)
        np.testing.assert_array_equal(top_k_indices(z, k, axis), expected, err_msg=f"shape {shape} axis {axis} k {k}")


def softmax_teacher(tmp_path: Path) -> Path:
    """x[N,5] -> Softmax -> probs[N,5] (a teacher that outputs probabilities)."""
    m = builders.model([helper.make_node("Softmax", ["x"], ["probs"], axis=1)],
                       [builders.value("x", ["N", 5])], [builders.value("probs", ["N", 5])])
    path = tmp_path / "softmax.onnx"
    onnx.save(m, path)
    return path


def test_probability_teacher_stores_log_probabilities(tmp_path):
    z = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32) * 3
    np.savez(tmp_path / "z.npz", x=z)
    export_teacher(softmax_teacher(tmp_path), tmp_path / "z.npz", tmp_path / "out", ExportConfig(probabilities=True, temperature=1.0))
    got = TeacherOutputs(tmp_path / "out").take(range(7))
    p = softmax(z, 1.0, axis=1)
    np.testing.assert_allclose(softmax(got["probs"], 1.0, axis=1), p, rtol=1e-5)  # softmax(log p) = p
    np.testing.assert_allclose(got["probs.probs"], p, rtol=1e-5)


def test_manifest_documents_the_export(tmp_path):
    teacher = teacher_file(tmp_path)
    folder = tmp_path / "samples"
    folder.mkdir()
    x = samples(6)
    names = [f"img_{i:02d}.npy" for i in (3, 1, 4, 0, 5, 9)]
    for name, sample in zip(names, x[[3, 1, 4, 0, 5, 2]]):
        np.save(folder / name, sample)
    export_teacher(teacher, folder, tmp_path / "out", ExportConfig(top_k=2, features=("a",), dtype="float16"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    plan = manifest["plan"]
    assert plan["teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert plan["samples"] == {"count": 6, "views": 1, "ids": sorted(names)}  # folder order = sorted file names
    tensors = {t["key"]: t for t in plan["tensors"]}
    assert tensors["logits.topk_values"]["dtype"] == "float16" and tensors["logits.topk_values"]["shape"] == [2]
    assert tensors["logits.topk_indices"]["dtype"] == "int32"
    assert tensors["a"]["shape"] == [8, 16, 16] and tensors["a"]["kind"] == "feature"
    assert plan["settings"]["top_k"] == 2 and plan["settings"]["logits"] == ["logits"]
    assert plan["preprocessing"]["source_kind"] == "FolderDataset"
    assert manifest["info"]["topk_saving"] == pytest.approx(1 - (2 * 2 + 2 * 4) / (10 * 2))
    outputs = TeacherOutputs(tmp_path / "out")
    ref = reference(teacher, x[[2]])["logits"][0]
    np.testing.assert_array_equal(outputs.by_id("img_09.npy")["logits.topk_indices"], np.argsort(-ref, kind="stable")[:2])


def interrupt_on_write(monkeypatch, after: int, error: BaseException):
    """Make the exporter's array writes fail after ``after`` successful ones."""
    original = distill_files.HashingWriter.write
    count = {"writes": 0}

    def write(self, data):
        if self.bytes == 0:
            count["writes"] += 1
            if count["writes"] > after:
                raise error
        return original(self, data)

    monkeypatch.setattr(distill_files.HashingWriter, "write", write)


def test_resume_after_interruption_writes_identical_shards(tmp_path, monkeypatch):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(top_k=4, features=("p",), samples_per_shard=5, batch_size=3)
    export_teacher(teacher, data, tmp_path / "full", config)

    with monkeypatch.context() as patch:  # 3 files per shard (+ shard.json): stop inside shard 2
        interrupt_on_write(patch, after=9, error=KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            export_teacher(teacher, data, tmp_path / "part", config)
    assert sorted(p.name for p in (tmp_path / "part" / "shards").iterdir()) == ["000000", "000001"]
    # A hard kill (no cleanup) could also leave a half-written shard in .partial:
    stale = tmp_path / "part" / ".partial" / "000002.otherhost.1.deadbeef"
    stale.mkdir(parents=True)
    (stale / "t000.npy").write_bytes(b"\x93NUMPY half")
    with pytest.raises(InputError, match="export incomplete, 3 of 5 shards missing"):
        TeacherOutputs(tmp_path / "part")

    summary = export_teacher(teacher, data, tmp_path / "part", config)
    assert summary.skipped == [0, 1] and summary.written == [2, 3, 4] and summary.complete
    assert not (tmp_path / "part" / ".partial").exists()
    assert shard_bytes(tmp_path / "part") == shard_bytes(tmp_path / "full")


def test_shard_parts_union_equals_full_export(tmp_path):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(temperature=3.0, samples_per_shard=4, batch_size=2)
    export_teacher(teacher, data, tmp_path / "full", config)
    parts = [export_teacher(teacher, data, tmp_path / "split", config, part=(i, 3)) for i in (2, 3, 1)]
    assert [p.written for p in parts] == [[2, 3], [4, 5], [0, 1]]
    assert not parts[0].complete and parts[2].complete
    assert shard_bytes(tmp_path / "split") == shard_bytes(tmp_path / "full")
    full = json.loads((tmp_path / "full" / "manifest.json").read_text())
    split = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert full["export_id"] == split["export_id"]


def test_changed_data_is_caught_on_resume_and_by_check_data(tmp_path, monkeypatch):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(samples_per_shard=5)
    with monkeypatch.context() as patch:
        interrupt_on_write(patch, after=2, error=KeyboardInterrupt())  # shard 0 done (1 file + record)
        with pytest.raises(KeyboardInterrupt):
            export_teacher(teacher, data, tmp_path / "out", config)
    changed = samples()
    changed[3] += 0.5  # inside finished shard 0
    with pytest.raises(DataError, match=r"data changed since shard 0 \(samples 0\.\.4\)"):
        export_teacher(teacher, data_file(tmp_path, changed, "changed.npz"), tmp_path / "out", config)
    with pytest.raises(OutputError, match="23 samples there, 30 now"):
        export_teacher(teacher, data_file(tmp_path, samples(30), "more.npz"), tmp_path / "out", config)

    export_teacher(teacher, data, tmp_path / "out", config)  # the original data finishes it
    outputs = TeacherOutputs(tmp_path / "out")
    outputs.check_data(data)
    with pytest.raises(DataError, match=r"samples 0\.\.4 differ"):
        outputs.check_data(tmp_path / "changed.npz")
    with pytest.raises(DataError, match="more samples"):
        outputs.check_data(tmp_path / "more.npz")


def test_wrong_teacher_is_refused(tmp_path):
    data = data_file(tmp_path)
    export_teacher(teacher_file(tmp_path, 0), data, tmp_path / "out", ExportConfig(samples_per_shard=10))
    other = teacher_file(tmp_path, 1)
    with pytest.raises(OutputError, match="holds a different export .teacher sha256"):
        export_teacher(other, data, tmp_path / "out", ExportConfig(samples_per_shard=10))
    with pytest.raises(OutputError, match="settings.top_k: None there, 2 now"):
        export_teacher(teacher_file(tmp_path, 0), data, tmp_path / "out", ExportConfig(samples_per_shard=10, top_k=2))
    outputs = TeacherOutputs(tmp_path / "out")
    outputs.check_teacher(tmp_path / "teacher0.onnx")
    with pytest.raises(InputError, match="another teacher"):
        outputs.check_teacher(other)


def test_augmented_views_are_reproducible_by_the_student(tmp_path):
    teacher, x = teacher_file(tmp_path), samples(5)
    config = ExportConfig(augment="crop-flip:scale=0.3-0.9", views=3, samples_per_shard=2, batch_size=1, seed=7)
    export_teacher(teacher, data_file(tmp_path, x), tmp_path / "out", config)
    outputs = TeacherOutputs(tmp_path / "out")
    assert len(outputs) == 15 and outputs.views == 3
    augment = augmentation_from_manifest(outputs.manifest)
    assert outputs.manifest["plan"]["augmentation"]["seed"] == 7 and augment.input == "x"
    params = outputs.take(range(15))["__view__"]
    assert len({tuple(p) for p in params}) == 15, "every view has its own crop"
    for row in (0, 4, 14):
        view = augment.apply(x[row // 3][None], params[row])
        ref = reference(teacher, view)["logits"][0]
        np.testing.assert_array_equal(outputs[row]["logits"], ref)
    # The same views whatever the sharding (parameters are seeded per sample and view):
    export_teacher(teacher, data_file(tmp_path, x), tmp_path / "other", ExportConfig(**{**config.__dict__, "samples_per_shard": 5}))
    np.testing.assert_array_equal(TeacherOutputs(tmp_path / "other").take(range(15))["__view__"], params)


def test_non_batching_graph_falls_back_to_single_runs(tmp_path):
    """A graph with a symbolic batch that reshapes to a fixed batch of 1 inside."""
    shape = builders.tensor("shape", np.array([1, 6], dtype=np.int64))
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]), helper.make_node("Relu", ["flat"], ["y"])]
    m = builders.model(nodes, [builders.value("x", ["N", 2, 3])], [builders.value("y", [1, 6])], [shape])
    onnx.save(m, tmp_path / "fixed.onnx")
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    summary = export_teacher(tmp_path / "fixed.onnx", tmp_path / "d.npz", tmp_path / "out", ExportConfig(batch_size=8))
    assert summary.batch_size == 1
    np.testing.assert_array_equal(TeacherOutputs(tmp_path / "out").take(range(5))["y"], np.maximum(x.reshape(5, 6), 0))


def test_reader_random_access_batches_and_lazy_verification(tmp_path):
    teacher = teacher_file(tmp_path)
    export_teacher(teacher, data_file(tmp_path), tmp_path / "out", ExportConfig(samples_per_shard=4))
    outputs = TeacherOutputs(tmp_path / "out", verify="lazy", max_open_shards=2)
    every = outputs.take(range(SAMPLES))["logits"]
    seen = []
    for batch in outputs.batches(5, shuffle=True, seed=3):
        np.testing.assert_array_equal(batch["logits"], every[batch["rows"]])
        seen.extend(batch["rows"].tolist())
    assert sorted(seen) == list(range(SAMPLES)) and seen != list(range(SAMPLES))
    assert [len(b["rows"]) for b in outputs.batches(10, drop_last=True)] == [10, 10]
    np.testing.assert_array_equal(outputs.by_id("7")["logits"], every[7])
    with pytest.raises(KeyError):
        outputs.by_id("nope")
    with pytest.raises(IndexError):
        outputs[SAMPLES]

    damaged = tmp_path / "out" / "shards" / "000003" / "t000.npy"
    raw = bytearray(damaged.read_bytes())
    raw[-1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="shard 3: .*fails its SHA-256 check"):
        TeacherOutputs(tmp_path / "out")
    lazy = TeacherOutputs(tmp_path / "out", verify="lazy")
    lazy[0]  # shard 0 is intact
    with pytest.raises(InputError, match="SHA-256"):
        lazy[13]
    with pytest.raises(OutputError, match="shard 3: .*SHA-256.*delete"):
        export_teacher(teacher, data_file(tmp_path), tmp_path / "out", ExportConfig(samples_per_shard=4))


def test_edited_manifest_is_refused(tmp_path):
    export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig())
    path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["plan"]["settings"]["temperature"] = 4.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="does not match its export_id"):
        TeacherOutputs(tmp_path / "out")


# --- bad input: one clear error, nothing corrupt left behind -------------------------------------


def test_unknown_feature_name_suggests_and_writes_nothing(tmp_path):
    with pytest.raises(UsageError, match=r"feature 'logit' is not a tensor of the teacher .*did you mean 'logits'"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(features=("logit",)))
    with pytest.raises(UsageError, match=r"feature 'relu0' .*node 'relu0' outputs 'a'"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(features=("relu0",)))
    with pytest.raises(UsageError, match="logits tensor 'scores'"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(logits=("scores",)))
    assert not (tmp_path / "out").exists()


def test_data_that_does_not_fit_writes_nothing(tmp_path):
    bad = np.zeros((4, 3, 8, 8), dtype=np.float32)
    with pytest.raises(DataError, match="axis 2 must be 16"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path, bad), tmp_path / "out", ExportConfig())
    batched = tmp_path / "batched"
    batched.mkdir()
    np.save(batched / "0.npy", samples(2))
    with pytest.raises(DataError, match="leading batch axis of 1"):
        export_teacher(teacher_file(tmp_path), batched, tmp_path / "out", ExportConfig())
    assert not (tmp_path / "out").exists()


def test_varying_output_shapes_are_refused(tmp_path):
    m = builders.model([helper.make_node("Relu", ["x"], ["y"])], [builders.value("x", ["N", "W"])], [builders.value("y", ["N", "W"])])
    onnx.save(m, tmp_path / "relu.onnx")
    folder = tmp_path / "ragged"
    folder.mkdir()
    np.save(folder / "0.npy", np.ones((1, 4), np.float32))
    np.save(folder / "1.npy", np.ones((1, 6), np.float32))
    with pytest.raises(DataError, match="varying shape"):
        export_teacher(tmp_path / "relu.onnx", folder, tmp_path / "out", ExportConfig(samples_per_shard=2))
    assert not (tmp_path / "out" / "shards").exists() and not (tmp_path / "out" / ".partial").exists()


def test_float16_overflow_and_nan_outputs_are_refused(tmp_path):
    m = builders.model([helper.make_node("Log", ["x"], ["y"])], [builders.value("x", ["N", 3])], [builders.value("y", ["N", 3])])
    onnx.save(m, tmp_path / "log.onnx")
    np.savez(tmp_path / "nan.npz", x=np.array([[1, 2, 3], [1, -1, 2]], np.float32))
    with pytest.raises(DataError, match=r"contains NaN for row 1 \(sample '1'\)"):
        export_teacher(tmp_path / "log.onnx", tmp_path / "nan.npz", tmp_path / "out1", ExportConfig(batch_size=1))
    big = builders.model([helper.make_node("Exp", ["x"], ["y"])], [builders.value("x", ["N", 3])], [builders.value("y", ["N", 3])])
    onnx.save(big, tmp_path / "exp.onnx")
    np.savez(tmp_path / "big.npz", x=np.array([[1, 2, 3], [1, 12, 2]], np.float32))
    with pytest.raises(DataError, match="beyond float16's range"):
        export_teacher(tmp_path / "exp.onnx", tmp_path / "big.npz", tmp_path / "out2", ExportConfig(dtype="float16"))
    assert not any((tmp_path / d / "shards").exists() for d in ("out1", "out2"))


def test_unwritable_or_foreign_output_folder(tmp_path):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write"):
        export_teacher(teacher, data, tmp_path / "file" / "out", ExportConfig())
    with pytest.raises(OutputError, match="exists and is not a folder"):
        export_teacher(teacher, data, tmp_path / "file", ExportConfig())
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="is not empty and holds no distillation export"):
        export_teacher(teacher, data, foreign, ExportConfig())
    assert [p.name for p in foreign.iterdir()] == ["keep.jpg"]


def test_full_disk_keeps_finished_shards_and_resumes(tmp_path, monkeypatch):
    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(samples_per_shard=6)
    with monkeypatch.context() as patch:
        # one array + shard.json per shard: shards 0 and 1 complete, shard 2 fails on its first file
        interrupt_on_write(patch, after=4, error=OSError(errno.ENOSPC, "No space left on device"))
        with pytest.raises(OutputError, match="No space left on device.*run again to resume"):
            export_teacher(teacher, data, tmp_path / "out", config)
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["000000", "000001"]
    assert not (out / ".partial").exists(), "the failed shard left nothing behind"
    with pytest.raises(InputError, match="incomplete"):
        TeacherOutputs(out)
    assert export_teacher(teacher, data, out, config).written == [2, 3]
    assert len(TeacherOutputs(out)) == SAMPLES


def test_config_validation():
    with pytest.raises(UsageError, match="views=2 needs an augmentation"):
        ExportConfig(views=2)
    with pytest.raises(UsageError, match="top_k must be a positive"):
        ExportConfig(top_k=0)
    with pytest.raises(UsageError, match="named both"):
        ExportConfig(logits=("a",), features=("a",))
    with pytest.raises(UsageError, match="class_axis 0 is the batch axis"):
        ExportConfig(class_axis=0)


def test_topk_larger_than_classes_is_refused(tmp_path):
    with pytest.raises(UsageError, match="top_k=11 exceeds the 10 classes"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(top_k=11))
    assert not (tmp_path / "out").exists()


def test_python_iterable_source_and_explicit_ids(tmp_path):
    x = samples(4)
    gen = ({"x": x[i:i + 1]} for i in range(4))
    export_teacher(teacher_file(tmp_path), gen, tmp_path / "out", ExportConfig(), ids=["a", "b", "c", "d"])
    outputs = TeacherOutputs(tmp_path / "out")
    assert outputs.ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(outputs.by_id("c")["logits"], reference(teacher_file(tmp_path), x)["logits"][2], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="unique"):
        export_teacher(teacher_file(tmp_path), [{"x": x[i:i + 1]} for i in range(4)], tmp_path / "o2", ExportConfig(), ids=["a"] * 4)
    assert not (tmp_path / "o2").exists()


def test_image_folder_source_records_preprocessing_and_skips_unread_files(tmp_path):
    from PIL import Image

    from onnxcomp.data import input_specs, open_data
    from onnxcomp.data_images import ImageOptions, Resize
    from onnxcomp.distill.samples import iter_range

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    teacher = teacher_file(tmp_path)
    options = ImageOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize=Resize.STRETCH)
    config = ExportConfig(samples_per_shard=2, batch_size=2)
    export_teacher(teacher, folder, tmp_path / "full", config, image_options=options)
    for part in ((1, 3), (3, 3), (2, 3)):
        export_teacher(teacher, folder, tmp_path / "split", config, image_options=options, part=part)
    assert shard_bytes(tmp_path / "split") == shard_bytes(tmp_path / "full")
    outputs = TeacherOutputs(tmp_path / "full")
    assert outputs.ids == [f"im{i}.png" for i in range(6)]
    recorded = outputs.manifest["plan"]["preprocessing"]
    assert recorded["source_kind"] == "ImageFolderDataset"
    assert recorded["image_options"]["mean"] == [0.5, 0.5, 0.5] and recorded["image_options"]["resize"] == "stretch"
    outputs.check_data(folder)  # re-read with the recorded preprocessing
    with pytest.raises(DataError, match="differ"):
        outputs.check_data(folder, image_options=ImageOptions(resize=Resize.STRETCH))

    # Part and resume skips do not even open the files before the range:
    (folder / "im0b.png").write_bytes(b"not a png")  # sample 1 (sorted after im0.png)
    dataset = open_data(folder, input_specs(onnx.load(teacher)), image_options=options)
    assert len(list(iter_range(dataset, 2, 7))) == 5
    with pytest.raises(DataError, match="im0b.png: not a readable image"):
        list(iter_range(dataset, 0, 3))


def test_in_memory_teacher(tmp_path):
    model = builders.resnet_block()
    export_teacher(model, data_file(tmp_path), tmp_path / "out", ExportConfig())
    outputs = TeacherOutputs(tmp_path / "out")
    assert outputs.manifest["plan"]["teacher"]["sha256"] == hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    outputs.check_teacher(model)



def test_ray_backend_without_ray_is_refused_up_front(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(UsageError, match=r"needs Ray: pip install 'onnxcomp\[ray\]'"):
        export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(), backend="ray")
    assert not (tmp_path / "out").exists()


def test_concurrent_parts_into_one_folder(tmp_path):
    """Parts started at the same moment race for the manifest; the loser checks it and carries on."""
    import threading

    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(samples_per_shard=3, batch_size=2)
    export_teacher(teacher, data, tmp_path / "full", config)
    errors = []

    def run(i):
        try:
            export_teacher(teacher, data, tmp_path / "split", config, part=(i, 3))
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert shard_bytes(tmp_path / "split") == shard_bytes(tmp_path / "full")


def test_a_part_checking_the_folder_while_another_writes_into_it(tmp_path, monkeypatch):
    """The folder check must not mistake another part's fresh manifest and shards for foreign files.

    Deterministic form of the race the threaded test above hits only now and
    then: the other part writes its manifest and first shard while this one
    lists the folder.
    """
    import shutil

    teacher, data = teacher_file(tmp_path), data_file(tmp_path)
    config = ExportConfig(samples_per_shard=3, batch_size=2)
    export_teacher(teacher, data, tmp_path / "full", config)
    split = tmp_path / "split"
    split.mkdir()  # the other part has made the folder, nothing more yet
    real_iterdir = Path.iterdir

    def iterdir_while_the_other_part_writes(self):
        if self == split and not (split / "manifest.json").exists():
            shutil.copy(tmp_path / "full" / "manifest.json", split / "manifest.json")
            shutil.copytree(tmp_path / "full" / "shards" / "000000", split / "shards" / "000000")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir_while_the_other_part_writes)
    summary = export_teacher(teacher, data, split, config)
    assert summary.skipped == [0] and summary.missing == []
    assert shard_bytes(split) == shard_bytes(tmp_path / "full")


def test_size_only_verification_still_catches_truncation(tmp_path):
    export_teacher(teacher_file(tmp_path), data_file(tmp_path), tmp_path / "out", ExportConfig(samples_per_shard=8))
    victim = tmp_path / "out" / "shards" / "000001" / "t000.npy"
    victim.write_bytes(victim.read_bytes()[:-4])
    with pytest.raises(InputError, match=r"shard 1: file t000.npy \('logits'\) has \d+ bytes, \d+ recorded"):
        TeacherOutputs(tmp_path / "out", verify="sizes")
