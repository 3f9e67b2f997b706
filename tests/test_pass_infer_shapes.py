"""Shape inference as a pass: annotates, then reports no change."""


import builders


def test_infer_shapes_annotates_then_reports_no_change():
    m = builders.conv_bn_relu()
    out, step = builders.apply_pass("infer-shapes", m)
    assert step.modified and step.summary["tensors_annotated"] >= 2
    shapes = {vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim] for vi in out.graph.value_info}
    assert shapes["c"] == ["N", 8, 8, 8]
    _, again = builders.apply_pass("infer-shapes", out)
    assert not again.modified
