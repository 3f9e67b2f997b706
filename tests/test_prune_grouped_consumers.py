"""Channels read by grouped convolutions (ResNeXt/RegNet/ShuffleNet bottlenecks).

A grouped conv reads input channel ``k * C_in/group + j`` only through the
filters of group ``k``. Scoring, the sensitivity sweep and reconstruction must
all see those weights; before they did, a sweep measured zero deviation for
channels read only by a grouped conv and the allocation emptied them (a
digits-trained ResNeXt at 30 %: held-out accuracy 0.996 -> 0.085).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper
from test_pass_prune_channels import dataset, kept, prune, pruning_warnings, relative_error, samples

import builders

GROUPS = 4


def bottleneck(seed: int = 0, rank: int = 8, stem: bool = False) -> onnx.ModelProto:
    """x[N,8,8,8] -> conv1 1x1 (16) -> Relu -> gconv 3x3 (16, group 4) -> Relu -> conv3 1x1 (8) -> y.

    conv1's channels are read only by the grouped conv; ``rank`` < 8 makes them
    redundant (mostly mixtures of ``rank`` directions), as trained ones are.
    ``stem`` puts a 1x1 conv (16 channels, read by conv1) in front.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (16, rank)) @ rng.normal(0, 1 / np.sqrt(rank), (rank, 8)) + rng.normal(0, 0.02, (16, 8))
    inits = [
        builders.tensor("w1", w1.reshape(16, 8, 1, 1).astype(np.float32)),
        builders.tensor("b1", rng.normal(0.2, 0.1, 16).astype(np.float32)),
        builders.tensor("wg", rng.normal(0, 0.3, (16, 16 // GROUPS, 3, 3)).astype(np.float32)),
        builders.tensor("bg", rng.normal(0.1, 0.1, 16).astype(np.float32)),
        builders.tensor("w3", rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wg", "bg"], ["cg"], name="gconv", group=GROUPS, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["cg"], ["rg"], name="relu2"),
        helper.make_node("Conv", ["rg", "w3"], ["y"], name="conv3"),
    ]
    if stem:
        inits[0] = builders.tensor("w1", np.repeat(numpy_helper.to_array(inits[0]), 2, axis=1) / 2)
        inits.append(builders.tensor("w0", rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32)))
        nodes[0].input[0] = "r0"
        nodes[:0] = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"), helper.make_node("Relu", ["c0"], ["r0"])]
    return builders.model(nodes, [builders.value("x", ["N", 8, 8, 8])], [builders.value("y", ["N", 8, 8, 8])], inits)


def weights(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}


def test_magnitude_counts_the_grouped_conv_filters_and_columns():
    from onnxcomp.pruning.analysis import analyze
    from onnxcomp.pruning.criteria import magnitude
    from onnxcomp.pruning.shapes import concrete_shapes

    m = bottleneck()
    graph = gs.import_onnx(m)
    deps = analyze(graph, concrete_shapes(m, builders.feed_for(m, batch=1)))
    w = weights(m)
    ids = {r.node.name: r for r in deps.records.grouped_convs}["gconv"]
    scores = magnitude(deps, 2)
    per_group = 16 // GROUPS
    for c in range(16):
        k, j = divmod(c, per_group)
        read_through = w["wg"][k * per_group:(k + 1) * per_group, j]  # group k's filters, input j of the group
        np.testing.assert_allclose(scores[ids.in_ids[c]], np.sum(w["w1"][c] ** 2) + np.sum(read_through**2), rtol=1e-9)
        np.testing.assert_allclose(scores[ids.out_ids[c]], np.sum(w["wg"][c] ** 2) + np.sum(w["w3"][:, c] ** 2), rtol=1e-9)


def test_the_sweep_measures_what_removing_channels_read_by_a_grouped_conv_does():
    """A sweep point is the output deviation of the model with those channels removed, not zero."""
    m = bottleneck(seed=1)
    feeds = samples(8, seed=2)  # the sweep measures on the first 8 samples
    _, _, artifacts = prune(m, dataset(feeds), ratio=0.25, criterion="l2", allocation="sensitivity", reconstruction="none")
    curve = artifacts["sensitivity"]["conv1"]
    assert all(deviation > 1e-3 for deviation in curve.values()), curve
    ratio, deviation = sorted(curve.items())[1]
    pruned, _, _ = prune(m, ratio=0.0, criterion="l2", layer_ratios={"conv1": float(ratio)}, reconstruction="none")
    assert kept(pruned, "w1") < 16 and kept(pruned, "wg") == 16  # only conv1's channels went
    np.testing.assert_allclose(quality_deviation(m, pruned, feeds), deviation, rtol=1e-4)


def quality_deviation(reference, candidate, feeds) -> float:
    """The run's quality measure (:mod:`onnxcomp.quality`) of ``candidate`` against ``reference``."""
    from onnxcomp.quality import Quality

    outputs = [o.name for o in reference.graph.output]
    ref = [builders.run(reference, feed) for feed in feeds]
    return Quality.for_outputs("auto", outputs, ref[0]).deviation(ref, feeds)([builders.run(candidate, feed) for feed in feeds])


def test_a_grouped_conv_that_lost_inputs_is_refitted_group_by_group():
    m = bottleneck(seed=3, rank=2)
    calib, held_out = dataset(samples(32, seed=4)), samples(8, seed=5)
    errors, models = {}, {}
    for mode in ("none", "bias", "least-squares"):
        models[mode], step, _ = prune(m, calib, ratio=0.0, layer_ratios={"conv1": 0.5}, criterion="l2", reconstruction=mode)
        errors[mode] = relative_error(m, models[mode], held_out)
    assert step.summary["layers_refitted"] == 1
    assert errors["bias"] < 0.9 * errors["none"], errors
    assert errors["least-squares"] < 0.7 * errors["bias"], errors
    gconv = next(n for n in models["least-squares"].graph.node if n.name == "gconv")
    assert [a.i for a in gconv.attribute if a.name == "group"] == [GROUPS], "still a grouped conv"
    assert weights(models["least-squares"])["wg"].shape == (16, 16 // GROUPS // 2, 3, 3)


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.5, 0.7])
def test_round_to_counts_the_channels_of_each_conv_group(ratio):
    """onnxruntime's blocked kernels need the channels per group, not per layer, in multiples of the block."""
    pruned, _, _ = prune(bottleneck(), ratio=ratio, round_to=2)
    wg = weights(pruned)["wg"]  # [C_out, C_in / group, 3, 3]
    assert wg.shape[1] % 2 == 0 and (wg.shape[0] // GROUPS) % 2 == 0, wg.shape


def test_groups_round_to_keeps_whole_are_left_out_of_the_budget_and_named():
    """With 4 channels per conv group and round_to 4 the grouped conv's groups cannot lose any; a 25 %
    request must then take 25 % of the stem's channels, not all it can (the others' share), and say so."""
    m = bottleneck(seed=6, stem=True)
    pruned, step, _ = prune(m, dataset(samples(8, seed=7)), ratio=0.25, round_to=4, allocation="sensitivity")
    assert kept(pruned, "w0") == 12 and kept(pruned, "w1") == 16 and kept(pruned, "wg") == 16
    (warning,) = pruning_warnings(m, dataset(samples(8, seed=7)), ratio=0.25, round_to=4)
    assert "left 2 group(s) whole" in warning and "4 channels per conv group" in warning and "round_to=4" in warning
