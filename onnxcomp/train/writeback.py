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

    @property
    def ok(self) -> bool:
        return not self.failures


def check_agreement(
    model: onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    module: GraphModule | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    raise_on_failure: bool = True,
) -> Agreement:
    """Evaluate ``model`` with the executor and with onnxruntime on ``feeds``; compare float outputs.

    The tolerance is ``atol + rtol * max|onnxruntime output|`` per output, over
    all samples; integer and boolean outputs must be equal.

    Raises:
        TrainingError: (with ``raise_on_failure``) an output beyond tolerance.
    """
    module = module or GraphModule(model)
    session = create_session(model, level=OptLevel.DISABLED)
    names = [o.name for o in session.get_outputs()]
    samples, worst_abs, worst_rel = 0, 0.0, 0.0
    failures = []
    for feed in feeds:
        ours = module.run(feed)
        theirs = run_session(session, names, dict(feed), error=TrainingError, what="trained model")
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
    agreement = Agreement(samples, worst_abs, worst_rel, rtol, atol, failures)
    if failures and raise_on_failure:
        raise TrainingError(f"the trained graph evaluates differently in onnxruntime: {'; '.join(failures[:3])}")
    return agreement
