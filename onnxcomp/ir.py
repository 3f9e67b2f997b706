"""Conversion between ``onnx.ModelProto`` and the mutable graph passes edit.

Passes work on an ``onnx_graphsurgeon.Graph``: nodes hold their input and
output tensors directly, so rewiring is a list assignment instead of string
bookkeeping. What the graph does not carry (model metadata, doc strings, model
version, training info) is copied back from the original model on export, so a
client that reads e.g. its vocabulary from ``metadata_props`` keeps working.
"""

from __future__ import annotations

import logging

import onnx
import onnx_graphsurgeon as gs

logger = logging.getLogger(__name__)

# onnx-graphsurgeon logs through its own logger; keep it quiet unless asked.
from onnx_graphsurgeon.logger import G_LOGGER  # noqa: E402

G_LOGGER.severity = G_LOGGER.ERROR


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Build the mutable graph of ``model`` (weights are loaded lazily)."""
    return gs.import_onnx(model)


def export_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` as a model carrying ``template``'s model-level fields.

    The graph is topologically sorted first (passes append new nodes at the
    end). The IR version is the template's, raised only if the opsets now in use
    require a newer one.
    """
    graph.toposort(recurse_subgraphs=True)
    model = gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(template, model)
    return model


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
