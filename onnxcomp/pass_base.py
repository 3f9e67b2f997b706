"""The pass contract.

A pass is a small class with a frozen, typed configuration and one method,
``call(graph, ctx) -> PassResult``. Passes are stateless and reentrant: all
per-run state lives in locals or in the :class:`~onnxcomp.context.PassContext`
the manager hands in. ``PassResult.modified`` is honest: a pass that changed
nothing says so, and running a pass twice reports False the second time, which
lets the manager iterate cleanup passes to a fixed point.

Ordering is code: every pass declares a :class:`Stage`, and a pipeline must visit
non-cleanup stages in increasing order (fold batch norms, then prune, then
sparsify, then quantize, then convert precision). Cleanup passes
(``Stage.ANY``) may run anywhere.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from typing import TYPE_CHECKING, Any, ClassVar

import onnx_graphsurgeon as gs

if TYPE_CHECKING:
    from .context import PassContext


class Stage(enum.IntEnum):
    """Where a pass may sit in a pipeline; non-ANY stages must not decrease."""

    ANY = 0
    FOLD = 10
    PRUNE = 20
    SPARSIFY = 30
    QUANTIZE = 40
    CONVERT = 50


@dataclasses.dataclass(frozen=True)
class PassConfig:
    """Base of pass configurations: frozen dataclasses validated on creation.

    Subclasses declare typed fields with defaults (enums for modes) and override
    :meth:`validate` to raise ``ValueError`` with a message naming the field.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for an invalid combination of fields."""


@dataclasses.dataclass
class PassResult:
    """What a pass returns.

    Attributes:
        graph: The resulting graph (usually the same object, edited in place).
        modified: Whether anything changed.
        summary: Counts for the report, e.g. ``{"folded": 35}``; keep it small
            and JSON-serialisable.
    """

    graph: gs.Graph
    modified: bool
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


class Pass(abc.ABC):
    """Base class of every pass.

    Subclasses set ``name`` (the registry key), ``Config`` (a PassConfig
    subclass), ``stage``, and implement :meth:`call`.

    Class attributes:
        needs_data: The pass calibrates on data (``ctx.data`` must be given).
        changes_shapes: The pass may change tensor shapes or dtypes; after it
            modified the graph, the manager forgets intermediate shapes so stale
            ones are never exported.
    """

    name: ClassVar[str]
    Config: ClassVar[type[PassConfig]] = PassConfig
    stage: ClassVar[Stage] = Stage.ANY
    needs_data: ClassVar[bool] = False
    changes_shapes: ClassVar[bool] = True

    def __init__(self, config: PassConfig | None = None, **options: Any):
        if config is not None and options:
            raise TypeError("give either a config or options, not both")
        if config is None:
            config = self.Config(**options)
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} expects a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    @abc.abstractmethod
    def call(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Run the pass on ``graph`` and say whether it changed anything."""

    def __call__(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return self.call(graph, ctx)

    def options(self) -> dict[str, Any]:
        """The configuration as plain values (for reports and recipes)."""
        return {
            f.name: plain(getattr(self.config, f.name)) for f in dataclasses.fields(self.config)
        }

    def describe(self) -> str:
        changed = {
            k: v
            for k, v in self.options().items()
            if v != plain(default_of(self.Config, k))
        }
        args = ", ".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.name}({args})" if args else self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def default_of(config_cls: type, field_name: str) -> Any:
    for f in dataclasses.fields(config_cls):
        if f.name == field_name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
