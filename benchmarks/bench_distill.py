"""Distillation end to end: export a teacher's outputs, train students with them, then PTQ.

Run:  python -m benchmarks.bench_distill [--seeds 5] [--skip-real] [--ray]

Part 1 -- KD then PTQ on scikit-learn's digits (1797 real 8x8 scans, offline):
a CNN teacher is trained in torch and exported to ONNX; `onnxcomp distill export`
stores its logits over the training images; a 64-32-10 MLP student is trained
(a) from labels alone and (b) with the exported teacher logits (Hinton KD,
T = 4), over several seeds, in two regimes: all 1078 training labels, and only
10 % of them labelled (the teacher's outputs on all training images act as an
unlabelled transfer set: the usual reason to export a teacher once). The KD
student of the first seed then goes through `onnxcomp optimize --quantize int8`
(static int8 when that mode exists, else cleanup only and `int8-dynamic`),
and every stage is measured in onnxruntime: test accuracy, file size and
interleaved batch-1 latency. The `distill train` row: the same student (same
initial weights, exported to ONNX) trained by `onnxcomp distill train` on the
ONNX graph from the same export, labels and settings, against the plain
PyTorch KD student of the all-labels regime, seed by seed.

Part 2 -- export on real models: EfficientNet-Lite1 (1000 ImageNet classes) on
real photo crops and the PP-OCRv5 recogniser (18385 CTC classes) on rendered
text lines: export throughput against a bare onnxruntime loop over the same
arrays and batch size (the anchor: the export's overhead is the ratio), and the
size saving of top-k storage. With --ray, the same EfficientNet export on a
local Ray instance (2 workers) against the local backend.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEEDS = 5
TEMPERATURE = 4.0
ALPHA = 0.9
LABELLED_FRACTION = 0.1


def _onnxcomp(*args) -> subprocess.CompletedProcess:
    """Run the real command line (python -m onnxcomp ...), failing loudly."""
    result = subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"onnxcomp {' '.join(map(str, args))} failed ({result.returncode}): {result.stderr.strip()}")
    return result


# --- part 1: digits ------------------------------------------------------------------------------


def digits_splits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    return train_test_split(x, digits.target, test_size=0.4, random_state=0, stratify=digits.target)


def _models():
    import torch
    from torch import nn

    class Teacher(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
            )
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10))

        def forward(self, x):
            return self.head(self.features(x))

    class Student(nn.Module):
        def __init__(self, hidden: int = 32):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x):
            return self.net(x)

    return torch, Teacher, Student


def train(make_model, x, labels, *, seed, epochs, teacher_logits=None, lr=3e-3):
    """A model from ``make_model()`` (initialized under ``seed``) trained with Adam, batch 64.

    Labels of -100 are unlabelled (KD term only). Without teacher logits: cross-entropy.
    """
    import torch

    from onnxcomp.distill.torch_adapter import KDLoss

    generator = torch.manual_seed(seed)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x), torch.from_numpy(labels)
    kd = KDLoss(temperature=TEMPERATURE, alpha=ALPHA)
    teacher = None if teacher_logits is None else torch.from_numpy(teacher_logits)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), 64):
            rows = order[start:start + 64]
            out = model(xs[rows])
            if teacher is None:
                loss = torch.nn.functional.cross_entropy(out, ys[rows], ignore_index=-100)
            else:
                loss = kd(out, {"logits": teacher[rows]}, ys[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def export_onnx(model, path: Path) -> Path:
    import torch

    torch.onnx.export(model, torch.zeros(1, 1, 8, 8), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from onnxcomp.runtime import create_session

    logits = create_session(path).run(None, {"x": x})[0]
    return float((logits.argmax(1) == y).mean())


def digits_kd(work: Path, seeds: int) -> None:
    torch, Teacher, Student = _models()
    torch.set_num_threads(1)
    from onnxcomp.distill import TeacherOutputs

    x_train, x_test, y_train, y_test = digits_splits()
    print(f"\n== KD on sklearn digits: {len(x_train)} train / {len(x_test)} test images, teacher CNN -> student MLP 64-32-10 ==")
    started = time.perf_counter()
    teacher = train(Teacher, x_train, y_train, seed=0, epochs=40, lr=1e-3)
    teacher_path = export_onnx(teacher, work / "teacher.onnx")
    np.savez(work / "train.npz", x=x_train)
    np.savez(work / "calib.npz", x=x_train[:128])
    print(f"teacher trained in {time.perf_counter() - started:.0f} s; test accuracy {ort_accuracy(teacher_path, x_test, y_test):.4f} (onnxruntime)")

    result = _onnxcomp("distill", "export", teacher_path, "--data", work / "train.npz", "-o", work / "kd", "--batch-size", "64")
    outputs = TeacherOutputs(work / "kd")
    outputs.check_teacher(teacher_path)
    teacher_logits = outputs.take(range(len(outputs)))["logits"]
    print("onnxcomp distill export teacher.onnx --data train.npz -o kd:\n  " + "\n  ".join(result.stdout.strip().splitlines()[1:]))

    rng = np.random.default_rng(0)
    labelled = np.zeros(len(y_train), dtype=bool)
    labelled[rng.permutation(len(y_train))[: int(LABELLED_FRACTION * len(y_train))]] = True
    y_partial = np.where(labelled, y_train, -100)
    regimes = {
        f"all {len(y_train)} labels": {"labels_x": x_train, "labels_y": y_train, "labels_epochs": 150, "kd_y": y_train},
        f"{labelled.sum()} labels (10%) + teacher on all {len(y_train)}": {
            "labels_x": x_train[labelled], "labels_y": y_train[labelled], "labels_epochs": 1500, "kd_y": y_partial},
    }
    kd_student, plain_kd = None, None
    print(f"\nstudent test accuracy over {seeds} seeds (KD: alpha {ALPHA}, T {TEMPERATURE}):")
    print(f"{'regime':<38} {'labels only':>16} {'with teacher':>16} {'gain':>18}")
    for name, regime in regimes.items():
        plain, distilled = [], []
        for seed in range(seeds):
            a = train(Student, regime["labels_x"], regime["labels_y"], seed=seed, epochs=regime["labels_epochs"])
            b = train(Student, x_train, regime["kd_y"], seed=seed, epochs=150, teacher_logits=teacher_logits)
            plain.append(_torch_accuracy(a, x_test, y_test))
            distilled.append(_torch_accuracy(b, x_test, y_test))
            if kd_student is None and regime["kd_y"] is y_partial:
                kd_student, labels_student = b, a
        plain_kd = distilled if plain_kd is None else plain_kd  # the all-labels regime
        gains = np.array(distilled) - np.array(plain)
        print(f"{name:<38} {_mean_sd(plain):>16} {_mean_sd(distilled):>16} {_mean_sd(gains, signed=True):>18}"
              f"  (KD better in {int((gains > 0).sum())}/{seeds} seeds)")
    distill_train_row(work, Student, y_train, x_test, y_test, plain_kd)
    kd_then_ptq(work, teacher_path, labels_student, kd_student, x_test, y_test)


def distill_train_row(work: Path, Student, y_train, x_test, y_test, plain_kd: list[float]) -> None:
    """`onnxcomp distill train` on the ONNX student vs the plain PyTorch KD student (all labels), per seed."""
    import torch

    np.save(work / "labels.npy", y_train)
    ours, seconds = [], []
    for seed in range(len(plain_kd)):
        torch.manual_seed(seed)  # the initial weights train() gives the plain student of this seed
        student = export_onnx(Student(), work / f"student_init_{seed}.onnx")
        started = time.perf_counter()
        _onnxcomp("distill", "train", student, "--teacher-outputs", work / "kd", "--data", work / "train.npz",
                  "-o", work / f"student_dt_{seed}.onnx", "--labels", work / "labels.npy", "--label-weight", 1 - ALPHA,
                  "--temperature", TEMPERATURE, "--epochs", 150, "--lr", 3e-3, "--batch-size", 64, "--weight-decay", 1e-4,
                  "--seed", seed, "--threads", 1, "-q")
        seconds.append(time.perf_counter() - started)
        ours.append(ort_accuracy(work / f"student_dt_{seed}.onnx", x_test, y_test))
    diffs = np.array(ours) - np.array(plain_kd)
    print(f"{'onnxcomp distill train (all labels)':<38} {_mean_sd(plain_kd):>16} {_mean_sd(ours):>16} "
          f"{_mean_sd(diffs, signed=True):>18}  (plain PyTorch | onnxcomp | difference; "
          f"{statistics.mean(seconds):.1f} s per run incl. start-up)")


def _torch_accuracy(model, x, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _mean_sd(values, signed: bool = False) -> str:
    values = [100 * v for v in values]
    sign = "+" if signed else ""
    return f"{statistics.mean(values):{sign}.2f} ± {statistics.stdev(values):.2f} %" if len(values) > 1 else f"{values[0]:{sign}.2f} %"


def kd_then_ptq(work: Path, teacher_path: Path, labels_student, kd_student, x_test, y_test) -> None:
    from onnxcomp.latency import measure_latency
    from onnxcomp.model_io import file_size_with_data
    from onnxcomp.pipelines import QUANTIZE_MODES

    stages = {
        "teacher CNN fp32": teacher_path,
        "student, labels only (10%) fp32": export_onnx(labels_student, work / "student_labels.onnx"),
        "student KD fp32": export_onnx(kd_student, work / "student_kd.onnx"),
    }
    modes = [m for m in ("int8", "int8-dynamic") if m in QUANTIZE_MODES]
    if "int8" not in modes:
        _onnxcomp("optimize", stages["student KD fp32"], "-o", work / "student_kd_cleanup.onnx", "--calib", work / "calib.npz", "-q")
        stages["student KD + cleanup (no int8 mode in this build)"] = work / "student_kd_cleanup.onnx"
    for mode in modes:
        path = work / f"student_kd_{mode}.onnx"
        _onnxcomp("optimize", stages["student KD fp32"], "-o", path, "--quantize", mode, "--calib", work / "calib.npz", "-q")
        stages[f"student KD + PTQ {mode}"] = path
    latency = measure_latency({name: str(path) for name, path in stages.items()}, {"x": x_test[:1]}, budget_s=5.0, max_runs=2000)
    base = latency["teacher CNN fp32"].median_ms
    print(f"\nKD then PTQ (accuracy on the {len(y_test)} test images, batch-1 latency interleaved):")
    print(f"{'stage':<52} {'accuracy':>9} {'size':>10} {'latency':>10} {'vs teacher':>11}")
    for name, path in stages.items():
        print(f"{name:<52} {ort_accuracy(path, x_test, y_test):>9.4f} {file_size_with_data(path) / 1024:>8.1f} KB "
              f"{latency[name].median_ms * 1000:>7.1f} us {latency[name].median_ms / base:>10.2f}x")


# --- part 2: real models ---------------------------------------------------------------------------


def _bare_ort(model_path, x: np.ndarray, input_name: str, batch: int) -> tuple[float, float]:
    """A plain onnxruntime script (same session options as the exporter): (session seconds, loop seconds)."""
    from onnxcomp.runtime import OptLevel, create_session

    started = time.perf_counter()
    session = create_session(model_path, level=OptLevel.ALL)
    setup = time.perf_counter() - started
    for start in range(0, len(x), batch):
        session.run(None, {input_name: x[start:start + batch]})
    return setup, time.perf_counter() - started - setup


def _export_seconds(model_path, data: Path, out: Path, config, **kwargs) -> tuple[float, object]:
    from onnxcomp.distill import export_teacher

    started = time.perf_counter()
    summary = export_teacher(model_path, data, out, config, **kwargs)
    return time.perf_counter() - started, summary


def real_models(work: Path, ray: bool) -> None:
    from benchmarks import assets
    from onnxcomp.distill import ExportConfig

    print("\n== Export on real models (throughput vs a bare onnxruntime loop, same arrays and batch) ==")
    spec = assets.EFFICIENTNET_LITE1_PREPROCESS
    photos = assets.preprocess(assets.photo_crops(64, size=spec.size, seed=0, split="calib"), spec)
    np.savez(work / "photos.npz", input=photos)
    texts = assets.text_lines(48, split="eval", max_chars=18)
    lines = []
    for i, text in enumerate(texts):
        line = assets.rec_preprocess(assets.render_line(text, seed=i))[:, :, :, :320]
        lines.append(np.pad(line, ((0, 0), (0, 0), (0, 0), (0, 320 - line.shape[3]))))
    np.savez(work / "lines.npz", x=np.concatenate(lines).astype(np.float32))
    cases = [
        ("EfficientNet-Lite1, 64 photos", assets.efficientnet_lite1_onnx(), work / "photos.npz", "input", photos,
         [("full logits fp32", ExportConfig(batch_size=8)), ("top-10 fp16", ExportConfig(batch_size=8, top_k=10, dtype="float16"))]),
        ("PP-OCRv5 rec, 48 lines 48x320", assets.ppocr_model("rec"), work / "lines.npz", "x", np.load(work / "lines.npz")["x"],
         [("full log-probs fp16", ExportConfig(batch_size=8, probabilities=True, dtype="float16")),
          ("top-5 fp16", ExportConfig(batch_size=8, probabilities=True, top_k=5, dtype="float16"))]),
    ]
    print(f"{'model':<32} {'stored':<20} {'rows/s':>7} {'bare ORT':>9} {'time vs bare':>13} {'per-row vs bare':>16} "
          f"{'setup s':>8} {'MiB':>7} {'top-k saving':>13}")
    for title, model_path, data, input_name, x, configs in cases:
        for label, config in configs:
            rounds = []
            for round_ in range(3):  # alternate bare and export runs; medians of the ratios are robust to load
                bare_setup, bare_loop = _bare_ort(model_path, x, input_name, config.batch_size)
                seconds, summary = _export_seconds(model_path, data, work / f"out-{label}-{round_}", config)
                loop = summary.seconds - summary.setup_seconds
                rounds.append((summary.rows / seconds, len(x) / (bare_setup + bare_loop), seconds / (bare_setup + bare_loop),
                               loop / bare_loop, summary.setup_seconds))
            rate, bare_rate, ratio, loop_ratio, setup = (statistics.median(column) for column in zip(*rounds))
            saving = f"{100 * summary.topk_saving:.2f} %" if summary.topk_saving is not None else "-"
            print(f"{title:<32} {label:<20} {rate:>7.1f} {bare_rate:>9.1f} {ratio:>12.2f}x {loop_ratio:>15.2f}x "
                  f"{setup:>8.2f} {summary.bytes_written / 2**20:>7.2f} {saving:>13}")
    print("(rows/s over the whole run; 'per-row' compares the shard loop with the bare inference loop, 'setup' is the "
          "export's fixed cost: teacher load + SHA-256, data validation, probe runs, manifest)")
    if ray:
        ray_vs_local(work)


def ray_vs_local(work: Path) -> None:
    """The same EfficientNet export with the local backend and on a local Ray instance (2 workers)."""
    import ray

    from benchmarks import assets
    from onnxcomp.distill import ExportConfig

    config = ExportConfig(batch_size=8, top_k=10, dtype="float16", samples_per_shard=8)
    model = assets.efficientnet_lite1_onnx()
    local, _ = _export_seconds(model, work / "photos.npz", work / "ray-local", config)
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - started
    try:
        remote, summary = _export_seconds(model, work / "photos.npz", work / "ray-ray", config, backend="ray", workers=2)
    finally:
        ray.shutdown()
    same = all(
        (work / "ray-local" / "shards" / f"{k:06d}" / f).read_bytes() == (work / "ray-ray" / "shards" / f"{k:06d}" / f).read_bytes()
        for k in range(summary.shards) for f in ("t000.npy", "t001.npy")
    )
    print(f"\nRay backend, EfficientNet-Lite1 top-10, 64 photos, 8 shards: local backend {local:.1f} s; Ray (2 actors x 1 "
          f"thread, running instance) {remote:.1f} s = {local / remote:.2f}x the local speed, plus {startup:.1f} s to start "
          f"Ray; shards byte-identical to the local export: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--skip-real", action="store_true", help="Only the digits KD part.")
    parser.add_argument("--skip-kd", action="store_true", help="Only the real-model export part.")
    parser.add_argument("--ray", action="store_true", help="Also time the Ray backend (needs onnxcomp[ray]).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        work = Path(tmp)
        if not args.skip_kd:
            digits_kd(work, args.seeds)
        if not args.skip_real:
            real_models(work, args.ray)


if __name__ == "__main__":
    main()
