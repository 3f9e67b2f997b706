"""Dead node and unused initializer elimination.

Removes nodes whose outputs no graph output depends on, and initializers and
functions nothing reads. Graph inputs are kept even when unused: they are the
model's interface, and a client may still feed them.
"""

from __future__ import annotations

import dataclasses

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.pass_base import Pass, PassConfig, PassResult, Stage


@dataclasses.dataclass(frozen=True)
class EliminateDeadCodeConfig(PassConfig):
    pass


class EliminateDeadCode(Pass):
    """Drop nodes, initializers and functions that do not contribute to an output."""

    name = "eliminate-dead-code"
    Config = EliminateDeadCodeConfig
    stage = Stage.ANY
    changes_shapes = False

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        nodes_before = _count_nodes(graph)
        constants_before = _count_constants(graph)
        functions_before = len(graph.functions)
        graph.cleanup(remove_unused_node_outputs=False, recurse_subgraphs=True, remove_unused_graph_inputs=False)
        used_functions = {(n.domain, n.op) for n in _all_nodes(graph)}
        graph.functions = [f for f in graph.functions if (f.domain, f.name) in used_functions]
        summary = {
            "nodes_removed": nodes_before - _count_nodes(graph),
            "initializers_removed": constants_before - _count_constants(graph),
            "functions_removed": functions_before - len(graph.functions),
        }
        return PassResult(graph, any(summary.values()), summary)


def _all_nodes(graph: gs.Graph):
    yield from graph.nodes
    for sub in graph.subgraphs(recursive=True):
        yield from sub.nodes
    for function in graph.functions:
        yield from function.nodes


def _count_nodes(graph: gs.Graph) -> int:
    return len(graph.nodes) + sum(len(s.nodes) for s in graph.subgraphs(recursive=True))


def _count_constants(graph: gs.Graph) -> int:
    return sum(isinstance(t, gs.Constant) for t in graph.tensors().values())
