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


def _imports(path, package: str) -> set[str]:
    """The absolute names of the modules a file of ``package`` imports (relative imports
    resolved; ``from .. import x`` gives ``<parent>.x``)."""
    import ast
    import importlib.util

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if node.module:
                names.add(module)
            else:
                names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


SHELL = ("pl_energy.module", "pl_energy.callbacks", "pl_energy.cli", "pl_energy.outputs",
         "pl_energy.configuration", "pl_energy.plotting")
OPTIONAL = ("lightning", "matplotlib", "wandb", "torchmetrics", "tensorboard", "torchvision")


@pytest.mark.parametrize("floor, forbidden", [
    ("core", OPTIONAL + SHELL + ("pl_energy.algorithms", "pl_energy.data", "pl_energy.metrics")),
    ("algorithms", OPTIONAL + SHELL + ("pl_energy.data",)),
    ("data", ("matplotlib", "wandb", "pl_energy.core", "pl_energy.algorithms", "pl_energy.metrics") + SHELL),
])
def test_the_layers_import_only_downwards(floor, forbidden):
    """docs/architecture.md's rules: the core and the algorithms are pure torch; data stands apart."""
    for path in sorted((REPO / "pl_energy" / floor).glob("*.py")):
        for name in _imports(path, f"pl_energy.{floor}"):
            assert not any(name == bad or name.startswith(bad + ".") for bad in forbidden), (path.name, name)


def test_importing_the_core_and_the_algorithms_loads_no_lightning_matplotlib_or_wandb():
    """The rule at run time: every module of the two floors imported in a fresh interpreter."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, pl_energy.core, pl_energy.algorithms\n"
            "for package in (pl_energy.core, pl_energy.algorithms):\n"
            "    for info in pkgutil.iter_modules(package.__path__):\n"
            "        importlib.import_module(f'{package.__name__}.{info.name}')\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'matplotlib', 'wandb', "
            "'torchmetrics', 'torchvision'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
