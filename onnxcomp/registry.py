"""The one registry of passes, and pipeline construction from names.

Recipes, CLI flags and the Python API all build pipelines through
:func:`create_pass` and :func:`build_pipeline`, so names and options are
validated in one place with the same messages.

Pipeline specs are lists whose items are:

* a pass name: ``"fold-batchnorm"``;
* a preset name: ``"cleanup"`` (cleanup passes iterated to a fixed point);
* a one-key mapping: ``{"fold-constants": {"max_growth_bytes": 0}}``;
* a :class:`~onnxcomp.pass_base.Pass` instance (Python API).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from onnxcomp.passes.convert_fp16 import ConvertFp16
from onnxcomp.passes.eliminate_dead_code import EliminateDeadCode
from onnxcomp.passes.eliminate_noops import EliminateNoOps
from onnxcomp.passes.equalize_cross_layer import EqualizeCrossLayer
from onnxcomp.passes.finetune import Finetune
from onnxcomp.passes.fold_batchnorm import FoldBatchNorm
from onnxcomp.passes.fold_channel_affine import FoldChannelAffine
from onnxcomp.passes.fold_constants import FoldConstants
from onnxcomp.passes.fold_pad import FoldPad
from onnxcomp.passes.infer_shapes import InferShapes
from onnxcomp.passes.prune_channels import PruneChannels
from onnxcomp.passes.quantize_codebook import QuantizeCodebook
from onnxcomp.passes.quantize_dynamic import QuantizeDynamic
from onnxcomp.passes.quantize_static import QuantizeStatic
from onnxcomp.passes.quantize_weights import QuantizeWeights
from onnxcomp.passes.sparsify import Sparsify

from .errors import UsageError
from .options import config_from_options
from .pass_base import Pass, default_of, plain
from .pass_manager import Element, FixedPoint

PASSES: Mapping[str, type[Pass]] = {
    "infer-shapes": InferShapes,
    "fold-constants": FoldConstants,
    "eliminate-noops": EliminateNoOps,
    "eliminate-dead-code": EliminateDeadCode,
    "fold-batchnorm": FoldBatchNorm,
    "fold-channel-affine": FoldChannelAffine,
    "fold-pad": FoldPad,
    "prune-channels": PruneChannels,
    "sparsify": Sparsify,
    "quantize-dynamic": QuantizeDynamic,
    "quantize-weights": QuantizeWeights,
    "convert-fp16": ConvertFp16,
    "quantize-codebook": QuantizeCodebook,
    "quantize-static": QuantizeStatic,
    "equalize-cross-layer": EqualizeCrossLayer,
    "finetune": Finetune,
}


def _cleanup() -> list[Element]:
    return [
        FixedPoint(
            (
                FoldConstants(),
                EliminateNoOps(),
                FoldPad(),
                FoldChannelAffine(),
                FoldBatchNorm(),
                EliminateDeadCode(),
            ),
            max_iterations=5,
        )
    ]


PRESETS: Mapping[str, Callable[[], list[Element]]] = {
    "cleanup": _cleanup,
}
"""Named groups of passes usable wherever a pass name is."""


def create_pass(name: str, options: Mapping[str, Any] | None = None) -> Pass:
    """Instantiate the pass registered as ``name`` with validated ``options``.

    Raises:
        UsageError: Unknown name (the message lists valid ones) or bad options.
    """
    cls = PASSES.get(name)
    if cls is None:
        valid = ", ".join(sorted(PASSES))
        presets = ", ".join(sorted(PRESETS))
        raise UsageError(f"unknown pass '{name}'; valid passes: {valid} (presets: {presets})")
    if options is not None and not isinstance(options, Mapping):
        raise UsageError(f"pass '{name}': options must be a mapping of names to values, got {options!r}")
    config = config_from_options(cls.Config, options or {}, where=f"pass '{name}'")
    return cls(config)


def build_pipeline(spec: Iterable[str | Mapping[str, Any] | Pass | FixedPoint]) -> list[Element]:
    """Resolve a pipeline spec (see the module docstring) into pipeline elements."""
    elements: list[Element] = []
    for index, item in enumerate(spec):
        if isinstance(item, (Pass, FixedPoint)):
            elements.append(item)
        elif isinstance(item, str):
            if item in PRESETS:
                elements.extend(PRESETS[item]())
            else:
                elements.append(create_pass(item))
        elif isinstance(item, Mapping) and len(item) == 1:
            (name, options), = item.items()
            if name in PRESETS:
                if options:
                    raise UsageError(f"preset '{name}' takes no options")
                elements.extend(PRESETS[name]())
            else:
                elements.append(create_pass(str(name), options))
        else:
            raise UsageError(
                f"pipeline item {index + 1}: expected a pass name or a one-key mapping "
                f"{{name: {{options}}}}, got {item!r}"
            )
    return elements


def describe_passes() -> list[dict[str, Any]]:
    """Name, stage, summary line and options (with defaults) of every registered pass."""
    import dataclasses
    import typing

    rows = []
    for name, cls in PASSES.items():
        hints = typing.get_type_hints(cls.Config)
        options = []
        for f in dataclasses.fields(cls.Config):
            default = default_of(cls.Config, f.name)
            default = None if default is dataclasses.MISSING else default
            options.append({"name": f.name, "type": _type_name(hints.get(f.name)), "default": plain(default)})
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append(
            {
                "name": name,
                "stage": cls.stage.name.lower(),
                "needs_data": cls.needs_data,
                "summary": doc[0] if doc else "",
                "options": options,
            }
        )
    return rows


def _type_name(annotation: Any) -> str:
    import enum

    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
