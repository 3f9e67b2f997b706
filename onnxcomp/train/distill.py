r"""Training a student graph against an exported teacher (``onnxcomp distill train``).

The student is any ONNX model; the teacher's outputs were stored once by
``onnxcomp distill export`` (docs/distill-format.md) and are read memory-mapped
by :class:`~onnxcomp.distill.TeacherOutputs`. The student runs in the
differentiable executor (:class:`~onnxcomp.train.GraphModule`); the trained
weights are written back into the same graph (names, metadata, opsets kept).

**Samples.** Row ``r`` of the export belongs to sample ``r // views`` of the
data, in the data's order; the data must be exactly what the export saw: same
sample count and, checked before training, the same bytes (each shard records
the SHA-256 of its input samples). With augmentation, each row's stored view
(crop and flip) is applied to its sample, as the exporter did.

**Pairs.** Each student output is paired with a teacher tensor of the export:
by name, else (one float student output, one teacher logits tensor) with the
only one, or as ``pairs`` says.

**Loss** per pair (formulas in :mod:`onnxcomp.distill.losses`, computed by
:mod:`onnxcomp.distill.torch_adapter`), with the class axis the manifest
records:

* top-k KL when the export stores ``NAME.topk_values`` / ``NAME.topk_indices``,
* else Hinton KL ``T^2 * KL(softmax(t/T) || softmax(s/T))`` on the full logits,
* else KL to the stored ``NAME.probs`` (only at the export's temperature),
* feature tensors: normalised MSE ``mean((s - t)^2) / var(t)``.

A student output made by a Softmax is read as ``log p``. The KD term is the
mean over the pairs; with labels, ``(1 - w) * KD + w * CE(labels)`` on the
logits output (``-100`` marks an unlabelled sample). The loop is the one of
:func:`~onnxcomp.train.finetune` (Adam, seeded shuffle buffer, concatenated
or accumulated batches, epochs/steps/minutes budget, optional held-out
samples for early stopping keeping the best weights).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..data import Feed, InputSpec, input_specs, open_data
from ..distill import torch_adapter as kd
from ..distill.augment import augmentation_from_manifest
from ..distill.reader import TeacherOutputs, Verify
from ..distill.reader import _image_options as recorded_image_options
from ..distill.samples import count_samples as dataset_size
from ..errors import DataError, TrainingError, UsageError
from ..progress import ProgressFactory, null_progress
from .executor import GraphModule
from .finetune import (
    Batcher,
    FinetuneReport,
    Trainer,
    check_options,
    count_samples,
    dynamic_batch,
    merge,
    run_epochs,
    shuffled,
    softmax_outputs,
    student_module,
    take,
    torch_threads,
)
from .writeback import check_agreement, write_back

logger = logging.getLogger(__name__)

DEFAULT_EPOCHS = 10
DEFAULT_TEMPERATURE = 4.0
IGNORE_LABEL = -100
LOGIT_KINDS = ("logits", "topk_values", "probs")


@dataclasses.dataclass
class DistillTrainReport(FinetuneReport):
    """What :func:`train_student` did (the fields of :class:`FinetuneReport`, plus).

    Attributes:
        pairs: Student output -> how it was trained ("top-k KL to logits.topk_values", ...).
        temperature: Of the KD terms.
        label_weight: Weight of the cross-entropy term (None without labels).
        data_check: "fingerprint" (count and SHA-256 of the samples) or "count".
        rows: Export rows (sample views) trained on per epoch.
        output: Where the model was written (None when not written).
    """

    pairs: dict[str, str] = dataclasses.field(default_factory=dict)
    temperature: float = DEFAULT_TEMPERATURE
    label_weight: float | None = None
    data_check: str = "fingerprint"
    rows: int = 0
    heldout_rows: int = 0
    output: str | None = None

    def summary(self) -> str:
        held = (f", held-out loss {self.heldout_before:.4g} -> {self.heldout_after:.4g}"
                if self.heldout_before is not None and self.heldout_after is not None else "")
        labels = f" + {self.label_weight:g} x cross-entropy" if self.label_weight is not None else ""
        where = f"; wrote {self.output}" if self.output else ""
        return (f"trained {self.trained_elements} weights in {self.trained_tensors} tensors for {self.steps} steps "
                f"({self.epochs} epochs of {self.rows} rows, {self.seconds:.1f} s, stopped by {self.stopped}), "
                f"KD T={self.temperature:g}{labels}; training loss {self.loss_first:.4g} -> {self.loss_last:.4g}{held}{where}")


@dataclasses.dataclass
class _Term:
    """One student output and the stored teacher tensor(s) it learns from."""

    output: str
    source: str
    kind: str  # "topk", "hinton", "probs" or "feature"
    keys: tuple[str, ...]
    class_axis: int | None = None  # within a row
    softmax: bool = False  # the student output is a probability
    scale: float = 1.0  # feature variance

    def describe(self) -> str:
        what = {"topk": "top-k KL", "hinton": "Hinton KL", "probs": "KL to stored probabilities", "feature": "normalised MSE"}
        return f"{what[self.kind]} to {self.keys[0]}"


def train_student(
    student: str | os.PathLike | onnx.ModelProto,
    teacher_outputs: str | os.PathLike | TeacherOutputs,
    data: Any,
    *,
    output: str | os.PathLike | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 32,
    temperature: float | None = None,
    labels: Any = None,
    label_weight: float = 0.1,
    seed: int = 0,
    pairs: Mapping[str, str] | None = None,
    limit: int | None = None,
    heldout: float = 0.0,
    patience: int = 3,
    shuffle_buffer: int = 256,
    check_data: bool = True,
    check: bool = True,
    threads: int | None = None,
    progress: ProgressFactory = null_progress,
) -> tuple[onnx.ModelProto, DistillTrainReport]:
    """Train ``student`` against an export of a teacher's outputs; returns the trained model and a report.

    Args:
        student: The student model (file or ModelProto; not modified).
        teacher_outputs: The export folder (or an open :class:`TeacherOutputs`).
        data: The samples the export was made from (any source ``distill export`` takes),
            read with the export's recorded image options.
        output: Also write the trained model here, atomically (never over the student file).
        epochs / steps / minutes: The budget; whichever comes first (10 epochs when none is given).
        lr: Adam's learning rate.
        weight_decay: Adam's L2 penalty (``torch.optim.Adam(weight_decay=...)``).
        batch_size: Rows per optimizer step.
        temperature: Of the KD terms (default: the export's ``--temperature``, else 4).
        labels: Per-sample class labels (array or ``.npy`` file, export sample order; -100 = none).
        label_weight: ``w`` in ``(1 - w) * KD + w * CE`` when labels are given.
        seed: Of the shuffle order (and of the held-out choice).
        pairs: Student output -> teacher tensor name, where names differ.
        limit: The ``--limit`` the export used (its first N samples of ``data``).
        heldout: Fraction of the samples kept out of training for early stopping
            (the best weights on them are returned); 0 trains on all.
        patience: Held-out evaluations without improvement before stopping.
        shuffle_buffer: Samples held for shuffling.
        check_data: Hash the data against the export's fingerprints before
            training (the sample count is always checked).
        check: Check the trained graph against onnxruntime on a few samples.
        threads: torch's intra-op threads during the run (1 is fastest for small graphs on a busy machine).
        progress: A progress factory (one update per step).

    Raises:
        UsageError: A bad option.
        InputError: A missing or damaged export or model.
        DataError: Data or labels that do not match the export.
        TrainingError: Outputs that cannot be paired, an op the executor lacks, a diverging loss.
        OutputError: ``output`` cannot be written, or is the student.
    """
    check_options(epochs, steps, minutes, lr, batch_size, 1.0 if temperature is None else temperature, "auto", patience, shuffle_buffer, threads)
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise UsageError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 <= label_weight <= 1:
        raise UsageError(f"label_weight must be in [0, 1], got {label_weight}")
    if not 0 <= heldout < 1:
        raise UsageError(f"heldout must be a fraction in [0, 1), got {heldout}")
    if epochs is None and steps is None and minutes is None:
        epochs = DEFAULT_EPOCHS
    start = time.perf_counter()
    model, source_path, external = _load_student(student)
    if output is not None:
        from ..model_io import check_output_path

        check_output_path(Path(output), [source_path] if source_path else [])
    outputs = teacher_outputs if isinstance(teacher_outputs, TeacherOutputs) else TeacherOutputs(teacher_outputs, verify=Verify.LAZY)
    plan = outputs.manifest["plan"]
    samples_count, views = int(plan["samples"]["count"]), outputs.views
    if temperature is None:
        temperature = plan["settings"].get("temperature") or DEFAULT_TEMPERATURE
    label_array = _labels(labels, samples_count)

    with torch_threads(threads):
        module = student_module(model, None, None)
        terms = _pair(module, model, outputs, pairs, temperature)
        if label_array is not None and sum(t.kind != "feature" for t in terms) != 1:
            raise UsageError("labels need exactly one logits output in the student; the pairs are "
                             + ", ".join(f"{t.output} <- {t.source}" for t in terms))
        dataset = _open_data(data, outputs, limit)
        if check_data:
            outputs.check_data(dataset)
        else:
            found = dataset_size(dataset)
            if found != samples_count:
                raise DataError(f"{outputs.path}: the data has {found} samples, the export {samples_count}")
        rename = _input_names(dataset.specs, input_specs(model), outputs.path)
        rng = np.random.default_rng(seed)
        held = set(rng.permutation(samples_count)[: int(round(heldout * samples_count))].tolist()) if heldout else set()
        if heldout and (not held or len(held) == samples_count):
            raise UsageError(f"heldout={heldout} leaves {len(held)} of {samples_count} samples held out; choose another fraction")
        stream = _Stream(dataset, outputs, samples_count, views, rename, augmentation_from_manifest(outputs.manifest))
        batcher = Batcher(batch_size, concat=dynamic_batch(model))
        task = _ExportTask(outputs, batcher, terms, temperature, label_array, label_weight, views)
        task.calibrate(range(min(len(outputs), batch_size)))
        report = DistillTrainReport(
            batching="concat" if batcher.concat else "accumulate", losses={t.output: t.describe() for t in terms},
            pairs={t.output: t.describe() for t in terms}, temperature=float(temperature),
            label_weight=label_weight if label_array is not None else None,
            data_check="fingerprint" if check_data else "count",
            rows=(samples_count - len(held)) * views, heldout_rows=len(held) * views,
        )
        heldout_items = stream.subset(lambda i: i in held) if held else None
        adam = functools.partial(torch.optim.Adam, weight_decay=weight_decay)
        trainer = Trainer(module, task, heldout_items, patience, adam, lr, report)
        total_steps = steps if steps is not None else (
            epochs * math.ceil(report.rows / batch_size) if epochs is not None and minutes is None else None)
        run_epochs(trainer, lambda: shuffled(stream.subset(lambda i: i not in held), shuffle_buffer, rng),
                   epochs=epochs, steps=steps, deadline=start + minutes * 60 if minutes is not None else math.inf,
                   eval_every=None, bar=progress(total_steps, "distill train", "step"),
                   empty=f"{dataset.description}: contains no samples")
        report = trainer.finish()
        trained = write_back(model, module)
        if check:
            report.agreement = check_agreement(trained, [feed for _, feed in take(stream.subset(lambda i: True), 4)])
    if output is not None:
        from ..model_io import save_model

        save_model(trained, output, external_data=external or None, protect=[source_path] if source_path else [])
        report.output = str(output)
    report.seconds = time.perf_counter() - start
    logger.info("%s", report.summary())
    return trained, report


def _load_student(student) -> tuple[onnx.ModelProto, Path | None, bool]:
    """(the model with its weights in memory, its path, whether it keeps weights in an external file)."""
    from ..external_data import materialize
    from ..model_io import check_model, iter_tensors, load_model, uses_external_data

    if isinstance(student, onnx.ModelProto):
        check_model(student, source="student")
        return student, None, False
    path = Path(student)
    model = load_model(path)
    external = uses_external_data(model)
    if external:
        materialize(iter_tensors(model))
    return model, path, external


def _labels(labels: Any, samples: int) -> np.ndarray | None:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        try:
            labels = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"{labels}: cannot read labels ({err})") from err
    array = np.asarray(labels)
    if array.dtype.kind not in "iu" or array.ndim < 1:
        raise DataError(f"labels must be an integer array with one entry per sample, got {array.dtype}{list(array.shape)}")
    if len(array) != samples:
        raise DataError(f"labels have {len(array)} entries, the export {samples} samples")
    return array.astype(np.int64)


def _open_data(data: Any, outputs: TeacherOutputs, limit: int | None):
    """The data as the export read it: its teacher's input specs and recorded image options."""
    plan = outputs.manifest["plan"]
    specs = [InputSpec(s["name"], np.dtype(s["dtype"]), None if s["shape"] is None else tuple(s["shape"]))
             for s in plan["teacher"]["inputs"]]
    recorded = plan["preprocessing"].get("image_options")
    return open_data(data, specs, image_options=recorded_image_options(recorded) if recorded else None, limit=limit)


def _input_names(teacher: Sequence[InputSpec], student: Sequence[InputSpec], where: Path) -> dict[str, str]:
    """Teacher input name -> student input name: the same names, or the only input of each."""
    t_names, s_names = [s.name for s in teacher], [s.name for s in student]
    if set(t_names) == set(s_names):
        return {n: n for n in t_names}
    if len(t_names) == len(s_names) == 1:
        return {t_names[0]: s_names[0]}
    raise TrainingError(f"cannot feed the student's inputs {s_names} with the samples of {where} (the teacher's inputs "
                        f"{t_names}); give the student the teacher's input names")


def _pair(module: GraphModule, model: onnx.ModelProto, outputs: TeacherOutputs, pairs: Mapping[str, str] | None,
          temperature: float) -> list[_Term]:
    """The loss terms: each student output paired with a stored teacher tensor (see the module docstring)."""
    stored = outputs.tensors
    sources: dict[str, list] = {}
    for tensor in stored.values():
        if tensor.kind != "view":
            sources.setdefault(tensor.source, []).append(tensor)
    logit_sources = [s for s, ts in sources.items() if any(t.kind in LOGIT_KINDS for t in ts)]
    float_outputs = [o.name for o in model.graph.output if o.type.tensor_type.elem_type in _FLOAT_TYPES]
    known = ", ".join(sources)
    if pairs:
        unknown = [s for s in pairs if s not in module.output_names]
        if unknown:
            raise TrainingError(f"the student has no output {', '.join(map(repr, unknown))} (its outputs: {', '.join(module.output_names)})")
        missing = [t for t in pairs.values() if t not in sources]
        if missing:
            raise TrainingError(f"{outputs.path}: no teacher output {', '.join(map(repr, missing))} was exported (stored: {known})")
        chosen = dict(pairs)
    else:
        chosen = {name: name for name in float_outputs if name in sources}
        if not chosen and len(float_outputs) == 1 and len(logit_sources) == 1:
            chosen = {float_outputs[0]: logit_sources[0]}
        if not chosen:
            raise TrainingError(
                f"{outputs.path}: no teacher output is named like the student's outputs ({', '.join(float_outputs) or 'none float'}); "
                f"stored: {known}. Rename the student output or pair them (--pair STUDENT=TEACHER)"
            )
    probabilities = softmax_outputs(model)
    plan_class_axis = outputs.manifest["plan"]["settings"].get("class_axis", -1)
    terms = []
    for name, source in chosen.items():
        term = _term(name, sources[source], temperature, probabilities.get(name) == "Softmax", outputs.path)
        if term.kind != "feature" and term.class_axis is None:  # full logits stored as they are: the export's axis
            rank = len(outputs.tensors[term.keys[0]].shape) + 1
            if not -rank <= plan_class_axis < rank or plan_class_axis % rank == 0:
                raise TrainingError(f"{outputs.path}: class axis {plan_class_axis} does not fit '{source}' (rank {rank})")
            term.class_axis = plan_class_axis % rank - 1
        terms.append(term)
    logger.info("pairs: %s", "; ".join(f"{t.output} <- {t.describe()}" for t in terms))
    return terms


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _term(output: str, tensors: list, temperature: float, softmax: bool, where: Path) -> _Term:
    by_kind = {t.kind: t for t in tensors}
    if "topk_values" in by_kind:
        values, indices = by_kind["topk_values"], by_kind["topk_indices"]
        return _Term(output, values.source, "topk", (values.key, indices.key), values.class_axis, softmax)
    if "logits" in by_kind:
        t = by_kind["logits"]
        if np.dtype(t.dtype).kind != "f":
            raise TrainingError(f"{where}: teacher output '{t.source}' is stored as {t.dtype}, not float logits")
        return _Term(output, t.source, "hinton", (t.key,), t.class_axis, softmax)
    if "probs" in by_kind:
        t = by_kind["probs"]
        if t.temperature is not None and not math.isclose(t.temperature, temperature):
            raise UsageError(f"{where}: '{t.source}' is stored only as probabilities at temperature {t.temperature:g}; "
                             f"train at that temperature (not {temperature:g})")
        return _Term(output, t.source, "probs", (t.key,), t.class_axis, softmax)
    t = tensors[0]
    return _Term(output, t.source, "feature", (t.key,))


class _Stream:
    """``(row, student feed)`` items of the data in export order, views applied, sample count checked."""

    def __init__(self, dataset, outputs: TeacherOutputs, samples: int, views: int, rename: Mapping[str, str], augment):
        self.dataset, self.outputs, self.samples, self.views = dataset, outputs, samples, views
        self.rename = rename
        self.augment = augment.bind(list(dataset.specs)) if augment is not None else None

    def subset(self, keep) -> _Items:
        return _Items(self, keep)

    def items(self, keep) -> Iterator[tuple[int, Feed]]:
        seen = 0
        for index, feed in enumerate(self.dataset):
            if index >= self.samples:
                raise DataError(f"{self.dataset.description}: has more samples than the export's {self.samples}")
            seen += 1
            if not keep(index):
                continue
            for view in range(self.views):
                row = index * self.views + view
                sample = self.augment.apply(feed, self.outputs[row]["__view__"]) if self.augment is not None else feed
                yield row, {self.rename[k]: v for k, v in sample.items()}
        if seen < self.samples:
            raise DataError(f"{self.dataset.description}: has {seen} samples, the export {self.samples}")


class _Items:
    """A re-iterable selection of a stream's samples (each iteration streams the data again)."""

    def __init__(self, stream: _Stream, keep):
        self.stream, self.keep = stream, keep

    def __iter__(self) -> Iterator[tuple[int, Feed]]:
        return self.stream.items(self.keep)


class _ExportTask:
    """The training task: student outputs on a chunk of rows against the rows' stored teacher tensors."""

    def __init__(self, outputs: TeacherOutputs, batcher: Batcher, terms: list[_Term], temperature: float,
                 labels: np.ndarray | None, label_weight: float, views: int):
        self.outputs, self.batcher, self.terms, self.temperature = outputs, batcher, terms, temperature
        self.labels, self.label_weight, self.views = labels, label_weight, views
        self.batch_size = batcher.batch_size
        self.keys = sorted({k for t in terms for k in t.keys})

    def calibrate(self, rows) -> None:
        """Each feature term's scale: the variance of the stored teacher tensor over the first rows."""
        stored = self.outputs.take(list(rows), self.keys)
        for term in self.terms:
            if term.kind == "feature":
                ref = stored[term.keys[0]].astype(np.float64)
                variance = float(np.var(ref))
                term.scale = variance if variance > 1e-12 else float(np.mean(ref**2)) or 1.0

    def chunks(self, batch: Sequence[tuple[int, Feed]]) -> list[tuple[tuple[np.ndarray, Feed], int]]:
        feeds = [feed for _, feed in batch]
        out = []
        for group in self.batcher.groups(feeds):
            rows = np.array([batch[i][0] for i in group], dtype=np.int64)
            out.append(((rows, merge([feeds[i] for i in group])), sum(count_samples(feeds[i]) for i in group)))
        return out

    def loss(self, module: GraphModule, chunk: tuple[np.ndarray, Feed]) -> torch.Tensor:
        rows, feed = chunk
        student = module(feed)
        stored = {k: torch.from_numpy(v) for k, v in self.outputs.take(rows, self.keys).items()}
        kd_total = 0.0
        ce = None
        for term in self.terms:
            s = student[term.output].float()
            if s.shape[0] != len(rows):
                raise TrainingError(f"student output '{term.output}' has {s.shape[0]} rows for {len(rows)} samples "
                                    f"(shape {list(s.shape)}); its first axis must be the batch")
            kd_total = kd_total + self._term_loss(term, s, stored)
            if self.labels is not None and term.kind != "feature":
                ce = self._cross_entropy(term, s, rows)
        kd_loss = kd_total / len(self.terms)
        if ce is None:
            return kd_loss
        return (1 - self.label_weight) * kd_loss + self.label_weight * ce

    def _term_loss(self, term: _Term, s: torch.Tensor, stored: Mapping[str, torch.Tensor]) -> torch.Tensor:
        t = stored[term.keys[0]]
        if term.kind == "feature":
            t = t.float()
            if t.shape != s.shape:
                raise TrainingError(f"student output '{term.output}' {list(s.shape)} and stored '{term.keys[0]}' "
                                    f"{list(t.shape)} differ in shape")
            return torch.mean((s - t) ** 2) / term.scale
        s = self._class_last(term, s)
        t = t.movedim(term.class_axis + 1, -1)
        if term.kind == "topk":
            indices = stored[term.keys[1]].movedim(term.class_axis + 1, -1)
            self._check_classes(term, s, int(indices.max()) + 1 if indices.numel() else 0)
            return kd.topk_kd(s, t, indices, self.temperature)
        self._check_classes(term, s, t.shape[-1], exact=True)
        if term.kind == "hinton":
            return kd.hinton_kd(s, t, self.temperature)
        return kd.kd_from_probs(s, t, self.temperature)

    def _class_last(self, term: _Term, s: torch.Tensor) -> torch.Tensor:
        s = s.movedim(term.class_axis + 1, -1)
        return torch.log(s.clamp_min(1e-30)) if term.softmax else s

    def _check_classes(self, term: _Term, s: torch.Tensor, classes: int, exact: bool = False) -> None:
        have = s.shape[-1]
        if have < classes or exact and have != classes:
            raise TrainingError(f"student output '{term.output}' has {have} classes on axis {term.class_axis + 1}, "
                                f"the teacher's '{term.source}' {classes if exact else f'at least {classes}'}")

    def _cross_entropy(self, term: _Term, s: torch.Tensor, rows: np.ndarray) -> torch.Tensor | None:
        logits = self._class_last(term, s)
        target = torch.from_numpy(self.labels[rows // self.views])
        if target.shape != logits.shape[:-1]:
            raise DataError(f"labels of shape {list(target.shape[1:])} per sample do not fit the student output "
                            f"'{term.output}' {list(s.shape[1:])} (class axis {term.class_axis + 1})")
        if not bool((target != IGNORE_LABEL).any()):
            return None
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                 ignore_index=IGNORE_LABEL)
