"""Output metrics of a quantized model, per-layer sensitivity and mixed precision.

A quantized model is judged by how far its outputs move from the float
model's on held-out samples (:class:`Evaluator`), by one of three metrics
(:class:`Metric`), each a *drop* (0 = identical, larger = worse):

* ``cosine``: 1 - the mean cosine similarity of each sample's flattened outputs;
* ``kl``: mean KL(float || quantized) of the distributions along the last axis
  (outputs that are already probabilities are used as they are, others go
  through a softmax), i.e. for classifiers and CTC recognisers;
* ``top1``: the fraction of positions (all but the last axis) whose arg-max
  along the last axis changes;
* ``auto``: the run's quality measure (:mod:`onnxcomp.quality`, the metric
  ``--metric`` chose or detected): KL for classifiers and CTC, 1 - cosine
  for embeddings, per-feature error for detectors and anything else — the
  measure the final verification and the quality budget use.

Sensitivity of a compute layer is the drop when *only* that layer (its input,
weights and output) is quantized. Mixed precision (:func:`choose_float_layers`)
keeps layers in float, most sensitive first, re-measuring the whole model after
each, until the drop is within ``max_drop``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Sequence

import numpy as np
import onnx

from onnxcomp.progress import ProgressFactory, null_progress
from onnxcomp.quality import MetricChoice, Quality
from onnxcomp.runtime import OptLevel, create_session

logger = logging.getLogger(__name__)


class Metric(enum.Enum):
    """How the quantized model's outputs are compared with the float model's."""

    COSINE = "cosine"
    KL = "kl"
    TOP1 = "top1"
    AUTO = "auto"


def _distribution(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    sums = values.sum(axis=-1, keepdims=True)
    if values.min(initial=0.0) >= 0 and np.allclose(sums, 1.0, atol=1e-3):
        return values
    shifted = values - values.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def sample_drop(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], metric: Metric) -> float:
    """The drop of one sample (all float outputs together)."""
    pairs = [(np.asarray(r), np.asarray(c)) for r, c in zip(reference, candidate) if np.asarray(r).dtype.kind == "f"]
    if not pairs:
        return 0.0
    if metric is Metric.COSINE:
        a = np.concatenate([r.ravel() for r, _ in pairs]).astype(np.float64)
        b = np.concatenate([c.ravel() for _, c in pairs]).astype(np.float64)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        if na == 0 and nb == 0:
            return 0.0
        return 1.0 - float(a @ b / (na * nb)) if na and nb else 1.0
    drops = []
    for r, c in pairs:
        if metric is Metric.TOP1:
            drops.append(float(np.mean(r.argmax(axis=-1) != c.argmax(axis=-1))))
        else:
            p, q = _distribution(r), _distribution(c)
            kl = np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=-1)
            drops.append(float(np.mean(kl)))
    return float(np.mean(drops))


class Evaluator:
    """Compares candidate models with the float model on fixed held-out feeds.

    The float outputs are computed once. Candidates run at onnxruntime's full
    optimization level, i.e. on the integer kernels they will be deployed on.
    """

    def __init__(
        self,
        reference: onnx.ModelProto,
        feeds: Sequence[dict[str, np.ndarray]],
        metric: Metric,
        quality: MetricChoice | None = None,
    ):
        self.feeds = list(feeds)
        self.metric = metric
        session = create_session(reference, level=OptLevel.ALL)
        self.names = [o.name for o in session.get_outputs()]
        self.reference = [session.run(self.names, feed) for feed in self.feeds]
        self._deviation = None
        if metric is Metric.AUTO and self.reference:
            choice = quality or MetricChoice()
            self._deviation = Quality.for_outputs(choice, self.names, self.reference[0]).deviation(self.reference, self.feeds)

    def drop(self, model: onnx.ModelProto) -> float:
        session = create_session(model, level=OptLevel.ALL)
        outputs = [session.run(self.names, feed) for feed in self.feeds]
        if self._deviation is not None:
            return float(self._deviation(outputs))
        drops = [sample_drop(ref, out, self.metric) for ref, out in zip(self.reference, outputs)]
        return float(np.mean(drops)) if drops else 0.0


@dataclasses.dataclass
class MixedPrecision:
    """The outcome of :func:`choose_float_layers`.

    Attributes:
        float_layers: Layers kept float, in the order they were chosen.
        drop: The final model's drop.
        all_int8_drop: The drop with every layer quantized.
        sensitivity: Layer name -> drop with only that layer quantized.
        history: ``(layer tried in float, drop with it)`` per step; a layer
            whose float version does not lower the drop stays int8.
    """

    float_layers: list[str]
    drop: float
    all_int8_drop: float
    sensitivity: dict[str, float]
    history: list[tuple[str, float]]


def layer_sensitivity(
    layers: Sequence[str],
    drop_with_only: Callable[[str], float],
    progress: ProgressFactory = null_progress,
) -> dict[str, float]:
    """Drop per layer when only that layer is quantized."""
    result = {}
    bar = progress(len(layers), "sensitivity", "layer")
    try:
        for name in layers:
            result[name] = drop_with_only(name)
            bar.update(1)
    finally:
        bar.close()
    return result


def choose_float_layers(
    layers: Sequence[str],
    drop_with_float: Callable[[Sequence[str]], float],
    drop_with_only: Callable[[str], float],
    max_drop: float,
    *,
    max_float: int | None = None,
    progress: ProgressFactory = null_progress,
) -> MixedPrecision:
    """Keep the most sensitive layers float until the drop is at most ``max_drop``.

    Args:
        layers: The quantizable compute layers.
        drop_with_float: Drop of the model with the given layers kept float.
        drop_with_only: Drop of the model with only the given layer quantized.
        max_float: Give up after this many float layers (default: all).
    """
    current = drop_with_float(())
    all_int8 = current
    history: list[tuple[str, float]] = []
    if current <= max_drop:
        return MixedPrecision([], current, all_int8, {}, history)
    sensitivity = layer_sensitivity(layers, drop_with_only, progress)
    order = sorted(layers, key=lambda name: -sensitivity[name])
    limit = len(order) if max_float is None else min(max_float, len(order))
    chosen: list[str] = []
    for name in order:
        if len(chosen) >= limit:
            break
        drop = drop_with_float([*chosen, name])
        history.append((name, drop))
        if drop >= current:
            logger.info("keeping %s float does not help (drop %.5f); it stays int8", name, drop)
            continue
        chosen.append(name)
        current = drop
        logger.info("kept %s float: drop %.5f (target %.5f)", name, current, max_drop)
        if current <= max_drop:
            break
    if current > max_drop:
        logger.warning(
            "mixed precision: %d float layers still give a drop of %.5f > max_drop %.5f", len(chosen), current, max_drop
        )
    return MixedPrecision(chosen, current, all_int8, sensitivity, history)
