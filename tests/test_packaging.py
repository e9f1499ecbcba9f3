"""Packaging: the dependency floors hold for what is installed and for what Lightning asks;
optional extras fail with the command that installs them."""

from __future__ import annotations

import importlib.metadata
import re


import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from lightning_helpers import REPO
from pl_energy import cli

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _floors(requirements) -> dict[str, Version]:
    floors = {}
    for text in requirements:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                floors[requirement.name.lower()] = Version(spec.version)
    return floors


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_every_floor_is_met_by_the_installed_version():
    for name, floor in _floors(PROJECT["dependencies"]).items():
        installed = Version(importlib.metadata.version(name))
        assert installed >= floor, (name, installed, floor)


def test_no_floor_is_below_what_lightning_itself_requires():
    ours = _floors(PROJECT["dependencies"])
    theirs = _floors(re.sub(r";.*", "", r) for r in importlib.metadata.requires("lightning") or [])
    for name, floor in ours.items():
        if name in theirs:
            assert floor >= theirs[name], f"{name}>={floor} is below Lightning's own {name}>={theirs[name]}"


def test_wandb_is_an_extra_and_its_absence_is_one_clear_line(monkeypatch, capsys):
    assert not any(Requirement(r).name == "wandb" for r in PROJECT["dependencies"])
    assert any(Requirement(r).name == "wandb" for r in PROJECT["optional-dependencies"]["wandb"])
    monkeypatch.setattr(cli, "wandb_installed", lambda: False)
    with pytest.raises(SystemExit):
        cli.make_cli(["--config", str(REPO / "configs" / "wandb.yaml")], run=False)
    assert "pip install 'pl-energy[wandb]'" in capsys.readouterr().err


def test_license_and_citation_are_there():
    assert "MIT License" in (REPO / "LICENSE").read_text()
    assert "cff-version" in (REPO / "CITATION.cff").read_text()
