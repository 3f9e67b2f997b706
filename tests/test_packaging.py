"""Packaging: every package ships, and passes/ installs as onnxcomp.passes only."""

import pathlib
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"onnxcomp.passes"} | {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "onnxcomp").rglob("__init__.py")
    }
    assert found == listed, f"add {sorted(found - listed)} / remove {sorted(listed - found)}"


@pytest.mark.slow
def test_wheel_contains_all_modules_and_no_top_level_passes(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )
    import zipfile

    (wheel,) = tmp_path.glob("onnxcomp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(n.startswith("passes/") for n in names)
    for module in ROOT.glob("passes/*.py"):
        assert f"onnxcomp/passes/{module.name}" in names
    for module in (ROOT / "onnxcomp").rglob("*.py"):
        assert str(module.relative_to(ROOT)) in names, module
