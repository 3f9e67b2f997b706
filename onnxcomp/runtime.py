"""onnxruntime sessions, created the same way everywhere.

Calibration, verification, constant folding and latency measurement all run
models in onnxruntime; this module is the one place that turns a model (proto,
bytes or path) into a session, including models too large for one protobuf,
which onnxruntime must read from a file.
"""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from .errors import InputError
from .model_io import PROTOBUF_LIMIT, has_pinned_data, model_byte_size, save_model


class OptLevel(enum.Enum):
    """onnxruntime graph-optimization levels, by the names users know."""

    DISABLED = "disabled"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"

    @property
    def ort_level(self) -> ort.GraphOptimizationLevel:
        return {
            OptLevel.DISABLED: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            OptLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            OptLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            OptLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self]


DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

ort.set_default_logger_severity(4)


def session_options(
    level: OptLevel = OptLevel.ALL,
    *,
    intra_op_threads: int | None = None,
    optimized_model_path: str | None = None,
    spinning: bool = True,
) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = level.ort_level
    options.log_severity_level = 4  # onnxcomp reports failures itself, in one line
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if not spinning:  # idle worker threads sleep instead of busy-waiting for the next run
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_model_path:
        options.optimized_model_filepath = optimized_model_path
    return options


def create_session(
    model: onnx.ModelProto | bytes | str | os.PathLike,
    *,
    level: OptLevel = OptLevel.ALL,
    intra_op_threads: int | None = None,
    providers: Sequence[str] = DEFAULT_PROVIDERS,
    optimized_model_path: str | None = None,
    spinning: bool = True,
) -> ort.InferenceSession:
    """An inference session for ``model``.

    ``spinning=False`` makes idle intra-op threads sleep rather than spin
    (see :func:`onnxcomp.latency.measure_latency` for why timing needs it).

    Raises:
        InputError: onnxruntime refuses the model (one line, original chained).
    """
    options = session_options(
        level, intra_op_threads=intra_op_threads, optimized_model_path=optimized_model_path, spinning=spinning
    )
    with loadable(model) as source:
        try:
            return ort.InferenceSession(source, sess_options=options, providers=list(providers))
        except Exception as err:  # onnxruntime raises several unrelated types
            raise InputError(f"onnxruntime cannot load the model: {_first_line(err)}") from err


@contextlib.contextmanager
def loadable(model) -> Iterator[bytes | str]:
    """Bytes or a file path onnxruntime can read.

    Protos too large for one message, or whose weights are still pinned on disk
    (onnxruntime refuses absolute external-data paths), go through a saved copy.
    """
    if isinstance(model, (str, os.PathLike)):
        yield str(model)
    elif isinstance(model, bytes):
        yield model
    elif not has_pinned_data(model) and model_byte_size(model) <= PROTOBUF_LIMIT - (1 << 24):
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory(prefix="onnxcomp-ort-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_model(model, path, external_data=True)
            yield str(path)


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:500] if text else type(err).__name__


def run(session: ort.InferenceSession, names, feed, *, error: type[Exception], what: str) -> list:
    """``session.run`` that turns onnxruntime's failures into ``error`` with one line.

    Args:
        error: The onnxcomp error type to raise (DataError when the original
            model fails on the user's data, VerificationError when the
            optimized one does).
        what: Who ran on what, for the message (e.g. "original model on sample 3").
    """
    try:
        return session.run(names, feed)
    except Exception as err:  # onnxruntime raises several unrelated types
        raise error(f"{what} fails in onnxruntime: {_first_line(err)}") from err
