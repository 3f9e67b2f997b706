"""Pruning plans: which output/input channels of every weight survive, as JSON.

A plan lets a user apply the same structure in the source framework and
fine-tune there, or re-apply it to the same ONNX model (``plan`` option of
``prune-channels``). Layout::

    {
      "format": "onnxcomp-pruning-plan", "version": 1,
      "graph": "<graph name>",
      "weights": {
        "<initializer name>": {
          "node": "<node name>", "op": "Conv", "role": "source",
          "shape": [1152, 192, 1, 1],
          "keep": {"0": [0, 1, 3, ...]}        # kept indices per axis
        }, ...
      },
      "groups": [{"name": ..., "layers": [...], "units": 1152, "kept": 806}, ...]
    }

Every sliced constant appears (weights, biases, per-channel parameters); axes
not listed are kept whole. For PyTorch exports, initializer names are the
parameter names (unless the exporter folded them) and node names the module
paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..graph import constant_value
from .analysis import Dependencies
from .channels import FROZEN
from .groups import Group
from .members import Removal

PLAN_FORMAT = "onnxcomp-pruning-plan"
PLAN_VERSION = 1


def build_plan(deps: Dependencies, groups: list[Group], removal: Removal) -> dict[str, Any]:
    """The plan of ``removal`` (call before the rewrite, while weights have their original shapes)."""
    weights: dict[str, Any] = {}
    for record in deps.records.slices:
        tensor = record.tensor
        if not tensor.name or record.ids.ndim != 1:
            continue
        kept = removal.kept_along(record.ids, 0)
        if kept.all():
            continue
        entry = weights.setdefault(
            tensor.name,
            {
                "node": record.node.name,
                "op": record.node.op,
                "role": record.role.value,
                "shape": [int(d) for d in np.shape(constant_value(tensor))],
                "keep": {},
            },
        )
        entry["keep"][str(record.axes[0])] = [int(i) for i in np.flatnonzero(kept)]
    for record in deps.records.grouped_convs:
        tensor = record.node.inputs[1]
        out_kept = removal.kept_along(record.out_ids, 0)
        entry = weights.setdefault(
            tensor.name,
            {
                "node": record.node.name,
                "op": record.node.op,
                "role": "grouped",
                "shape": [int(d) for d in np.shape(constant_value(tensor))],
                "keep": {},
            },
        )
        entry["keep"]["0"] = [int(i) for i in np.flatnonzero(out_kept)]
        if record.in_ids is not None:
            local = removal.kept_along(record.in_ids, 0).reshape(record.group, -1)
            entry["keep"]["1"] = [[int(i) for i in np.flatnonzero(row)] for row in local]
    removed = removal.removed
    summary = []
    for group in groups:
        gone = sum(1 for r in group.units if removed[r])
        summary.append({"name": group.name, "layers": group.layers, "units": len(group.units), "kept": len(group.units) - gone})
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "graph": deps.graph.name,
        "weights": weights,
        "groups": summary,
    }


def load_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a plan file.

    Raises:
        UsageError: Unreadable, not JSON, or not a plan of a known version.
    """
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"pruning plan {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"pruning plan {path}: cannot read ({err})") from None
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise UsageError(f"pruning plan {path}: not an onnxcomp pruning plan")
    if plan.get("version") != PLAN_VERSION:
        raise UsageError(f"pruning plan {path}: version {plan.get('version')} is not supported (expected {PLAN_VERSION})")
    if not isinstance(plan.get("weights"), dict):
        raise UsageError(f"pruning plan {path}: 'weights' must be a mapping")
    return plan


def removed_units(plan: dict[str, Any], deps: Dependencies, source: str = "pruning plan") -> set[int]:
    """The units a plan removes from this model's dependency groups.

    Raises:
        UsageError: The plan does not fit the model (unknown shapes, channels
            kept in one weight but removed in a coupled one, frozen channels removed).
    """
    removed_ids: list[np.ndarray] = []
    kept_ids: list[np.ndarray] = []
    weights = plan["weights"]
    for record in deps.records.slices:
        entry = weights.get(record.tensor.name)
        if entry is None or record.ids.ndim != 1:
            continue
        keep = entry.get("keep", {}).get(str(record.axes[0]))
        if keep is None:
            continue
        mask = np.zeros(record.ids.size, dtype=bool)
        try:
            mask[np.asarray(keep, dtype=np.int64)] = True
        except (IndexError, ValueError, TypeError):
            raise UsageError(
                f"{source}: weight '{record.tensor.name}' keeps indices outside its {record.ids.size} channels"
            ) from None
        removed_ids.append(record.ids[~mask])
        kept_ids.append(record.ids[mask])
    gone = set(deps.sets.roots(np.concatenate(removed_ids)).tolist()) if removed_ids else set()
    stay = set(deps.sets.roots(np.concatenate(kept_ids)).tolist()) if kept_ids else set()
    if FROZEN in gone:
        raise UsageError(f"{source}: removes channels that cannot be pruned in this model")
    clash = gone & stay
    if clash:
        raise UsageError(f"{source}: keeps channels in one weight that it removes from a coupled weight ({len(clash)} channel groups)")
    return gone


def write_plan(plan: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``plan`` as JSON, atomically."""
    from ..model_io import _temporary_sibling, _write_bytes

    path = Path(path)
    with _temporary_sibling(path) as tmp:
        _write_bytes(tmp, (json.dumps(plan, indent=1) + "\n").encode())
        os.replace(tmp, path)


def write_plan_artifact(artifacts: dict[str, Any], path: str | os.PathLike) -> None:
    """Write the plan ``prune-channels`` left in a run's artifacts.

    Raises:
        UsageError: The run did not prune channels.
    """
    plan = artifacts.get("prune-channels", {}).get("plan")
    if plan is None:
        raise UsageError(f"--prune-plan {path}: the pipeline did not run prune-channels; no plan written")
    write_plan(plan, path)
