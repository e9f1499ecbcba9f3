"""Convergence of inference: error against steps and wall time, per solver, depth and algorithm.

    python benchmarks/bench_convergence.py            # every case, into benchmarks/RESULTS.md
    python benchmarks/bench_convergence.py --quick    # tiny networks (the smoke test)

For each network (tanh MLPs of depth 3, 6, 10, 20, width 128; Millidge et al. 2022's ReLU MLP; a VGG-5),
each algorithm (pc_nudge, pc) and each solver, inference runs from the free state on one real
MNIST batch of 64 and every step is scored by the worst layer's relative error of the weight
update against the update at the converged equilibrium:

    error_t = max_l ||g_l(x_t) - g_l(x*)|| / ||g_l(x*)||,   g_l = (1/lam) dE/dW_l,

where x* is found by the error solver at a tolerance of 1e-10 (1e-6 in float32). The steps a
solver needs to reach 1e-3 are then timed as a whole estimate (``alg.estimate``), interleaved with
textbook backprop, one thread; the ratio is the median over rounds of t / t_BP. The default
(``solver="error"``, ``tol=1e-4``) is timed as it runs, with the error it reaches.

On ReLU networks the equilibrium puts some units on their kink, where the weight update is
defined only up to the kink's slope; there x* is the error solver's settled state, and errors
below the few-percent level compare states at the same kink (see the notes in RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # from a checkout
from step_benchmark import cases as bench_cases  # noqa: E402  (MNIST loading)
from step_benchmark.measure import load_average  # noqa: E402
from step_benchmark.report import CODE_VERSION, machine  # noqa: E402
from pl_energy import build_algorithm, mlp  # noqa: E402
from pl_energy.core import relax  # noqa: E402
from pl_energy.core.losses import as_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
PLOT = REPO / "benchmarks" / "convergence.png"
TARGET = 1e-3
SOLVERS = {  # label -> (solver, step_size)
    "gd 0.1": ("gd", 0.1),
    "gd 0.5": ("gd", 0.5),
    "nesterov 0.1": ("nesterov", 0.1),
    "error": ("error", None),
}
ALGORITHMS = ("pc_nudge", "pc")  # each at its own defaults (lam, tol, cap) unless a run sets them


def vgg5(channels=(32, 64, 128, 128)) -> nn.Sequential:
    """Four blocks of 3x3 conv (padding 1), ReLU, 2x2 max-pool, then a linear classifier (the PC
    benchmarks' VGG-5 of Pinchetti et al. 2024), for 1x28x28 inputs."""
    blocks, previous, size = [], 1, 28
    for width in channels:
        blocks.append(nn.Sequential(nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
        previous, size = width, size // 2
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(previous * size * size, 10)))
    return nn.Sequential(*blocks)


def cases(quick: bool) -> dict[str, dict]:
    if quick:
        return {f"tanh depth {d}": dict(build=lambda d=d: mlp([784] + [16] * (d - 1) + [10], "tanh"),
                                        dtype=torch.float64, shape=(784,), cap=60) for d in (3, 6)}
    found = {f"tanh depth {d}": dict(build=lambda d=d: mlp([784] + [128] * (d - 1) + [10], "tanh"),
                                     dtype=torch.float64, shape=(784,), cap=3000) for d in (3, 6, 10, 20)}
    found["Millidge et al. 2022 MLP (ReLU)"] = dict(build=lambda: mlp([784, 128, 64, 10]), dtype=torch.float64,
                                    shape=(784,), cap=1500)
    found["VGG-5 32-64-128-128 (ReLU)"] = dict(build=vgg5, dtype=torch.float32, shape=(1, 28, 28), cap=300,
                                               rounds=5)
    return found


def worst_layer_error(energy, state, reference, lam) -> float:
    grads = energy.parameter_gradients(state, scale=1 / lam)
    return max(float((g[0] - r[0]).norm() / r[0].norm()) for g, r in zip(grads, reference))


def curve(network, x, y, algorithm: str, solver: str, step_size, cap: int, reference) -> list[float]:
    """error_t for t = 0..cap (shorter when the solver diverges or reaches 1e-7)."""
    alg = build_algorithm(algorithm, solver=solver, step_size=step_size, tol=None, steps=cap)
    energy, state, lam = nudged_free_state(alg, network, x, y)
    errors: list[float] = []

    class Done(Exception):
        pass

    def watch(step, current):
        errors.append(worst_layer_error(energy, current, reference, lam))
        if errors[-1] < 1e-7:
            raise Done

    try:
        relax(energy, state, cap, step_size, solver=solver, on_step=watch)
    except Done:
        pass
    except FloatingPointError:
        errors.append(float("inf"))
    return errors


def nudged_free_state(alg, network, x, y):
    """(energy, the free state nudged by the algorithm's lam for this batch, lam)."""
    energy = alg.energy(network, as_loss("cross_entropy"))
    free = energy.free_state(x, y)
    lam = alg.nudge_strength(energy, free, energy.first_order_response(free))
    return energy, energy.nudged(free, lam), lam


def converged_reference(network, x, y, algorithm: str, dtype: torch.dtype):
    energy, state, lam = nudged_free_state(build_algorithm(algorithm), network, x, y)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    report = relax(energy, state, 2000, tol=tol, solver="error").report
    return energy.parameter_gradients(state, scale=1 / lam), report


def timed_ratios(network, x, y, runs: dict[str, dict], rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of t(run) / t(textbook BP)."""
    def bp():
        network.zero_grad(set_to_none=True)
        F.cross_entropy(network(x), y).backward()

    calls = {"bp": bp}
    for key, settings in runs.items():
        algorithm = build_algorithm(**settings)
        calls[key] = lambda algorithm=algorithm: algorithm.estimate(network, x, y)
    for call in calls.values():
        call()
    ratios = {key: [] for key in runs}
    for _ in range(rounds):
        times = {}
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            times[key] = time.perf_counter() - start
        for key in runs:
            ratios[key].append(times[key] / times["bp"])
    network.zero_grad(set_to_none=True)
    return {key: statistics.median(values) for key, values in ratios.items()}


def first_below(errors: list[float], target: float) -> int | None:
    return next((step for step, error in enumerate(errors) if error <= target), None)


def run(quick: bool, rounds: int) -> list[dict]:
    warnings.simplefilter("ignore")
    root = bench_cases.data_root()
    rows = []
    for name, case in cases(quick).items():
        spec = bench_cases.Case("conv", name, case["build"], 64, case["shape"], 10, "mnist", 1, 0)
        x, y = (bench_cases.mnist_batches(spec, 1, root)[0] if root is not None
                else bench_cases.random_batches(spec, 1)[0])
        torch.manual_seed(0)
        network = case["build"]().to(case["dtype"])
        x = x.to(case["dtype"])
        for algorithm in ALGORITHMS:
            reference, report = converged_reference(network, x, y, algorithm, case["dtype"])
            curves = {label: curve(network, x, y, algorithm, solver, step, case["cap"], reference)
                      for label, (solver, step) in SOLVERS.items()}
            needed = {label: first_below(errors, TARGET) for label, errors in curves.items()}
            runs = {label: dict(name=algorithm, solver=solver, step_size=step, tol=None, steps=needed[label])
                    for label, (solver, step) in SOLVERS.items() if needed[label] is not None}
            runs["default"] = dict(name=algorithm)
            ratios = timed_ratios(network, x, y, runs, case.get("rounds", rounds))
            defaults = build_algorithm(algorithm)
            default = defaults.estimate(network, x, y)
            # the default's relaxed state, as the algorithm relaxes it (its own settings and start)
            run = defaults.phases(network, x, y, as_loss("cross_entropy"), False)
            rows.append(dict(case=name, algorithm=algorithm, curves=curves, needed=needed, ratios=ratios,
                             default_steps=default.inference[0].steps,
                             default_error=worst_layer_error(run.high.energy, run.high.state, reference, run.nudge),
                             reference_residual=report.residual))
            print(f"{name} {algorithm}: " + ", ".join(
                f"{label} {needed[label]} steps {ratios.get(label, float('nan')):.2f}x" for label in SOLVERS)
                + f", default {default.inference[0].steps} steps {ratios['default']:.2f}x", flush=True)
    return rows


HOPFIELD_SOLVERS = {"gd 0.5 (the issue's baseline)": ("gd", 0.5), "gd 1.0": ("gd", 1.0),
                    "nesterov 0.5": ("nesterov", 0.5), "sweep 1.0": ("sweep", 1.0),
                    "sweep 1.3 (SOR, the ep/chl default)": ("sweep", 1.3)}


def hopfield_free_phases(quick: bool, rounds: int) -> list[dict]:
    """The EP/CHL free phase of Millidge et al. 2022's MLP (ReLU and clip units, float64) to a relative
    residual of 1e-6: steps and time per solver, timed in interleaved rounds."""
    from pl_energy.core import HopfieldEnergy

    root = bench_cases.data_root()
    sizes = [784, 16, 10] if quick else [784, 128, 64, 10]
    spec = bench_cases.Case("free", "free", lambda: None, 64, (784,), 10, "mnist", 1, 0)
    x, y = bench_cases.mnist_batches(spec, 1, root)[0] if root is not None else bench_cases.random_batches(spec, 1)[0]
    x = x.double()
    rows = []
    for activation in ("relu", "clip"):
        torch.manual_seed(0)
        energy = HopfieldEnergy(mlp(sizes, activation).double(), as_loss("cross_entropy"))
        times = {label: [] for label in HOPFIELD_SOLVERS}
        steps = {}
        for _ in range(rounds):
            for label, (solver, step) in HOPFIELD_SOLVERS.items():
                state = energy.free_state(x, y)
                start = time.perf_counter()
                report = relax(energy, state, 5000, step, tol=1e-6, solver=solver).report
                times[label].append(time.perf_counter() - start)
                steps[label] = report.steps if report.converged else None
        base = statistics.median(times[next(iter(HOPFIELD_SOLVERS))])
        rows.append(dict(activation=activation, steps=steps,
                         ms={k: 1e3 * statistics.median(v) for k, v in times.items()},
                         fraction={k: statistics.median(v) / base for k, v in times.items()}))
    return rows


def hopfield_table(rows: list[dict]) -> str:
    head = "| units | " + " | ".join(f"{label}: steps, ms (x gd 0.5)" for label in HOPFIELD_SOLVERS) + " |\n"
    head += "|---" * (1 + len(HOPFIELD_SOLVERS)) + "|\n"
    lines = [f"| {row['activation']} | " + " | ".join(
        f"{row['steps'][k]}, {row['ms'][k]:.1f} ({row['fraction'][k]:.2f}x)" for k in HOPFIELD_SOLVERS) + " |"
        for row in rows]
    return head + "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    head = ("| network | algorithm | " + " | ".join(f"{label}: steps to 1e-3 (x BP)" for label in SOLVERS)
            + " | default (error, tol 1e-4): steps, error, x BP |\n")
    head += "|---" * (3 + len(SOLVERS)) + "|\n"
    lines = []
    for row in rows:
        cells = []
        for label in SOLVERS:
            steps = row["needed"][label]
            if steps is None:
                errors = row["curves"][label]
                last = errors[-1]
                cells.append("diverged" if last == float("inf") else f"> {len(errors) - 1} (at {last:.1e})")
            else:
                cells.append(f"{steps} ({row['ratios'][label]:.2f}x)")
        cells.append(f"{row['default_steps']}, {row['default_error']:.1e}, {row['ratios']['default']:.2f}x")
        lines.append(f"| {row['case']} | {row['algorithm']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [row for row in rows if row["algorithm"] == "pc_nudge"]
    figure, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3), squeeze=False)
    for axis, row in zip(axes[0], chosen):
        for label, errors in row["curves"].items():
            finite = [e if e != float("inf") else float("nan") for e in errors]
            axis.semilogy(range(len(finite)), finite, label=label)
        axis.axhline(TARGET, color="grey", lw=0.5)
        axis.set_xscale("symlog", linthresh=10)
        axis.set_xlim(left=0)
        axis.set_title(row["case"], fontsize=8)
        axis.set_xlabel("inference step")
    axes[0][0].set_ylabel("worst-layer relative error\nof the pc_nudge update")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def section(rows: list[dict], command: str, load: tuple, hopfield: list[dict]) -> str:
    return (
        "## Convergence of inference (issue: inference that converges)\n\n"
        f"- command: `{command}`\n"
        f"- machine: {machine(torch.device('cpu'))}\n"
        f"- code: git {CODE_VERSION}\n"
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; 1-min load average "
        f"{load[0]:.2f} before, {load[1]:.2f} after (2 cores shared with other jobs)\n"
        "- one real MNIST batch of 64, float64 (VGG-5: float32); error = worst layer's relative error "
        "of the weight update against the converged equilibrium's (see the script's docstring); "
        "x BP = median over interleaved rounds of the whole estimate's time over textbook BP's\n\n"
        + table(rows) + f"\n![error against inference steps, pc_nudge]({PLOT.name})\n\n"
        + hopfield_section(hopfield)
    )


HOPFIELD_INTRO = "EP/CHL free phase of Millidge et al. 2022's MLP"


def hopfield_section(hopfield: list[dict], note: str = "") -> str:
    return (f"{HOPFIELD_INTRO} (Hopfield energy, batch 64, float64) to a relative residual of 1e-6, "
            f"from the feedforward pass; median of interleaved rounds{note}:\n\n" + hopfield_table(hopfield))


def write_hopfield(path: Path, text: str) -> None:
    """Replace only the Hopfield table at the end of the convergence block."""
    current = path.read_text()
    before, rest = current.split(HOPFIELD_INTRO, 1)
    after = rest.split("<!-- convergence end -->", 1)[1]
    path.write_text(before + text + "<!-- convergence end -->" + after)


def write(path: Path, text: str) -> None:
    block = f"<!-- convergence start -->\n{text}<!-- convergence end -->\n"
    current = path.read_text() if path.exists() else ""
    if "<!-- convergence start -->" in current:
        before, rest = current.split("<!-- convergence start -->", 1)
        after = rest.split("<!-- convergence end -->\n", 1)[1]
        path.write_text(before + block + after)
    else:
        if "<!-- notes start -->" not in current:
            current += "\n<!-- notes start -->\n"
        path.write_text(current.rstrip("\n") + "\n\n" + block)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks, few rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 21; quick 2)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--plot", type=Path, default=None, help=f"figure path (default {PLOT.name} beside the output)")
    parser.add_argument("--hopfield-only", action="store_true", help="re-run only the EP/CHL free-phase table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = load_average()
    rounds = args.rounds or (2 if args.quick else 21)
    if args.hopfield_only:
        hopfield = hopfield_free_phases(args.quick, rounds)
        note = (f" (`python benchmarks/bench_convergence.py --hopfield-only`, git {CODE_VERSION}, "
                f"{datetime.datetime.now().isoformat(timespec='seconds')}, 1-min load {load_before:.2f} before, "
                f"{load_average():.2f} after)")
        print(hopfield_table(hopfield))
        write_hopfield(args.output, hopfield_section(hopfield, note))
        return hopfield
    rows = run(args.quick, rounds)
    hopfield = hopfield_free_phases(args.quick, rounds)
    print(hopfield_table(hopfield))
    command = "python benchmarks/bench_convergence.py" + (" --quick" if args.quick else "")
    plot(rows, args.plot or args.output.parent / PLOT.name)
    write(args.output, section(rows, command, (load_before, load_average()), hopfield))
    return rows


if __name__ == "__main__":
    main()
