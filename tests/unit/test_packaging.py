"""The package ships its PEP 561 marker, so users' type checkers read its annotations."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

import orchestrator_mp

REPO = Path(__file__).resolve().parents[2]


def test_the_imported_package_holds_py_typed():
    """The package directory Python imports holds py.typed."""
    assert importlib.resources.files(orchestrator_mp).joinpath("py.typed").is_file()


def test_a_build_of_the_package_holds_py_typed(tmp_path, monkeypatch):
    """setup.cfg's package data puts py.typed in the built package (what a wheel installs)."""
    dist_module = pytest.importorskip("setuptools.dist", reason="building needs setuptools")
    monkeypatch.chdir(REPO)  # setup.cfg's paths are relative to the project root
    dist = dist_module.Distribution({"script_name": "setup.py"})
    dist.parse_config_files(["setup.cfg"])
    build_py = dist.get_command_obj("build_py")
    build_py.build_lib = str(tmp_path)
    build_py.compile = False
    build_py.ensure_finalized()
    build_py.run()
    assert (tmp_path / "orchestrator_mp" / "py.typed").is_file()
    assert (tmp_path / "orchestrator_mp" / "state" / "base.py").is_file()
