"""Where QuantizeLinear/DequantizeLinear pairs go so onnxruntime runs integer kernels.

onnxruntime's CPU provider fuses a ``DequantizeLinear -> op -> QuantizeLinear``
unit into an integer kernel only for certain ops and shapes of the unit (see
``/work/notes/ort_qdq_rules.md`` in the project notes for the evidence). The
plan made here follows those rules:

* **Compute layers** (Conv, Gemm, MatMul) are quantized wherever possible:
  activation inputs get a Q/DQ pair, constant weights become int8 per output
  channel (:mod:`.layers`). Conv needs a Q on its output (QLinearConv); Gemm
  and MatMul may leave their output float (QGemm, MatMulIntegerToFloat), so
  they get an output Q only when a quantized op reads the result.
* **Region ops** (Add, Mul, Concat, pooling, Sigmoid, LeakyRelu and the
  data-movement ops) are quantized only *inside* a quantized region: when
  every activation input already carries a Q and a quantized op reads the
  result. Elsewhere their DQ and Q would cost more than the integer kernel
  saves.
* **Data-movement ops** (Reshape, Transpose, MaxPool, Slice, Gather, ...) and
  **Concat** share one scale/zero point between inputs and outputs: onnxruntime
  then runs them directly on the 8-bit tensor (MaxPool, Reshape...) or copies
  without requantizing (QLinearConcat).
* **Relu and Clip(0, max)** right after a quantized op with free output
  parameters are folded: the Q reads the producer's output and its range starts
  at 0 (zero point = qmin) and ends at most at the clip maximum, so the Q itself
  clips and the activation node is removed.
* **One Q per tensor**: every reader of a quantized tensor, float ops included,
  reads its DequantizeLinear (a float reader beside the Q would block fusion of
  the producer).
* **Never a Q after Softmax** (QLinearSoftmax is several times slower than the
  float op on x86): a compute layer reading a Softmax output stays float.
* Ops without an integer kernel (LayerNormalization, HardSwish, Div, ...) are
  never wrapped; they read a DQ when their producer is quantized and their
  output gets a Q only when a quantized op reads it.

**Transformer scheme** (``PlacementOptions.transformer``, chosen by
:func:`onnxcomp.quantization.transformer.is_transformer`), inside the
transformer blocks only (:func:`~.transformer.transformer_region`: between
the normalizations and Softmaxes; a CNN stem or head keeps the rules above):
only the inputs of
the compute layers are quantized (the weight MatMul/Gemm/Conv, and the
attention MatMuls with two run-time inputs unless ``attention_matmuls`` is
off). Region ops (:data:`TRANSFORMER_FLOAT_OPS`: the residual Adds, the Muls
of GELU and scaling, Concat, pooling) stay float, and so do LayerNorm,
Softmax and GELU, which have no integer kernel anyway. A quantized tensor
whose producer runs in float (a LayerNorm output feeding the Q/K/V
projections and the residual Add) is read through its DequantizeLinear only
by the quantized ops: the residual stream and the other float readers keep
the exact float tensor (no fusion depends on them). Data-movement ops keep
their rules. This follows NNCF's ``ModelType.TRANSFORMER``, which ignores
Add, Mul, Sub, Div, Pow, Sqrt, ReduceMean and comparisons and quantizes
MatMul inputs.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import logging
from collections.abc import Collection, Iterable

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.graph import (
    constant_value,
    is_graph_input,
    is_graph_output,
    is_onnx_op,
    producer,
)

from .layers import LinearLayer, linear_layer
from .transformer import transformer_region

logger = logging.getLogger(__name__)


class OutputRule(enum.Enum):
    """What a quantized op needs on its outputs."""

    REQUIRED = "required"  # the integer kernel writes 8-bit (QLinearConv, QLinearAdd, ...)
    OPTIONAL = "optional"  # float output allowed (QGemm, MatMulIntegerToFloat)
    SHARED = "shared"  # data movement: outputs carry the input's scale and zero point


@dataclasses.dataclass(frozen=True)
class OpRule:
    """How one op type is quantized.

    Attributes:
        inputs: Indices of the activation inputs that get a Q/DQ (None: all).
        output: What the outputs need.
        compute: Quantized wherever possible (True) or only inside a
            quantized region (False).
    """

    inputs: tuple[int, ...] | None
    output: OutputRule
    compute: bool = False


_REGION = OpRule((0,), OutputRule.REQUIRED)
_MOVE = OpRule((0,), OutputRule.SHARED)

OP_RULES: dict[str, OpRule] = {
    "Conv": OpRule((0,), OutputRule.REQUIRED, compute=True),
    "Gemm": OpRule((0,), OutputRule.OPTIONAL, compute=True),
    "MatMul": OpRule((0, 1), OutputRule.OPTIONAL, compute=True),
    "Add": OpRule((0, 1), OutputRule.REQUIRED),
    "Mul": OpRule((0, 1), OutputRule.REQUIRED),
    "Concat": OpRule(None, OutputRule.SHARED),
    "GlobalAveragePool": _REGION,
    "AveragePool": _REGION,
    "Sigmoid": _REGION,
    "LeakyRelu": _REGION,
    "MaxPool": _MOVE,
    "Reshape": _MOVE,
    "Transpose": _MOVE,
    "Squeeze": _MOVE,
    "Unsqueeze": _MOVE,
    "Flatten": _MOVE,
    "Slice": _MOVE,
    "Gather": _MOVE,
    "Split": _MOVE,
    "Resize": _MOVE,
    "Expand": _MOVE,
    "Tile": _MOVE,
}
"""The ops onnxruntime's CPU provider runs on 8-bit tensors, and how."""

TRANSFORMER_FLOAT_OPS = ("Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu")
"""Region ops that stay float in the transformer scheme (residual stream, GELU/scaling Muls)."""

FORBIDDEN_PRODUCERS = ("Softmax", "LogSoftmax")
"""Ops whose output is never quantized (the CPU QLinearSoftmax is slower than float)."""


class LayerPolicy(enum.Enum):
    """What to do with the first or last compute layers of a model."""

    INT8 = "int8"
    FLOAT = "float"


@dataclasses.dataclass(frozen=True)
class PlacementOptions:
    """User choices that constrain the plan.

    Attributes:
        exclude: Node names (``fnmatch`` patterns) that stay float.
        exclude_op_types: Op types that stay float.
        first_layer: Policy for compute layers fed (through non-compute ops
            only) by a graph input.
        last_layer: Policy for compute layers that reach a graph output
            through non-compute ops only.
        fold_activations: Fold Relu/Clip(0, max) into the producer's Q (needs
            asymmetric activations, whose zero point can be qmin).
        transformer: The transformer scheme (see the module docstring).
        attention_matmuls: In the transformer scheme, also quantize MatMuls
            whose two inputs are computed (attention scores); a MatMul reading
            a Softmax output stays float regardless.
    """

    exclude: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    first_layer: LayerPolicy = LayerPolicy.INT8
    last_layer: LayerPolicy = LayerPolicy.INT8
    fold_activations: bool = True
    transformer: bool = False
    attention_matmuls: bool = True


@dataclasses.dataclass
class QuantPoint:
    """One quantized activation: a QuantizeLinear and a DequantizeLinear.

    Attributes:
        tensor: The float tensor the QuantizeLinear reads.
        observed: The tensor the pair stands for: every reader of it reads the
            DequantizeLinear instead. It is ``tensor`` itself, or the output of
            a folded ``activation``; its calibrated range defines the
            parameters.
        activation: A Relu/Clip between ``tensor`` and ``observed`` that the Q
            makes redundant (removed when the final parameters allow).
        clip: The activation's output bounds ``(low, high)``.
        group: Index of the group of points sharing one scale and zero point.
        readers: The nodes that read the DequantizeLinear (the others keep
            reading the float tensor); None: every reader does.
        in_region: Produced inside a transformer block (see
            :func:`~.transformer.transformer_region`).
    """

    tensor: gs.Tensor
    observed: gs.Tensor
    activation: gs.Node | None = None
    clip: tuple[float, float] | None = None
    group: int = -1
    readers: tuple[gs.Node, ...] | None = None
    in_region: bool = False

    @property
    def name(self) -> str:
        return self.observed.name


@dataclasses.dataclass
class QuantPlan:
    """Which nodes run on integers and which tensors get a Q/DQ pair.

    Attributes:
        nodes: The quantized nodes, in graph order.
        points: The quantized activations.
        groups: For each group, the indices of its points (they share parameters).
        layers: The quantized compute layers with constant weights.
        skipped: Node name -> why a quantizable node stays float.
        region: Names of the nodes inside transformer blocks (transformer scheme).
    """

    nodes: list[gs.Node]
    points: list[QuantPoint]
    groups: list[list[int]]
    layers: list[LinearLayer]
    skipped: dict[str, str]
    region: frozenset[str] = frozenset()

    def point(self, name: str) -> QuantPoint | None:
        """The point whose observed tensor is ``name``."""
        for p in self.points:
            if p.name == name:
                return p
        return None

    def observed_names(self) -> list[str]:
        return [p.name for p in self.points]


def _is_float(tensor: gs.Tensor) -> bool:
    if isinstance(tensor, gs.Constant):
        return False
    try:
        return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32
    except TypeError:
        return False


def clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    """``(low, high)`` of a Relu or a Clip with constant bounds, else None."""
    if is_onnx_op(node, "Relu"):
        return 0.0, float("inf")
    if not is_onnx_op(node, "Clip"):
        return None
    bounds = [float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))]
    for slot in (1, 2):
        if len(node.inputs) > slot and node.inputs[slot].name:
            value = constant_value(node.inputs[slot])
            if value is None or value.size != 1:
                return None
            bounds[slot - 1] = float(value.reshape(-1)[0])
    return bounds[0], bounds[1]


class _Planner:
    """Builds a :class:`QuantPlan`; one instance per call of :func:`plan_quantization`."""

    def __init__(self, graph: gs.Graph, options: PlacementOptions, opset: int):
        self.graph = graph
        self.options = options
        self.opset = opset
        self.skipped: dict[str, str] = {}
        self.layers: dict[int, LinearLayer] = {}
        self.act_inputs: dict[int, tuple[gs.Tensor, ...]] = {}
        self.rules: dict[int, OpRule] = {}
        self.quantized: set[int] = set()
        self.region: set[int] = transformer_region(graph) if options.transformer else set()
        """Ids of the nodes inside transformer blocks (the transformer rules apply there only)."""

    # -- candidates ---------------------------------------------------------------
    def _activation_inputs(self, node: gs.Node, rule: OpRule) -> tuple[gs.Tensor, ...] | str:
        indices = range(len(node.inputs)) if rule.inputs is None else rule.inputs
        tensors = []
        for i in indices:
            if i >= len(node.inputs) or not node.inputs[i].name:
                continue
            t = node.inputs[i]
            if constant_value(t) is not None:
                if node.op == "MatMul" and i == 1:
                    continue  # the constant weight, handled as a layer
                return "has a constant operand"
            tensors.append(t)
        return tuple(tensors) if tensors else "has no activation input"

    def _candidate(self, node: gs.Node) -> str | None:
        """Register ``node`` as a candidate; returns why it cannot be one."""
        if not is_onnx_op(node) or node.op not in OP_RULES:
            return "no integer kernel"
        if id(node) in self.region and node.op in TRANSFORMER_FLOAT_OPS:
            return "transformer scheme: residual stream and elementwise ops stay float"
        rule = OP_RULES[node.op]
        if node.op in ("Conv", "Gemm"):
            layer = linear_layer(self.graph, node)
            if layer is None:
                return "weight is not a constant float tensor"
            self.layers[id(node)] = layer
        elif node.op == "MatMul":
            layer = linear_layer(self.graph, node)
            if layer is not None:
                self.layers[id(node)] = layer
            elif id(node) in self.region and not self.options.attention_matmuls:
                return "transformer scheme: attention MatMul kept float (attention_matmuls off)"
        elif node.op == "MaxPool" and (self.opset < 12 or len([o for o in node.outputs if o.name]) > 1):
            return "MaxPool before opset 12 or with indices output"
        elif node.op == "Resize" and node.attrs.get("mode", "nearest") not in ("nearest", b"nearest"):
            return "only nearest Resize runs on 8-bit"
        inputs = self._activation_inputs(node, rule)
        if isinstance(inputs, str):
            return inputs
        if not all(_is_float(o) for o in node.outputs if o.name):
            return "output is not float32"
        self.rules[id(node)] = rule
        self.act_inputs[id(node)] = inputs
        return None

    def _excluded(self, node: gs.Node) -> bool:
        if node.op in self.options.exclude_op_types:
            return True
        return any(fnmatch.fnmatchcase(node.name or "", pattern) for pattern in self.options.exclude)

    # -- activation folding -------------------------------------------------------
    def foldable(self, tensor: gs.Tensor) -> gs.Node | None:
        """The Relu/Clip(0, max) that is the only reader of ``tensor``, if it may be folded."""
        if not self.options.fold_activations or len(tensor.outputs) != 1:
            return None
        if is_graph_output(self.graph, tensor):
            return None
        act = tensor.outputs[0]
        bounds = clip_bounds(act)
        if bounds is None or bounds[0] != 0.0 or bounds[1] <= 0.0 or act.inputs[0] is not tensor:
            return None
        node = producer(tensor)
        if node is None or id(node) not in self.quantized or self.rules[id(node)].output is OutputRule.SHARED:
            return None
        return act

    def _folded_from(self, tensor: gs.Tensor) -> gs.Node | None:
        """The folded Relu/Clip whose output is ``tensor``, if any."""
        node = producer(tensor)
        if node is None or clip_bounds(node) is None:
            return None
        return node if self.foldable(node.inputs[0]) is node else None

    # -- region rules -------------------------------------------------------------
    def available(self, tensor: gs.Tensor) -> bool:
        """Whether ``tensor`` carries a Q anyway (so a region op may read it cheaply)."""
        if is_graph_input(self.graph, tensor):
            return _is_float(tensor)
        node = producer(tensor)
        if node is None:
            return False
        if id(node) in self.quantized:
            return True
        return self._folded_from(tensor) is not None

    def read_quantized(self, tensor: gs.Tensor) -> bool:
        """Whether a quantized op reads ``tensor`` as an activation (possibly through a folded Relu/Clip)."""
        for reader in tensor.outputs:
            if id(reader) in self.quantized and any(t is tensor for t in self.act_inputs[id(reader)]):
                return True
        act = self.foldable(tensor)
        return act is not None and self.read_quantized(act.outputs[0])

    def _forbidden(self, tensor: gs.Tensor) -> bool:
        node = producer(tensor)
        if node is not None and is_onnx_op(node, *FORBIDDEN_PRODUCERS):
            return True
        return not _is_float(tensor)

    def _prune_once(self, order: list[gs.Node]) -> bool:
        changed = False
        for node in order:
            if id(node) not in self.quantized:
                continue
            rule = self.rules[id(node)]
            reason = None
            if any(self._forbidden(t) for t in self.act_inputs[id(node)]):
                reason = "an input stays float (Softmax output or not float32)"
            elif not rule.compute:
                if not all(self.available(t) for t in self.act_inputs[id(node)]):
                    reason = "outside a quantized region (an input is not quantized)"
                elif not any(self.read_quantized(o) for o in node.outputs if o.name):
                    reason = "outside a quantized region (no quantized reader)"
            if reason is not None:
                self.quantized.discard(id(node))
                self.skipped[node.name] = reason
                changed = True
        return changed

    # -- first/last layers ----------------------------------------------------------
    def _boundary_layers(self, forward: bool) -> set[int]:
        """Compute nodes reached from graph inputs (or outputs, backwards) through
        non-compute nodes only."""
        found: set[int] = set()
        seen: set[int] = set()
        frontier: list[gs.Tensor] = list(self.graph.inputs if forward else self.graph.outputs)
        while frontier:
            tensor = frontier.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            nodes = list(tensor.outputs) if forward else ([producer(tensor)] if producer(tensor) else [])
            for node in nodes:
                if id(node) in self.rules and self.rules[id(node)].compute:
                    found.add(id(node))
                    continue
                frontier.extend(node.outputs if forward else node.inputs)
        return found

    # -- the plan -------------------------------------------------------------------
    def run(self) -> QuantPlan:
        order = list(self.graph.nodes)
        for node in order:
            reason = self._candidate(node)
            if reason is None and self._excluded(node):
                reason = "excluded"
            if reason is None:
                self.quantized.add(id(node))
            elif is_onnx_op(node) and node.op in OP_RULES:
                self.skipped[node.name] = reason
        if self.options.first_layer is LayerPolicy.FLOAT:
            self._keep_float(self._boundary_layers(forward=True), "first layer kept float")
        if self.options.last_layer is LayerPolicy.FLOAT:
            self._keep_float(self._boundary_layers(forward=False), "last layer kept float")
        while self._prune_once(order):
            pass
        nodes = [n for n in order if id(n) in self.quantized]
        points, groups = self._points(nodes)
        layers = [self.layers[id(n)] for n in nodes if id(n) in self.layers]
        region = frozenset(n.name for n in order if id(n) in self.region and n.name)
        return QuantPlan(nodes, points, groups, layers, self.skipped, region)

    def _keep_float(self, ids: set[int], reason: str) -> None:
        for node in self.graph.nodes:
            if id(node) in ids and id(node) in self.quantized:
                self.quantized.discard(id(node))
                self.skipped[node.name] = reason

    def _point_for(self, tensor: gs.Tensor) -> QuantPoint:
        act = self._folded_from(tensor)
        if act is not None:
            return QuantPoint(act.inputs[0], tensor, act, clip_bounds(act))
        act = self.foldable(tensor)
        if act is not None:
            return QuantPoint(tensor, act.outputs[0], act, clip_bounds(act))
        node = producer(tensor)
        if node is None or id(node) not in self.region:
            return QuantPoint(tensor, tensor)
        readers = None if id(node) in self.quantized else tuple(r for r in tensor.outputs if id(r) in self.quantized)
        return QuantPoint(tensor, tensor, readers=readers, in_region=True)

    def _points(self, nodes: list[gs.Node]) -> tuple[list[QuantPoint], list[list[int]]]:
        by_name: dict[str, int] = {}
        points: list[QuantPoint] = []

        def add(tensor: gs.Tensor) -> int:
            point = self._point_for(tensor)
            if point.name not in by_name:
                by_name[point.name] = len(points)
                points.append(point)
            return by_name[point.name]

        unions: list[tuple[int, int]] = []
        for node in nodes:
            rule = self.rules[id(node)]
            ins = [add(t) for t in self.act_inputs[id(node)]]
            outs = []
            for out in node.outputs:
                if not out.name:
                    continue
                if rule.output is not OutputRule.OPTIONAL or self.read_quantized(out):
                    outs.append(add(out))
            if rule.output is OutputRule.SHARED:
                unions.extend((ins[0], o) for o in ins[1:] + outs)
        groups = _union_groups(len(points), unions)
        for index, members in enumerate(groups):
            for m in members:
                points[m].group = index
        return points, groups


def _union_groups(count: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(count))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def plan_quantization(graph: gs.Graph, options: PlacementOptions, *, opset: int) -> QuantPlan:
    """Decide which nodes run on integers and where the Q/DQ pairs go.

    ``graph`` must carry float dtypes on its tensors (run shape inference
    first); tensors of unknown type are treated as not quantizable.
    """
    plan = _Planner(graph, options, opset).run()
    logger.info(
        "quantization plan: %d nodes on integers, %d quantized tensors in %d groups, %d layers with int8 weights",
        len(plan.nodes), len(plan.points), len(plan.groups), len(plan.layers),
    )
    for name, reason in plan.skipped.items():
        logger.debug("stays float: %s (%s)", name, reason)
    return plan


def op_types_quantizable() -> Collection[str]:
    return tuple(OP_RULES)
