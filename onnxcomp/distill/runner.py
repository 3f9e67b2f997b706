"""Running the teacher in onnxruntime on batches of samples.

Samples arrive one per feed (leading batch axis 1). When every input's batch
dim is dynamic, consecutive samples of equal shapes are concatenated into one
run of up to ``batch_size``; a probe checks once that a batch of two gives the
same outputs as two single runs (some graphs hard-code a batch of 1 inside),
and falls back to one sample per run otherwise.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import numpy as np
import onnx

from ..activations import expose_outputs
from ..data import Feed, InputSpec
from ..errors import DataError, UsageError
from ..runtime import DEFAULT_PROVIDERS, OptLevel, create_session, run

logger = logging.getLogger(__name__)

BATCH_PROBE_RTOL = 1e-3
BATCH_PROBE_ATOL = 1e-4


def graph_tensor_names(model: onnx.ModelProto) -> list[str]:
    """Every tensor a session can fetch: graph inputs and outputs, node outputs."""
    names = [vi.name for vi in model.graph.input]
    names += [o for node in model.graph.node for o in node.output if o]
    names += [vi.name for vi in model.graph.output]
    return list(dict.fromkeys(names))


def check_tensor_names(model: onnx.ModelProto, names: Sequence[str], what: str) -> None:
    """Raises UsageError for names the teacher graph does not have (with suggestions)."""
    known = set(graph_tensor_names(model))
    node_outputs = {node.name: [o for o in node.output if o] for node in model.graph.node if node.name}
    for name in names:
        if name not in known:
            outputs = ", ".join(vi.name for vi in model.graph.output)
            close = node_outputs.get(name) or difflib.get_close_matches(name, sorted(known), n=3)
            what_close = f"node '{name}' outputs" if name in node_outputs else "did you mean"
            hint = f"; {what_close} {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"{what} '{name}' is not a tensor of the teacher (its outputs: {outputs}){hint}")


def is_batchable(specs: Sequence[InputSpec]) -> bool:
    """Every input has a dynamic leading (batch) dim."""
    return all(s.shape is not None and len(s.shape) > 0 and not isinstance(s.shape[0], int) for s in specs)


class TeacherRunner:
    """Fetches ``names`` from the teacher for lists of single-sample feeds."""

    def __init__(
        self,
        model: onnx.ModelProto,
        names: Sequence[str],
        specs: Sequence[InputSpec],
        *,
        batch_size: int = 32,
        intra_op_threads: int | None = None,
        providers: Sequence[str] = DEFAULT_PROVIDERS,
    ):
        self.names = list(names)
        self.session = create_session(
            expose_outputs(model, self.names), level=OptLevel.ALL, intra_op_threads=intra_op_threads, providers=providers
        )
        self.batch_size = batch_size if is_batchable(specs) else 1

    def probe(self, feed: Feed) -> dict[str, np.ndarray]:
        """Outputs for one sample; also settles whether batching is safe.

        Raises:
            DataError: The teacher fails on the sample, or a requested tensor
                has no leading batch axis of 1.
        """
        single = self._run([feed], "teacher on sample 0")
        for name, value in single.items():
            if value.ndim == 0 or value.shape[0] != 1:
                raise DataError(
                    f"teacher tensor '{name}' has shape {list(value.shape)} for one sample; a stored tensor needs a "
                    "leading batch axis of 1"
                )
        if self.batch_size > 1:
            try:
                pair = self._run([feed, feed], "teacher on a batch of 2")
                same = all(
                    pair[n].shape[0] == 2
                    and np.allclose(pair[n][:1], single[n], rtol=BATCH_PROBE_RTOL, atol=BATCH_PROBE_ATOL)
                    and np.allclose(pair[n][1:], single[n], rtol=BATCH_PROBE_RTOL, atol=BATCH_PROBE_ATOL)
                    for n in self.names
                )
            except DataError:
                same = False
            if not same:
                logger.info("the teacher does not batch cleanly (fixed batch inside the graph?); running one sample at a time")
                self.batch_size = 1
        return single

    def run(self, feeds: Sequence[Feed], first_row: int) -> dict[str, np.ndarray]:
        """Outputs for ``feeds`` (one sample each), rows in order."""
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        while start < len(feeds):
            stop = start + 1
            while stop < len(feeds) and stop - start < self.batch_size and _same_shapes(feeds[start], feeds[stop]):
                stop += 1
            parts.append(self._run(feeds[start:stop], f"teacher on rows {first_row + start}..{first_row + stop - 1}"))
            start = stop
        if len(parts) == 1:
            return parts[0]
        for name in self.names:
            shapes = [p[name].shape[1:] for p in parts]
            if len(set(shapes)) > 1:
                raise DataError(
                    f"teacher tensor '{name}' has shapes {', '.join(str(list(s)) for s in dict.fromkeys(shapes))} per sample "
                    f"within rows {first_row}..{first_row + len(feeds) - 1}; outputs of varying shape are not supported: "
                    "give inputs of one shape (pad or resize them)"
                )
        return {n: np.concatenate([p[n] for p in parts]) for n in self.names}

    def _run(self, feeds: Sequence[Feed], what: str) -> dict[str, np.ndarray]:
        feed = feeds[0] if len(feeds) == 1 else {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        values = run(self.session, self.names, feed, error=DataError, what=what)
        for name, value in zip(self.names, values):
            if value.ndim == 0 or value.shape[0] != len(feeds):
                raise DataError(f"{what}: tensor '{name}' has shape {list(np.shape(value))}, expected a leading batch axis of {len(feeds)}")
        return dict(zip(self.names, values))


def _same_shapes(a: Feed, b: Feed) -> bool:
    return all(a[k].shape == b[k].shape for k in a)
