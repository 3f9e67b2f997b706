"""Weight-only quantization: embedding tables read by Gather, and MatMul/Gemm
weights block-quantized to int8/int4 (standard DequantizeLinear or
com.microsoft.MatMulNBits).

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

from onnxcomp.graph import (
    Namer,
    add_constant,
    attr,
    constant_value,
    is_graph_input,
    is_graph_output,
    is_onnx_op,
    remove_nodes,
)
from onnxcomp.pass_base import PassConfig

from .dynamic import WeightLayer, find_weight_layers
from .qparams import (
    QParams,
    QuantType,
    dequantize,
    params_from_range,
    quantize,
    sqnr_db,
    weight_params,
)

logger = logging.getLogger(__name__)

EMBEDDING_MIN_ELEMENTS = 1 << 20
"""Tables smaller than this (position / token-type embeddings) stay float: the
saving is negligible and they are added to every token."""


@dataclasses.dataclass(frozen=True)
class WeightSelectionConfig(PassConfig):
    """Which weights a weight-quantizing pass touches (shared options).

    Attributes:
        op_types: Layer types to quantize (MatMul and/or Gemm).
        exclude: Node names to keep in float.
        min_weight_elements: Smaller weights stay float (tiny layers gain nothing).
        embeddings: Also store large Gather tables as int8 per row.
        embedding_min_elements: Smaller tables (position, token-type) stay float.
    """

    op_types: tuple[str, ...] = ("MatMul", "Gemm")
    exclude: tuple[str, ...] = ()
    min_weight_elements: int = 1024
    embeddings: bool = True
    embedding_min_elements: int = EMBEDDING_MIN_ELEMENTS

    def validate(self) -> None:
        unknown = sorted(set(self.op_types) - {"MatMul", "Gemm"})
        if unknown:
            raise ValueError(f"op_types: {', '.join(unknown)} not supported (MatMul, Gemm)")
        if self.min_weight_elements < 0:
            raise ValueError("min_weight_elements must be >= 0")

    def select(self, graph: gs.Graph) -> tuple[list[WeightLayer], list[EmbeddingTable]]:
        """The layers and embedding tables of ``graph`` these options select."""
        layers = find_weight_layers(graph, op_types=self.op_types, exclude=self.exclude, min_elements=self.min_weight_elements)
        tables = find_embedding_tables(graph, min_elements=self.embedding_min_elements) if self.embeddings else []
        return layers, tables


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


# ---------------------------------------------------------------------------
# Block-wise weight-only quantization of MatMul/Gemm weights (int8 / int4)
# ---------------------------------------------------------------------------

CLIP_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
"""Range shrink factors tried per block by ``clip_search`` (MSE-optimal clipping):
a slightly narrower range trades clipping of the largest value for finer
steps everywhere else, which wins for 4-bit blocks."""


@dataclasses.dataclass
class BlockQuantized:
    """A weight ``W[K, N]`` quantized per output column ``n`` in blocks along ``K``.

    Attributes:
        q: ``[N, K]`` integer codes: int8 for signed types, uint8 for unsigned.
        scale: ``[N, K_blocks]`` float32.
        zero_point: ``[N, K_blocks]`` int64, None for symmetric (zero point 0).
        qtype: The integer type.
        block_size: Block length along K (K itself for per-channel).
    """

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray | None
    qtype: QuantType
    block_size: int

    def params(self) -> QParams:
        zero = np.zeros(self.scale.shape, np.int64) if self.zero_point is None else self.zero_point
        return QParams(self.scale, zero.astype(self.qtype.numpy_dtype), self.qtype, axis=1, block_size=self.block_size)

    def dequantized(self) -> np.ndarray:
        """The weight as onnxruntime will see it, ``[K, N]`` float32."""
        return dequantize(self.q.astype(self.qtype.numpy_dtype), self.params()).T

    def sqnr_db(self, weight: np.ndarray) -> float:
        """SQNR of the dequantized weight against ``weight[K, N]``, computed in column chunks."""
        rows = max(1, BLOCK_QUANTIZE_CHUNK // max(self.q.shape[1], 1))
        signal = noise = 0.0
        for start in range(0, self.q.shape[0], rows):
            part = BlockQuantized(
                self.q[start : start + rows], self.scale[start : start + rows],
                None if self.zero_point is None else self.zero_point[start : start + rows], self.qtype, self.block_size,
            )  # fmt: skip
            reference = np.asarray(weight[:, start : start + rows], dtype=np.float64)
            difference = reference - part.dequantized()
            signal += float(np.sum(reference * reference))
            noise += float(np.sum(difference * difference))
        if noise == 0:
            return float("inf")
        return float("-inf") if signal == 0 else 10.0 * float(np.log10(signal / noise))


BLOCK_QUANTIZE_CHUNK = 1 << 22
"""Weight elements quantized at a time, bounding the temporary arrays of the clip search."""


def block_quantize(weight: np.ndarray, *, bits: int, block_size: int | None, symmetric: bool, clip_search: bool) -> BlockQuantized:
    """Quantize ``weight[K, N]`` per column in blocks of ``block_size`` along K (None: whole columns).

    With ``clip_search``, every block keeps the range factor from
    :data:`CLIP_FACTORS` with the least squared error of its own values.
    Columns are processed in chunks of about :data:`BLOCK_QUANTIZE_CHUNK`
    elements, so temporary memory does not grow with the weight.
    """
    qtype = {(8, True): QuantType.INT8, (8, False): QuantType.UINT8, (4, True): QuantType.INT4, (4, False): QuantType.UINT4}[
        (bits, symmetric)
    ]
    k, n = np.shape(weight)
    block = block_size or k
    blocks = -(-k // block)
    rows = max(1, BLOCK_QUANTIZE_CHUNK // max(k, 1))
    codes = np.empty((n, k), np.int8 if qtype.signed else np.uint8)
    scale = np.empty((n, blocks), np.float32)
    zero = np.empty((n, blocks), np.int64)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        wt = np.ascontiguousarray(np.asarray(weight[:, start:stop], dtype=np.float32).T)  # [rows, K]
        codes[start:stop], scale[start:stop], zero[start:stop] = _quantize_rows(wt, qtype, block, blocks, symmetric, clip_search)
    return BlockQuantized(codes, scale, None if symmetric else zero, qtype, block)


def _quantize_rows(wt: np.ndarray, qtype: QuantType, block: int, blocks: int, symmetric: bool, clip_search: bool):
    """Codes, scales and zero points of ``wt[rows, K]`` (blocks along K), clip factors searched per block."""
    n, k = wt.shape
    padded = np.pad(wt, [(0, 0), (0, blocks * block - k)]).reshape(n, blocks, block)
    lo, hi = padded.min(axis=2), padded.max(axis=2)
    best = None
    for factor in CLIP_FACTORS if clip_search else (1.0,):
        params = params_from_range(lo * factor, hi * factor, qtype, symmetric=symmetric, axis=1, block_size=block)
        q = quantize(wt, params)
        error = np.pad((dequantize(q, params) - wt) ** 2, [(0, 0), (0, blocks * block - k)])
        error = error.reshape(n, blocks, block).sum(axis=2)
        zero = params.zero_point.astype(np.int64)
        if best is None:
            best = [q.astype(np.int16), params.scale.copy(), zero.copy(), error]
            continue
        better = error < best[3]
        best[1][better], best[2][better], best[3][better] = params.scale[better], zero[better], error[better]
        take = np.repeat(better, block, axis=1)[:, :k]
        best[0][take] = q.astype(np.int16)[take]
    return best[0], best[1], best[2]


def subbyte_aware_constant(namer: Namer, base: str, values: np.ndarray) -> gs.Constant:
    """An initializer that exports correctly for 4-bit types too.

    onnx-graphsurgeon writes a constant's raw numpy bytes, one byte per int4
    element, which ONNX rejects; a packed TensorProto behind ``LazyValues`` is
    exported as is. (Reading ``.values`` of such a constant loads it as an
    unpacked array and would break a later export, so passes must not.)
    """
    if values.dtype.name not in ("int4", "uint4"):
        return add_constant(namer, base, values)
    from onnx_graphsurgeon.ir.tensor import LazyValues

    name = namer(base)
    return gs.Constant(name, LazyValues(onnx.numpy_helper.from_array(values, name)))


def replace_with_dequantize_linear(graph: gs.Graph, namer: Namer, layer, quantized: BlockQuantized) -> None:
    """``W`` becomes ``DequantizeLinear(Wq, scale[, zero_point])`` feeding a MatMul (standard ONNX).

    Per-channel (one block per column): ``axis=1``, scale ``[N]``. Blocked:
    ``axis=0`` with ``block_size`` (opset 21), scale ``[K_blocks, N]``.
    """
    node = layer.node
    base = node.name or node.outputs[0].name
    k = quantized.q.shape[1]
    per_channel = quantized.block_size >= k
    q = quantized.q.T.astype(quantized.qtype.numpy_dtype)
    scale = quantized.scale[:, 0] if per_channel else quantized.scale.T
    inputs = [
        subbyte_aware_constant(namer, f"{base}_weight_q", np.ascontiguousarray(q)),
        add_constant(namer, f"{base}_weight_scale", np.ascontiguousarray(scale)),
    ]
    if quantized.zero_point is not None:
        zero = quantized.zero_point[:, 0] if per_channel else quantized.zero_point.T
        inputs.append(subbyte_aware_constant(namer, f"{base}_weight_zero_point", np.ascontiguousarray(zero.astype(quantized.qtype.numpy_dtype))))
    attrs = {"axis": 1} if per_channel else {"axis": 0, "block_size": quantized.block_size}
    weight = gs.Variable(namer(f"{base}_weight"), dtype=np.float32, shape=[k, quantized.q.shape[0]])
    dq = gs.Node("DequantizeLinear", namer(f"{base}_DequantizeWeight"), attrs=attrs, inputs=inputs, outputs=[weight])
    _replace_layer(graph, namer, layer, dq, "MatMul", {}, [layer.activation, weight])


def pack_matmul_nbits(quantized: BlockQuantized) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The ``B``, ``scales`` and ``zero_points`` inputs of com.microsoft.MatMulNBits.

    Layout (ONNX Runtime contrib-op spec): ``B`` is uint8 ``[N, K_blocks, blob]``
    with ``blob = block_size * bits / 8``; the unsigned codes of column n, block b
    are stored in K order, two 4-bit codes per byte low nibble first. Symmetric
    weights store ``q + 2^(bits-1)`` and omit zero points (the op's default is
    ``2^(bits-1)``). Zero points are uint8 ``[N, ceil(K_blocks * bits / 8)]``,
    4-bit ones packed two per byte along the blocks, low nibble first.
    """
    bits = 4 if quantized.qtype in (QuantType.INT4, QuantType.UINT4) else 8
    offset = 1 << (bits - 1) if quantized.qtype.signed else 0
    n, k = quantized.q.shape
    block = quantized.block_size
    blocks = quantized.scale.shape[1]
    pad_code = offset if quantized.zero_point is None else quantized.zero_point
    codes = np.empty((n, blocks * block), np.int16)
    codes[:, :k] = quantized.q.astype(np.int16) + offset
    codes[:, k:] = pad_code if np.ndim(pad_code) == 0 else np.repeat(pad_code[:, -1:], blocks * block - k, axis=1)
    packed = _pack_nibbles(codes) if bits == 4 else codes.astype(np.uint8)
    b = packed.reshape(n, blocks, block * bits // 8)
    zero = None
    if quantized.zero_point is not None:
        zero = _pack_nibbles(quantized.zero_point) if bits == 4 else quantized.zero_point.astype(np.uint8)
    return np.ascontiguousarray(b), np.ascontiguousarray(quantized.scale), zero


def _pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes along the last axis, two per byte, the first in the low nibble (odd length padded with 0)."""
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), codes.dtype)], axis=-1)
    low, high = codes[..., 0::2], codes[..., 1::2]
    return (low | (high << 4)).astype(np.uint8)


def replace_with_matmul_nbits(graph: gs.Graph, namer: Namer, layer, quantized: BlockQuantized, *, accuracy_level: int) -> None:
    """Replace the layer by ``com.microsoft.MatMulNBits`` (see :func:`pack_matmul_nbits`)."""
    node = layer.node
    base = node.name or node.outputs[0].name
    n, k = quantized.q.shape
    bits = 4 if quantized.qtype in (QuantType.INT4, QuantType.UINT4) else 8
    b, scale, zero = pack_matmul_nbits(quantized)
    inputs = [layer.activation, add_constant(namer, f"{base}_B_q{bits}", b), add_constant(namer, f"{base}_scales", scale)]
    if zero is not None:
        inputs.append(add_constant(namer, f"{base}_zero_points", zero))
    attrs = {"K": k, "N": n, "bits": bits, "block_size": quantized.block_size, "accuracy_level": accuracy_level}
    _replace_layer(graph, namer, layer, None, "MatMulNBits", attrs, inputs, domain="com.microsoft")


def _replace_layer(graph, namer: Namer, layer, weight_node: gs.Node | None, op: str, attrs: dict, inputs: list, domain: str | None = None) -> None:
    """Swap ``layer.node`` for ``op`` (then ``* alpha`` and ``+ bias`` for a Gemm), keeping its output tensor."""
    node = layer.node
    base = node.name or node.outputs[0].name
    output = node.outputs[0]
    remove_nodes(graph, [node])
    tail = []
    result = output
    if layer.bias is not None:
        result = gs.Variable(namer(f"{base}_unbiased"), dtype=np.float32)
        tail.append(gs.Node("Add", namer(f"{base}_Bias"), inputs=[result, add_constant(namer, f"{base}_bias", layer.bias)], outputs=[output]))
    if layer.alpha != 1.0:
        scaled = result
        result = gs.Variable(namer(f"{base}_unscaled"), dtype=np.float32)
        alpha = add_constant(namer, f"{base}_alpha", np.array(layer.alpha, np.float32))
        tail.append(gs.Node("Mul", namer(f"{base}_Alpha"), inputs=[result, alpha], outputs=[scaled]))
    main = gs.Node(op, namer(f"{base}_{op}"), attrs=attrs, inputs=inputs, outputs=[result], domain=domain)
    graph.nodes.extend(([weight_node] if weight_node is not None else []) + [main] + tail)


# ---------------------------------------------------------------------------
# Raising the opset (block-wise DequantizeLinear and 4-bit types need opset 21)
# ---------------------------------------------------------------------------

BLOCKED_DQ_OPSET = 21


