"""Image folders as calibration data, with the preprocessing a vision model expects.

Each image becomes one feed for a single-input model. Steps, in order:

1. decode with Pillow and convert to RGB (or BGR with ``channel_order="BGR"``);
2. resize: ``"crop"`` scales the shorter side to ``size / crop_fraction`` and
   takes the centre ``size`` crop (the usual ImageNet evaluation transform);
   ``"stretch"`` resizes straight to ``size``; ``"letterbox"`` scales the
   longer side to fit and pads the rest with grey (114, as YOLO detectors are
   trained), keeping the whole image and its aspect ratio;
3. ``x = (pixels * scale - mean) / std`` per channel (defaults: scale 1/255,
   mean 0, std 1, i.e. pixels in [0, 1]);
4. layout ``NCHW`` or ``NHWC`` and a batch axis of one.

``size`` and ``layout`` default to what the model's input shape says (a 3 in
axis 1 means NCHW, in the last axis NHWC).
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .data import Dataset, Feed, InputSpec, describe_inputs
from .errors import DataError


class Layout(enum.Enum):
    AUTO = "auto"
    NCHW = "NCHW"
    NHWC = "NHWC"


class ChannelOrder(enum.Enum):
    RGB = "RGB"
    BGR = "BGR"


LETTERBOX_GREY = 114
"""The pad value of ``letterbox`` (ultralytics' YOLO preprocessing)."""


class Resize(enum.Enum):
    CROP = "crop"
    STRETCH = "stretch"
    LETTERBOX = "letterbox"


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images are turned into model inputs (see the module docstring)."""

    size: tuple[int, int] | None = None
    resize: Resize = Resize.CROP
    crop_fraction: float = 0.875
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Layout = Layout.AUTO
    channel_order: ChannelOrder = ChannelOrder.RGB

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) <= 0):
            raise DataError(f"image size must be two positive integers HxW, got {self.size}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"crop fraction must be in (0, 1], got {self.crop_fraction}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError("image mean and std need three values (one per channel)")
        if any(s == 0 for s in self.std):
            raise DataError("image std values must be non-zero")


class ImageFolderDataset(Dataset):
    """Images from a folder, preprocessed into feeds for a single-input model."""

    def __init__(self, folder: Path, files: list[Path], specs: Sequence[InputSpec], options: ImageOptions):
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise DataError("image folders need Pillow: pip install 'onnxcomp[images]'") from None
        if len(specs) != 1:
            raise DataError(
                f"{folder}: image folders feed single-input models; this one has {len(specs)} inputs "
                f"({describe_inputs(specs)}); use .npz samples instead"
            )
        self.description = str(folder)
        self._files = files
        self._spec = specs[0]
        self._layout, self._size = _resolve_geometry(self._spec, options)
        self._options = options
        if self._spec.dtype.kind not in "fu":
            raise DataError(f"{folder}: input {self._spec.describe()} is not an image tensor (float or uint8)")

    def __iter__(self) -> Iterator[Feed]:
        for path in self._files:
            yield {self._spec.name: self._load(path)}

    def size(self) -> int | None:
        return len(self._files)

    def _load(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    rgb = image.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise DataError(
                f"{path}: refused as a decompression bomb ({err}); images above {Image.MAX_IMAGE_PIXELS:,} pixels "
                "are not read"
            ) from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            # ValueError: e.g. a text chunk that inflates past Pillow's limit (a zTXt bomb)
            raise DataError(f"{path}: not a readable image ({' '.join(str(err).split())[:200]})") from err
        pixels = np.asarray(_resize(rgb, self._size, self._options), dtype=np.float32)
        if self._options.channel_order is ChannelOrder.BGR:
            pixels = pixels[..., ::-1]
        if self._spec.dtype == np.uint8:
            out = pixels.astype(np.uint8)
        else:
            mean = np.asarray(self._options.mean, dtype=np.float32)
            std = np.asarray(self._options.std, dtype=np.float32)
            out = ((pixels * np.float32(self._options.scale) - mean) / std).astype(self._spec.dtype)
        if self._layout is Layout.NCHW:
            out = out.transpose(2, 0, 1)
        return np.ascontiguousarray(out[np.newaxis])


def _resolve_geometry(spec: InputSpec, options: ImageOptions) -> tuple[Layout, tuple[int, int]]:
    shape = spec.shape
    if shape is None or len(shape) != 4:
        raise DataError(f"input {spec.describe()} is not a 4-D image batch")
    layout = options.layout
    if layout is Layout.AUTO:
        if shape[1] in (1, 3) and shape[3] not in (1, 3):
            layout = Layout.NCHW
        elif shape[3] in (1, 3):
            layout = Layout.NHWC
        else:
            raise DataError(f"cannot tell the layout of input {spec.describe()}; pass --image-layout NCHW or NHWC")
    channels = shape[1] if layout is Layout.NCHW else shape[3]
    if channels != 3:
        raise DataError(f"input {spec.describe()} does not have 3 colour channels in {layout.value} layout")
    hw = (shape[2], shape[3]) if layout is Layout.NCHW else (shape[1], shape[2])
    if options.size is not None:
        size = tuple(options.size)
        for want, have in zip(hw, size):
            if isinstance(want, int) and want > 0 and want != have:
                raise DataError(f"--image-size {size[0]}x{size[1]} contradicts input {spec.describe()}")
    elif all(isinstance(d, int) and d > 0 for d in hw):
        size = (int(hw[0]), int(hw[1]))
    else:
        raise DataError(f"input {spec.describe()} has dynamic height/width; pass --image-size HxW")
    return layout, size  # type: ignore[return-value]


def _resize(image, size: tuple[int, int], options: ImageOptions):
    from PIL import Image

    height, width = size
    if options.resize is Resize.STRETCH:
        return image.resize((width, height), Image.BILINEAR)
    if options.resize is Resize.LETTERBOX:
        scale = min(width / image.size[0], height / image.size[1])
        new_w, new_h = max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))
        canvas = Image.new(image.mode, (width, height), (LETTERBOX_GREY,) * len(image.getbands()))
        canvas.paste(image.resize((new_w, new_h), Image.BILINEAR), ((width - new_w) // 2, (height - new_h) // 2))
        return canvas
    scale = max(height, width) / options.crop_fraction / min(image.size)
    new_w, new_h = max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return resized.crop((left, top, left + width, top + height))
