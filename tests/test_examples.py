"""Smoke tests of the figure scripts in examples/: each ``--quick`` run, in-process, into tmp_path.

Each checks a meaningful number of the JSON it writes. MNIST is decoded once (examples/common.py
caches it), so the whole file runs in well under a minute.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def run(mnist_root, tmp_path_factory):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))

    def _run(name: str, *extra: str, stem: str | None = None):
        out = tmp_path_factory.mktemp(name)
        module = importlib.import_module(name)
        returned = module.main(["--quick", "--out", str(out), "--data-dir", str(mnist_root), *extra])
        stem = stem or name
        written = json.loads((out / f"{stem}.json").read_text())
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert set(written) == set(returned)
        return written

    return _run


def test_fig2_inference(run):
    r = run("fig2_inference")
    change = r["A"]["first_step_change"]
    assert change["internal"] > 0 > change["total"]  # I rises from 0, E falls (Fig. 2A)
    assert r["A"]["internal"][0] == 0.0
    assert r["B"]["x2"]["mean"][0] < 1e-4  # x_{L-1}'s first move is BP's direction exactly
    assert r["B"]["x1"]["mean"][0] is None and r["B"]["x1"]["mean"][1] < 1e-3  # x_1 moves at t=2
    assert r["B"]["x2"]["mean"][-1] > 1e-2  # and drifts away later
    assert all(d > 0 for d in r["C"]["converged"][0]["gradient_distance"])


def test_fig3a_lambda(run):
    r = run("fig3a_lambda")
    converged = r["converged_one_sided"]["rel_error_mean"]
    assert converged[0] < 0.01 < converged[-1]  # error shrinks with lam (lams 1e-3, 1e-1)
    assert 0 < r["converged_tanh"]["centered"]["rel_error_mean"][0] < 1


def test_fig3bc_pc_nudge_training(run):
    r = run("fig3bc_pc_nudge_training")
    assert r["pc_nudge_step0.3"]["summary"]["cosine_mean"] > 0.99
    assert 0 < r["pc_nudge_step0.1"]["summary"]["rel_error_mean"] < 0.5
    assert len(r["bp"]["accuracy"]) == r["setup"]["batches"]


def test_ep_chl(run):
    r = run("ep_chl")
    ep = r["ep_one_sided"]["rel_error_mean"]
    assert ep[0] < ep[-1] and r["ep_one_sided"]["loglog_slope_small"] > 0.7  # O(beta)
    chl = r["chl_plain"]["rel_error_mean"]
    assert chl[0] < chl[-1]


def test_zil_divergence(run):
    r = run("zil_divergence")
    assert r["z_il"]["weight_divergence"]["max"] < 1e-10  # float64: exact BP
    assert r["fa_z_il"]["weight_divergence"]["max"] < 1e-10
    assert r["z_il"]["test_error_divergence"] == 0
    sweep = {row["sigma"]: row for row in r["sigma_sweep"]}
    assert sweep[0.0]["weight_divergence"]["max"] < 1e-10  # full-dynamics Alg. 2 == z_il
    assert sweep[1e-3]["weight_divergence"]["l1"] > 1e-6  # noise breaks C1


def test_zil_t_gamma(run):
    r = run("zil_t_gamma")
    row = r["lmax2"]["test_error"]["1.0"]
    t = r["lmax2"]["t"]
    assert abs(row[t.index("l")] - r["lmax2"]["bp_test_error"]) < 0.01  # Z-IL, gamma=1 == BP
    assert all(v is None or 0 <= v <= 1 for v in row)


def test_timing(run):
    r = run("timing")
    ratio = r["ratio_to_bp"]
    assert ratio["bp"] == 1.0 and all(math.isfinite(v) and v > 0 for v in ratio.values())
    assert ratio["il"] > ratio["z_il"]  # 20 inference steps cost more than one sweep


def test_ep_mnist(run):
    r = run("ep_mnist")
    for name in ("bp", "ep", "chl"):
        assert 0.0 <= r[name]["test_accuracy"] <= 1.0 and len(r[name]["val_accuracy"]) == 1
    assert r["ep"]["converged_fraction"] > 0.5 and r["ep"]["mean_inference_steps"] > 2


def test_ep_mnist_conv(run):
    r = run("ep_mnist", "--network", "conv", "--algorithms", "bp", "ep", stem="ep_mnist_conv")
    assert set(r) == {"setup", "bp", "ep"} and "Conv2d" in r["setup"]["network"]
    assert r["ep"]["converged_fraction"] > 0.5 and 0.0 <= r["ep"]["test_accuracy"] <= 1.0


def test_tutorial_runs_as_written(mnist_root, tmp_path):
    """The documentation's tutorial (docs/tutorial.md includes examples/tutorial.py), executed."""
    import subprocess

    done = subprocess.run([sys.executable, str(EXAMPLES / "tutorial.py"), "--quick", "--data-dir", str(mnist_root),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert_tutorial_output(done.stdout)


def assert_tutorial_output(out: str) -> None:
    """What examples/tutorial.py (and its notebook) prints where it works."""
    for name in ("bp", "z_il", "fa_z_il"):
        assert f"{name:9s} cosine with BP 1.000000" in out  # exact in float64
    pc_nudge = next(line for line in out.splitlines() if line.startswith("pc_nudge  cosine with BP"))
    assert float(pc_nudge.split()[4]) >= 0.99
    assert "outputs differ by 0.0" in out


def test_deep_mnist(run):
    r = run("deep_mnist")
    assert {"cnn/bp", "cnn/z_il", "cnn/pc_nudge", "cnn/pc", "cnn/ep", "resmlp/bp", "resmlp/pc_nudge"} <= set(r)
    assert "Residual" in r["setup"]["resmlp"] and "Conv2d" in r["setup"]["cnn"]
    # z_il is backprop: the same accuracy from the same start and order (float32 rounding aside)
    assert abs(r["cnn/z_il"]["test_accuracy"] - r["cnn/bp"]["test_accuracy"]) <= 0.01
    assert all(c > 0.99 for c in r["resmlp/z_il"]["reference_cosine"])
    # bp_clip is BP on ep's network (clip units)
    assert r["cnn/bp_clip"]["hparams"] == r["cnn/bp"]["hparams"]
    assert r["cnn/bp_clip"]["network"] == r["cnn/ep"]["network"] != r["cnn/bp"]["network"]
    assert "Clip" in r["cnn/bp_clip"]["network"] and "ReLU" in r["cnn/bp"]["network"]


def test_deep_mnist_resnet(run):
    r = run("deep_mnist", "--networks", "resnet", "--algorithms", "bp", "pc_nudge")
    assert set(r) == {"setup", "resnet/bp", "resnet/pc_nudge"} and "BatchNorm2d" in r["setup"]["resnet"]
    assert all(0 <= r[key]["test_accuracy"] <= 1 for key in ("resnet/bp", "resnet/pc_nudge"))
    assert min(r["resnet/pc_nudge"]["reference_cosine"]) > 0.99


def test_deep_mnist_refuses_a_run_that_none_of_its_networks_takes(run, capsys):
    with pytest.raises(SystemExit):  # argparse's error: a message on stderr, exit status 2
        run("deep_mnist", "--networks", "cnn", "--algorithms", "pc_nudge_centered")
    assert "pc_nudge_centered is run on resnet, not on cnn" in capsys.readouterr().err


def test_deep_mnist_resnet_centered(run):
    r = run("deep_mnist", "--networks", "resnet", "--no-batch-norm", "--algorithms", "pc_nudge_centered")
    assert set(r) == {"setup", "resnet/pc_nudge_centered"} and "BatchNorm2d" not in r["setup"]["resnet"]
    assert r["resnet/pc_nudge_centered"]["hparams"]["centered"] is True
    assert min(r["resnet/pc_nudge_centered"]["reference_cosine"]) > 0.99


def test_deep_mnist_smooth_cnn(run):
    r = run("deep_mnist", "--networks", "smooth_cnn", "--algorithms", "bp", "pc_nudge")
    assert set(r) == {"setup", "smooth_cnn/bp", "smooth_cnn/pc_nudge"}
    assert "AvgPool2d" in r["setup"]["smooth_cnn"] and "Tanh" in r["setup"]["smooth_cnn"]
    assert all(0 <= r[key]["test_accuracy"] <= 1 for key in ("smooth_cnn/bp", "smooth_cnn/pc_nudge"))
    # the smooth energy's point: inference converges (no settling on kinks)
    assert r["smooth_cnn/pc_nudge"]["converged_fraction"] == 1.0
    assert min(r["smooth_cnn/pc_nudge"]["reference_cosine"]) > 0.99


def test_trajectory_agreement(run):
    r = run("trajectory_agreement")
    assert set(r) == {"setup", "pc_nudge", "pc_nudge_centered", "along_bp", "pc_nudge_auto"}
    for name in ("pc_nudge", "pc_nudge_centered", "along_bp", "pc_nudge_auto"):
        assert r[name]["batch"] == [0, 2, 4] and all(-1 <= c <= 1 for c in r[name]["cosine"])
    assert r["pc_nudge_centered"]["hparams"]["centered"] is True
    assert r["pc_nudge"]["hparams"]["lam"] == 0.01 and r["pc_nudge_auto"]["hparams"]["lam"] == "auto"
    assert max(r["pc_nudge_auto"]["rel_error"]) < 1e-2  # the per-batch step
    # batch 0 is measured before any update, from one seed: the same network for both runs
    assert r["pc_nudge"]["cosine"][0] == r["along_bp"]["cosine"][0]
    assert min(r["pc_nudge"]["cosine"]) > 0.99 and min(r["pc_nudge_centered"]["cosine"]) > 0.99
