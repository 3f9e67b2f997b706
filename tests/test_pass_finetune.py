"""The finetune pass: distillation from the original model after pruning, and QAT after static int8."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_pass_prune_channels import conv_net, samples

import onnxcomp
from onnxcomp.errors import UsageError
from onnxcomp.pipelines import pipeline_from_flags

pytest.importorskip("torch")

PRUNE = {"prune-channels": {"ratio": 0.5, "round_to": 1, "reconstruction": "none"}}


def _run(passes, data, **options):
    return onnxcomp.optimize(conv_net(seed=5), passes, data=data, latency=False, metric="features", accept_drop=True, **options)


def test_finetune_after_pruning_recovers_held_out_error():
    """Half the channels of a 32-wide net, no refit: fine-tuning against the original on the 40
    unlabeled calibration samples must cut the held-out worst-feature error by at least a fifth
    (measured: 0.856 -> 0.599)."""
    data = samples(50, seed=6)
    pruned = _run(["cleanup", PRUNE], data)
    tuned = _run(["cleanup", PRUNE, {"finetune": {"epochs": 20, "lr": 3e-3, "batch_size": 8}}], data)
    before = pruned.report.verification.quality.result.value
    after = tuned.report.verification.quality.result.value
    assert after < 0.8 * before, (before, after)
    step = next(s for s in tuned.report.steps if s.name == "finetune")
    assert step.modified and step.summary["steps"] > 0
    assert [i.name for i in tuned.model.graph.initializer] == [i.name for i in pruned.model.graph.initializer]


def test_qat_keeps_the_qdq_structure():
    data = samples(30, seed=7)
    plain = _run(["cleanup", "quantize-static"], data)
    qat = _run(["cleanup", "quantize-static", {"finetune": {"epochs": 2, "lr": 1e-4}}], data)
    ops = lambda m: sorted(n.op_type for n in m.graph.node)  # noqa: E731
    assert ops(qat.model) == ops(plain.model)
    assert all(v == "ok" for v in qat.report.verification.loads.values())
    scales = lambda m: {i.name: np.frombuffer(i.raw_data, np.float32).tolist() for i in m.graph.initializer if i.name.endswith("scale")}  # noqa: E731
    assert scales(qat.model) == scales(plain.model)  # QAT trains the weights, the Q/DQ parameters stay


def test_finetune_flags_are_checked():
    with pytest.raises(UsageError, match="give one of them"):
        pipeline_from_flags(finetune={})
    with pytest.raises(UsageError, match="not --quantize int8-dynamic"):
        pipeline_from_flags(quantize="int8-dynamic", finetune={})
    with pytest.raises(UsageError, match="needs calibration data"):
        onnxcomp.optimize(conv_net(seed=5), pipeline_from_flags(prune=0.5, finetune={}), latency=False)


def test_missing_torch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxcomp.train", None)  # import fails as without torch
    with pytest.raises(UsageError, match=r"pip install 'onnxcomp\[train\]'"):
        _run(["cleanup", PRUNE, "finetune"], samples(10, seed=8))
