"""The README as a newcomer reads it: its Python blocks run as written, its data lookup finds
MNIST where the main job put it."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

from data_fixtures import MNIST_FILES, REPO, shared_data_root


def test_every_python_block_of_the_readme_runs():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for block in blocks:
        torch.manual_seed(0)
        exec(compile(block, "README.md", "exec"), {})


def test_the_tests_find_mnist_where_the_main_job_puts_it(tmp_path, monkeypatch, mnist_root):
    """The CLI's default data dir is ./data; the tests look there too."""
    monkeypatch.delenv("PL_ENERGY_DATA", raising=False)
    monkeypatch.setattr("data_fixtures.REPO", tmp_path / "clone")  # no ../shared/data beside it
    monkeypatch.chdir(tmp_path)
    assert shared_data_root() is None
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_root / "MNIST" / "raw" / name, raw / name)
    assert shared_data_root() == tmp_path / "data"


def test_every_cli_line_of_the_readme_parses(capsys):
    """Each ``pl-energy ...`` line the README shows is a valid command (parsed, not run)."""
    import shlex

    from pl_energy.cli import make_cli

    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()
             if line.strip().startswith("pl-energy ") and "<" not in line]
    assert len(lines) >= 8
    for line in lines:
        words = shlex.split(line, comments=True)[1:]
        if words[0] not in ("fit", "validate", "test", "predict") or "--help" in words:
            continue
        with pytest.raises(SystemExit) as exit_:
            make_cli([*words, "--print_config"], run=True)
        assert exit_.value.code in (0, None), (line, capsys.readouterr().err[-500:])
