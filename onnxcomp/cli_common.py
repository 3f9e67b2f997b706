"""What the CLI's commands share: verbosity and logging, progress bars, the --image-* options.

One module both ``onnxcomp`` (``cli.py``) and ``onnxcomp distill`` (``distill/cli.py``)
import, so neither reaches into the other's private names.
"""

from __future__ import annotations

import logging
import sys

import click

from .errors import UsageError


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        line = f"onnxcomp: {level}: {' '.join(record.getMessage().split())}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    root = logging.getLogger("onnxcomp")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def verbosity(func):
    """The -v/-q options of a command."""
    func = click.option("-v", "--verbose", count=True, help="More output (-vv for debug and tracebacks).")(func)
    func = click.option("-q", "--quiet", is_flag=True, help="Errors only; no progress bars or tables.")(func)
    return func


class State:
    """Verbosity of the current invocation; the group and the subcommand both accept -v/-q.

    Reset by ``main`` so one call's ``-q`` never silences the next call in the same process.
    """

    verbose = 0
    quiet = False

    @classmethod
    def reset(cls) -> None:
        cls.verbose, cls.quiet = 0, False


def apply_verbosity(verbose: int, quiet: bool) -> None:
    State.verbose = max(State.verbose, verbose)
    State.quiet = State.quiet or quiet
    configure_logging(State.verbose, State.quiet)


def progress_factory():
    """tqdm bars, or none under -q."""
    from .progress import null_progress, tqdm_progress

    return null_progress if State.quiet else tqdm_progress


def image_options(size, mean, std, scale, layout, order, resize):
    """ImageOptions from the --image-* values (one clear line for a malformed one)."""
    from .data_images import ChannelOrder, ImageOptions, Layout, Resize

    def floats(text, name):
        if text is None:
            return None
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            raise UsageError(f"--image-{name} expects comma-separated numbers, got '{text}'") from None
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise UsageError(f"--image-{name} expects 1 or 3 numbers, got {len(values)}")
        return values

    kwargs = {}
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--image-size expects HxW, e.g. 224x224, got '{size}'") from None
        kwargs["size"] = (h, w)
    if mean is not None:
        kwargs["mean"] = floats(mean, "mean")
    if std is not None:
        kwargs["std"] = floats(std, "std")
    if scale is not None:
        kwargs["scale"] = scale
    kwargs["layout"] = Layout(layout)
    kwargs["channel_order"] = ChannelOrder(order)
    kwargs["resize"] = Resize(resize)
    return ImageOptions(**kwargs)


IMAGE_OPTIONS: tuple[tuple[str, dict], ...] = (
    ("--image-size", {"help": "Image folders: HxW (default: from the model input)."}),
    ("--image-mean", {"help": "Image folders: per-channel mean, after --image-scale (e.g. 0.485,0.456,0.406)."}),
    ("--image-std", {"help": "Image folders: per-channel std (e.g. 0.229,0.224,0.225)."}),
    ("--image-scale", {"type": float, "help": "Image folders: multiply pixels (0..255) by this first [default: 1/255]."}),
    ("--image-layout", {"type": click.Choice(["auto", "NCHW", "NHWC"]), "default": "auto", "show_default": True}),
    ("--image-order", {"type": click.Choice(["RGB", "BGR"]), "default": "RGB", "show_default": True}),
    ("--image-resize", {
        "type": click.Choice(["crop", "stretch", "letterbox"]), "default": "crop", "show_default": True,
        "help": "Image folders: crop = shorter side to size/0.875, then the centre crop (ImageNet evaluation); "
        "stretch = straight to size; letterbox = fit the longer side, pad with grey 114 (YOLO detectors).",
    }),
)  # fmt: skip
"""The --image-* options (image folders as data), defined once for every command that reads data."""


def image_options_flags(func):
    """Add the --image-* options to a command function or an already built click command."""
    if isinstance(func, click.Command):
        func.params.extend(click.Option([name], **attrs) for name, attrs in IMAGE_OPTIONS)
        return func
    for name, attrs in reversed(IMAGE_OPTIONS):
        func = click.option(name, **attrs)(func)
    return func


def image_options_from(values: dict):
    """ImageOptions from a command's keyword arguments (the image_* ones)."""
    return image_options(*(values[f"image_{k}"] for k in ("size", "mean", "std", "scale", "layout", "order", "resize")))
