"""onnxcomp: graph-level compression of ONNX models.

The main entry points::

    import onnxcomp
    result = onnxcomp.optimize("model.onnx", ["cleanup"], output="model.opt.onnx", data="calib.npz")
    print(result.report.render())

    stats = onnxcomp.inspect("model.onnx")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import OptimizeResult, inspect, optimize  # noqa: E402
from .errors import (  # noqa: E402
    DataError,
    InputError,
    OnnxcompError,
    OutputError,
    PassError,
    RecipeError,
    UsageError,
    VerificationError,
)
from .pass_base import Pass, PassConfig, PassResult, Stage  # noqa: E402
from .pass_manager import FixedPoint, PassManager  # noqa: E402

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
