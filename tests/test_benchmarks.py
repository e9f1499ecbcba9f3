"""Smoke tests of the benchmarks (bench_step.py, bench_convergence.py, pc_fused_reference.py (both yardsticks), bench_overhead.py,
probe_training.py, tf32_emulated.py): tiny settings, no timing assertions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_step", REPO / "benchmarks" / "bench_step.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module
    spec.loader.exec_module(module)
    return module


def variant(bench, key):
    return next(v for v in bench.VARIANTS if v.key == key)


def test_layer_macs_by_hand(bench):
    # mlp([4, 3, 2]), batch 1: F_1 = 4*3 = 12, F_2 = 3*2 = 6
    assert bench.layer_macs(bench.mlp([4, 3, 2]), torch.zeros(1, 4)) == [12, 6]
    assert bench.layer_macs(bench.mlp([4, 3, 2]), torch.zeros(5, 4)) == [60, 30]
    # the CNN of case (c), per sample: conv1 8*24*24 outputs * 1*25, conv2 16*8*8 * 8*25,
    # fc 256*64, fc 64*10
    assert bench.layer_macs(bench.cnn(), torch.zeros(1, 1, 28, 28)) == [115200, 204800, 16384, 640]


def test_mac_bounds_by_hand(bench):
    macs = [12, 6]  # mlp([4, 3, 2]), batch 1: S = 18, S2 = 6
    bp = 18 + 6 + 18  # forward + input-VJP of layer 2 + weight grads
    assert bench.bound_macs(variant(bench, "bp_textbook"), macs) == bp == 42
    assert bench.bound_macs(variant(bench, "bp"), macs) == bp
    assert bench.bound_macs(variant(bench, "z_il"), macs) == bp
    # fa_z_il by default computes z_il's arithmetic (full_dynamics=False): BP's bound; with full
    # dynamics, forward + (depth - 1) = 1 step of (forward + input-VJP of layer 2) + weight grads
    assert bench.bound_macs(variant(bench, "fa_z_il"), macs) == bp
    full = bench.Variant("fa_z_il_full", "fa_z_il", {"full_dynamics": True})
    assert bench.bound_macs(full, macs) == 18 + 1 * 12 + 18
    # the settings are the built algorithm's: pc's default cap of 100 steps, ep centered by default
    assert bench.bound_macs(bench.Variant("pc_default", "pc"), macs) == 18 + 100 * 12 + 6 + 18
    assert bench.bound_macs(bench.Variant("ep_default", "ep", {"solver": "gd", "steps": 50, "tol": None}),
                            macs) == 18 + (50 + 2 * 50) * 12 + 2 * 18
    # pc, pc_nudge at T = 50: forward + 50 * (6 + 6) + final residual (6) + weight grads
    assert bench.bound_macs(variant(bench, "pc"), macs) == 18 + 50 * 12 + 6 + 18 == 642
    assert bench.bound_macs(variant(bench, "pc_nudge"), macs) == 642
    assert bench.bound_macs(variant(bench, "pc_nudge_converged"), macs, steps=2) == 18 + 2 * 12 + 6 + 18
    # ep: forward + (50 free + 50 nudged) * (drive of layer 2 + feedback into layer 1) + 2 grads
    assert bench.bound_macs(variant(bench, "ep"), macs) == 18 + 100 * (6 + 6) + 2 * 18 == 1254
    # chl: the clamped phase drives nothing (layer 2 is the clamped output), feedback only
    assert bench.bound_macs(variant(bench, "chl"), macs) == 18 + 50 * 12 + 50 * 6 + 36 == 954


def test_worked_checks_from_the_issue(bench):
    a = bench.layer_macs(bench.mlp([784, 128, 64, 10]), torch.zeros(1, 784))
    bp = bench.bound_macs(variant(bench, "bp_textbook"), a)
    assert bench.bound_macs(variant(bench, "pc_nudge"), a) / bp == pytest.approx(4.89, abs=0.01)
    b = [50176 * 4096, 4096 * 2048, 2048 * 1024, 1024 * 27]  # no need to build the 0.8 GB net
    bp = bench.bound_macs(variant(bench, "bp_textbook"), b)
    assert bench.bound_macs(variant(bench, "pc"), b) / bp == pytest.approx(3.37, abs=0.01)
    assert bench.bound_macs(variant(bench, "z_il"), b) / bp == 1.0


def test_quick_run_has_every_algorithm(bench, tmp_path, capsys):
    output = tmp_path / "RESULTS.md"
    results = bench.main(["--quick", "--output", str(output)])
    assert set(results) == set("abcdef")
    expected = [v.key for v in bench.VARIANTS]
    for key, result in results.items():
        rows = {row["key"]: row for row in result["rows"]}
        assert list(rows) == expected
        for name, row in rows.items():
            if key == "e" and name in ("ep", "chl"):  # residual blocks are not Hopfield couplings
                assert row["na"].startswith("n/a")
                continue
            assert row["n"] == 2 and row["ms"] > 0 and row["bound"] >= 1.0
        assert rows["bp_textbook"]["ratio"] == pytest.approx(1.0)
        assert rows["pc_nudge_converged"]["steps"] is not None
        agreement = {row["key"]: row for row in result["agreement"]}
        assert agreement["z_il"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    text = output.read_text()
    printed = capsys.readouterr().out
    for name in expected:
        assert f"| {name} |" in text and f"| {name} |" in printed
    for key in "abcdef":
        assert f"<!-- case {key} start -->" in text

    # re-running one case replaces only its section
    before = text.split("<!-- case b start -->")[1]
    bench.main(["--quick", "--case", "a", "--output", str(output), "--no-memory", "--no-agreement"])
    after = output.read_text()
    assert after.split("<!-- case b start -->")[1] == before
    assert after.count("<!-- case a start -->") == 1


def test_convergence_benchmark_quick_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_convergence",
                                                  REPO / "benchmarks" / "bench_convergence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "RESULTS.md"
    output.write_text("# Step-time benchmark\n\n<!-- notes start -->\nnotes\n<!-- notes end -->\n")
    rows = module.main(["--quick", "--output", str(output)])
    assert {row["algorithm"] for row in rows} == {"pc_nudge", "pc"}
    for row in rows:
        assert set(row["curves"]) == set(module.SOLVERS)
        assert row["curves"]["error"][0] == pytest.approx(1.0)  # the free state: no update yet
        assert row["needed"]["error"] is not None and row["default_error"] < 1e-3
    text = output.read_text()
    assert text.count("<!-- convergence start -->") == 1 and "notes" in text
    assert (tmp_path / "convergence.png").is_file()
    module.main(["--quick", "--output", str(output)])  # a re-run replaces its own section
    assert output.read_text().count("<!-- convergence start -->") == 1
    text = output.read_text()
    free = module.main(["--quick", "--hopfield-only", "--output", str(output)])  # only the EP/CHL table
    assert {row["activation"] for row in free} == {"relu", "clip"}
    assert all(steps is not None for row in free for steps in row["steps"].values())
    again = output.read_text()
    assert again.count(module.HOPFIELD_INTRO) == 1 and again.split(module.HOPFIELD_INTRO)[0] == text.split(module.HOPFIELD_INTRO)[0]


def test_fused_reference_runs_and_agrees_with_the_library(capsys):
    """benchmarks/pc_fused_reference.py: its hand-fused PC loop, written from the equations,
    computes the library's pc_nudge update (float32 rounding over 50 steps)."""
    spec = importlib.util.spec_from_file_location("pc_fused_reference",
                                                  REPO / "benchmarks" / "pc_fused_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--repeats", "1"]) < 1e-3
    assert "x BP" in capsys.readouterr().out


def test_default_estimate_written_out_agrees_with_the_library(capsys):
    """benchmarks/pc_fused_reference.py --default: the default pc_nudge estimate written out by
    hand with the library's verifications computes the library's update (float32 rounding), lam
    and error bound, and reports both against the MAC bound."""
    spec = importlib.util.spec_from_file_location("pc_fused_reference",
                                                  REPO / "benchmarks" / "pc_fused_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--default", "--repeats", "1"]) < 1e-5
    out = capsys.readouterr().out
    assert "written out, eager" in out and "the MAC bound" in out


def test_overhead_benchmark_times_every_variant_beside_a_revision(capsys):
    """benchmarks/bench_overhead.py: every variant, the package at a git revision beside the
    working tree, and pc_nudge's MAC bound (3 S + 3 S2) / (2 S + S2) counted by hand."""
    spec = importlib.util.spec_from_file_location("bench_overhead", REPO / "benchmarks" / "bench_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rounds", "2", "--inner", "1", "--warmup", "1", "--before", "HEAD"])
    out = capsys.readouterr().out
    for key in ("bp_autograd", "bp_step", "\nbp ", "\npc_nudge ", "pc_nudge_step", "before bp ", "before pc_nudge_step"):
        assert key in out, key
    full, above_first = 784 * 128 + 128 * 64 + 64 * 10, 128 * 64 + 64 * 10  # per sample
    assert f"MAC bound {(3 * full + 3 * above_first) / (2 * full + above_first):.3f}x" in out


def test_overhead_benchmark_times_hopfield_algorithms_on_clip_units(capsys):
    """``--units clip --algorithms chl ep``: the Hopfield algorithms' estimates and steps."""
    spec = importlib.util.spec_from_file_location("bench_overhead", REPO / "benchmarks" / "bench_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--rounds", "2", "--inner", "1", "--warmup", "1", "--units", "clip", "--algorithms", "chl", "ep"])
    out = capsys.readouterr().out
    for key in ("clip units", "\nchl ", "chl_step", "\nep ", "ep_step"):
        assert key in out, key
    assert "its MAC bound" not in out


def test_compiled_run_keeps_its_own_section(bench, tmp_path):
    """``--compile`` times compiled layers (the eager backend here: no C++ toolchain needed) and
    writes a section beside the eager one instead of over it."""
    output = tmp_path / "RESULTS.md"
    plain = bench.main(["--quick", "--case", "c", "--output", str(output), "--no-memory", "--no-agreement",
                        "--variants", "bp", "pc_nudge_converged"])
    eager = output.read_text().split("<!-- case c start -->")[1].split("<!-- case c end -->")[0]
    results = bench.main(["--quick", "--case", "c", "--output", str(output), "--no-memory", "--no-agreement",
                          "--variants", "bp", "pc_nudge_converged", "--compile", "eager"])
    assert results["c"]["compiled"] == {"backend": "eager"} and plain["c"]["compiled"] is None
    assert results["c"]["macs"] == plain["c"]["macs"]  # the MAC bound counts the same layers
    text = output.read_text()
    assert text.split("<!-- case c start -->")[1].split("<!-- case c end -->")[0] == eager
    compiled = text.split("<!-- case c-compiled-eager start -->")[1].split("<!-- case c-compiled-eager end -->")[0]
    assert "(cpu, layers and inference compiled: backend=eager)" in compiled and "| pc_nudge_converged |" in compiled
    with pytest.raises(SystemExit, match="needs --compile"):
        bench.main(["--quick", "--case", "c", "--compile-mode", "reduce-overhead", "--no-write"])


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh, the prepared device run, end to end on the CPU (tiny networks,
    case f, AOTAutograd instead of inductor): it writes the eager and the compiled sections into
    $OUT's copy of RESULTS.md and leaves the repository's untouched; a failing step makes it
    exit non-zero and say which."""
    import os
    import subprocess

    script = REPO / "benchmarks" / "gpu_check.sh"
    before = (REPO / "benchmarks" / "RESULTS.md").read_text()
    env = {**os.environ, "OUT": str(tmp_path / "ok"), "DEVICE": "cpu", "QUICK": "1", "CASES": "f",
           "COMPILE_BACKEND": "aot_eager", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    written = (tmp_path / "ok" / "RESULTS.md").read_text()
    for key in ("f", "f-compiled-aot_eager"):
        block = written.split(f"<!-- case {key} start -->")[1].split(f"<!-- case {key} end -->")[0]
        assert "quick: VGG-5" in block and "| pc_nudge_converged |" in block  # this run's, not the copy's
    assert "layers and inference compiled: backend=aot_eager" in written
    assert "gpu_check done" in (tmp_path / "ok" / "log.txt").read_text()
    assert (REPO / "benchmarks" / "RESULTS.md").read_text() == before

    env.update(OUT=str(tmp_path / "failing"), CASES="z")  # no such case: both benchmark steps fail
    failed = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode == 1 and "gpu_check: 2 step(s) failed" in failed.stdout
    assert "gpu_check: FAILED (exit 2)" in (tmp_path / "failing" / "log.txt").read_text()


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_training", REPO / "benchmarks" / "probe_training.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["probe_training"] = module  # its dataclass resolves its annotations there
    spec.loader.exec_module(module)
    return module


def _probe_run(probe, tmp_path, *args):
    return probe.main(["--batches", "3", "--every", "1", "--test-images", "200", "--out", str(tmp_path), *args])


def test_probe_training_records_every_probe_and_batch(probe, tmp_path, capsys):
    """benchmarks/probe_training.py on 3 batches of real MNIST, a probe on each: the JSON's fields,
    finite per-layer errors, PC-Nudge at lam 1e-3 within 5% of BP in every layer at init, and its
    reported bound equal to the error the probe measures."""
    import json
    import math

    result = _probe_run(probe, tmp_path, "--network", "mlp10_tanh", "--algorithm", "pc_nudge", "--set", "lam=1e-3",
                        "--tag", "smoke")
    written = json.loads((tmp_path / "probe_mlp10_tanh_pc_nudge_smoke.json").read_text())
    assert (tmp_path / "probe_mlp10_tanh_pc_nudge_smoke.png").is_file()
    assert written["setup"]["settings"] == {"lam": 1e-3} and written["hparams"]["lam"] == 1e-3
    assert [row["batch"] for row in written["probes"]] == [0, 1, 2]
    for row in written["probes"]:
        assert set(row["layer_rel_error"]) == {str(layer) for layer in range(10)}
        assert all(math.isfinite(value) for value in row["layer_rel_error"].values())
        assert row["worst_rel_error"] == max(row["layer_rel_error"].values())
        assert row["layer_rel_error"][row["worst_layer"]] == row["worst_rel_error"]
        assert row["steps"] == sum(phase["steps"] for phase in row["inference"]) >= 0  # 0: the first-order start
        # pc_nudge's bound is its distance from BP's gradient, which the probe measures by autograd
        assert row["bound"] == pytest.approx(row["worst_rel_error"], rel=1e-3) and row["within_bound"]
    assert written["probes"][0]["worst_rel_error"] < 0.05
    for key in ("steps", "converged", "settled", "loss", "bp_loss"):
        assert len(written["batches"][key]) == 3
    summary = written["summary"]
    assert summary["batches"] == 3 and summary["probes"] == 3
    assert summary["converged_fraction"] == sum(written["batches"]["converged"]) / 3
    assert summary["max_worst_rel_error"] == max(row["worst_rel_error"] for row in written["probes"])
    assert summary["time_ratio"] > 0 and 0 <= summary["test_accuracy"] <= 1 and summary["bound_held_fraction"] == 1.0
    assert result["summary"] == summary
    assert "max worst-layer error" in capsys.readouterr().out


def test_probe_training_bp_against_textbook_bp(probe, tmp_path):
    """The library's BP trained in lockstep with textbook BP from the same initialisation on the
    same batches: the same losses and test accuracy, no error, no inference."""
    result = _probe_run(probe, tmp_path, "--network", "seed_mlp", "--algorithm", "bp")
    assert result["batches"]["loss"] == pytest.approx(result["batches"]["bp_loss"], rel=1e-6)
    assert result["test_accuracy"] == result["bp_test_accuracy"]
    assert all(row["worst_rel_error"] < 1e-6 and row["steps"] == 0 and row["converged"] for row in result["probes"])
    assert result["summary"]["converged_fraction"] == 1.0


def test_probe_training_scores_a_reported_bound(probe, tmp_path, monkeypatch):
    """Where the estimate reports an error bound, each probe's true worst-layer error is scored
    against 3x it: a bound far below the error never holds, one far above always does."""
    bound = {"value": 1e-30}
    monkeypatch.setattr(probe, "reported_bound", lambda estimate: ({"0": bound["value"]}, bound["value"]))
    args = ("--network", "seed_mlp", "--algorithm", "pc_nudge", "--set", "lam=1e-3")
    result = _probe_run(probe, tmp_path, *args)
    assert all(row["worst_rel_error"] > 1e-20 for row in result["probes"])
    assert result["summary"]["bound_held_fraction"] == 0.0 and result["summary"]["probes_with_bound"] == 3
    assert [row["bound_layers"] for row in result["probes"]] == [{"0": 1e-30}] * 3
    bound["value"] = 10.0
    assert _probe_run(probe, tmp_path, *args)["summary"]["bound_held_fraction"] == 1.0


def test_probe_training_reads_the_estimates_bound_and_refuses_bad_settings(probe):
    from pl_energy import Estimate

    zero = torch.zeros(())
    assert probe.reported_bound(Estimate({}, zero, zero)) == (None, None)
    assert probe.reported_bound(Estimate({}, zero, zero, error_bound={"0": 0.01, "1": 0.03})) == (
        {"0": 0.01, "1": 0.03}, 0.03)
    assert probe.setting("lam=1e-3") == ("lam", 1e-3) and probe.setting("lam=auto") == ("lam", "auto")
    assert probe.setting("centered=True") == ("centered", True)
    with pytest.raises(SystemExit):
        probe.main(["--network", "seed_mlp", "--algorithm", "pc_nudge", "--set", "no_such_setting=1"])
    with pytest.raises(SystemExit):
        probe.main(["--network", "seed_mlp", "--algorithm", "pc_nudge", "--set", "lam"])


def test_probe_training_stops_and_says_so_when_the_algorithm_diverges(probe, tmp_path, monkeypatch, capsys):
    import pl_energy

    cls = type(pl_energy.build_algorithm("pc_nudge"))
    original, calls = cls.estimate, []

    def diverging(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise pl_energy.DivergenceError("the energy rose")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "estimate", diverging)
    result = _probe_run(probe, tmp_path, "--network", "seed_mlp", "--algorithm", "pc_nudge")
    assert result["diverged"] == {"batch": 1, "reason": "the energy rose"}
    assert len(result["batches"]["loss"]) == len(result["batches"]["bp_loss"]) == 1  # both stopped there
    assert [row["batch"] for row in result["probes"]] == [0]
    assert "DIVERGED at batch 1" in capsys.readouterr().out


def test_tf32_emulation_benchmark_quick_run(capsys):
    """benchmarks/tf32_emulated.py on tiny networks: a line per algorithm, with the move in TF32
    epsilons for ep and the distance from bp for the exact ones."""
    spec = importlib.util.spec_from_file_location("tf32_emulated", REPO / "benchmarks" / "tf32_emulated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick"])
    out = capsys.readouterr().out
    assert out.count("TF32 vs IEEE") == 3
    assert "TF32 epsilons over h" in out and "vs bp, both TF32" in out
