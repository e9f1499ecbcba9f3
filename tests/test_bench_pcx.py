"""Smoke tests of benchmarks/bench_pcx.py (pl_energy vs PCX side by side): tiny settings, no timing assertions.

The PCX side runs only where ``$PL_ENERGY_PCX_PYTHON`` names a Python with jax and pcx."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--rounds", "1", "--steps", "2", "--inner", "1", "--warmup", "0", "--cpu", "-1"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_pcx", REPO / "benchmarks" / "bench_pcx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def threads():
    before = torch.get_num_threads()  # the benchmark runs on one thread
    yield
    torch.set_num_threads(before)


def test_without_pcx_it_skips_with_one_line(bench, capsys):
    assert bench.main(["--pcx-python", str(REPO / "no-such-python")]) == 0
    assert capsys.readouterr().out.strip() == bench.SKIPPED


def test_torch_side_alone_prints_the_table_and_the_check(bench, capsys, threads):
    assert bench.main(["--torch-only", *TINY]) == 0
    out = capsys.readouterr().out
    table = next(line for line in out.splitlines() if line.startswith("| 2 |") and "x (" in line)
    assert [cell.strip() for cell in table.split("|")[5:7]] == ["-", "-"]  # the PCX columns stay empty
    check = next(line for line in out.splitlines() if line.startswith("| 2 |") and "x (" not in line)
    rounding, ours = (float(cell) for cell in check.split("|")[2:4])
    assert 0 < ours <= 10 * rounding  # pl_energy at T = 2 is float32 rounding away from the float64 loop
    assert "load averages" in out


def test_the_check_stops_on_a_different_computation(bench, threads):
    side = bench.TorchSide(bench.parse_args(["--torch-only", *TINY]))
    side.gradients = lambda steps: (side.float64_reference(steps + 1), [])  # one step too many
    with pytest.raises(SystemExit, match="differ beyond"):
        bench.check_equivalence(side, None, REPO, 10.0)


@pytest.mark.skipif(not os.environ.get("PL_ENERGY_PCX_PYTHON"), reason="PL_ENERGY_PCX_PYTHON not set")
def test_side_by_side_with_pcx(bench, capsys, threads):
    assert bench.main(TINY) == 0
    out = capsys.readouterr().out
    assert "pcx 0." in out
    table = next(line for line in out.splitlines() if line.startswith("| 2 |") and "x (" in line)
    assert "-" not in [cell.strip() for cell in table.split("|")]


def test_compiled_steps_get_their_own_table(bench, capsys, threads):
    assert bench.main(["--torch-only", "--compiled", *TINY]) == 0
    out = capsys.readouterr().out
    assert "| T | ours compiled / plain autograd |" in out
    row = [line for line in out.splitlines() if line.startswith("| 2 |")][1]  # the compiled table's row
    assert row.split("|")[4].strip() == "-" and "x (" in row.split("|")[2]  # no PCX time without PCX
