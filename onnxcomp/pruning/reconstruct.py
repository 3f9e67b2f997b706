"""Post-training reconstruction of the layers that lost input channels.

After pruning, a consuming layer computes ``y' = M' x' + b`` from fewer
inputs. Two repairs, both on calibration data:

* **Bias compensation** adds the mean contribution of the removed inputs:
  ``b' = b + M[:, removed] E[x_removed]`` (for a conv, each removed channel's
  kernel is summed; zero padding at the borders is ignored).
* **Least squares** refits the whole layer. Layers are processed in graph
  order; for each, the input ``x'`` comes from the *pruned* model (with the
  layers before it already refitted, so their errors get corrected) and the
  target ``y`` is the *original* layer's output on the same sample. With the
  input and target means ``mu_x``, ``mu_y`` and centered moments
  ``G = Cov(x', x')``, ``C = Cov(x', y)`` the fit is ridge-regularised towards
  the unrefitted weights ``M0``::

      M'^T = (G + lam I)^-1 (C + lam M0^T),   b' = mu_y - M' mu_x,
      lam  = ridge * trace(G) / features

  so with few samples (a classifier head sees one row per image) it stays near
  ``M0``, and ``b'`` includes the bias compensation. A conv is fitted on
  im2col patches at a random subset of output positions per sample.

When the layer's output (after its bias ``Add``) feeds a residual ``Add``,
the target is the original *sum* minus the pruned model's other branch, so the
refit also absorbs the error the residual stream has accumulated.

Only output channels the layer keeps are fitted. A grouped conv is fitted
group by group (each group's outputs from its own inputs), so it stays
grouped. Layers of other kinds (transposed, 1-D/3-D convs) are left as pruned.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..data import Dataset
from ..graph import Namer, constant_value, is_onnx_op
from ..progress import ProgressFactory, null_progress
from ..runtime import OptLevel, create_session
from .analysis import Dependencies
from .columns import consumer_columns, producer_filters
from .layers import (
    LinearView,
    RowSampler,
    bias_add,
    conv_groups,
    input_features,
    layer_kind,
    output_rows,
    read_layer,
    write_layer,
)
from .members import Removal
from .stats import ChannelStats
from .truncate import truncated_model

logger = logging.getLogger(__name__)

@dataclasses.dataclass
class Sink:
    """A layer that lost input channels, captured before the rewrite."""

    node: gs.Node
    kind: str
    kept_in: np.ndarray
    kept_out: np.ndarray
    original: LinearView
    kernel: int
    groups: int  # independent blocks of the matrix (a grouped conv's ``group``)
    input_mean: np.ndarray | None
    target: str  # tensor equal to M x + b (original model), or the residual sum it feeds
    partner: str | None  # the residual Add's other operand (read from the pruned model)

    @property
    def kept_features(self) -> np.ndarray:
        return np.repeat(self.kept_in, self.kernel)


def find_sinks(deps: Dependencies, removal: Removal, stats: dict[str, ChannelStats] | None) -> list[Sink]:
    """Refittable layers losing input channels, in graph order (call before the rewrite)."""
    out_ids = {id(f.node): f.ids for f in producer_filters(deps)}
    means = {}
    for obs in deps.records.observations:
        if stats and obs.name in stats:
            means[id(obs.node)] = stats[obs.name].mean
    order = {id(n): i for i, n in enumerate(deps.graph.nodes)}
    sinks = []
    for columns in consumer_columns(deps):
        kept_in = removal.kept_along(columns.ids, 0)
        node = columns.node
        kind = layer_kind(node)
        if kept_in.all() or kind is None:
            continue
        view = read_layer(node, kind)
        produced = out_ids.get(id(node))
        kept_out = removal.kept_along(produced, 0) if produced is not None else np.ones(view.matrix.shape[0], bool)
        kernel = view.matrix.shape[1] // kept_in.size
        target, partner = _target_of(node, kind, deps.shapes)
        sinks.append(Sink(
            node, kind, kept_in, kept_out, view, kernel, conv_groups(node, kind), means.get(id(node)), target, partner
        ))
    sinks.sort(key=lambda s: order.get(id(s.node), 0))
    return sinks


def _target_of(node: gs.Node, kind: str, shapes) -> tuple[str, str | None]:
    """The tensor holding ``M x + b`` and, if it feeds a residual Add of the
    same shape, that Add's output and other operand."""
    out = node.outputs[0]
    if kind == "matmul":
        add = bias_add(node)
        if add is not None:
            out = add.outputs[0]
    readers = list(out.outputs)
    if len(readers) == 1 and is_onnx_op(readers[0], "Add") and len(readers[0].inputs) == 2:
        add = readers[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if (
            constant_value(other) is None
            and shapes.get(other.name) == shapes.get(out.name) == shapes.get(add.outputs[0].name)
        ):
            return add.outputs[0].name, other.name
    return out.name, None


def compensate_bias(graph: gs.Graph, sinks: Sequence[Sink]) -> int:
    """Add the mean contribution of removed inputs to each sink's bias; returns layers changed."""
    namer = Namer(graph)
    changed = 0
    for sink in sinks:
        if sink.input_mean is None:
            continue
        removed = ~sink.kept_features
        means = np.repeat(sink.input_mean, sink.kernel)
        delta = sink.original.matrix[sink.kept_out][:, removed] @ means[removed]
        current = read_layer(sink.node, sink.kind)
        write_layer(graph, namer, sink.node, sink.kind, LinearView(current.matrix, current.bias + delta))
        changed += 1
    return changed


@dataclasses.dataclass
class _Moments:
    """Running sums for the ridge fit."""

    n: int = 0
    sx: np.ndarray | None = None
    sy: np.ndarray | None = None
    sxx: np.ndarray | None = None
    sxy: np.ndarray | None = None
    syy: float = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64), y.astype(np.float64)
        if self.sx is None:
            self.sx, self.sy = np.zeros(x.shape[1]), np.zeros(y.shape[1])
            self.sxx, self.sxy = np.zeros((x.shape[1],) * 2), np.zeros((x.shape[1], y.shape[1]))
        self.n += x.shape[0]
        self.sx += x.sum(axis=0)
        self.sy += y.sum(axis=0)
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.syy += float(np.sum(y * y))

    def mse(self, view: LinearView) -> float:
        m, b = view.matrix, view.bias
        total = (
            self.syy - 2 * np.sum(m * self.sxy.T) - 2 * b @ self.sy + np.sum((m @ self.sxx) * m)
            + 2 * b @ (m @ self.sx) + self.n * b @ b
        )
        return float(total) / max(self.n, 1)

    def solve(self, start: LinearView, ridge: float, groups: int = 1) -> LinearView:
        """The ridge fit; with ``groups`` > 1 the matrix is block-diagonal (a
        grouped conv) and each block's outputs are fitted from its own inputs."""
        n = max(self.n, 1)
        mx, my = self.sx / n, self.sy / n
        cov_xx = self.sxx / n - np.outer(mx, mx)
        cov_xy = self.sxy / n - np.outer(mx, my)
        fit = np.zeros_like(start.matrix.T)  # [features, outputs]
        in_blocks = np.array_split(np.arange(fit.shape[0]), groups)
        out_blocks = np.array_split(np.arange(fit.shape[1]), groups)
        for ins, outs in zip(in_blocks, out_blocks):
            block = cov_xx[np.ix_(ins, ins)]
            lam = ridge * max(float(np.trace(block)) / ins.size, 1e-12)
            rhs = cov_xy[np.ix_(ins, outs)] + lam * start.matrix[np.ix_(outs, ins)].T
            fit[np.ix_(ins, outs)] = np.linalg.solve(block + lam * np.eye(ins.size), rhs)
        return LinearView(fit.T, my - mx @ fit)


def refit_layers(
    graph: gs.Graph,
    export,
    sinks: Sequence[Sink],
    original: onnx.ModelProto,
    data: Dataset,
    *,
    ridge: float,
    seed: int = 0,
    progress: ProgressFactory = null_progress,
) -> list[dict]:
    """Least-squares refit of every sink, in order. ``export(graph)`` gives the
    current pruned model. Returns per layer the in-sample error before/after."""
    sinks = [s for s in sinks if s.kind is not None]
    if not sinks:
        return []
    targets = _collect_targets(original, data, sinks, seed, progress)
    namer = Namer(graph)
    results = []
    bar = progress(len(sinks), "reconstructing layers", "layer")
    try:
        for index, sink in enumerate(sinks):
            names = [sink.node.inputs[0].name] + ([sink.partner] if sink.partner else [])
            session = create_session(truncated_model(export(graph), names), level=OptLevel.ALL)
            moments = _Moments()
            for sample, feed in enumerate(data):
                if sample >= len(targets[index]):
                    break
                rows, y = targets[index][sample]
                values = session.run(names, feed)
                if sink.partner:
                    y = y - output_rows(sink.kind, values[1])[rows]
                moments.add(input_features(sink.node, sink.kind, values[0], rows), y)
            current = read_layer(sink.node, sink.kind)
            fitted = moments.solve(current, ridge, sink.groups)
            before, after = moments.mse(_best_bias(moments, current)), moments.mse(fitted)
            write_layer(graph, namer, sink.node, sink.kind, fitted)
            results.append({"layer": sink.node.name, "mse_before": before, "mse_after": after})
            bar.update(1)
    finally:
        bar.close()
    return results


def _best_bias(moments: _Moments, view: LinearView) -> LinearView:
    """``view`` with its bias moved to the mean residual (plain bias compensation), for comparison."""
    n = max(moments.n, 1)
    return LinearView(view.matrix, moments.sy / n - view.matrix @ (moments.sx / n))


def _collect_targets(original, data, sinks, seed, progress) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Original outputs of every sink at sampled rows: per sink, per sample, (rows, y)."""
    from ..activations import iterate_activations

    names = [s.target for s in sinks]
    sample_rows = RowSampler(data.size(), seed)
    out: list[list] = [[] for _ in sinks]
    for _, values in iterate_activations(original, data, names, progress=progress, desc="reconstruction targets"):
        for k, sink in enumerate(sinks):
            y = values[names[k]]
            rows_y = output_rows(sink.kind, y)
            rows = sample_rows(rows_y.shape[0])
            out[k].append((rows, rows_y[rows][:, sink.kept_out].astype(np.float32)))
    return out
