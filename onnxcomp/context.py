"""Per-run state handed to passes by the manager.

Passes are stateless; everything a run needs — the model-level fields to
export with, the calibration data, the seed, the progress reporter, a scratch
folder, onnxruntime session creation — comes through a :class:`PassContext`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .errors import UsageError
from .ir import export_model
from .progress import ProgressFactory, null_progress
from .quality import MetricChoice
from .runtime import DEFAULT_PROVIDERS, OptLevel, create_session
from .shapes import infer_graph_shapes

if TYPE_CHECKING:
    from .data import Dataset

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class PassContext:
    """What a pipeline run shares with its passes.

    Attributes:
        template: The original model; its model-level fields (metadata, IR
            version, producer) are carried into every export.
        data: Calibration data (a re-iterable of feed dicts), if any.
        seed: Seed for every random choice a pass makes.
        progress: Factory of progress bars (no-op by default).
        providers: onnxruntime execution providers for calibration runs.
        artifacts: Larger results passes leave for the caller, keyed by pass
            name (e.g. a pruning plan, a sensitivity table).
        warnings: Lines for the person running the pipeline (see :meth:`warn`);
            the optimize report prints them after its tables.
        metric: What "still good" means for this run (:mod:`onnxcomp.quality`);
            passes that compare candidates (sensitivity sweeps, mixed
            precision) measure with it, as the final verification does.
    """

    template: onnx.ModelProto
    data: Dataset | None = None
    seed: int = 0
    progress: ProgressFactory = null_progress
    providers: Sequence[str] = DEFAULT_PROVIDERS
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    metric: MetricChoice = dataclasses.field(default_factory=MetricChoice)
    _workdir: tempfile.TemporaryDirectory | None = dataclasses.field(default=None, repr=False)

    def warn(self, message: str) -> None:
        """Tell the user something that went other than asked without failing the
        run (e.g. a pruning request that found nothing to prune). Logged at info
        level as it happens; shown once, in the report, at the default level."""
        self.warnings.append(message)
        logger.info(message)

    def export(self, graph: gs.Graph) -> onnx.ModelProto:
        """The graph as a model with the original model-level fields."""
        return export_model(graph, self.template)

    def infer_shapes(self, graph: gs.Graph) -> int:
        """Refresh shapes and dtypes of ``graph``'s tensors; returns how many changed."""
        return infer_graph_shapes(graph, self.template)

    def session(
        self, model: gs.Graph | onnx.ModelProto, *, level: OptLevel = OptLevel.DISABLED
    ) -> ort.InferenceSession:
        """An onnxruntime session (graph optimizations off by default, so the
        model runs exactly as written)."""
        if isinstance(model, gs.Graph):
            model = self.export(model)
        return create_session(model, level=level, providers=self.providers)

    def require_data(self, pass_name: str) -> Dataset:
        """The calibration data, or a clear error naming the pass that needs it."""
        if self.data is None:
            raise UsageError(
                f"pass '{pass_name}' needs calibration data: give --calib DATA "
                "(or data=... in Python)"
            )
        return self.data

    @property
    def workdir(self) -> Path:
        """A scratch folder that lives as long as the context (removed by close())."""
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="onnxcomp-")
        return Path(self._workdir.name)

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> PassContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
