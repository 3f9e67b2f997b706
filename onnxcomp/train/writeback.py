"""Write trained values back into the graph, and check the result against onnxruntime.

:func:`write_back` replaces the data of the tensors a :class:`GraphModule`
trained, in place of the originals: initializers (or Constant node values)
keep their names, dtypes and shapes; nodes, names, metadata, opsets and the
Q/DQ structure are not touched. :func:`check_agreement` then evaluates the
trained graph with the executor and with onnxruntime (graph optimizations
disabled) on the same feeds; they must agree within a float tolerance
(default ``|a - b| <= atol + rtol * |b|`` with ``rtol = 1e-4``,
``atol = 1e-5`` relative to the output's largest magnitude; float32 sums in
different orders differ by a few ulps per operation).

In a Q/DQ graph those ulps occasionally round a QuantizeLinear input that
sits at a code boundary the other way: one code one step off, which the layers
after it spread (on PP-OCRv5's int8 recogniser 2 codes of 259,200 differ at the
first such node, and the softmax output by up to 0.07 at the end). So Q/DQ
graphs are checked segment by segment: the executor runs with every
QuantizeLinear output (and DynamicQuantizeLinear's codes, scale and zero
point) pinned to onnxruntime's; the graph outputs must
then agree within the float tolerance, and the codes the executor computes
itself may differ from onnxruntime's by one step in at most
``max_code_flips`` of each node's elements.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import TrainingError
from ..runtime import OptLevel, create_session
from ..runtime import run as run_session
from .executor import GraphModule


def write_back(model: onnx.ModelProto, values: GraphModule | Mapping[str, np.ndarray], *, copy: bool = True) -> onnx.ModelProto:
    """The model with the trained tensors replaced, everything else as it was.

    Args:
        model: The model the module was built from.
        values: The module, or ``{ONNX name: array}`` (:meth:`GraphModule.trained_values`).
        copy: Write into a copy (default) or into ``model`` itself.

    Raises:
        TrainingError: A value whose name is not an initializer or Constant
            output of the graph, or whose dtype or shape differs from it.
    """
    if isinstance(values, GraphModule):
        values = values.trained_values()
    out = onnx.ModelProto()
    if copy:
        out.CopyFrom(model)
    else:
        out = model
    remaining = dict(values)
    for tensor in out.graph.initializer:
        if tensor.name in remaining:
            _replace(tensor, remaining.pop(tensor.name))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in remaining:
            _replace_constant(node, remaining.pop(node.output[0]))
    if remaining:
        raise TrainingError(f"no initializer or Constant named {sorted(remaining)[:5]} in the graph")
    return out


def _replace(tensor: onnx.TensorProto, array: np.ndarray) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if array.dtype != dtype or tuple(array.shape) != tuple(tensor.dims):
        raise TrainingError(
            f"trained value of '{tensor.name}' is {array.dtype}{list(array.shape)}, the graph's {dtype}{list(tensor.dims)}"
        )
    new = numpy_helper.from_array(np.ascontiguousarray(array), tensor.name)
    new.doc_string = tensor.doc_string
    tensor.CopyFrom(new)  # also drops an external-data reference: the new bytes are inline


def _replace_constant(node: onnx.NodeProto, array: np.ndarray) -> None:
    attr = node.attribute[0]
    if attr.name == "value":
        name = attr.t.name
        _replace(attr.t, array)
        attr.t.name = name
    elif attr.name == "value_floats":
        if array.dtype != np.float32 or array.shape != (len(attr.floats),):
            raise TrainingError(f"trained value of Constant '{node.output[0]}' does not fit its value_floats")
        del attr.floats[:]
        attr.floats.extend(float(v) for v in array)
    else:
        raise TrainingError(f"Constant '{node.output[0]}': cannot write a trained value into '{attr.name}'")


@dataclasses.dataclass
class Agreement:
    """Executor vs onnxruntime on the trained graph: the largest differences seen."""

    samples: int
    max_abs: float
    max_rel: float  # relative to the largest magnitude of the onnxruntime output
    rtol: float
    atol: float
    failures: list[str] = dataclasses.field(default_factory=list)
    pinned: int = 0  # QuantizeLinear outputs pinned to onnxruntime's codes (Q/DQ graphs)
    code_flips: float = 0.0  # the largest fraction of one node's codes one step off

    @property
    def ok(self) -> bool:
        return not self.failures


#: Nodes whose outputs are pinned to onnxruntime's in the check of a Q/DQ graph.
QUANTIZERS = ("QuantizeLinear", "DynamicQuantizeLinear")


def check_agreement(
    model: onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    module: GraphModule | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    raise_on_failure: bool = True,
    max_code_flips: float = 1e-3,
) -> Agreement:
    """Evaluate ``model`` with the executor and with onnxruntime on ``feeds``; compare float outputs.

    The tolerance is ``atol + rtol * max|onnxruntime output|`` per output, over
    all samples; integer and boolean outputs must be equal. In a graph with
    QuantizeLinear nodes the comparison is segment by segment (see the module
    docstring).

    Raises:
        TrainingError: (with ``raise_on_failure``) an output beyond tolerance.
    """
    module = module or GraphModule(model)
    names = [o.name for o in model.graph.output]
    quantized = list(dict.fromkeys(
        name for n in model.graph.node if n.op_type in QUANTIZERS for name in n.output if name and name not in names
    ))  # fmt: skip
    codes_of = {n.output[0] for n in model.graph.node if n.op_type in QUANTIZERS}  # the scales and zero points only pinned
    probe = model
    if quantized:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in quantized)
    session = create_session(probe, level=OptLevel.DISABLED)
    samples, worst_abs, worst_rel, worst_flips = 0, 0.0, 0.0, 0.0
    failures = []
    for feed in feeds:
        values = run_session(session, names + quantized, dict(feed), error=TrainingError, what="trained model")
        theirs = values[: len(names)]
        if quantized:
            codes = dict(zip(quantized, values[len(names) :]))
            ours, own = module.run_pinned(feed, codes)
            for name, ref in codes.items():
                if name not in codes_of:
                    continue
                steps = np.abs(own[name].astype(np.float64) - ref.astype(np.float64)) if ref.size else np.zeros(1)
                flips = float(np.mean(steps > 0))
                worst_flips = max(worst_flips, flips)
                if steps.max() > 1 or flips > max_code_flips:
                    failures.append(f"QuantizeLinear output '{name}': {flips:.3%} of codes differ, by up to {steps.max():g}")
        else:
            ours = module.run(feed)
        for name, ref in zip(names, theirs):
            got = ours[name]
            if got.shape != ref.shape:
                raise TrainingError(f"output '{name}': executor shape {got.shape}, onnxruntime {ref.shape}")
            if ref.dtype.kind != "f":
                if not np.array_equal(got, ref):
                    failures.append(f"'{name}' differs (integer output)")
                continue
            diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / scale if scale else diff)
            if diff > atol + rtol * scale:
                failures.append(f"'{name}' max |diff| {diff:.3g} > {atol:g} + {rtol:g} * {scale:.3g}")
        samples += 1
    agreement = Agreement(samples, worst_abs, worst_rel, rtol, atol, failures, len(quantized), worst_flips)
    if failures and raise_on_failure:
        raise TrainingError(f"the trained graph evaluates differently in onnxruntime: {'; '.join(failures[:3])}")
    return agreement
