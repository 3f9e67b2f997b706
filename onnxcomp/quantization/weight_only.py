"""Weight-only quantization: embedding tables read by Gather.

An embedding table ``T[V, D]`` read by ``Gather(T, ids)`` (axis 0) is stored as
int8 with one symmetric scale per row, and dequantized *after* the lookup::

    rows  = Gather(Tq, ids)                 # int8 [..., D]
    scale = Gather(Ts, ids)                 # float [..., 1], Ts = per-row scales [V, 1]
    y     = Cast<float>(rows) * scale

Only the looked-up rows are ever converted, so the float table never exists at
run time (a DequantizeLinear before the Gather would dequantize all ``V`` rows
on every run: onnxruntime does not constant-fold DequantizeLinear). Per-row
scales keep a rare token's small row from being crushed by the largest row,
which per-tensor (onnxruntime ``quantize_dynamic``'s Gather handling) does.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxcomp.graph import Namer, add_constant, attr, constant_value, is_graph_input, is_graph_output, is_onnx_op

from .qparams import QuantType, dequantize, quantize, sqnr_db, weight_params

logger = logging.getLogger(__name__)

EMBEDDING_MIN_ELEMENTS = 1 << 20
"""Tables smaller than this (position / token-type embeddings) stay float: the
saving is negligible and they are added to every token."""


@dataclasses.dataclass
class EmbeddingTable:
    """A constant float table and the Gather nodes (axis 0) that read it."""

    table: gs.Constant
    gathers: list[gs.Node]


def find_embedding_tables(graph: gs.Graph, *, min_elements: int = EMBEDDING_MIN_ELEMENTS) -> list[EmbeddingTable]:
    """Float 2-D initializers read only by ``Gather(axis=0)`` nodes as their data input."""
    found: dict[int, EmbeddingTable] = {}
    for node in graph.nodes:
        if not is_onnx_op(node, "Gather") or not isinstance(node.inputs[0], gs.Constant):
            continue
        table = node.inputs[0]
        if id(table) in found:
            continue
        values = constant_value(table)
        if values is None or values.ndim != 2 or values.dtype != np.float32 or values.size < min_elements:
            continue
        if is_graph_input(graph, table) or is_graph_output(graph, table):
            continue
        readers = list(table.outputs)
        if all(is_onnx_op(r, "Gather") and r.inputs[0] is table and attr(r, "axis", 0) in (0, -2) for r in readers):
            found[id(table)] = EmbeddingTable(table, readers)
    return list(found.values())


def quantize_embedding(graph: gs.Graph, namer: Namer, embedding: EmbeddingTable) -> float:
    """Rewrite ``embedding``'s Gathers to read an int8 per-row table; returns the table's SQNR in dB."""
    values = np.asarray(embedding.table.values, dtype=np.float32)
    params = weight_params(values, QuantType.INT8, axis=0, symmetric=True)
    q = quantize(values, params)
    error_db = sqnr_db(values, dequantize(q, params))
    base = embedding.table.name
    q_const = add_constant(namer, f"{base}_int8", q)
    s_const = add_constant(namer, f"{base}_row_scale", params.scale.reshape(-1, 1).astype(np.float32))
    for gather in embedding.gathers:
        ids, output = gather.inputs[1], gather.outputs[0]
        name = gather.name or output.name
        rows = gs.Variable(namer(f"{name}_int8_rows"), dtype=np.int8)
        rows_f = gs.Variable(namer(f"{name}_rows_float"), dtype=np.float32)
        scale = gs.Variable(namer(f"{name}_row_scales"), dtype=np.float32)
        gather.inputs.clear()
        gather.outputs.clear()
        graph.nodes.remove(gather)
        graph.nodes.extend(
            [
                gs.Node("Gather", namer(f"{name}_int8"), attrs={"axis": 0}, inputs=[q_const, ids], outputs=[rows]),
                gs.Node("Gather", namer(f"{name}_scales"), attrs={"axis": 0}, inputs=[s_const, ids], outputs=[scale]),
                gs.Node("Cast", namer(f"{name}_Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[rows], outputs=[rows_f]),
                gs.Node("Mul", namer(f"{name}_Dequantize"), inputs=[rows_f, scale], outputs=[output]),
            ]
        )
    return error_db
