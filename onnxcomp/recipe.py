"""Recipes: pipelines written down in YAML.

A recipe is a mapping with a required ``passes`` list (items as accepted by
:func:`onnxcomp.registry.build_pipeline`) and optional ``checks``::

    # recipe.yaml
    passes:
      - cleanup
      - fold-constants: {max_growth_bytes: 0}
    checks: [checker, ort-load]

YAML is read with ``yaml.safe_load``: no Python objects are ever constructed.
Only a regular file of at most :data:`MAX_RECIPE_BYTES` is read, and its YAML
is first scanned as a stream of events: nesting deeper than :data:`MAX_DEPTH`
or more than :data:`MAX_NODES` nodes once aliases are expanded (a
"billion laughs") is refused before any object is built.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError, UsageError
from .pass_manager import Check, Element
from .registry import build_pipeline

RECIPE_KEYS = ("passes", "checks")

MAX_RECIPE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000


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
    text = _read_recipe(path)
    try:
        _check_yaml_size(text, f"recipe {path}")
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path}: invalid YAML: {' '.join(str(err).split())}") from err
    return parse_recipe(data, source=f"recipe {path}")


def _read_recipe(path: Path) -> str:
    """The text of a recipe: a regular file (never a FIFO or device), at most MAX_RECIPE_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except FileNotFoundError as err:
        raise RecipeError(f"recipe {path}: no such file") from err
    except OSError as err:
        raise RecipeError(f"recipe {path}: cannot read ({err.strerror or err})") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO or device is never read)"
            raise RecipeError(f"recipe {path}: is {kind}")
        if info.st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"recipe {path}: {info.st_size:,} bytes, more than a recipe's {MAX_RECIPE_BYTES:,}")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as err:
        raise RecipeError(f"recipe {path}: cannot read ({err.strerror or err})") from err
    finally:
        os.close(fd)
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {path}: more than a recipe's {MAX_RECIPE_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecipeError(f"recipe {path}: cannot read ({err})") from err


def _check_yaml_size(text: str, source: str) -> None:
    """Refuse YAML nested deeper than MAX_DEPTH or of more than MAX_NODES nodes with aliases expanded.

    Streams the parser's events (no objects are built), counting for every
    anchor the size of its node, so an alias costs what it would expand to.

    Raises:
        RecipeError: Too deep or too large. yaml.YAMLError: invalid YAML.
    """
    sizes: dict[str, int] = {}
    stack: list[list] = []  # per open collection: [nodes so far, its anchor]
    done = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise RecipeError(f"{source}: nested deeper than {MAX_DEPTH} levels")
            stack.append([1, event.anchor])
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor:
            sizes[anchor] = size
        if stack:
            stack[-1][0] += size
        else:
            done += size
        if done + sum(level[0] for level in stack) > MAX_NODES:
            raise RecipeError(f"{source}: more than {MAX_NODES:,} YAML nodes once aliases are expanded")


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
