"""Along-training probe: how close an algorithm's estimate stays to BP over an epoch of real MNIST.

Accuracy claims checked at initialisation say little about training: an O(lam) bias can grow with
the weights the estimate itself produces, and inference that converges on the first batch can stop
converging later. This trains one network with ``--algorithm`` (its hyper-parameters from
``--set key=value``, passed to ``pl_energy.build_algorithm``) and, in lockstep, a copy of the same
initialisation with textbook backprop (``F.cross_entropy(net(x), y).backward()``): batch 64, Adam
at ``--lr`` (constant), one seeded batch order, one epoch of the 50k training split (or
``--batches N``). Every ``--every`` batches (batch 0 included) the algorithm's estimate is compared
with its exact reference at the algorithm's weights on the same batch (``algorithm.reference``: BP
through the network for the PC family and Z-IL; for ep and chl, the gradient at their free
equilibrium by implicit differentiation), layer by layer (a layer is a top-level child of the
network, ``pl_energy.metrics.layer_agreement``):

    e_l = |u_l - r_l| / |r_l|,   worst-layer error = max_l e_l.

Recorded per probe: the global cosine and relative error, every layer's relative error and cosine,
the worst layer, each inference phase's steps / converged / settled flags (``estimate.inference``)
and, where the estimate reports one (``Estimate.error_bound``: per-layer dict or worst-layer
float), its own error bound. Recorded on every batch: inference steps, converged and settled flags
and the loss, so the fraction of converged batches is exact. Wall time covers the estimate and the
optimiser step of each run (the probe's reference and metrics are not timed); both runs alternate
batch by batch in one process, so they see the same machine load; ``torch.set_num_threads`` is
``--threads`` (1 by default). At the end both networks are scored on the 10k test images.

Writes ``benchmarks/results/probe_<network>_<algorithm>[_<tag>].json`` and ``.png`` (worst-layer
error and bound vs batch; inference steps vs batch) and prints a summary line: the largest
worst-layer error over probes, the fraction of converged batches, test accuracy against BP, the
time ratio to BP and, where a bound is reported, the fraction of probes with the true worst-layer
error <= 3x the bound.

    python benchmarks/probe_training.py --network mlp10_tanh --algorithm pc_nudge --every 75
    python benchmarks/probe_training.py --network mlp10_tanh --algorithm pc_nudge --set lam=0.001 --tag lam1e-3
    python benchmarks/probe_training.py --network vgg5 --algorithm pc_nudge --set centered=True --batches 200

Networks (``NETWORKS``): ``mlp10_tanh`` = ``mlp([784] + [128]*9 + [10], "tanh")``; ``seed_mlp`` =
Millidge et al. 2022's ``mlp([784, 128, 64, 10])`` (ReLU); ``vgg5`` = ``VGG(5)`` on 1x28x28 at
``--width`` (1/4 by default; ReLU, max-pooling); ``vgg5_avg`` the same with average pooling;
``resnet_nobn``, ``cnn``, ``smooth_cnn``, ``resmlp``: ``examples/deep_mnist.py``'s networks
(``resnet_nobn`` is ``examples/trajectory_agreement.py``'s ResNet without BatchNorm). For ``ep`` and
``chl`` (Hopfield energies need bounded units) the ReLU of ``seed_mlp``, ``vgg5`` and ``cnn`` is ``clip``; the
BP run trains the same network.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "examples"), str(REPO / "benchmarks")]  # from a checkout
from common import accuracy, clean, mnist, plt  # noqa: E402  (real MNIST, Agg backend)
from deep_mnist import network_for  # noqa: E402
from step_benchmark.measure import load_average  # noqa: E402

import pl_energy  # noqa: E402
from pl_energy.core.networks import VGG  # noqa: E402
from pl_energy.metrics import gradient_agreement, layer_agreement  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BATCH = 64
#: algorithms whose Hopfield energy needs bounded units: ReLU networks get ``clip`` instead
HOPFIELD = ("ep", "chl")
#: the bound is "held" on a probe when the true worst-layer error is at most this times the bound
BOUND_FACTOR = 3.0


@dataclass(frozen=True)
class Network:
    """A network of the probe: its builder (from the algorithm's name and ``--width``) and whether
    it takes 1x28x28 images (else flat 784-vectors)."""

    build: Callable[[str, float], nn.Module]
    images: bool


def _deep_mnist(kind: str, batch_norm: bool = True) -> Network:
    return Network(lambda algorithm, width: network_for(kind, "ep" if algorithm in HOPFIELD else algorithm, False,
                                                        "mupc", batch_norm=batch_norm), images=kind != "resmlp")


def _vgg5(pool: str) -> Network:
    return Network(lambda algorithm, width: VGG(5, in_shape=(1, 28, 28), width=width, pool=pool,
                                                activation="clip" if algorithm in HOPFIELD else "relu"), images=True)


NETWORKS: dict[str, Network] = {
    "mlp10_tanh": Network(lambda algorithm, width: pl_energy.mlp([784] + [128] * 9 + [10], activation="tanh"), False),
    "seed_mlp": Network(lambda algorithm, width: pl_energy.mlp(
        [784, 128, 64, 10], activation="clip" if algorithm in HOPFIELD else "relu"), False),
    "vgg5": _vgg5("max"),
    "vgg5_avg": _vgg5("avg"),
    "resnet_nobn": _deep_mnist("resnet", batch_norm=False),
    "cnn": _deep_mnist("cnn"),
    "smooth_cnn": _deep_mnist("smooth_cnn"),
    "resmlp": _deep_mnist("resmlp"),
}


def setting(text: str) -> tuple[str, Any]:
    """``key=value`` of ``--set``: the value as a Python literal (``1e-3``, ``True``, ``None``), else
    as a string (``auto``, ``error``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes key=value (e.g. lam=0.001), got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def reported_bound(estimate: pl_energy.Estimate) -> tuple[dict[str, float] | None, float | None]:
    """The estimate's own error bound (``Estimate.error_bound``, None where the algorithm does
    not compute one): (per-layer bounds, the worst layer's bound)."""
    if estimate.error_bound is None:
        return None, None
    return dict(estimate.error_bound), estimate.worst_error[1] if estimate.worst_error else None


def phases(estimate: pl_energy.Estimate) -> list[dict[str, Any]]:
    """Each inference phase's report, as JSON."""
    return [{"solver": report.solver, "steps": report.steps, "converged": report.converged,
             "settled": report.settled, "residual": report.residual, "backoffs": report.backoffs}
            for report in estimate.inference]


def probe(algorithm: pl_energy.Algorithm, network: nn.Module, x: torch.Tensor, y: torch.Tensor,
          estimate: pl_energy.Estimate, index: int) -> dict[str, Any]:
    """The estimate against BP's gradient at the same weights on the same batch."""
    reference = algorithm.reference(network, x, y)
    overall = gradient_agreement(estimate.gradients, reference)
    by_layer = layer_agreement(estimate.gradients, reference)
    bound_layers, bound = reported_bound(estimate)
    return {"batch": index, "cosine": overall["cosine"], "rel_error": overall["rel_error"],
            "layer_rel_error": {layer: m["rel_error"] for layer, m in by_layer.layers.items()},
            "layer_cosine": {layer: m["cosine"] for layer, m in by_layer.layers.items()},
            "worst_layer": by_layer.worst_layer, "worst_rel_error": by_layer.worst_rel_error,
            "inference": phases(estimate), "steps": sum(report.steps for report in estimate.inference),
            "converged": estimate.converged, "settled": any(report.settled for report in estimate.inference),
            "bound": bound, "bound_layers": bound_layers,
            "within_bound": None if bound is None else by_layer.worst_rel_error <= BOUND_FACTOR * bound}


def train(args: argparse.Namespace, hparams: dict[str, Any]) -> dict[str, Any]:
    """Both runs in lockstep, batch by batch; the probes; the test accuracies."""
    algorithm = pl_energy.build_algorithm(args.algorithm, **hparams)
    spec = NETWORKS[args.network]
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    if spec.images:
        train_x, test_x = train_x.reshape(-1, 1, 28, 28), test_x.reshape(-1, 1, 28, 28)
    if args.test_images is not None:
        test_x, test_y = test_x[:args.test_images], test_y[:args.test_images]
    torch.manual_seed(args.seed)
    network = spec.build(args.algorithm, args.width)
    bp_network = copy.deepcopy(network)  # the same initialisation
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    bp_optimizer = torch.optim.Adam(bp_network.parameters(), lr=args.lr)
    chunks = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed)).split(BATCH)
    chunks = chunks[:args.batches] if args.batches is not None else chunks
    batches: dict[str, list] = {"steps": [], "converged": [], "settled": [], "loss": [], "bp_loss": []}
    probes: list[dict[str, Any]] = []
    seconds = bp_seconds = 0.0
    diverged = None
    if args.compile:  # compiled once, untimed, on a copy (the same shapes; the last, partial batch compiles again)
        algorithm.compile_inference = {}
        algorithm.estimate(copy.deepcopy(network), train_x[chunks[0]], train_y[chunks[0]])
    load_before = load_average()
    for index, chunk in enumerate(chunks):
        x, y = train_x[chunk], train_y[chunk]
        start = time.perf_counter()
        try:
            estimate = algorithm.estimate(network, x, y)
        except pl_energy.DivergenceError as error:
            diverged = {"batch": index, "reason": str(error)}
        else:
            if not math.isfinite(float(estimate.loss)):
                diverged = {"batch": index, "reason": f"loss {float(estimate.loss)}"}
        seconds += time.perf_counter() - start
        if diverged is not None:  # no update applied by either run; the epoch stops here for both
            print(f"{args.algorithm}: diverged at batch {index} ({diverged['reason']}): training stopped", flush=True)
            break
        if index % args.every == 0:
            probes.append(probe(algorithm, network, x, y, estimate, index))
            row = probes[-1]
            print(f"batch {index}: worst layer {row['worst_layer']} {row['worst_rel_error']:.3g}, global cosine "
                  f"{row['cosine']:.5f}, {row['steps']} steps, converged {row['converged']}"
                  + (f", bound {row['bound']:.3g}" if row["bound"] is not None else ""), flush=True)
        start = time.perf_counter()
        for name, parameter in network.named_parameters():
            if name in estimate.gradients:
                parameter.grad = estimate.gradients[name]
        optimizer.step()
        seconds += time.perf_counter() - start

        start = time.perf_counter()
        bp_optimizer.zero_grad(set_to_none=True)
        bp_loss = F.cross_entropy(bp_network(x), y)
        bp_loss.backward()
        bp_optimizer.step()
        bp_seconds += time.perf_counter() - start

        batches["steps"].append(sum(report.steps for report in estimate.inference))
        batches["converged"].append(estimate.converged)
        batches["settled"].append(any(report.settled for report in estimate.inference))
        batches["loss"].append(float(estimate.loss))
        batches["bp_loss"].append(float(bp_loss.detach()))
    return {"batches": batches, "probes": probes, "seconds": seconds, "bp_seconds": bp_seconds,
            "diverged": diverged, "load_average": [load_before, load_average()],
            "hparams": algorithm.hparams(), "network_repr": repr(network),
            "test_accuracy": accuracy(algorithm, network, test_x, test_y),
            "bp_test_accuracy": accuracy(pl_energy.build_algorithm("bp"), bp_network, test_x, test_y)}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers the acceptance criteria of issue 24 read."""
    probes, batches = run["probes"], run["batches"]
    bounded = [row for row in probes if row["bound"] is not None]
    count = len(batches["converged"])
    return {
        "batches": count, "probes": len(probes),
        "max_worst_rel_error": max((row["worst_rel_error"] for row in probes), default=None),
        "converged_fraction": sum(batches["converged"]) / count if count else None,
        "settled_fraction": sum(batches["settled"]) / count if count else None,
        "median_steps": statistics.median(batches["steps"]) if count else None,
        "max_steps": max(batches["steps"], default=None),
        "test_accuracy": run["test_accuracy"], "bp_test_accuracy": run["bp_test_accuracy"],
        "time_ratio": run["seconds"] / run["bp_seconds"] if run["bp_seconds"] > 0 else None,
        "probes_with_bound": len(bounded),
        "bound_held_fraction": (sum(row["within_bound"] for row in bounded) / len(bounded)) if bounded else None,
    }


def summary_line(network: str, algorithm: str, summary: dict[str, Any], diverged: dict | None) -> str:
    def number(key: str, spec: str) -> str:
        return "n/a" if summary[key] is None else format(summary[key], spec)

    held = summary["bound_held_fraction"]
    bound = (f"true worst <= {BOUND_FACTOR:g}x bound on {held:.1%} of {summary['probes_with_bound']} probes"
             if held is not None else "no error bound reported")
    return (f"{network} {algorithm}: max worst-layer error {number('max_worst_rel_error', '.3g')} over "
            f"{summary['probes']} probes; converged on {number('converged_fraction', '.1%')} of {summary['batches']} "
            f"batches (median {number('median_steps', 'g')} steps); test accuracy {number('test_accuracy', '.2%')} "
            f"vs BP {number('bp_test_accuracy', '.2%')}; {number('time_ratio', '.2f')}x BP; {bound}"
            + (f"; DIVERGED at batch {diverged['batch']}" if diverged else ""))


def figure(run: dict[str, Any], title: str):
    fig, (errors, steps) = plt.subplots(1, 2, figsize=(11, 3.8))
    probes = run["probes"]
    at = [row["batch"] for row in probes]
    errors.plot(at, [row["worst_rel_error"] for row in probes], marker="o", label="worst layer vs BP")
    errors.plot(at, [row["rel_error"] for row in probes], marker=".", alpha=0.6, label="global vs BP")
    bounded = [row for row in probes if row["bound"] is not None]
    if bounded:
        errors.plot([row["batch"] for row in bounded], [row["bound"] for row in bounded], marker="x",
                    linestyle="--", label="reported bound (worst layer)")
    if any(row["worst_rel_error"] > 0 for row in probes):  # BP against itself: all zero, a linear axis
        errors.set_yscale("log")
    errors.set(xlabel="batch", ylabel="relative error", title="estimate vs BP at the same weights")
    errors.grid(alpha=0.3, which="both")
    errors.legend(fontsize=8)
    counts, converged = run["batches"]["steps"], run["batches"]["converged"]
    index = range(len(counts))
    steps.plot(index, counts, linewidth=0.6, color="0.6")
    failed = [i for i in index if not converged[i]]
    steps.scatter(failed, [counts[i] for i in failed], s=6, color="tab:red", label="not converged")
    steps.set(xlabel="batch", ylabel="inference steps (all phases)", title="inference per batch")
    steps.grid(alpha=0.3)
    if failed:
        steps.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithm", required=True, choices=tuple(pl_energy.ALGORITHMS))
    p.add_argument("--set", dest="settings", type=setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a hyper-parameter of the algorithm (repeatable), e.g. --set lam=0.001 --set centered=True")
    p.add_argument("--network", required=True, choices=tuple(NETWORKS))
    p.add_argument("--width", type=float, default=0.25, help="vgg5/vgg5_avg: the VGG width multiplier")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's (constant) learning rate")
    p.add_argument("--batches", type=int, default=None, help="train this many batches (default: one epoch, 782)")
    p.add_argument("--every", type=int, default=75, help="probe every N batches (batch 0 included)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--compile", action="store_true",
                   help="compile_inference={} (inductor: pc_nudge's estimate as one graph where it can)")
    p.add_argument("--seed", type=int, default=0, help="the initialisation's and the batch order's seed")
    p.add_argument("--test-images", type=int, default=None, help="score on the first N test images (default all)")
    p.add_argument("--data-dir", default=None, help="folder with MNIST/raw/*.gz (default $PL_ENERGY_DATA)")
    p.add_argument("--out", default=str(RESULTS), help="output folder of the JSON and the plot")
    p.add_argument("--tag", default=None, help="appended to the file names (e.g. lam1e-3)")
    args = p.parse_args(argv)
    for flag in ("every", "batches", "threads", "test_images"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    hparams = dict(args.settings)
    try:
        pl_energy.build_algorithm(args.algorithm, **hparams)
    except (TypeError, ValueError) as error:
        p.error(f"--set: {error}")
    args.hparams = hparams
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(args, args.hparams)
    raised: dict[str, dict[str, Any]] = {}
    for warning in caught:
        entry = raised.setdefault(warning.category.__name__, {"count": 0, "first": str(warning.message)})
        entry["count"] += 1
    for name, entry in raised.items():
        print(f"{name} x{entry['count']}: {entry['first']}", file=sys.stderr)
    summary = summarise(run)
    stem = f"probe_{args.network}_{args.algorithm}" + (f"_{args.tag}" if args.tag else "")
    result = {"setup": {"network": args.network, "algorithm": args.algorithm, "settings": args.hparams,
                        "lr": args.lr, "batch": BATCH, "optimizer": "Adam (constant)", "every": args.every,
                        "batches": args.batches, "threads": args.threads, "seed": args.seed, "width": args.width,
                        "test_images": args.test_images, "torch": torch.__version__,
                        "bound_factor": BOUND_FACTOR},
              "summary": summary, "warnings": raised, **run}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(clean(result), indent=1))
    fig = figure(run, f"{args.algorithm} {args.hparams or ''} on {args.network}: along training, vs BP")
    fig.savefig(out / f"{stem}.png", dpi=90)
    plt.close(fig)
    print(summary_line(args.network, args.algorithm, summary, run["diverged"]), flush=True)
    return result


if __name__ == "__main__":
    main()
