"""Recipes: pipelines written down in YAML.

A recipe is a mapping with a required ``passes`` list (items as accepted by
:func:`onnxcomp.registry.build_pipeline`) and optional ``checks``::

    # recipe.yaml
    passes:
      - cleanup
      - fold-constants: {max_growth_bytes: 0}
    checks: [checker, ort-load]

YAML is read with ``yaml.safe_load``: no Python objects are ever constructed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError, UsageError
from .pass_manager import Check, Element
from .registry import build_pipeline

RECIPE_KEYS = ("passes", "checks")


@dataclasses.dataclass
class Recipe:
    elements: list[Element]
    checks: tuple[Check, ...] | None = None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe file.

    Raises:
        RecipeError: Unreadable file, invalid YAML, unknown keys, unknown pass
            names or invalid options (the message names the file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RecipeError(f"recipe {path}: no such file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"recipe {path}: cannot read ({err})") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path}: invalid YAML: {' '.join(str(err).split())}") from err
    return parse_recipe(data, source=f"recipe {path}")


def parse_recipe(data: Any, *, source: str = "recipe") -> Recipe:
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: expected a mapping with a 'passes' list")
    unknown = sorted(str(k) for k in data if k not in RECIPE_KEYS)
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(RECIPE_KEYS)}")
    passes = data.get("passes")
    if not isinstance(passes, list) or not passes:
        raise RecipeError(f"{source}: 'passes' must be a non-empty list")
    try:
        elements = build_pipeline(passes)
    except UsageError as err:
        raise RecipeError(f"{source}: {err}") from err
    checks = data.get("checks")
    if checks is not None:
        if not isinstance(checks, list):
            raise RecipeError(f"{source}: 'checks' must be a list")
        try:
            checks = tuple(Check(c) for c in checks)
        except ValueError as err:
            valid = ", ".join(c.value for c in Check)
            raise RecipeError(f"{source}: unknown check ({err}); valid checks: {valid}") from err
    return Recipe(elements=elements, checks=checks)
