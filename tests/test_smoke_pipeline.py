"""End-to-end smoke test of the default pipeline on a small built model."""

import numpy as np

import builders
import onnxcomp


def test_cleanup_folds_batchnorm_and_keeps_outputs():
    m = builders.resnet_block(seed=1)
    result = onnxcomp.optimize(m, latency=False)
    out = result.model
    assert "BatchNormalization" not in builders.ops(out)
    feed = builders.feed_for(m, seed=3)
    # BN folding reorders float arithmetic; 1e-5 absolute on outputs of magnitude ~1.
    builders.assert_same_outputs(m, out, feed, atol=1e-5)
    assert result.report.verification is not None
    assert all(v == "ok" for v in result.report.verification.loads.values())
    np.testing.assert_array_less(result.report.verification.outputs[0].max_abs, 1e-5)


def test_one_pass_name_as_a_string_is_that_pass():
    m = builders.resnet_block(seed=1)
    result = onnxcomp.optimize(m, "fold-batchnorm", verify=False, latency=False)
    assert [s.name for s in result.report.steps] == ["fold-batchnorm"]
    assert "BatchNormalization" not in builders.ops(result.model)
