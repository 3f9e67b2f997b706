"""Data sources and their validation against the model's inputs."""

import numpy as np
import pytest
from onnx import TensorProto, helper

import builders
from onnxcomp.data import RandomDataset, input_specs, open_data, parse_shape_overrides, resolve_shapes
from onnxcomp.errors import DataError


@pytest.fixture
def specs():
    return input_specs(builders.conv_bn_relu())  # x: float32[N,4,8,8]


@pytest.fixture
def two_input_specs():
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    m = builders.model(nodes, [builders.value("a", ["batch", "seq"], TensorProto.INT64), builders.value("b", ["batch", "seq"], TensorProto.INT64)], [builders.value("y", ["batch", "seq"], TensorProto.INT64)])
    return input_specs(m)


def _x(n=1, dtype=np.float32):
    return np.random.default_rng(0).normal(size=(n, 4, 8, 8)).astype(dtype)


def test_npz_stacked_samples(tmp_path, specs):
    np.savez(tmp_path / "d.npz", x=_x(5))
    data = open_data(tmp_path / "d.npz", specs)
    samples = list(data)
    assert len(samples) == 5 and samples[0]["x"].shape == (1, 4, 8, 8)
    assert data.size() == 5
    assert len(list(data)) == 5, "datasets are re-iterable"


def test_npz_with_explicit_feed_axis(tmp_path, specs):
    np.savez(tmp_path / "d.npz", x=_x(6).reshape(3, 2, 4, 8, 8))
    samples = list(open_data(tmp_path / "d.npz", specs))
    assert len(samples) == 3 and samples[0]["x"].shape == (2, 4, 8, 8)


def test_folder_of_npy_and_npz(tmp_path, specs):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", _x()[0])  # batch axis may be omitted
    np.savez(tmp_path / "3.npz", x=_x())
    samples = list(open_data(tmp_path, specs))
    assert [s["x"].shape for s in samples] == [(1, 4, 8, 8)] * 4


def test_image_folder(tmp_path):
    from PIL import Image

    m = builders.model([helper.make_node("Relu", ["x"], ["y"])], [builders.value("x", ["N", 3, 16, 20])], [builders.value("y", ["N", 3, 16, 20])])
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    from onnxcomp.data_images import ImageOptions

    samples = list(open_data(tmp_path, input_specs(m), image_options=ImageOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))))
    assert len(samples) == 2 and samples[0]["x"].shape == (1, 3, 16, 20) and samples[0]["x"].dtype == np.float32
    assert -2.0 - 1e-6 <= samples[0]["x"].min() and samples[0]["x"].max() <= 2.0 + 1e-6


def test_python_sources(specs):
    feeds = [{"x": _x()} for _ in range(3)]
    assert len(list(open_data(feeds, specs))) == 3
    generator = ({"x": _x()} for _ in range(4))
    data = open_data(generator, specs)
    first = [s["x"] for s in data]
    second = [s["x"] for s in data]
    assert len(first) == 4 and len(second) == 4, "one-shot iterators are spooled and replayed"
    np.testing.assert_array_equal(first[2], second[2])


def test_calibration_data_reader(specs):
    class Reader:
        def __init__(self):
            self.items = iter([{"x": _x()} for _ in range(2)])

        def get_next(self):
            return next(self.items, None)

    assert len(list(open_data(Reader(), specs))) == 2


def test_spooled_samples_leave_no_scratch_behind(tmp_path, specs, monkeypatch):
    """Without a workdir the spool is the dataset's own and goes with it, on success and on error."""
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = open_data(({"x": _x()} for _ in range(3)), specs)
    assert len(list(data)) == 3
    assert [p.name[:15] for p in tmp_path.iterdir()] == ["onnxcomp-spool-"]
    del data
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError):
        open_data(iter([]), specs)
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    workdir = tmp_path / "work"
    workdir.mkdir()
    assert len(list(open_data(iter([{"x": _x()}]), specs, workdir=workdir))) == 1
    assert [p.name[:6] for p in workdir.iterdir()] == ["spool-"], "a given workdir holds the spool; its owner removes it"


@pytest.mark.parametrize(
    "feed, message",
    [
        ({"y": _x()}, "lacks input\\(s\\) 'x' and has unknown input\\(s\\) 'y'; the model's inputs are x float32\\[N,4,8,8\\]"),
        ({"x": _x(dtype=np.float64)}, "dtype float64, the model expects float32 \\(convert with .astype\\(np.float32\\)\\)"),
        ({"x": _x()[:, :3]}, "axis 1 must be 4"),
        ({"x": _x()[0]}, "rank 3"),
        ({"x": np.where(_x() > 1, np.nan, _x()).astype(np.float32)}, "contains NaN"),
        ({"x": np.full((1, 4, 8, 8), np.inf, np.float32)}, "contains Inf"),
        ({"x": np.array([None], dtype=object)}, "holds Python objects"),
        ("not a dict", "expected a dict"),
    ],
    ids=["names", "dtype", "static-dim", "rank", "nan", "inf", "objects", "not-dict"],
)
def test_bad_samples_are_explained(specs, feed, message):
    with pytest.raises(DataError, match=message):
        open_data([feed], specs)


def test_bad_sample_later_in_stream_names_its_index(specs):
    data = open_data([{"x": _x()}, {"x": _x()}, {"x": _x(dtype=np.float16)}], specs)
    with pytest.raises(DataError, match="sample 2"):
        list(data)


def test_symbolic_dims_must_agree_across_inputs(two_input_specs):
    feed = {"a": np.zeros((1, 5), np.int64), "b": np.zeros((1, 6), np.int64)}
    with pytest.raises(DataError, match="dim 'seq' is 6 in input 'b' but 5 in input 'a'"):
        open_data([feed], two_input_specs)


def test_empty_sources(tmp_path, specs):
    with pytest.raises(DataError, match="contains no samples"):
        open_data([], specs)
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 4, 8, 8), np.float32))
    with pytest.raises(DataError, match="no samples"):
        open_data(tmp_path / "e.npz", specs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no .npy/.npz samples or images"):
        open_data(tmp_path / "empty", specs)


def test_pickled_arrays_are_refused_not_unpickled(tmp_path, specs):
    np.savez(tmp_path / "evil.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled Python objects; refused"):
        open_data(tmp_path / "evil.npz", specs)


def test_not_an_npz(tmp_path, specs):
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable .npz"):
        open_data(tmp_path / "junk.npz", specs)


def test_missing_path(tmp_path, specs):
    with pytest.raises(DataError, match="no such file or folder"):
        open_data(tmp_path / "nope", specs)


def test_resolve_shapes_and_random_data(two_input_specs, specs):
    shapes, assumed = resolve_shapes(specs)
    assert shapes == {"x": (1, 4, 8, 8)} and assumed == {"x[0]": 1}
    with pytest.raises(DataError, match="dynamic dim 'seq' at axis 1 and no data to resolve it; pass --calib DATA or --input-shape a:NxN"):
        resolve_shapes(two_input_specs)
    shapes, _ = resolve_shapes(two_input_specs, parse_shape_overrides(["a:2x7"]))
    assert shapes == {"a": (2, 7), "b": (2, 7)}, "symbols resolved by one input apply to the others"
    samples = list(RandomDataset(two_input_specs, shapes, 2, seed=1, int_high={"a": 5}))
    assert samples[0]["a"].max() < 5 and samples[0]["a"].dtype == np.int64


def test_shape_override_errors(specs):
    with pytest.raises(DataError, match="expected NAME:D0xD1"):
        parse_shape_overrides(["224x224"])
    with pytest.raises(DataError, match="axis 1 must be 4"):
        resolve_shapes(specs, {"x": (1, 3, 8, 8)})
    with pytest.raises(DataError, match="unknown input\\(s\\) y"):
        resolve_shapes(specs, {"y": (1,)})


def test_anonymous_dim_markers_need_not_agree():
    """Paddle names every unknown dim '?': [N, 3, 48, 192] must not be refused as '?' = 48 and 192."""
    from onnxcomp.data import InputSpec, anonymous_dim, validate_sample

    assert all(anonymous_dim(d) for d in ("?", "-1", "unk__12", ""))
    assert not any(anonymous_dim(d) for d in ("batch", "DynamicDimension.1", "seq"))
    specs = [InputSpec("x", np.dtype(np.float32), ("?", 3, "?", "?"))]
    feed = validate_sample({"x": np.zeros((1, 3, 48, 192), np.float32)}, specs, "sample 0")
    assert feed["x"].shape == (1, 3, 48, 192)
    named = [InputSpec("x", np.dtype(np.float32), ("n", 3, "s", "s"))]
    with pytest.raises(DataError, match="dim 's' is 192"):
        validate_sample({"x": np.zeros((1, 3, 48, 192), np.float32)}, named, "sample 0")


def test_image_folder_letterbox_keeps_the_whole_image_padded_with_grey(tmp_path):
    from PIL import Image

    from onnxcomp.data_images import ImageOptions, Resize

    m = builders.model([helper.make_node("Relu", ["x"], ["y"])], [builders.value("x", ["N", 3, 32, 32])], [builders.value("y", ["N", 3, 32, 32])])
    Image.fromarray(np.full((20, 40, 3), 255, np.uint8)).save(tmp_path / "wide.png")  # 2:1, white
    (sample,) = open_data(tmp_path, input_specs(m), image_options=ImageOptions(resize=Resize.LETTERBOX))
    x = sample["x"][0]
    np.testing.assert_allclose(x[:, 8:24, :], 1.0)  # the image, scaled to 32x16, centred
    np.testing.assert_allclose(x[:, :8, :], 114 / 255)  # grey bars above and below
    np.testing.assert_allclose(x[:, 24:, :], 114 / 255)
