"""The part of a model needed to compute some tensors.

onnxruntime runs every node of a session whatever outputs are requested, so
reading an early tensor many times (layer by layer reconstruction) is much
cheaper from a model cut down to the nodes that tensor depends on.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx


def truncated_model(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A model with the same inputs computing only ``outputs`` (its only outputs).

    Nodes are kept when an output depends on them; initializers when a kept
    node reads them. Nodes with subgraphs are kept whole (with every outer
    tensor their subgraphs read).
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    needed: list[onnx.NodeProto] = []
    seen_nodes: set[int] = set()
    wanted = list(outputs)
    reads: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in reads:
            continue
        reads.add(name)
        node = producers.get(name)
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        needed.append(node)
        wanted.extend(i for i in _node_reads(node) if i)
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    needed.sort(key=lambda n: order[id(n)])
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.name = model.graph.name
    graph.node.extend(needed)
    graph.input.extend(model.graph.input)
    graph.initializer.extend(t for t in model.graph.initializer if t.name in reads)
    graph.sparse_initializer.extend(t for t in model.graph.sparse_initializer if t.values.name in reads)
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    for name in outputs:
        if name in infos:
            graph.output.append(infos[name])
        else:
            graph.output.add().name = name
    return out


def _node_reads(node: onnx.NodeProto) -> list[str]:
    names = list(node.input)
    for a in node.attribute:
        graphs = [a.g] if a.HasField("g") else list(a.graphs)
        for g in graphs:
            for inner in g.node:
                names.extend(_node_reads(inner))
    return names
