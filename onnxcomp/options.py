"""Building typed pass configurations from loosely typed options.

Options arrive as YAML values (recipes), strings (CLI) or Python values (API).
:func:`config_from_options` turns them into a pass's frozen config dataclass,
coercing by the declared field types and rejecting unknown names with a message
that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from typing import Any

from .errors import UsageError


def config_from_options(config_cls: type, options: Mapping[str, Any], *, where: str) -> Any:
    """Instantiate ``config_cls`` from ``options``.

    Raises:
        UsageError: Unknown option names, values of the wrong type, or values the
            config's own validation refuses.
    """
    options = normalize_keys(options)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(sorted(fields)) or "none"
        raise UsageError(f"{where}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    values = {}
    for key, raw in options.items():
        try:
            values[key] = coerce(raw, hints[key])
        except (TypeError, ValueError) as err:
            raise UsageError(f"{where}: option '{key}': {err}") from err
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{where}: {err}") from err


def normalize_keys(options: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``max-growth-bytes`` as well as ``max_growth_bytes``."""
    return {(k.replace("-", "_") if isinstance(k, str) else k): v for k, v in options.items()}


def coerce(value: Any, annotation: Any) -> Any:
    """Convert ``value`` to ``annotation`` (bool, int, float, str, Enum, tuple, dict, Optional)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError("; ".join(errors) or f"invalid value {value!r}")
    if annotation is Any:
        return value
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        try:
            return annotation(value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in annotation)
            raise ValueError(f"{value!r} is not one of: {valid}") from None
    if annotation is bool:
        return _to_bool(value)
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        items = _to_list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in items)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(items)}")
        return tuple(coerce(v, a) for v, a in zip(items, args))
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {value!r}")
        key_t, value_t = args if args else (Any, Any)
        return types.MappingProxyType({coerce(k, key_t): coerce(v, value_t) for k, v in value.items()})
    return value


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def _to_list(value: Any) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"expected a list, got {value!r}")
