"""Static int8 quantization of a float model, from calibration statistics to Q/DQ graph.

The steps, each in its own module:

1. :mod:`.placement` decides which nodes run on integers and which tensors get
   a Q/DQ pair (onnxruntime's CPU fusion rules);
2. :mod:`.calibration` collects the statistics of those tensors in one
   streaming pass (or they are loaded from a file);
3. :mod:`.observers` turns statistics into ranges; points that share
   parameters (data movement, Concat) get the union of their ranges, and
   folded Relu/Clip points are clipped to the activation's bounds;
4. :mod:`.weights` quantizes the weights (int8 per channel), optionally with
   bias correction and rounding reconstruction (:mod:`.recovery`);
5. :mod:`.qdq` writes it all into the graph; :class:`DynamicLayers` (if any)
   are then rewritten for run-time quantization.

:class:`StaticQuantizer` keeps the float model and its statistics, so
building variants (other exclusions for mixed precision) does not re-run
calibration.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant, is_onnx_op, producer
from onnxcomp.ir import import_graph

from .calibration import Observation
from .dynamic import find_weight_layers, group_by_activation, quantize_layer_groups
from .layers import LinearLayer
from .observers import RangeMethod, Statistics, tensor_range
from .placement import (
    OP_RULES,
    LayerPolicy,
    PlacementOptions,
    QuantPlan,
    QuantPoint,
    clip_bounds,
    plan_quantization,
)
from .qdq import InsertionSummary, QuantizedWeight, insert_qdq
from .qparams import QParams, QuantType, params_from_range
from .weight_only import find_embedding_tables, quantize_embedding
from .weights import layer_weight_params, quantize_layer_weight

logger = logging.getLogger(__name__)

NONNEGATIVE_OPS = ("Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Exp", "Sqrt")


@dataclasses.dataclass(frozen=True)
class StaticOptions:
    """Numerical choices of static quantization.

    Attributes:
        method: How activation ranges are chosen from the statistics.
        percentile: For ``method=percentile``.
        activation_type: uint8 (onnxruntime's fast x86 kernels) or int8.
        symmetric_activations: Zero point at the middle of the range.
        per_channel: One weight scale per output channel (else per tensor).
        placement: Exclusions and layer policies.
        region_method: Range method of the points inside transformer blocks
            (None: ``method``).
    """

    method: RangeMethod = RangeMethod.MSE
    percentile: float = 99.99
    activation_type: QuantType = QuantType.UINT8
    symmetric_activations: bool = False
    per_channel: bool = True
    placement: PlacementOptions = dataclasses.field(default_factory=PlacementOptions)
    region_method: RangeMethod | None = None


def observations(plan: QuantPlan, channel_means_for: Collection[LinearLayer] = ()) -> list[Observation]:
    """What calibration must observe for ``plan`` (plus input channel means of some layers)."""
    mean_axes: dict[str, int] = {}
    for layer in channel_means_for:
        axis = 1 if layer.node.op == "Conv" else -1
        mean_axes[layer.activation.name] = axis
    result = []
    for point in plan.points:
        result.append(Observation(point.name, _nonnegative(point), mean_axes.pop(point.name, None)))
    result.extend(Observation(name, False, axis) for name, axis in mean_axes.items())
    return result


def _nonnegative(point: QuantPoint) -> bool:
    if point.activation is not None:
        return True
    node = producer(point.observed)
    if node is None:
        return False
    if is_onnx_op(node, *NONNEGATIVE_OPS):
        return True
    if is_onnx_op(node, "Clip"):
        bounds = clip_bounds(node)
        return bounds is not None and bounds[0] >= 0
    return False


def point_range(stats: Statistics, point: QuantPoint, options: StaticOptions) -> tuple[float, float]:
    """The calibrated range of one point, clipped to its folded activation's bounds."""
    lo, hi = tensor_range(
        stats,
        stats.index(point.name),
        options.region_method if point.in_region and options.region_method else options.method,
        qtype=options.activation_type,
        symmetric=options.symmetric_activations,
        percentile=options.percentile,
    )
    if point.clip is not None:
        lo, hi = max(lo, point.clip[0]), min(hi, point.clip[1])
    return lo, hi


def group_params(stats: Statistics, plan: QuantPlan, options: StaticOptions) -> list[QParams]:
    """Activation parameters per group: the union of the members' ranges."""
    params = []
    for members in plan.groups:
        ranges = [point_range(stats, plan.points[m], options) for m in members]
        lo = min(r[0] for r in ranges)
        hi = max(r[1] for r in ranges)
        params.append(params_from_range(lo, hi, options.activation_type, symmetric=options.symmetric_activations))
    return params


def input_params(plan: QuantPlan, params: list[QParams], layer: LinearLayer) -> QParams | None:
    """Parameters of the quantized activation a layer reads."""
    point = plan.point(layer.activation.name)
    return None if point is None else params[point.group]


def compute_layer_names(plan: QuantPlan) -> list[str]:
    """Names of the plan's quantized compute layers (Conv, Gemm, MatMul), the units of mixed precision."""
    return [n.name for n in plan.nodes if OP_RULES[n.op].compute and n.name]


@dataclasses.dataclass(frozen=True)
class DynamicLayers:
    """Layers left out of the static plan and quantized at run time instead
    (:mod:`.dynamic`: DynamicQuantizeLinear + MatMulInteger), as the transformer
    scheme does with the FFN down-projections.

    Attributes:
        names: Node names of the MatMul/Gemm layers.
        smooth: Activation name -> SmoothQuant factors for these layers.
        per_channel: One weight scale per output column.
    """

    names: frozenset[str] = frozenset()
    smooth: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    per_channel: bool = True

    def apply(self, graph: gs.Graph) -> int:
        """Rewrite the named layers of ``graph``; returns how many were rewritten."""
        if not self.names:
            return 0
        layers = [layer for layer in find_weight_layers(graph) if layer.node.name in self.names]
        quantize_layer_groups(graph, Namer(graph), group_by_activation(layers), dict(self.smooth), per_channel=self.per_channel)
        graph.cleanup(remove_unused_graph_inputs=False)
        return len(layers)


@dataclasses.dataclass
class QuantizedModel:
    """The result of one build."""

    graph: gs.Graph
    plan: QuantPlan
    summary: InsertionSummary
    params: list[QParams]


class StaticQuantizer:
    """Builds quantized graphs of one float model from its calibration statistics.

    Args:
        model: The float model (after cleanup), opset >= 10.
        stats: Statistics of at least the tensors the plans observe.
        options: Numerical choices.
        opset: Default-domain opset of ``model``.
    """

    def __init__(self, model: onnx.ModelProto, stats: Statistics, options: StaticOptions, opset: int):
        self.model = model
        self.stats = stats
        self.options = options
        self.opset = opset
        self.weight_values: dict[str, np.ndarray] = {}
        """Layer name -> integer weights to use instead of nearest rounding."""
        self.biases: dict[str, np.ndarray] = {}
        """Layer name -> float bias to use instead of the model's (bias correction)."""
        self.dynamic_layers = DynamicLayers()
        """Layers quantized at run time after the static rewrite."""
        self.embeddings = False
        """Store large Gather tables (token embeddings) as int8 per row (:mod:`.weight_only`)."""

    def plan(self, extra_exclude: Collection[str] = ()) -> tuple[gs.Graph, QuantPlan]:
        graph = import_graph(self.model)
        placement = self.options.placement
        if extra_exclude:
            placement = dataclasses.replace(placement, exclude=placement.exclude + tuple(extra_exclude))
        if self.options.symmetric_activations:
            placement = dataclasses.replace(placement, fold_activations=False)
        return graph, plan_quantization(graph, placement, opset=self.opset)

    def weight_params(self, layer: LinearLayer, x_params: QParams | None) -> QParams:
        return layer_weight_params(
            layer, None if x_params is None else x_params.scale, per_channel=self.options.per_channel and self.opset >= 13
        )

    def quantized_weights(self, plan: QuantPlan, params: list[QParams]) -> dict[str, QuantizedWeight]:
        """Integer weights of the plan's layers (reconstructed values where given, else nearest)."""
        weights = {}
        for layer in plan.layers:
            w_params = self.weight_params(layer, input_params(plan, params, layer))
            values = self.weight_values.get(layer.name)
            if values is not None and values.shape != layer.weight_value().shape:
                values = None
            weights[layer.name] = quantize_layer_weight(layer, w_params, values)
        return weights

    def build(self, extra_exclude: Collection[str] = ()) -> QuantizedModel:
        """Plan, compute parameters and write the Q/DQ graph (with :attr:`weight_values`
        and :attr:`biases` where given).

        Args:
            extra_exclude: More node names to keep float (mixed precision).
        """
        graph, plan = self.plan(extra_exclude)
        missing = [p.name for p in plan.points if not self.stats.has(p.name)]
        if missing:
            raise KeyError(f"no statistics for tensor(s) {', '.join(missing[:5])}")
        params = group_params(self.stats, plan, self.options)
        for layer in plan.layers:
            if layer.name in self.biases and layer.bias is not None:
                _set_bias(graph, layer, self.biases[layer.name])
        weights = self.quantized_weights(plan, params)
        summary = insert_qdq(graph, plan, params, weights, opset=self.opset)
        self.dynamic_layers.apply(graph)
        if self.embeddings:
            namer = Namer(graph)
            for table in find_embedding_tables(graph):
                quantize_embedding(graph, namer, table)
            graph.cleanup(remove_unused_graph_inputs=False)
        return QuantizedModel(graph, plan, summary, params)


def _set_bias(graph: gs.Graph, layer: LinearLayer, values: np.ndarray) -> None:
    """Give ``layer`` a private bias initializer holding ``values``."""
    shape = np.shape(np.asarray(layer.bias.values)) if isinstance(layer.bias, gs.Constant) else (values.size,)
    new = add_constant(Namer(graph), f"{layer.bias.name}_corrected", values.astype(np.float32).reshape(shape))
    reader = layer.bias_node
    for i, t in enumerate(reader.inputs):
        if t is layer.bias:
            reader.inputs[i] = new
    layer.bias = new


__all__ = [
    "DynamicLayers",
    "LayerPolicy",
    "PlacementOptions",
    "QuantizedModel",
    "StaticOptions",
    "StaticQuantizer",
    "group_params",
    "observations",
]
