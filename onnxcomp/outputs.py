"""Outputs never alias an input or each other.

A run reads a model (and its external-data files), data files and a recipe,
and writes a model (and its ``.data`` file), a report and a pruning plan. If
an output were one of the inputs, or two outputs the same file, the run would
destroy a user's file, possibly after succeeding. :func:`check_outputs_distinct`
refuses such a run before any work, comparing by resolved path and, for files
that exist, by inode (so hard links and symlinks count as the same file), and
checks that every output can be created where it is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OutputError

PathLike = str | os.PathLike


def check_outputs_distinct(
    inputs: Mapping[str, PathLike | Sequence[PathLike] | None], outputs: Mapping[str, PathLike | None]
) -> None:
    """Refuse outputs that are an input, another output, or cannot be created.

    Args:
        inputs: What the run reads, by label (e.g. ``"the calibration data
            (--calib)"``). A folder counts with every file in it. None values
            are skipped; a label may name several files.
        outputs: What the run writes, by label. None values are skipped.

    Raises:
        OutputError: One line naming both files: an output is the same file
            as an input (same resolved path or inode) or a file inside an input
            folder, two outputs are the same file, or an output is a folder or
            lies in a folder that does not exist or is not writable.
    """
    ins = [(label, Path(p)) for label, paths in inputs.items() for p in _paths(paths)]
    outs = {label: Path(p) for label, p in outputs.items() if p is not None}
    for label, path in outs.items():
        _check_creatable(label, path)
        for in_label, source in ins:
            if same_file(path, source):
                raise OutputError(f"{label} {path} is the same file as {in_label} {source}; choose another path")
            if _inside_folder(path, source):
                raise OutputError(f"{label} {path} would overwrite a file of {in_label} {source}; choose another path")
    labels = list(outs)
    for i, first in enumerate(labels):
        for second in labels[i + 1:]:
            if same_file(outs[first], outs[second]):
                raise OutputError(f"{first} and {second} are the same file {outs[first]}; give them different paths")


def _paths(value: PathLike | Sequence[PathLike] | None) -> list[PathLike]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: same inode when both exist, else same resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    return _resolved(a) == _resolved(b)


def _resolved(path: Path) -> str:
    try:
        return os.path.normcase(os.path.realpath(path))
    except (OSError, ValueError):
        return os.path.normcase(os.path.abspath(path))


def _inside_folder(path: Path, folder: Path) -> bool:
    """An existing file ``path`` under the input folder ``folder`` (a sample it would overwrite)."""
    if not folder.is_dir() or not path.exists():
        return False
    root = _resolved(folder)
    return _resolved(path).startswith(root.rstrip(os.sep) + os.sep)


def _check_creatable(label: str, path: Path) -> None:
    """The folder exists, is a folder and is writable, and ``path`` is not a folder."""
    if path.is_dir():
        raise OutputError(f"{label} {path}: is a folder, expected a file name")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise OutputError(f"{label} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise OutputError(f"{label} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{label} {path}: cannot write in {folder} (permission denied)")


def check_run_paths(
    model: Any,
    *,
    output: PathLike | None = None,
    data: Any = None,
    verify_data: Any = None,
    recipe: Any = None,
    reports: Mapping[str, PathLike | None] | None = None,
    overwrite_input: bool = False,
) -> None:
    """:func:`check_outputs_distinct` for one ``optimize`` run, before any work.

    Args:
        model: The input model: a path, or a loaded ModelProto (whose pinned
            external-data files count as inputs).
        output: The output model; its external-data file ``<output>.data``
            counts as an output too.
        data, verify_data: Data sources; only paths are files to protect.
        recipe: The pipeline argument; a path (see :func:`is_recipe_path`) is
            an input.
        reports: Further outputs by label (the CLI's ``--report`` and
            ``--prune-plan``).
        overwrite_input: The output may replace the input model (and its
            external-data file).

    Raises:
        OutputError: As :func:`check_outputs_distinct`; also when the output
            is the input model without ``overwrite_input``.
    """
    outputs: dict[str, PathLike | None] = dict(reports or {})
    inputs: dict[str, PathLike | Sequence[PathLike] | None] = {
        "the calibration data (--calib)": _as_path(data),
        "the verification data (--verify-data)": _as_path(verify_data),
        "the recipe (--recipe)": recipe if is_recipe_path(recipe) else None,
    }
    model_path = _as_path(model)
    if output is not None:
        output = Path(output)
        outputs["the output model (-o)"] = output
        outputs["the output's external-data file"] = output.with_name(f"{output.name}.data")
        if model_path is not None and same_file(output, model_path) and not overwrite_input:
            raise OutputError(
                f"{output}: refusing to overwrite the input model; choose another output (or pass --overwrite-input)"
            )
    if model_path is not None:
        inputs["the input model"] = model_path
        existing = [Path(p) for p in outputs.values() if p is not None]
        inputs["the input model's external data"] = _model_data_files(model_path, existing)
    elif model is not None:
        inputs["the input model's external data"] = _pinned_files(model)
    if output is not None and model_path is not None and overwrite_input and same_file(Path(output), model_path):
        # Replacing the input is what was asked for: its model and data files are the output's to replace.
        inputs = {k: v for k, v in inputs.items() if not k.startswith("the input model")}
    check_outputs_distinct(inputs, outputs)


def is_recipe_path(passes: Any) -> bool:
    """A pipeline argument that names a recipe file (as ``onnxcomp.optimize`` reads it)."""
    return isinstance(passes, os.PathLike) or isinstance(passes, str) and Path(passes).suffix.lower() in (".yaml", ".yml")


def _as_path(value: Any) -> Path | None:
    return Path(value) if isinstance(value, (str, os.PathLike)) else None


def _model_data_files(model: Path, outputs: list[Path]) -> list[Path]:
    """The external-data files of the model file ``model`` that some output could be.

    An output that does not exist yet cannot be one of them, so the model is
    parsed (without its weights) only when an output already exists as a file
    in the model's folder tree; an unreadable model is left for the loader to
    report.
    """
    import onnx

    from .model_io import drop_stray_locations, external_data_files

    folder = _resolved(model.parent if str(model.parent) else Path("."))
    candidates = [p for p in outputs if p.is_file() and _resolved(p).startswith(folder.rstrip(os.sep) + os.sep)]
    if not candidates or not model.is_file():
        return []
    try:
        proto = onnx.load(str(model), load_external_data=False)
        drop_stray_locations(proto)
        return external_data_files(proto, model.parent if str(model.parent) else Path("."), source=str(model))
    except Exception:  # noqa: BLE001 - a model that cannot be read fails in the loader, with its own message
        return []


def _pinned_files(model: Any) -> list[Path]:
    import onnx

    from .external_data import external_info, is_pinned
    from .model_io import iter_tensors

    if not isinstance(model, onnx.ModelProto):
        return []
    found: list[Path] = []
    for tensor in iter_tensors(model):
        if is_pinned(tensor):
            location = Path(external_info(tensor)["location"])
            if location not in found:
                found.append(location)
    return found
