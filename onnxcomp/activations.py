"""Reading intermediate tensors by running the model in onnxruntime.

Calibration, activation-based pruning criteria, layer reconstruction and
distillation features all need the values of tensors inside the graph. They
are read by declaring those tensors as extra graph outputs and running the
model sample by sample; consumers reduce each batch into statistics before the
next one arrives, so memory stays flat in the number of samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .data import Dataset, Feed
from .progress import ProgressFactory, null_progress
from .runtime import DEFAULT_PROVIDERS, OptLevel, create_session


@contextlib.contextmanager
def _extra_outputs(model: onnx.ModelProto, names: Sequence[str]) -> Iterator[onnx.ModelProto]:
    """Temporarily add ``names`` as graph outputs of ``model`` (restored on exit)."""
    existing = {o.name for o in model.graph.output}
    added = 0
    for name in names:
        if name not in existing:
            model.graph.output.add().name = name
            existing.add(name)
            added += 1
    try:
        yield model
    finally:
        if added:
            del model.graph.output[len(model.graph.output) - added:]


def expose_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added to its outputs."""
    with _extra_outputs(model, names):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
    return copy


def session_with_outputs(
    model: onnx.ModelProto,
    names: Sequence[str],
    *,
    level: OptLevel = OptLevel.ALL,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
) -> ort.InferenceSession:
    """A session that can fetch ``names`` (intermediate tensors) as outputs.

    onnxruntime never fuses away a tensor that is a graph output, so the full
    optimization level is safe and fastest.
    """
    with _extra_outputs(model, names) as exposed:
        return create_session(exposed, level=level, providers=providers)


def iterate_activations(
    model: onnx.ModelProto,
    data: Dataset,
    names: Sequence[str],
    *,
    level: OptLevel = OptLevel.ALL,
    progress: ProgressFactory = null_progress,
    desc: str = "running model",
    providers: Sequence[str] = DEFAULT_PROVIDERS,
) -> Iterator[tuple[Feed, dict[str, np.ndarray]]]:
    """Yield ``(feed, {name: value})`` for every sample of ``data``."""
    session = session_with_outputs(model, names, level=level, providers=providers)
    names = list(names)
    bar = progress(data.size(), desc, "sample")
    try:
        for feed in data:
            values = session.run(names, feed)
            yield feed, dict(zip(names, values))
            bar.update(1)
    finally:
        bar.close()
