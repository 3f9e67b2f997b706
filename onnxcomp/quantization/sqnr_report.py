"""Per-tensor SQNR of a quantized model against its float original.

For every quantized activation, the float model's tensor is compared with the
tensor the quantized model computes in its place (the DequantizeLinear output
that its readers read), on a few samples. The SQNR
``10 log10(sum x^2 / sum (x - x_q)^2)`` accumulates everything upstream —
weight rounding, activation rounding and clipping of every earlier layer — so
reading the table in graph order shows where accuracy goes: a layer whose SQNR
falls much below its predecessors' is where to look (exclude it, or try
another range method). Both models run with graph optimizations off, so the
quantized model's tensors exist as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from onnxcomp.activations import session_with_outputs
from onnxcomp.runtime import OptLevel


def tensor_sqnr(
    reference: onnx.ModelProto,
    quantized: onnx.ModelProto,
    pairs: Mapping[str, str],
    feeds: Sequence[dict[str, np.ndarray]],
) -> dict[str, float]:
    """SQNR in dB per float tensor name (``pairs``: float name -> quantized-model name).

    Pairs whose quantized tensor is not computed by the quantized model (a
    DequantizeLinear left without readers) are skipped.
    """
    computed = {o for n in quantized.graph.node for o in n.output}
    names = [n for n in pairs if pairs[n] in computed]
    if not names:  # every layer kept float: nothing quantized to measure (onnxruntime would run all outputs)
        return {}
    ref_session = session_with_outputs(reference, names, level=OptLevel.DISABLED)
    quant_names = [pairs[n] for n in names]
    quant_session = session_with_outputs(quantized, quant_names, level=OptLevel.DISABLED)
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for feed in feeds:
        ref_values = ref_session.run(names, feed)
        quant_values = quant_session.run(quant_names, feed)
        for i, (r, q) in enumerate(zip(ref_values, quant_values)):
            r = np.asarray(r, dtype=np.float64)
            d = r - np.asarray(q, dtype=np.float64)
            signal[i] += float(np.sum(r * r))
            noise[i] += float(np.sum(d * d))
    result = {}
    for i, name in enumerate(names):
        if noise[i] == 0:
            result[name] = float("inf")
        elif signal[i] == 0:
            result[name] = float("-inf")
        else:
            result[name] = float(10.0 * np.log10(signal[i] / noise[i]))
    return result


def sqnr_rows(model: onnx.ModelProto, sqnr: Mapping[str, float]) -> list[dict]:
    """Report rows in graph order: tensor, the node and op computing it, SQNR (dB, 2 decimals)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    rows = []
    order = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]
    for name in order:
        if name not in sqnr:
            continue
        node = producers.get(name)
        value = sqnr[name]
        rows.append(
            {
                "tensor": name,
                "node": node.name if node is not None else "(graph input)",
                "op": node.op_type if node is not None else "input",
                "sqnr_db": round(value, 2) if np.isfinite(value) else ("inf" if value > 0 else "-inf"),
            }
        )
    return rows
