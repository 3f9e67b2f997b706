"""Structured channel pruning with dependency groups and post-training reconstruction.

Removes whole filters, hidden units and attention heads from an ONNX graph so
the model really shrinks (weights, biases, per-channel parameters and shape
constants are rewritten) and runs faster in any runtime. Which channels must go
together is found by :mod:`onnxcomp.pruning.analysis`; channels touched by
anything it does not understand are frozen and reported, never mis-pruned.

Run it after ``cleanup`` (batch norms, biases and pads folded into the convs),
so importance is measured on the folded weights. With calibration data the
default criterion is each channel's measured contribution to its consumers and
the consumers are refitted by least squares; without data it is the L2
magnitude of the group's weights and nothing is refitted. The plan (kept
channels per weight) is left in the report's artifacts under
``prune-channels``. Each run removes ``ratio`` of the channels it finds, so
running the pass twice prunes twice (``modified`` says whether any went).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxcomp.context import PassContext
from onnxcomp.pass_base import Pass, PassResult, Stage
from onnxcomp.pruning.config import PruneChannelsConfig
from onnxcomp.pruning.driver import prune_channels


class PruneChannels(Pass):
    """Remove channels/heads in dependency groups (ratio, targets, plan) and reconstruct."""

    name = "prune-channels"
    Config = PruneChannelsConfig
    stage = Stage.PRUNE
    needs_data = False
    changes_shapes = True

    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return prune_channels(graph, ctx, self.config)
