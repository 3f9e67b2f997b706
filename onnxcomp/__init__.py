"""onnxcomp: graph-level compression of ONNX models.

The main entry points::

    import onnxcomp
    result = onnxcomp.optimize("model.onnx", ["cleanup"], output="model.opt.onnx", data="calib.npz")
    print(result.report.render())

    stats = onnxcomp.inspect("model.onnx")

The names below load on first use, so ``import onnxcomp`` (and the command line's first
moments, when Ctrl-C must already give a one-line message) does not import onnx and onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "optimize": ".api",
    "inspect": ".api",
    "OptimizeResult": ".api",
    "Pass": ".pass_base",
    "PassConfig": ".pass_base",
    "PassResult": ".pass_base",
    "Stage": ".pass_base",
    "PassManager": ".pass_manager",
    "FixedPoint": ".pass_manager",
    "OnnxcompError": ".errors",
    "UsageError": ".errors",
    "RecipeError": ".errors",
    "InputError": ".errors",
    "DataError": ".errors",
    "OutputError": ".errors",
    "PassError": ".errors",
    "VerificationError": ".errors",
}

__all__ = [
    "__version__",
    "optimize",
    "inspect",
    "OptimizeResult",
    "Pass",
    "PassConfig",
    "PassResult",
    "Stage",
    "PassManager",
    "FixedPoint",
    "OnnxcompError",
    "UsageError",
    "RecipeError",
    "InputError",
    "DataError",
    "OutputError",
    "PassError",
    "VerificationError",
]

if TYPE_CHECKING:
    from .api import OptimizeResult, inspect, optimize
    from .errors import (
        DataError,
        InputError,
        OnnxcompError,
        OutputError,
        PassError,
        RecipeError,
        UsageError,
        VerificationError,
    )
    from .pass_base import Pass, PassConfig, PassResult, Stage
    from .pass_manager import FixedPoint, PassManager


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxcomp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
