"""Real photographs for image-model benchmarks.

The photographs are the sample images bundled with scikit-image (public
domain or freely licensed; see ``skimage/data/README.txt``). They are read
straight from the installed package with Pillow, so nothing is downloaded:
images that scikit-image only fetches on demand (``eagle``, ``skin``) are used
when they are already in its data directory and skipped otherwise.

Calibration and evaluation inputs come from *disjoint sets of source
photographs* (:data:`PHOTO_SPLITS`), so no calibration crop can overlap an
evaluation crop. ``motorcycle_right`` (a near-duplicate of the left stereo
view), binary, synthetic and tiny images are left out of those two.

A third split, ``holdout``, is a second evaluation set from other sources:
the sample photographs shipped with scikit-learn (``china``, ``flower``) and
matplotlib (``grace_hopper``, a present), plus scikit-image's remaining colour
images. Results tuned on ``eval`` can be checked on it; photographs of a
package that is not installed are skipped.

:func:`photo_folds` pools the photographs of all three splits and deals them
into folds for cross-validation by photograph: calibrate on the other folds'
photographs, evaluate on the held-out fold's, so calibration covers a wider
mix of content while no photograph is on both sides.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

#: Source photographs per split: ``name -> file name`` in skimage's data dir,
#: or ``"package:path"`` inside another installed package.
#: Each split mixes objects, textures, scientific and greyscale images.
PHOTO_SPLITS: dict[str, dict[str, str]] = {
    "calib": {
        "astronaut": "astronaut.png",
        "rocket": "rocket.jpg",
        "hubble_deep_field": "hubble_deep_field.jpg",
        "retina": "retina.jpg",
        "camera": "camera.png",
        "brick": "brick.png",
        "grass": "grass.png",
        "page": "page.png",
        "moon": "moon.png",
        "skin": "skin.jpg",  # optional (pooch download)
    },
    "eval": {
        "chelsea": "chelsea.png",
        "coffee": "coffee.png",
        "motorcycle": "motorcycle_left.png",
        "immunohistochemistry": "ihc.png",
        "gravel": "gravel.png",
        "coins": "coins.png",
        "text": "text.png",
        "clock": "clock_motion.png",
        "cell": "cell.png",
        "eagle": "eagle.png",  # optional (pooch download)
    },
    "holdout": {
        "china": "sklearn:datasets/images/china.jpg",
        "flower": "sklearn:datasets/images/flower.jpg",
        "grace_hopper": "matplotlib:mpl-data/sample_data/grace_hopper.jpg",
        "present": "matplotlib:mpl-data/sample_data/Minduka_Present_Blue_Pack.png",
        "horse": "horse.png",
        "logo": "logo.png",
        "color": "color.png",
        "microaneurysms": "microaneurysms.png",
    },
}

SPLITS = ("calib", "eval", "holdout")


@dataclass(frozen=True)
class ImagePreprocess:
    """How a model expects its image input.

    The float input is ``(pixel * scale - mean[c]) / std[c]`` per channel.

    Attributes:
        size: Square input resolution (height == width) in pixels.
        mean: Per-channel mean, in the order given by ``channel_order``.
        std: Per-channel standard deviation, same order.
        scale: Factor applied to uint8 pixels before ``mean``/``std``.
        layout: ``"NCHW"`` or ``"NHWC"``.
        channel_order: ``"RGB"`` or ``"BGR"``.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0
    layout: str = "NCHW"
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")


def _data_dirs() -> list[Path]:
    import skimage.data

    dirs = [Path(skimage.data.__file__).parent, Path(skimage.data.data_dir)]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def _locate(filename: str, dirs: list[Path]) -> Path | None:
    """Where ``filename`` (see :data:`PHOTO_SPLITS`) is, or None if not available offline."""
    if ":" in filename:
        import importlib.util

        package, relative = filename.split(":", 1)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        dirs = [Path(d) for d in spec.submodule_search_locations]
        filename = relative
    return next((d / filename for d in dirs if (d / filename).is_file()), None)


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


@functools.cache
def _photos(split: str) -> tuple[tuple[str, np.ndarray], ...]:
    """Loads the available photographs of ``split`` once, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    dirs = _data_dirs()
    photos = []
    for name, filename in PHOTO_SPLITS[split].items():
        path = _locate(filename, dirs)
        if path is None:
            logger.debug("photo %s (%s) not available offline; skipped", name, filename)
            continue
        try:
            photos.append((name, _load_rgb(path)))
        except OSError as err:
            logger.warning("cannot read photo %s: %s", path, err)
    if not photos:
        raise RuntimeError(f"no {split} photographs found in {dirs}")
    return tuple(photos)


def photo_names(split: str) -> list[str]:
    """Returns the names of the source photographs available for ``split``.

    Args:
        split: ``"calib"``, ``"eval"`` or ``"holdout"``.

    Returns:
        Photograph names, in the order crops cycle through them.
    """
    return [name for name, _ in _photos(split)]


def photo_folds(k: int) -> list[tuple[list[str], list[str]]]:
    """Deals the photographs of every split into ``k`` folds, for cross-validation by photograph.

    Photograph ``j`` of the pool (calib, then eval, then holdout, in
    :data:`PHOTO_SPLITS` order) goes to fold ``j % k``, so each fold mixes
    photographs of all three splits.

    Args:
        k: Number of folds, at least 2.

    Returns:
        Per fold, ``(calibration names, held-out names)``: disjoint, together the whole pool.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    pool = [name for split in SPLITS for name in photo_names(split)]
    return [
        ([n for j, n in enumerate(pool) if j % k != fold], [n for j, n in enumerate(pool) if j % k == fold])
        for fold in range(k)
    ]


def photo_crops(
    n: int, size: int = 224, seed: int = 0, split: str = "calib", photos: Sequence[str] | None = None
) -> list[np.ndarray]:
    """Returns random square crops of real photographs.

    Crop ``i`` comes from photograph ``i % len(photos)`` of the split, with a
    random side of 35-100 % of the photograph's shorter side, a random
    position and a random horizontal flip, resized to ``size`` with bicubic
    interpolation. The result depends only on ``(n, size, seed, split)`` and
    the first ``k`` crops are the same for every ``n >= k``.

    Args:
        n: Number of crops.
        size: Output side length in pixels.
        seed: Random seed.
        split: ``"calib"``, ``"eval"`` or ``"holdout"``; they use disjoint photographs.
        photos: Instead of a split, these photographs by name, from any split
            (e.g. one side of a :func:`photo_folds` fold); crops draw from
            their own random stream.

    Returns:
        ``n`` uint8 arrays of shape ``(size, size, 3)``, RGB.

    Raises:
        ValueError: An unknown split, or a name in ``photos`` that is not available.
    """
    if photos is None:
        chosen, stream = _photos(split), SPLITS.index(split)
    else:
        pool = dict(p for s in SPLITS for p in _photos(s))
        unknown = [name for name in photos if name not in pool]
        if unknown or not photos:
            raise ValueError(f"photographs not available: {unknown or 'none given'}")
        chosen, stream = tuple((name, pool[name]) for name in photos), len(SPLITS)
    crops = []
    for i in range(n):
        name, img = chosen[i % len(chosen)]
        rng = np.random.default_rng([seed, stream, i])
        h, w = img.shape[:2]
        side = rng.uniform(0.35, 1.0) * min(h, w)
        left = rng.uniform(0.0, w - side)
        top = rng.uniform(0.0, h - side)
        pil = Image.fromarray(img).resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
        if rng.random() < 0.5:
            pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(pil, dtype=np.uint8))
    return crops


def center_crop(image: np.ndarray, size: int, crop_padding: int = 32) -> np.ndarray:
    """Centre-crops and resizes like the TF EfficientNet evaluation pipeline.

    The crop side is ``size / (size + crop_padding)`` of the shorter side,
    resized with bicubic interpolation.

    Args:
        image: uint8 ``HxWx3`` array.
        size: Output side length.
        crop_padding: Margin used to compute the crop fraction.

    Returns:
        uint8 array of shape ``(size, size, 3)``.
    """
    h, w = image.shape[:2]
    side = min(h, w) * size / (size + crop_padding)
    left, top = (w - side) / 2, (h - side) / 2
    pil = Image.fromarray(image).resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    return np.asarray(pil, dtype=np.uint8)


def preprocess(images: Sequence[np.ndarray], spec: ImagePreprocess) -> np.ndarray:
    """Turns uint8 RGB images into a model input batch.

    Images whose shape is not ``(spec.size, spec.size, 3)`` are first passed
    through :func:`center_crop`.

    Args:
        images: uint8 ``HxWx3`` RGB arrays.
        spec: The model's expected preprocessing.

    Returns:
        float32 array, ``(N, 3, size, size)`` for NCHW or ``(N, size, size, 3)``.
    """
    batch = []
    for img in images:
        if img.shape != (spec.size, spec.size, 3):
            img = center_crop(img, spec.size)
        batch.append(img)
    x = np.stack(batch).astype(np.float32) * np.float32(spec.scale)
    if spec.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)
