r"""Distillation fine-tuning on the graph: the student trains to match the teacher's outputs.

The student (e.g. a pruned or Q/DQ-quantized model) is evaluated by the
differentiable executor; the teacher (the original model) runs in
onnxruntime on the same unlabeled inputs. Per output pair:

* **soft-target KL** (Hinton et al.) for logit-like outputs:
  ``T^2 * mean_rows sum_c p_t^T (log p_t^T - log p_s^T)`` with
  ``p^T = softmax(z / T)`` over the last axis. ``loss='auto'`` picks it for
  2-D float outputs ``[batch, classes]`` and for outputs of a Softmax or
  LogSoftmax over the last axis (any rank: one distribution per row). An
  output that is already a probability (a Softmax output) is read as
  ``log p``, which has the same softmax at every temperature as the logits.
* **normalised MSE** otherwise: ``mean((s - t)^2) / var(t)``, with the
  teacher output's variance measured once on the first batch, so outputs of
  different scales weigh alike and the loss of a perfect copy is 0, that of a
  constant prediction about 1.

The total is the mean over the outputs. Adam updates the parameters; batches
come from the streamed :class:`~onnxcomp.data.Dataset` through a seeded
shuffle buffer (bounded memory: at most ``shuffle_buffer`` samples are held).
When every input's batch dim is dynamic in both models, the samples of a
batch are concatenated along axis 0 (samples of differing shapes go in
separate chunks); otherwise each sample runs alone and gradients accumulate
over the batch. With ``heldout`` data the held-out loss is measured before
training and after each evaluation period; training stops early after
``patience`` evaluations without improvement and the best weights are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..data import Feed, input_specs, open_data
from ..errors import DataError, TrainingError, UsageError
from ..progress import ProgressFactory, null_progress
from ..runtime import create_session
from ..runtime import run as run_session
from .executor import GraphModule
from .writeback import Agreement, check_agreement, write_back

logger = logging.getLogger(__name__)

LOSSES = ("auto", "kl", "mse")


@dataclasses.dataclass
class FinetuneReport:
    """What a fine-tune did.

    Attributes:
        loss_curve: Training loss per step (every k-th step when there were
            more than 200), the mean over the step's batch.
        heldout_before / heldout_after: Held-out loss before training and of
            the weights returned (the best evaluation), None without held-out data.
        stopped: Why training ended: "epochs", "steps", "time" or "early stopping".
        losses: Output name -> "kl" or "mse".
        batching: "concat" (samples concatenated on the batch axis) or
            "accumulate" (one sample at a time, gradients accumulated).
        agreement: The trained graph in the executor vs onnxruntime.
        evaluated_at: The step of the last held-out evaluation.
    """

    steps: int = 0
    samples: int = 0
    epochs: int = 0
    seconds: float = 0.0
    stopped: str = "epochs"
    loss_first: float | None = None
    loss_last: float | None = None
    loss_curve: list[float] = dataclasses.field(default_factory=list)
    heldout_before: float | None = None
    heldout_after: float | None = None
    best_step: int | None = None
    losses: dict[str, str] = dataclasses.field(default_factory=dict)
    batching: str = "concat"
    trained_tensors: int = 0
    trained_elements: int = 0
    agreement: Agreement | None = None
    evaluated_at: int | None = None

    def summary(self) -> str:
        held = (f", held-out loss {self.heldout_before:.4g} -> {self.heldout_after:.4g}"
                if self.heldout_before is not None and self.heldout_after is not None else "")
        return (f"fine-tuned {self.trained_elements} weights in {self.trained_tensors} tensors for {self.steps} steps "
                f"({self.samples} samples, {self.seconds:.1f} s, stopped by {self.stopped}); "
                f"training loss {self.loss_first:.4g} -> {self.loss_last:.4g}{held}")


def finetune(
    student: onnx.ModelProto,
    teacher: onnx.ModelProto,
    data: Any,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 16,
    temperature: float = 4.0,
    loss: str = "auto",
    seed: int = 0,
    progress: ProgressFactory = null_progress,
    heldout: Any = None,
    eval_every: int | None = None,
    patience: int = 3,
    shuffle_buffer: int = 256,
    trainable: Iterable[str] | None = None,
    train_constants: bool | None = None,
    check: bool = True,
    threads: int | None = None,
) -> tuple[onnx.ModelProto, FinetuneReport]:
    """Fine-tune ``student`` to reproduce ``teacher`` on ``data``; returns the trained model and a report.

    Args:
        student: The model to train (not modified; a trained copy is returned).
        teacher: The reference model, run in onnxruntime; same inputs as the student.
        data: Unlabeled inputs: any source :func:`onnxcomp.data.open_data` accepts.
        epochs / steps / minutes: The budget; training stops at whichever comes
            first (one epoch when none is given).
        lr: Adam's learning rate.
        batch_size: Samples per optimizer step.
        temperature: Of the KL loss.
        loss: "auto", "kl" (every float output) or "mse" (every float output).
        seed: Of the shuffle order.
        progress: A progress factory (one update per step).
        heldout: Held-out inputs (any data source) for the before/after loss and early stopping.
        eval_every: Steps between held-out evaluations (default: once per epoch,
            or a tenth of ``steps`` when only steps are given).
        patience: Evaluations without improvement before stopping.
        shuffle_buffer: Samples held for shuffling.
        trainable: ONNX names of the tensors to train (default all that qualify).
        train_constants: Train Constant-node weights too; by default only when
            the graph has no trainable initializer (exporters that keep every
            weight in Constant nodes).
        check: Check the trained graph against onnxruntime on a few samples.
        threads: torch's intra-op threads during the run (restored after);
            default torch's setting. Small graphs on a busy machine train
            many times faster with 1.

    Raises:
        UsageError: A bad option.
        DataError: Data that does not fit the student.
        TrainingError: An unsupported op, a diverging loss, outputs that cannot
            be paired, or a trained graph onnxruntime evaluates differently.
    """
    check_options(epochs, steps, minutes, lr, batch_size, temperature, loss, patience, shuffle_buffer, threads)
    if epochs is None and steps is None and minutes is None:
        epochs = 1
    if eval_every is None and epochs is None and steps is not None:
        eval_every = max(1, steps // 10)
    with torch_threads(threads):
        start = time.perf_counter()
        module = student_module(student, trainable, train_constants)
        session = create_session(teacher, intra_op_threads=threads)
        specs = input_specs(student)
        train_data = open_data(data, specs)
        held_data = open_data(heldout, specs) if heldout is not None else None
        batcher = Batcher(batch_size, concat=dynamic_batch(student) and dynamic_batch(teacher))
        objective = _Objective(_pair_outputs(module, session), loss, temperature, softmax_outputs(student))
        objective.calibrate([_teacher(session, feed) for feed, _ in batcher.chunks(take(train_data, batch_size))])
        report = FinetuneReport(batching="concat" if batcher.concat else "accumulate", losses=dict(objective.kinds))
        task = _LiveTeacher(session, batcher, objective)
        trainer = Trainer(module, task, held_data, patience, torch.optim.Adam, lr, report)

        rng = np.random.default_rng(seed)
        run_epochs(trainer, lambda: shuffled(train_data, shuffle_buffer, rng), epochs=epochs, steps=steps,
                   deadline=start + minutes * 60 if minutes is not None else math.inf, eval_every=eval_every,
                   bar=progress(steps, "fine-tune", "step"), empty=f"{train_data.description}: contains no samples")
        report = trainer.finish()
        trained = write_back(student, module)
        if check:
            report.agreement = check_agreement(trained, take(held_data or train_data, 4))
        report.seconds = time.perf_counter() - start
        logger.info("%s", report.summary())
        return trained, report


def run_epochs(trainer: Trainer, samples: Callable[[], Iterator[Any]], *, epochs: int | None, steps: int | None,
               deadline: float, eval_every: int | None, bar, empty: str) -> None:
    """Epochs of ``trainer`` over ``samples()`` (a fresh iterator per epoch) until the budget says stop.

    Sets ``trainer.report.stopped``; closes ``bar``.

    Raises:
        DataError: The first epoch saw no sample (message ``empty``).
    """
    try:
        while epochs is None or trainer.report.epochs < epochs:
            stop = trainer.epoch(samples(), steps, deadline, eval_every, bar)
            if trainer.report.samples == 0:
                raise DataError(empty)
            if stop:
                trainer.report.stopped = stop
                break
    finally:
        bar.close()


class Task(Protocol):
    """What the training loop needs to know about the samples and the loss.

    ``chunks`` splits a batch (a list of items, e.g. feeds) into forward passes
    with their sample counts; ``loss`` is the mean loss of one chunk.
    """

    batch_size: int

    def chunks(self, batch: Sequence[Any]) -> list[tuple[Any, int]]: ...

    def loss(self, module: GraphModule, chunk: Any) -> torch.Tensor: ...


class Trainer:
    """The training loop's state: optimizer steps, held-out evaluations, the best weights so far."""

    def __init__(self, module: GraphModule, task: Task, heldout: Iterable[Any] | None,
                 patience: int, optimizer, lr: float, report: FinetuneReport):
        self.module, self.task, self.heldout, self.patience = module, task, heldout, patience
        params = [p for _, p in module.named_weights()]
        self.optimizer = optimizer(params, lr=lr)
        self.lr = lr
        self.report = report
        report.trained_tensors, report.trained_elements = len(params), sum(p.numel() for p in params)
        self.curve: list[float] = []
        self.best = _snapshot(module)
        self.bad_evaluations = 0
        if heldout is not None:
            report.heldout_before = report.heldout_after = _evaluate(module, task, heldout)
            report.best_step = report.evaluated_at = 0
            logger.info("held-out loss before fine-tuning: %.6g", report.heldout_before)

    def epoch(self, samples: Iterator[Any], steps: int | None, deadline: float, eval_every: int | None, bar) -> str | None:
        """One pass over the data; returns why training must stop, or None to go on."""
        report = self.report
        for batch in _batches(samples, self.task.batch_size):
            value, count = _step(self.module, self.task, self.optimizer, batch)
            if not math.isfinite(value):
                raise TrainingError(f"the loss is not finite at step {report.steps + 1} (lower the learning rate, now {self.lr:g})")
            report.steps += 1
            report.samples += count
            self.curve.append(value)
            bar.update(1)
            if eval_every and report.steps % eval_every == 0 and self.evaluate():
                return "early stopping"
            stop = _stop_reason(report.steps, steps, deadline)
            if stop:
                return stop
        report.epochs += 1
        if not eval_every and self.evaluate():
            return "early stopping"
        return None

    def evaluate(self) -> bool:
        """Held-out loss now; keeps the weights if they are the best so far. Returns whether to stop early."""
        if self.heldout is None:
            return False
        report = self.report
        value = _evaluate(self.module, self.task, self.heldout)
        report.evaluated_at = report.steps
        logger.info("step %d: held-out loss %.6g", report.steps, value)
        if value < report.heldout_after:
            report.heldout_after, report.best_step = value, report.steps
            self.best = _snapshot(self.module)
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        return self.bad_evaluations >= self.patience

    def finish(self) -> FinetuneReport:
        """Evaluate the last weights if not done yet, keep the best, summarize the loss curve."""
        report = self.report
        if self.heldout is not None:
            if report.steps and report.evaluated_at != report.steps:
                self.evaluate()
            _restore(self.module, self.best)
        curve = self.curve
        report.loss_curve = curve[:: max(1, math.ceil(len(curve) / 200))]
        if curve:
            report.loss_first, report.loss_last = curve[0], float(np.mean(curve[-max(1, len(curve) // 20):]))
        return report


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_options(epochs, steps, minutes, lr, batch_size, temperature, loss, patience, shuffle_buffer, threads) -> None:
    for name, value in (("epochs", epochs), ("steps", steps), ("minutes", minutes), ("threads", threads)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value}")
    for name, value in (("lr", lr), ("batch_size", batch_size), ("temperature", temperature),
                        ("patience", patience), ("shuffle_buffer", shuffle_buffer)):
        if not value > 0:
            raise UsageError(f"{name} must be positive, got {value}")
    if loss not in LOSSES:
        raise UsageError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


def student_module(student, trainable, train_constants) -> GraphModule:
    module = GraphModule(student, trainable=trainable, train_constants=bool(train_constants))
    if train_constants is None and not any(True for _ in module.named_weights()):
        module = GraphModule(student, trainable=trainable, train_constants=True)
    if not any(True for _ in module.named_weights()):
        raise TrainingError("the student has no float weights to train")
    return module


def dynamic_batch(model: onnx.ModelProto) -> bool:
    specs = input_specs(model)
    return all(s.shape is not None and s.shape and not isinstance(s.shape[0], int) for s in specs)


def _pair_outputs(module: GraphModule, session) -> list[tuple[str, str]]:
    """(student output, teacher output): by name, else by position."""
    teacher = [o.name for o in session.get_outputs()]
    student = module.output_names
    if set(student) <= set(teacher):
        return [(name, name) for name in student]
    if len(student) == len(teacher):
        return list(zip(student, teacher))
    raise TrainingError(f"cannot pair the student's outputs {student} with the teacher's {teacher}")


def softmax_outputs(model: onnx.ModelProto) -> dict[str, str]:
    """Graph outputs made by a Softmax / LogSoftmax over the last axis: name -> op type."""
    ranks = {o.name: len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None for o in model.graph.output}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("Softmax", "LogSoftmax") or node.output[0] not in ranks:
            continue
        rank = ranks[node.output[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if axis is None:  # the default: the last axis from opset 13, axis 1 before
            axis = -1 if _opset(model) >= 13 else 1
        if axis == -1 or rank is not None and axis == rank - 1:
            found[node.output[0]] = node.op_type
    return found


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class _Objective:
    """The distillation loss over all float output pairs (see the module docstring)."""

    def __init__(self, pairs, loss: str, temperature: float, softmax_outputs: Mapping[str, str]):
        self.pairs, self.loss, self.temperature = pairs, loss, temperature
        self.softmax_outputs = softmax_outputs
        self.kinds: dict[str, str] = {}
        self.scales: dict[str, float] = {}

    def calibrate(self, teacher: Sequence[Mapping[str, np.ndarray]]) -> None:
        """Choose each output's loss and measure its scale on the teacher's outputs for a first batch."""
        for student_name, teacher_name in self.pairs:
            if teacher[0][teacher_name].dtype.kind != "f":
                continue
            ref = np.concatenate([out[teacher_name].reshape(-1) for out in teacher])
            if self.loss == "auto":
                logit_like = teacher[0][teacher_name].ndim == 2 or student_name in self.softmax_outputs
                self.kinds[student_name] = "kl" if logit_like else "mse"
            else:
                self.kinds[student_name] = self.loss
            variance = float(np.var(ref.astype(np.float64)))
            self.scales[student_name] = variance if variance > 1e-12 else float(np.mean(ref.astype(np.float64) ** 2)) or 1.0
        if not self.kinds:
            raise TrainingError("the teacher has no float outputs to distil from")

    def __call__(self, student: Mapping[str, torch.Tensor], teacher: Mapping[str, np.ndarray]) -> torch.Tensor:
        total = 0.0
        for student_name, teacher_name in self.pairs:
            kind = self.kinds.get(student_name)
            if kind is None:
                continue
            s = student[student_name].float()
            t = torch.from_numpy(np.asarray(teacher[teacher_name], dtype=np.float32))
            if kind == "kl":
                total = total + self._kl(student_name, s, t)
            else:
                total = total + torch.mean((s - t) ** 2) / self.scales[student_name]
        return total / len(self.kinds)

    def _kl(self, name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.softmax_outputs.get(name) == "Softmax":  # probabilities: log p has the logits' softmax
            s, t = torch.log(s.clamp_min(1e-30)), torch.log(t.clamp_min(1e-30))
        s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
        temp = self.temperature
        log_ps, log_pt = F.log_softmax(s / temp, dim=-1), F.log_softmax(t / temp, dim=-1)
        return temp**2 * (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()


class Batcher:
    """Turns a list of samples into chunks the models can run: concatenated, or one by one."""

    def __init__(self, batch_size: int, concat: bool):
        self.batch_size, self.concat = batch_size, concat

    def groups(self, samples: Sequence[Feed]) -> list[list[int]]:
        """The samples' indices per forward pass (samples of one shape together when concatenating)."""
        if not self.concat:
            return [[i] for i in range(len(samples))]
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(s.items())), []).append(i)
        return list(groups.values())

    def chunks(self, samples: Sequence[Feed]) -> list[tuple[Feed, int]]:
        """(feed, sample count) per forward pass."""
        return [(merge([samples[i] for i in group]), sum(count_samples(samples[i]) for i in group))
                for group in self.groups(samples)]


class _LiveTeacher:
    """The task of :func:`finetune`: the loss against the teacher run in onnxruntime on the same feed."""

    def __init__(self, session, batcher: Batcher, objective: _Objective):
        self.session, self.batcher, self.objective = session, batcher, objective
        self.batch_size = batcher.batch_size

    def chunks(self, batch: Sequence[Feed]) -> list[tuple[Feed, int]]:
        return self.batcher.chunks(batch)

    def loss(self, module: GraphModule, chunk: Feed) -> torch.Tensor:
        return self.objective(module(chunk), _teacher(self.session, chunk))


def count_samples(sample: Feed) -> int:
    first = next(iter(sample.values()))
    return int(first.shape[0]) if first.ndim else 1


def merge(samples: Sequence[Feed]) -> Feed:
    if len(samples) == 1:
        return dict(samples[0])
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}


def _teacher(session, feed: Feed) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    values = run_session(session, names, feed, error=DataError, what="teacher model")
    return dict(zip(names, values))


def _step(module, task: Task, optimizer, batch: Sequence[Any]) -> tuple[float, int]:
    """One optimizer step over ``batch``: (its mean loss, its sample count)."""
    optimizer.zero_grad(set_to_none=True)
    chunks = task.chunks(batch)
    total = sum(n for _, n in chunks)
    value = 0.0
    for chunk, n in chunks:
        loss = task.loss(module, chunk) * (n / total)
        loss.backward()
        value += float(loss.detach())
    optimizer.step()
    return value, total


@torch.no_grad()
def _evaluate(module, task: Task, data: Iterable[Any]) -> float:
    """Mean loss per sample over ``data`` (streamed in batches)."""
    weighted, count = 0.0, 0
    for batch in _batches(iter(data), task.batch_size):
        for chunk, n in task.chunks(batch):
            weighted += float(task.loss(module, chunk)) * n
            count += n
    if not count:
        raise DataError("the held-out data contains no samples")
    return weighted / count


def _snapshot(module: GraphModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_weights()}


@torch.no_grad()
def _restore(module: GraphModule, values: Mapping[str, torch.Tensor]) -> None:
    for name, p in module.named_weights():
        p.copy_(values[name])


def _stop_reason(step: int, steps: int | None, deadline: float) -> str | None:
    if steps is not None and step >= steps:
        return "steps"
    if time.perf_counter() >= deadline:
        return "time"
    return None


def shuffled(data: Iterable[Any], buffer_size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Samples in a seeded random order, holding at most ``buffer_size`` at a time."""
    buffer: list[Any] = []
    for sample in data:
        if len(buffer) < buffer_size:
            buffer.append(sample)
            continue
        i = int(rng.integers(len(buffer)))
        yield buffer[i]
        buffer[i] = sample
    rng.shuffle(buffer)
    yield from buffer


def _batches(samples: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def take(data: Iterable[Feed], count: int) -> list[Feed]:
    out = []
    for sample in data:
        out.append(sample)
        if len(out) == count:
            break
    return out
