"""Augmented views, reproducible by the student from the manifest.

With augmentation, the teacher sees ``views`` transformed copies of every
sample, and the student must train on exactly the same transforms. Each view's
parameters are drawn from ``numpy.random.default_rng([seed, sample, view])``
(independent of batching, sharding and backend), stored per row in the
``__view__`` tensor, and applied by the same function the student calls::

    aug = augmentation_from_manifest(outputs.manifest)
    x_view = aug.apply(x, outputs[row]["__view__"])

``crop-flip`` (the only built-in) is a random-resized crop and a horizontal
flip on an image tensor ``[1, C, H, W]`` (or ``[1, H, W, C]``):

1. area fraction ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``, crop
   ``h = round(sqrt(s H W / r))``, ``w = round(sqrt(s H W r))``, at a uniform
   position (10 tries, then the full image);
2. bilinear resize of the crop back to ``H x W`` (half-pixel centres: source
   coordinate ``(o + 0.5) * h / H - 0.5``, clamped to the crop);
3. flip along W when ``flip`` is 1.

Parameters per row: ``top, left, height, width, flip``. Spec strings:
``crop-flip`` or ``crop-flip:scale=0.35-1,ratio=0.75-1.333,flip=1,input=NAME``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data import Feed, InputSpec
from ..errors import UsageError

PARAM_NAMES = ("top", "left", "height", "width", "flip")


@dataclasses.dataclass(frozen=True)
class CropFlip:
    """Random-resized crop + horizontal flip (see the module docstring)."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    input: str | None = None
    layout: str = "auto"

    name = "crop-flip"
    param_names = PARAM_NAMES

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise UsageError(f"crop-flip scale must satisfy 0 < min <= max <= 1, got {lo}-{hi}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise UsageError(f"crop-flip ratio must satisfy 0 < min <= max, got {self.ratio[0]}-{self.ratio[1]}")
        if self.layout not in ("auto", "NCHW", "NHWC"):
            raise UsageError(f"crop-flip layout must be auto, NCHW or NHWC, got {self.layout}")

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": list(self.scale), "ratio": list(self.ratio), "flip": self.flip,
                "input": self.input, "layout": self.layout, "param_names": list(self.param_names)}

    def bind(self, specs: list[InputSpec]) -> CropFlip:
        """This augmentation with ``input`` and ``layout`` resolved for a model's inputs.

        Raises:
            UsageError: No (or an ambiguous) 4-D float image input.
        """
        candidates = [s for s in specs if s.shape is not None and len(s.shape) == 4 and s.dtype.kind == "f"]
        if self.input is not None:
            chosen = [s for s in specs if s.name == self.input]
            if not chosen:
                raise UsageError(f"crop-flip input '{self.input}' is not a model input ({', '.join(s.name for s in specs)})")
        elif len(candidates) == 1:
            chosen = candidates
        else:
            raise UsageError("crop-flip needs one 4-D float image input; name it with crop-flip:input=NAME")
        spec = chosen[0]
        layout = self.layout
        if layout == "auto":
            shape = spec.shape or (None,) * 4
            layout = "NHWC" if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"
        return dataclasses.replace(self, input=spec.name, layout=layout)

    def _hw_axes(self) -> tuple[int, int]:
        return (2, 3) if self.layout == "NCHW" else (1, 2)

    def params(self, feed: Feed, seed: int, sample: int, view: int) -> np.ndarray:
        """The view's parameters ``[top, left, height, width, flip]`` (float64)."""
        h_axis, w_axis = self._hw_axes()
        image = feed[self.input]
        height, width = image.shape[h_axis], image.shape[w_axis]
        rng = np.random.default_rng([seed, sample, view])
        area = height * width
        box = (0, 0, height, width)
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                box = (top, left, h, w)
                break
        flip = float(rng.integers(0, 2)) if self.flip else 0.0
        return np.array([*box, flip], dtype=np.float64)

    def apply(self, feed: Feed | np.ndarray, params: np.ndarray) -> Feed | np.ndarray:
        """The view of ``feed`` (a feed dict, or the image array itself)."""
        if isinstance(feed, Mapping):
            out = dict(feed)
            out[self.input] = self.apply(np.asarray(feed[self.input]), params)
            return out
        image = np.asarray(feed)
        h_axis, w_axis = self._hw_axes()
        top, left, h, w, flip = (int(v) for v in np.asarray(params))
        crop = np.take(np.take(image, np.arange(top, top + h), axis=h_axis), np.arange(left, left + w), axis=w_axis)
        out = _resize_axis(crop, h_axis, image.shape[h_axis])
        out = _resize_axis(out, w_axis, image.shape[w_axis])
        if flip:
            out = np.flip(out, axis=w_axis)
        return np.ascontiguousarray(out.astype(image.dtype, copy=False))


def _resize_axis(array: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Linear interpolation along one axis, half-pixel centres."""
    n = array.shape[axis]
    if n == size:
        return array
    src = (np.arange(size) + 0.5) * n / size - 0.5
    src = np.clip(src, 0, n - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = size
    frac = (src - i0).reshape(weight_shape)
    a = np.take(array, i0, axis=axis).astype(np.float64)
    b = np.take(array, i1, axis=axis).astype(np.float64)
    return a * (1 - frac) + b * frac


AUGMENTATIONS = {"crop-flip": CropFlip}


def parse_augment(spec: str) -> CropFlip:
    """``crop-flip`` or ``crop-flip:key=value,...`` -> the augmentation.

    Raises:
        UsageError: Unknown name, key or value.
    """
    name, _, options = spec.partition(":")
    cls = AUGMENTATIONS.get(name.strip())
    if cls is None:
        raise UsageError(f"unknown augmentation '{name}'; available: {', '.join(sorted(AUGMENTATIONS))}")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in options.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"augmentation option '{item}': expected key=value")
        kwargs[key.strip()] = _option_value(name, key.strip(), value.strip())
    return cls(**kwargs)


def _option_value(name: str, key: str, value: str) -> Any:
    try:
        if key in ("scale", "ratio"):
            lo, _, hi = value.partition("-")
            return (float(lo), float(hi or lo))
        if key == "flip":
            return value.lower() in ("1", "true", "yes", "on")
        if key in ("input", "layout"):
            return value
    except ValueError:
        raise UsageError(f"{name} option {key}: cannot read '{value}'") from None
    raise UsageError(f"{name} has no option '{key}'; options: scale, ratio, flip, input, layout")


def augmentation_from_config(config: Mapping[str, Any] | None) -> CropFlip | None:
    """Rebuild the augmentation a manifest describes (None when it has none)."""
    if not config:
        return None
    cls = AUGMENTATIONS.get(config.get("name", ""))
    if cls is None:
        raise UsageError(f"unknown augmentation '{config.get('name')}' in the manifest")
    return cls(scale=tuple(config["scale"]), ratio=tuple(config["ratio"]), flip=bool(config["flip"]),
               input=config.get("input"), layout=config.get("layout", "auto"))


def augmentation_from_manifest(manifest: Mapping[str, Any]) -> CropFlip | None:
    """The augmentation of an export (``TeacherOutputs.manifest``), or None."""
    return augmentation_from_config(manifest["plan"].get("augmentation"))
