"""Recovering accuracy by training: distillation from the original model, on the ONNX graph.

Runs after pruning (fine-tuning the pruned model) or after static
quantization (quantization-aware training: the Q/DQ pairs act as fake
quantizers with straight-through gradients, so the result is the same
standard QDQ model with better weights). The teacher is the original model of
the run (``ctx.template``), run in onnxruntime on the calibration data, so no
labels are needed; the loss is KL with temperature on logit/probability
outputs and per-output normalised MSE on the others. One sample in five of the
training data is held out for early stopping (the run's verification samples
were already held out before any pass saw the data). Needs PyTorch
(``pip install 'onnxcomp[train]'``); see :mod:`onnxcomp.train`.
"""

from __future__ import annotations

import dataclasses

import onnx_graphsurgeon as gs

from onnxcomp import holdout
from onnxcomp.context import PassContext
from onnxcomp.errors import UsageError
from onnxcomp.ir import import_graph
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(PassConfig):
    """Options of ``finetune``.

    Attributes:
        epochs: Passes over the training data (default: 3 when no budget is given).
        steps: Optimizer steps at most.
        minutes: Wall-clock minutes at most.
        lr: Adam's learning rate.
        batch_size: Samples per optimizer step.
        temperature: Of the KL distillation loss.
        loss: auto, kl or mse (see :func:`onnxcomp.train.finetune`).
        threads: torch's intra-op threads and the teacher session's during
            training (default: torch's setting); 1 is often faster on a busy machine.
    """

    epochs: int | None = None
    steps: int | None = None
    minutes: float | None = None
    lr: float = 1e-4
    batch_size: int = 16
    temperature: float = 4.0
    loss: str = "auto"
    threads: int | None = None

    def validate(self) -> None:
        for name in ("epochs", "steps", "batch_size", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name in ("minutes", "lr", "temperature"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.loss not in ("auto", "kl", "mse"):
            raise ValueError(f"loss must be auto, kl or mse, got {self.loss!r}")


DEFAULT_EPOCHS = 3


class Finetune(Pass):
    """Distillation fine-tuning (after pruning) or QAT (after Q/DQ) against the original model."""

    name = "finetune"
    Config = FinetuneConfig
    stage = Stage.ANY
    needs_data = True
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        try:
            from onnxcomp.train import finetune
        except ImportError as err:
            raise UsageError(f"finetune needs PyTorch ({err.name} is not installed): pip install 'onnxcomp[train]'") from None
        data = ctx.require_data(self.name)
        c = self.config
        epochs = c.epochs if (c.epochs, c.steps, c.minutes) != (None, None, None) else DEFAULT_EPOCHS
        parts = holdout.split(data, seed=ctx.seed + 1)
        train, held = parts if parts is not None else (data, None)
        model, report = finetune(
            ctx.export(graph), ctx.template, train, epochs=epochs, steps=c.steps, minutes=c.minutes, lr=c.lr,
            batch_size=c.batch_size, temperature=c.temperature, loss=c.loss, seed=ctx.seed, progress=ctx.progress,
            heldout=held, threads=c.threads,
        )  # fmt: skip
        ctx.artifacts[self.name] = dataclasses.asdict(report) if dataclasses.is_dataclass(report) else {}
        summary = {"steps": report.steps, "trained_tensors": report.trained_tensors, "stopped": report.stopped}
        if report.heldout_before is not None and report.heldout_after is not None:
            summary["heldout_loss"] = f"{report.heldout_before:.4g} -> {report.heldout_after:.4g}"
        if report.steps == 0:
            ctx.warn(f"finetune trained nothing: {report.summary()}")
        return PassResult(import_graph(model), report.steps > 0, summary)
