"""Conversion between ``onnx.ModelProto`` and the mutable graph passes edit.

Passes work on an ``onnx_graphsurgeon.Graph``: nodes hold their input and
output tensors directly, so rewiring is a list assignment instead of string
bookkeeping. What the graph does not carry (model metadata, doc strings, model
version, training info) is copied back from the original model on export, so a
client that reads e.g. its vocabulary from ``metadata_props`` keeps working.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .external_data import is_pinned, to_array

logger = logging.getLogger(__name__)

# onnx-graphsurgeon logs through its own logger; keep it quiet unless asked.
from onnx_graphsurgeon.logger import G_LOGGER  # noqa: E402

G_LOGGER.severity = G_LOGGER.ERROR


class PinnedValues(LazyValues):
    """Lazily loaded values of a weight that is still on disk (see :mod:`.external_data`).

    Exporting a constant that was never read hands back the original, pinned
    TensorProto, so untouched weights never enter memory.
    """

    def load(self) -> np.ndarray:
        return np.array(to_array(self.tensor))


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Build the mutable graph of ``model`` (weights are loaded lazily, on first use).

    A graph input that also has an initializer (an overridable default) is
    imported as a constant, as graph-surgeon does; :func:`export_model` declares
    it an input again when its initializer survives the passes unchanged.
    """
    graph = gs.import_onnx(model)
    for sub in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in sub.tensors().values():
            values = getattr(tensor, "_values", None)
            if isinstance(tensor, gs.Constant) and isinstance(values, LazyValues) and is_pinned(values.tensor):
                tensor._values = PinnedValues(values.tensor)
    return graph


def export_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` as a model carrying ``template``'s model-level fields.

    The graph is topologically sorted first (passes append new nodes at the
    end). The IR version is the template's, raised only if the opsets now in use
    require a newer one.
    """
    graph.toposort(recurse_subgraphs=True)
    _pack_4bit_constants(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    _fix_rewritten_external_tensors(model)
    copy_model_fields(template, model)
    _redeclare_overridable_inputs(model, template)
    return model


def _redeclare_overridable_inputs(model: onnx.ModelProto, template: onnx.ModelProto) -> None:
    """Make the template's overridable defaults inputs again where their initializer is unchanged
    (same name, type and dims); one a pass folded or rewrote is a constant now."""
    defaults = overridable_defaults(template)
    if not defaults:
        return
    present = {vi.name for vi in model.graph.input}
    kept = {t.name: t for t in model.graph.initializer}
    for vi in template.graph.input:
        t, original = kept.get(vi.name), defaults.get(vi.name)
        if t is None or original is None or vi.name in present:
            continue
        if t.data_type == original.data_type and list(t.dims) == list(original.dims):
            model.graph.input.append(vi)


def overridable_defaults(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers of ``model`` that are graph inputs a caller may override, by name.

    Only chosen ones: before IR 4 every initializer had to be listed as an input,
    and exporters asked to keep initializers as inputs list them all; neither
    makes the weights runtime parameters, so when *every* initializer is an
    input (or the IR is older than 4) none counts, and the weights stay
    foldable constants as the producer meant.
    """
    inputs = {vi.name for vi in model.graph.input}
    chosen = {t.name: t for t in model.graph.initializer if t.name in inputs}
    if model.ir_version < 4 or len(chosen) == len(model.graph.initializer):
        return {}
    return chosen


def _pack_4bit_constants(graph: gs.Graph) -> None:
    """Give int4/uint4 constants a properly packed TensorProto before export.

    ONNX stores 4-bit tensors two elements per byte (low nibble first), but
    onnx-graphsurgeon exports a numpy array of ``ml_dtypes.int4`` with
    ``tobytes()``, one element per byte, which onnx refuses. ``from_array``
    packs correctly; the constant keeps lazily decodable values.
    """
    import ml_dtypes

    four_bit = {np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4)}
    for sub in [graph, *graph.subgraphs(recursive=True)]:
        for tensor in sub.tensors().values():
            values = getattr(tensor, "_values", None)
            if isinstance(tensor, gs.Constant) and isinstance(values, np.ndarray) and values.dtype in four_bit:
                tensor._values = LazyValues(onnx.numpy_helper.from_array(values, tensor.name))


def _fix_rewritten_external_tensors(model: onnx.ModelProto) -> None:
    """Mark weights that a pass rewrote in memory as no longer external.

    onnx-graphsurgeon remembers that a constant was imported from external
    data and stamps ``data_location = EXTERNAL`` on its export even after its
    values were replaced in memory; such a tensor has ``raw_data`` and no
    external references.
    """
    from .model_io import iter_tensors

    for tensor in iter_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.external_data:
            tensor.data_location = onnx.TensorProto.DEFAULT


def copy_model_fields(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    """Copy what a graph does not carry from ``source`` to ``target``."""
    target.producer_name = source.producer_name
    target.producer_version = source.producer_version
    target.domain = source.domain
    target.model_version = source.model_version
    target.doc_string = source.doc_string
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    if source.training_info and not target.training_info:
        target.training_info.extend(source.training_info)
    needed = onnx.helper.find_min_ir_version_for(list(target.opset_import), ignore_unknown=True)
    target.ir_version = max(source.ir_version, needed, 4)


def set_opset(graph: gs.Graph, version: int) -> None:
    """Record that the graph uses default-domain opset ``version`` (no op conversion)."""
    graph.opset = version
    if graph.import_domains is not None:
        for opset in graph.import_domains:
            if opset.domain in ("", "ai.onnx"):
                opset.version = version
