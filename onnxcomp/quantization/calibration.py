"""Calibration: one streaming pass of the float model collecting every observer's statistics.

Fetching whole intermediate tensors from onnxruntime is slow (a copy per
tensor, and at ORT_ENABLE_ALL every fetched NCHWc tensor must be reordered to
NCHW first) and its memory grows with the number of tensors. So the
reductions run *inside* the model, and only small results leave it. For each
observed tensor ``x`` the calibration model adds:

* its maximum: ``GlobalMaxPool`` for tensors of rank >= 3 (per-channel maxima,
  which onnxruntime computes on its blocked NCHWc layout without a reorder),
  ``ReduceMax`` otherwise; and, unless ``x`` is known to be non-negative (a
  Relu/Clip(0, .) output), its minimum (``ReduceMin``);
* a strided subsample of about ``sample_size`` values for the histogram: a
  ``MaxPool`` with a 1x1 kernel and large strides for tensors of rank >= 3 with
  known spatial dims, a flattened ``Slice`` with a computed step otherwise;
* on request, per-channel means (``GlobalAveragePool`` for NCHW, ``ReduceMean``
  for channels-last inputs of MatMul/Gemm) for bias correction.

The model runs sample by sample and :class:`~.observers.Accumulator` folds
each sample's reductions into the statistics, so memory is flat in the number
of samples. The histogram budget per tensor is about 2**20 values over the
whole data set (``sample_size = 2**20 / samples``, between 256 and 16384), so
the cost of binning does not grow with the data either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxcomp.data import Dataset
from onnxcomp.errors import DataError, InputError
from onnxcomp.memory import release_free_memory
from onnxcomp.model_io import default_opset
from onnxcomp.progress import ProgressFactory, null_progress
from onnxcomp.runtime import DEFAULT_PROVIDERS, OptLevel, loadable, run, session_options
from onnxcomp.shapes import infer_model_shapes, shape_of, value_infos

from .observers import DEFAULT_BINS, Accumulator, Statistics

logger = logging.getLogger(__name__)

HISTOGRAM_BUDGET = 1 << 20
"""Histogram values per tensor over the whole calibration set (split over the samples)."""
MIN_SAMPLE_SIZE = 256
MAX_SAMPLE_SIZE = 1 << 14
UNKNOWN_SIZE_SAMPLE = 4096


@dataclasses.dataclass(frozen=True)
class Observation:
    """A tensor to collect statistics of.

    Attributes:
        name: Tensor name in the float model.
        nonnegative: The tensor is known to be >= 0 (a Relu/Clip(0, .) output),
            so no minimum is computed.
        channel_axis: Also collect per-channel means along this axis (1 for
            NCHW, -1 for channels-last), or None.
    """

    name: str
    nonnegative: bool = False
    channel_axis: int | None = None


def model_fingerprint(model: onnx.ModelProto) -> str:
    """A digest of the graph (structure and weights) statistics belong to."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()[:32]


def histogram_sample_size(samples: int | None) -> int:
    """Values subsampled per tensor and sample, for ``samples`` calibration samples."""
    if not samples:
        return UNKNOWN_SIZE_SAMPLE
    return int(np.clip(HISTOGRAM_BUDGET // samples, MIN_SAMPLE_SIZE, MAX_SAMPLE_SIZE))


class _GraphBuilder:
    """Appends reduction nodes to a copy of the model and records what each output is."""

    def __init__(self, model: onnx.ModelProto, sample_size: int, shapes: dict[str, tuple | None]):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.graph = self.model.graph
        self.opset = default_opset(model) or 13
        self.sample_size = sample_size
        self.shapes = shapes
        self.outputs: list[str] = []
        self._count = 0
        self._constants: dict[tuple, str] = {}
        used = {n for node in self.graph.node for n in node.output} | {t.name for t in self.graph.initializer}
        used |= {i.name for i in self.graph.input}
        self._used = used

    def _name(self, base: str) -> str:
        while True:
            self._count += 1
            name = f"onnxcomp_calib_{base}_{self._count}"
            if name not in self._used:
                self._used.add(name)
                return name

    def _const(self, values: Sequence[int]) -> str:
        key = tuple(int(v) for v in values)
        if key not in self._constants:
            name = self._name("const")
            self.graph.initializer.append(numpy_helper.from_array(np.asarray(key, dtype=np.int64), name))
            self._constants[key] = name
        return self._constants[key]

    def _node(self, op: str, inputs: Sequence[str], **attrs) -> str:
        out = self._name(op.lower())
        self.graph.node.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def _output(self, name: str) -> int:
        self.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.outputs.append(name)
        return len(self.outputs) - 1

    def maximum(self, tensor: str, rank: int | None) -> int:
        if rank is not None and rank >= 3:
            return self._output(self._node("GlobalMaxPool", [tensor]))
        return self._output(self._node("ReduceMax", [tensor], keepdims=0))

    def minimum(self, tensor: str) -> int:
        return self._output(self._node("ReduceMin", [tensor], keepdims=0))

    def subsample(self, tensor: str, shape: tuple | None) -> int:
        spatial = shape[2:] if shape is not None and len(shape) >= 3 else None
        if spatial and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            channels = int(np.prod(shape[:2])) if isinstance(shape[0], int) and shape[0] > 0 else shape[1]
            per_channel = max(1.0, self.sample_size / channels)
            step = max(1, int(math.floor((np.prod(spatial) / per_channel) ** (1.0 / len(spatial)))))
            strides = [min(step, d) for d in spatial]
            return self._output(
                self._node("MaxPool", [tensor], kernel_shape=[1] * len(spatial), strides=strides)
            )
        flat = self._node("Flatten", [tensor], axis=0)
        size = self._node("Size", [tensor])
        step = self._node("Div", [size, self._const([self.sample_size])])
        step = self._node("Max", [step, self._const([1])])
        step = self._node("Reshape", [step, self._const([1])])
        return self._output(
            self._node("Slice", [flat, self._const([0]), self._const([2**62]), self._const([1]), step])
        )

    def channel_mean(self, tensor: str, rank: int | None, axis: int) -> int | None:
        if rank is None:
            return None
        axis = axis % rank
        if axis == 1 and rank >= 3:
            return self._output(self._node("GlobalAveragePool", [tensor]))
        axes = [a for a in range(rank) if a != axis]
        if self.opset >= 18:
            return self._output(self._node("ReduceMean", [tensor, self._const(axes)], keepdims=0))
        return self._output(self._node("ReduceMean", [tensor], axes=axes, keepdims=0))


@dataclasses.dataclass
class _Slots:
    maximum: int
    minimum: int | None
    sample: int
    mean: int | None


def _concrete_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, tuple | None]:
    """Shapes of ``names`` when the graph inputs have the shapes of ``feed``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for graph_input in probe.graph.input:
        if graph_input.name in feed and graph_input.type.HasField("tensor_type"):
            dims = graph_input.type.tensor_type.shape.dim
            del dims[:]
            for d in np.shape(feed[graph_input.name]):
                dims.add().dim_value = int(d)
    infos = value_infos(infer_model_shapes(probe))
    return {name: shape_of(infos[name]) if name in infos else None for name in names}


def build_calibration_model(
    model: onnx.ModelProto, observations: Sequence[Observation], first_feed: dict[str, np.ndarray], sample_size: int
) -> tuple[onnx.ModelProto, list[_Slots]]:
    """The model with in-graph reductions of every observed tensor as extra outputs."""
    shapes = _concrete_shapes(model, first_feed, [o.name for o in observations])
    builder = _GraphBuilder(model, sample_size, shapes)
    del builder.graph.output[:]
    slots = []
    for obs in observations:
        shape = shapes.get(obs.name)
        rank = None if shape is None else len(shape)
        maximum = builder.maximum(obs.name, rank)
        minimum = None if obs.nonnegative else builder.minimum(obs.name)
        sample = builder.subsample(obs.name, shape)
        mean = builder.channel_mean(obs.name, rank, obs.channel_axis) if obs.channel_axis is not None else None
        slots.append(_Slots(maximum, minimum, sample, mean))
    return builder.model, slots


def collect_statistics(
    model: onnx.ModelProto,
    data: Dataset,
    observations: Sequence[Observation],
    *,
    bins: int = DEFAULT_BINS,
    sample_size: int | None = None,
    progress: ProgressFactory = null_progress,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    meta: dict | None = None,
) -> Statistics:
    """Run ``model`` on every sample of ``data`` and return the statistics of ``observations``.

    Raises:
        DataError: The model fails on a sample, a statistic is not finite (the
            data drives the model into NaN/Inf), or the data has no samples.
    """
    observations = list(observations)
    accumulator = Accumulator([o.name for o in observations], bins=bins)
    iterator = iter(data)
    first = next(iterator, None)
    if first is None:
        raise DataError(f"{data.description}: contains no samples")
    size = sample_size or histogram_sample_size(data.size())
    calib_model, slots = build_calibration_model(model, observations, first, size)
    session = _calibration_session(calib_model, providers)
    del calib_model
    release_free_memory()  # the calibration model's copy of the weights and the shape-inference copies
    names = [o.name for o in observations]
    bar = progress(data.size(), "calibrating", "sample")
    try:
        index = 0
        feed = first
        while feed is not None:
            values = run(session, None, feed, error=DataError, what=f"the model on calibration sample {index}")
            _accumulate(accumulator, slots, values, names, index)
            bar.update(1)
            index += 1
            feed = next(iterator, None)
    finally:
        bar.close()
    logger.info("calibrated %d tensors on %d samples (%d histogram values per tensor and sample)", len(names), index, size)
    return accumulator.result(meta={**(meta or {}), "histogram_sample_size": size})


def _calibration_session(model: onnx.ModelProto, providers: Sequence[str]) -> ort.InferenceSession:
    """A full-optimization session without onnxruntime's memory pattern.

    The pattern (one block planned for all intermediate tensors) grows by
    tens of MB when every observed tensor has an extra reader; allocating per
    run from the arena keeps calibration close to a plain session's memory.
    """
    options = session_options(OptLevel.ALL)
    options.enable_mem_pattern = False
    try:
        with loadable(model) as source:  # weights still in the input's .data file: through a saved copy
            return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except Exception as err:  # onnxruntime raises several unrelated types
        raise InputError(f"onnxruntime cannot load the calibration model: {' '.join(str(err).split())[:300]}") from err


def _accumulate(accumulator: Accumulator, slots: Sequence[_Slots], values: list, names: Sequence[str], index: int) -> None:
    count = len(slots)
    maxima = np.empty(count)
    minima = np.empty(count)
    samples = []
    for t, slot in enumerate(slots):
        sample = values[slot.sample]
        samples.append(sample)
        maxima[t] = values[slot.maximum].max(initial=-np.inf)
        if slot.minimum is not None:
            minima[t] = values[slot.minimum].min(initial=np.inf)
        else:
            minima[t] = sample.min(initial=np.inf)
        if slot.mean is not None:
            mean = values[slot.mean]
            if mean.ndim >= 2:  # GlobalAveragePool: [N, C, 1, ...]
                accumulator.add_channel_sums(names[t], mean.reshape(mean.shape[0], mean.shape[1]).sum(axis=0), mean.shape[0])
            else:
                accumulator.add_channel_sums(names[t], mean, 1)
    bad = ~(np.isfinite(maxima) & np.isfinite(minima))
    if np.any(bad):
        name = names[int(np.flatnonzero(bad)[0])]
        raise DataError(
            f"calibration sample {index} drives tensor '{name}' to NaN/Inf or leaves it empty; "
            "check the data's scale and preprocessing"
        )
    accumulator.update(minima, maxima, samples)
