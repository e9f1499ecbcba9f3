"""The documentation site builds with warnings as errors (broken links, docstrings that do not
parse, missing pages), and the CLI lines it shows parse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_helpers import REPO
from pl_energy.cli import make_cli

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings")


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNING" not in done.stderr, done.stderr[-3000:]
    for page in ("index.html", "algorithms/pc_nudge/index.html", "api/index.html", "tutorial/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "EnergyModule" in api and "CIFAR10DataModule" in api
    tutorial = (tmp_path / "site" / "tutorial" / "index.html").read_text()
    assert "compare_on_one_batch" in tutorial  # the script is included, not a copy


def test_every_algorithm_has_a_page_in_the_navigation():
    import pl_energy

    config = (REPO / "mkdocs.yml").read_text()
    for name in pl_energy.ALGORITHMS:
        assert f"algorithms/{name}.md" in config and (REPO / "docs" / "algorithms" / f"{name}.md").is_file()


def test_the_cifar_cli_line_of_the_data_page_parses(tmp_path):
    cli = make_cli(["--data", "pl_energy.data.CIFAR10DataModule", "--data.data_dir", str(tmp_path),
                    "--model.sizes", "[3072, 10]", "--data.flatten", "true", "--trainer.logger", "false"], run=False)
    assert type(cli.datamodule).__name__ == "CIFAR10DataModule" and cli.datamodule.input_shape == (3072,)
    cli = make_cli(["--data", "pl_energy.data.CIFAR10DataModule", "--data.augment", "true",
                    "--data.data_dir", str(tmp_path), "--trainer.logger", "false"], run=False)
    assert cli.datamodule.augment is True

