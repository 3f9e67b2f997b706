"""A differentiable executor: an ONNX graph evaluated by torch, its weights as parameters.

:class:`GraphModule` is an ``nn.Module`` whose forward runs the main graph's
nodes in topological order with the implementations of :mod:`.ops`. Float
initializers become ``nn.Parameter``s, kept by initializer name (an ONNX name
may hold any character, so the ``ParameterDict`` keys are escaped; use
:meth:`GraphModule.parameter` and :meth:`GraphModule.named_weights` to address
them by their ONNX names). Everything else the graph holds (integer
initializers, ``Constant`` nodes, and the float tensors in roles training
must not change) is a buffer.

Which float tensors train:

* not those in a *fixed role*: BatchNormalization's running mean and
  variance, the scales and zero points of QuantizeLinear/DequantizeLinear,
  Resize's roi and scales, Clip's bounds, Pad's value, Pow's exponent, Range's
  operands (see :data:`FIXED_INPUTS`);
* not single-element tensors (epsilons, ``1/sqrt(d)`` and ``x / 6`` constants
  of exported graphs, which are part of the function, not weights);
* ``Constant`` nodes only with ``train_constants=True`` (exporters such as
  paddle2onnx put every weight in a Constant node; then they are keyed by the
  node's output name);
* an integer initializer read only as the input of DequantizeLinear nodes with
  constant scale and zero point (a quantized weight) trains as its dequantized
  float value and is fake-quantized in the forward pass, so its integer codes
  are learned with the scale fixed (QAT of weights);
* ``trainable`` narrows the choice further by ONNX name.

The forward pass is the inference form of the graph whatever ``module.train()``
says: BatchNormalization uses its stored statistics, Dropout passes through.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import quote

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import TrainingError
from ..external_data import to_array
from . import ops

logger = logging.getLogger(__name__)

#: Inputs (by position) whose float values are a fixed part of the function, never trained.
FIXED_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "Resize": frozenset({1, 2, 3}),
    "Clip": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Pow": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "ConstantOfShape": frozenset({0}),
}

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_NP_FLOATS = (np.float16, np.float32, np.float64)


def _key(name: str) -> str:
    """A ParameterDict / buffer key for an ONNX name (no dots, never empty, no clash with Module attributes)."""
    return "t_" + quote(name, safe="").replace(".", "%2E")


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """An integer initializer trained through its dequantized value (see the module docstring)."""

    scale: str
    zero_point: str | None
    axis: int
    qmin: int
    qmax: int
    dtype: np.dtype


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise TrainingError("the model imports no default-domain opset")


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node as an array."""
    if len(node.attribute) != 1:
        raise TrainingError(f"Constant node '{node.name}' has {len(node.attribute)} attributes, expected one")
    attr = node.attribute[0]
    if attr.name == "value":
        return to_array(attr.t)
    simple = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    if attr.name in simple:
        return np.asarray(onnx.helper.get_attribute_value(attr), dtype=simple[attr.name])
    raise TrainingError(f"Constant node '{node.name}': attribute '{attr.name}' is not supported")


class GraphModule(nn.Module):
    """An ONNX model's main graph as a differentiable torch module.

    Args:
        model: The model (not modified; the module keeps copies of its tensors).
        trainable: ONNX names (or a predicate on them) of the tensors allowed
            to train; default all that qualify (see the module docstring).
        train_constants: Also train the float tensors of Constant nodes.

    Raises:
        TrainingError: A node whose op (or domain) the executor does not
            implement, named with its op type; a graph that is not a DAG.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        trainable: Iterable[str] | Callable[[str], bool] | None = None,
        train_constants: bool = False,
    ):
        super().__init__()
        graph = model.graph
        opset = default_opset(model)
        self.weights = nn.ParameterDict()
        self._keys: dict[str, str] = {}  # ONNX name -> parameter or buffer key
        self._dtypes: dict[str, torch.dtype] = {}  # trained in float32, used in this dtype
        self.quantized: dict[str, QuantizedWeight] = {}
        if trainable is None:
            allowed: Callable[[str], bool] = lambda name: True  # noqa: E731
        elif callable(trainable):
            allowed = trainable
        else:
            names = set(trainable)
            allowed = names.__contains__

        nodes = _topological(graph)
        self._plan: list[tuple[ops.Node, ops.Op]] = []
        for proto in nodes:
            if proto.op_type == "Constant":
                continue
            if proto.domain not in ("", "ai.onnx") or proto.op_type not in ops.OPS:
                where = f" in domain '{proto.domain}'" if proto.domain not in ("", "ai.onnx") else ""
                raise TrainingError(
                    f"node '{proto.name or proto.output[0]}': op {proto.op_type}{where} is not supported by the training executor"
                )
            self._plan.append((ops.Node(proto, opset), ops.OPS[proto.op_type]))

        fixed = _fixed_names(nodes)
        values: dict[str, np.ndarray] = {t.name: to_array(t) for t in graph.initializer}
        candidates = set(values)
        for proto in nodes:
            if proto.op_type == "Constant":
                values[proto.output[0]] = constant_value(proto)
                if train_constants:
                    candidates.add(proto.output[0])
        graph_inputs = {vi.name for vi in graph.input}
        self.quantized = _quantized_weights(nodes, values, fixed)

        for name, array in values.items():
            trains = (
                name in candidates and name not in fixed and name not in graph_inputs and allowed(name)
                and (array.dtype in _NP_FLOATS or name in self.quantized) and array.size > 1
            )
            tensor = _to_torch(name, array)
            key = _key(name)
            self._keys[name] = key
            if not trains:
                self.register_buffer(key, tensor)
                continue
            if name in self.quantized:
                q = self.quantized[name]
                tensor = _dequantize(tensor, values[q.scale], values.get(q.zero_point) if q.zero_point else None, q.axis)
            self._dtypes[name] = tensor.dtype
            self.weights[key] = nn.Parameter(tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor)
        # Quantized weights that do not train stay plain integer buffers.
        self.quantized = {n: q for n, q in self.quantized.items() if _key(n) in self.weights}

        self.input_names = [vi.name for vi in graph.input if vi.name not in values]
        self.output_names = [vi.name for vi in graph.output]
        self._code_types = _code_types(nodes, values, {vi.name: vi.type.tensor_type.elem_type for vi in graph.output})
        self._last_use = _last_uses(self._plan, set(self.output_names))

    # -- names ----------------------------------------------------------------------------------

    def named_weights(self) -> Iterable[tuple[str, nn.Parameter]]:
        """``(ONNX name, parameter)`` for every tensor that trains."""
        for name, key in self._keys.items():
            if key in self.weights:
                yield name, self.weights[key]

    def parameter(self, name: str) -> nn.Parameter:
        key = self._keys.get(name)
        if key is None or key not in self.weights:
            raise KeyError(f"'{name}' is not a trained tensor of this graph")
        return self.weights[key]

    # -- evaluation -----------------------------------------------------------------------------

    def value(self, name: str) -> torch.Tensor:
        """A stored tensor as the graph reads it (quantized weights as fake-quantized codes)."""
        key = self._keys[name]
        if key not in self.weights:
            return getattr(self, key)
        weight = self.weights[key]
        if name in self.quantized:
            q = self.quantized[name]
            scale = self.value(q.scale)
            zp = self.value(q.zero_point) if q.zero_point else None
            return ops.fake_quantize(weight, ops._per_axis(scale, weight, q.axis),
                                     None if zp is None else ops._per_axis(zp, weight, q.axis), q.qmin, q.qmax)
        dtype = self._dtypes[name]  # half-precision weights train in float32
        return weight.to(dtype) if dtype in (torch.float16, torch.bfloat16) else weight

    def forward(self, feed: Mapping[str, object] | None = None, **inputs) -> dict[str, torch.Tensor]:
        """Evaluate the graph; returns the graph outputs by name.

        Args:
            feed: Input name -> tensor or numpy array (or pass them as keywords).
        """
        return self._evaluate({**(feed or {}), **inputs}, None, None)

    def _evaluate(self, feed: Mapping[str, object], pin: Mapping[str, torch.Tensor] | None,
                  own: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        """The forward pass; a tensor named in ``pin`` replaces the value its node computes (which goes to ``own``)."""
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in feed:
                raise TrainingError(f"no value for graph input '{name}'")
            value = feed[name]
            env[name] = value if isinstance(value, torch.Tensor) else _from_numpy(np.asarray(value))
        for index, (node, fn) in enumerate(self._plan):
            args = [None if not n else env[n] if n in env else self._stored(n, node) for n in node.proto.input]
            try:
                out = fn(node, args)
            except TrainingError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as err:
                raise node.fail(f"{' '.join(str(err).split())[:300]}") from err
            for name, tensor in zip(node.proto.output, (out,) if isinstance(out, torch.Tensor) else out):
                if name and pin is not None and name in pin:
                    own[name] = tensor
                    tensor = pin[name].to(tensor.dtype)
                if name:
                    env[name] = tensor
            for name in self._last_use.get(index, ()):
                env.pop(name, None)
        return {name: self._output(name, env[name] if name in env else self.value(name)) for name in self.output_names}

    def _stored(self, name: str, node: ops.Node) -> torch.Tensor:
        if name not in self._keys:
            raise node.fail(f"input '{name}' is neither computed before it nor stored in the graph")
        return self.value(name)

    def _output(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        code_type = self._code_types.get(name)
        if tensor.is_floating_point() and code_type is not None:  # fake-quantized codes, as ONNX types them
            return tensor.round().to(ops.TORCH_DTYPES[code_type])
        return tensor

    @torch.no_grad()
    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Evaluate without gradients; numpy in, numpy out."""
        return {name: t.detach().cpu().numpy() for name, t in self.forward(feed).items()}

    @torch.no_grad()
    def run_pinned(self, feed: Mapping[str, np.ndarray], pin: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Evaluate with the intermediate tensors in ``pin`` (name -> value) taking the place of what
        their nodes compute; returns the graph outputs and what those nodes computed.

        With the QuantizeLinear outputs of onnxruntime pinned, every float
        segment between Q/DQ pairs is compared on the same integer codes: one
        code rounded the other way (float32 sums in another order) cannot
        cascade through the rest of the graph.
        """
        own: dict[str, torch.Tensor] = {}
        values = {name: _from_numpy(np.asarray(value)) for name, value in pin.items()}
        outputs = self._evaluate(feed, values, own)
        return ({name: t.detach().cpu().numpy() for name, t in outputs.items()},
                {name: t.detach().cpu().numpy() for name, t in own.items()})

    # -- results --------------------------------------------------------------------------------

    def trained_values(self) -> dict[str, np.ndarray]:
        """The current value of every trained tensor, by ONNX name, in its stored dtype and shape."""
        out = {}
        with torch.no_grad():
            for name, weight in self.named_weights():
                if name in self.quantized:
                    out[name] = self.value(name).round().numpy().astype(self.quantized[name].dtype)
                else:
                    out[name] = weight.detach().to(self._dtypes[name]).cpu().numpy()
        return out


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory, or a copy when the array is read-only (torch warns on those)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _to_torch(name: str, array: np.ndarray) -> torch.Tensor:
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError as err:  # strings, float8, 4-bit types
        raise TrainingError(f"tensor '{name}' of type {array.dtype} is not supported by the training executor") from err


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where every input is computed before it is read (stable)."""
    produced_by = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                produced_by[out] = i
    order, state = [], [0] * len(graph.node)  # 0 new, 1 visiting, 2 done
    for root in range(len(graph.node)):
        stack = [(root, iter(graph.node[root].input))]
        if state[root]:
            continue
        state[root] = 1
        while stack:
            index, pending = stack[-1]
            for name in pending:
                dep = produced_by.get(name)
                if dep is None or state[dep] == 2:
                    continue
                if state[dep] == 1:
                    raise TrainingError(f"the graph has a cycle through '{name}'")
                state[dep] = 1
                stack.append((dep, iter(graph.node[dep].input)))
                break
            else:
                stack.pop()
                state[index] = 2
                order.append(graph.node[index])
    return order


def _fixed_names(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    fixed = set()
    for node in nodes:
        for position in FIXED_INPUTS.get(node.op_type, ()):
            if position < len(node.input) and node.input[position]:
                fixed.add(node.input[position])
    return fixed


def _quantized_weights(nodes: list[onnx.NodeProto], values: Mapping[str, np.ndarray], fixed: set[str]) -> dict[str, QuantizedWeight]:
    """Integer tensors read only as input 0 of DequantizeLinear nodes with stored scale and zero point."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for position, name in enumerate(node.input):
            if name in values:
                readers.setdefault(name, []).append((node, position))
    found = {}
    for name, uses in readers.items():
        array = values[name]
        if array.dtype.kind not in "iu" or name in fixed:
            continue
        if any(node.op_type != "DequantizeLinear" or position != 0 for node, position in uses):
            continue
        signatures = {(tuple(node.input[1:3]), _int_attr(node, "axis", 1)) for node, _ in uses}
        if len(signatures) != 1:
            continue
        (inputs, axis), = signatures
        scale, zero_point = inputs[0], inputs[1] if len(inputs) > 1 and inputs[1] else None
        if scale not in values or (zero_point and zero_point not in values) or any(_int_attr(n, "block_size", 0) for n, _ in uses):
            continue
        qtype = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        if qtype not in ops.QUANT_RANGES:
            continue
        found[name] = QuantizedWeight(scale, zero_point, axis, *ops.QUANT_RANGES[qtype], array.dtype)
    return found


def _code_types(nodes: list[onnx.NodeProto], values: Mapping[str, np.ndarray], declared: Mapping[str, int]) -> dict[str, int]:
    """Graph outputs that QuantizeLinear, DynamicQuantizeLinear and MatMulInteger nodes produce -> their ONNX integer type."""
    found = {}
    for node in nodes:
        if node.op_type == "DynamicQuantizeLinear":
            found.update({name: onnx.TensorProto.UINT8 for name in node.output[0:3:2] if name in declared})
        elif node.op_type == "MatMulInteger" and node.output[0] in declared:
            found[node.output[0]] = onnx.TensorProto.INT32
        if node.op_type != "QuantizeLinear" or node.output[0] not in declared:
            continue
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zero_point in values:
            found[node.output[0]] = onnx.helper.np_dtype_to_tensor_dtype(values[zero_point].dtype)
        elif declared[node.output[0]] in ops.QUANT_RANGES:
            found[node.output[0]] = declared[node.output[0]]
        else:
            found[node.output[0]] = _int_attr(node, "output_dtype", 0) or onnx.TensorProto.UINT8
    return found


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return attr.i
    return default


def _dequantize(codes: torch.Tensor, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> torch.Tensor:
    scale_t = torch.from_numpy(np.asarray(scale, dtype=np.float32).copy())
    value = codes.to(torch.float32)
    if zero_point is not None:
        value = value - ops._per_axis(torch.from_numpy(np.asarray(zero_point).astype(np.float32)), codes, axis)
    return value * ops._per_axis(scale_t, codes, axis)


def _last_uses(plan: list[tuple[ops.Node, ops.Op]], keep: set[str]) -> dict[int, list[str]]:
    """For each step, the values no later step reads (freed to keep memory flat)."""
    last: dict[str, int] = {}
    for index, (node, _) in enumerate(plan):
        for name in node.proto.input:
            if name:
                last[name] = index
        for name in node.proto.output:
            if name:
                last.setdefault(name, index)
    out: dict[int, list[str]] = {}
    for name, index in last.items():
        if name not in keep:
            out.setdefault(index, []).append(name)
    return out
