"""Song et al. 2020 Tables 1-2 (Figs. 1-2 of its supplement): Z-IL / Fa-Z-IL vs BP after training, and sigma.

BP, Z-IL and Fa-Z-IL train the same ``mlp([784, 128, 64, 10])`` (ReLU; the PCN clamps its output to
the one-hot target, i.e. squared-error loss with lam = 1) from the same initial weights, on the
same real MNIST batches, in float64: plain SGD. Reported: divergence of test error
|err_PC - err_BP| and of final weights (L1 sum |theta - w| over all parameters, as well as L2 and
max), and each test error.

sigma (Tables 1-2) relaxes condition C1 (x_{l,0} = mu_{l,0}): at every training iteration the
hidden value nodes start at the feedforward pass plus Gaussian noise of std sigma,
x_{l,0} = mu_{l,0} + sigma N(0, 1), and Z-IL (Alg. 2) runs the full PC inference with rate
gamma = 1, updating the weights of the layer k below the output at step t = k. sigma = 0 is
exactly Z-IL; the initial weights are always the ANN's (A.4: "with the same initial weights").
"""

from __future__ import annotations

import copy

import torch

from common import mnist, parser, plt, save_figure, save_json, setup

import pl_energy
from pl_energy.core import PredictiveCodingEnergy
from pl_energy.core.losses import Loss

SIZES = [784, 128, 64, 10]


def noisy_zil_gradients(network, x, y, sigma, generator):
    """Song et al. 2020 Alg. 2 with full inference dynamics (gamma = 1) from a noisy initial state."""
    energy = PredictiveCodingEnergy(network, Loss("mse"))
    state = energy.nudged(energy.free_state(x, y), 1.0)
    if sigma > 0:
        for index in range(1, len(energy.layers)):
            noise = torch.randn(state.activities[index].shape, generator=generator,
                                dtype=x.dtype) * sigma
            energy.set_activity(state, index, state.activities[index] + noise)
    depth = len(energy.layers)
    per_layer = [None] * depth
    for t in range(depth):  # at t = k update the layer k below the output (layer depth - k)
        per_layer[depth - 1 - t] = energy.layer_parameter_gradients(state, depth - t)
        if t < depth - 1:
            energy.move_activities(state, energy.activity_gradients(state), 1.0)
    names = [n for n, _ in network.named_parameters()]
    return dict(zip(names, [g for layer in per_layer for g in layer]))


def train(network, batches, estimate, lr):
    params = dict(network.named_parameters())
    for x, y in batches:
        grads = estimate(network, x, y)
        with torch.no_grad():
            for name, g in grads.items():
                params[name].sub_(lr * g)
    return network


def test_error(network, test):
    with torch.no_grad():
        return float((network(test[0]).argmax(1) != test[1]).double().mean())


def divergence(a, b):
    diffs = torch.cat([(p.detach() - q.detach()).reshape(-1) for p, q in zip(a.parameters(), b.parameters())])
    return {"l1": float(diffs.abs().sum()), "l2": float(diffs.norm()), "max": float(diffs.abs().max())}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=None, help="training examples (default 10000)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args(argv)
    out = setup(args)
    train_x, train_y, test_x, test_y = mnist(args.data_dir)
    n = args.examples or (256 if args.quick else 10000)
    x, y = train_x[:n].double(), train_y[:n]
    batches = list(zip(x.split(args.batch), y.split(args.batch)))
    test = (test_x.double(), test_y) if not args.quick else (test_x[:1000].double(), test_y[:1000])
    torch.manual_seed(0)
    initial = pl_energy.mlp(SIZES).double()
    bp_alg = pl_energy.build_algorithm("bp")
    bp = train(copy.deepcopy(initial), batches,
               lambda net, a, b: bp_alg.gradients(net, a, b, loss="mse"), args.lr)
    bp_error = test_error(bp, test)
    results = {"setup": {"sizes": SIZES, "dtype": "float64", "loss": "mse (clamped output)",
                         "examples": n, "batch": args.batch, "lr": args.lr, "optimizer": "SGD"},
               "bp_test_error": bp_error}
    for name in ("z_il", "fa_z_il"):
        alg = pl_energy.build_algorithm(name)
        net = train(copy.deepcopy(initial), batches,
                    lambda m, a, b: alg.gradients(m, a, b, loss="mse"), args.lr)
        err = test_error(net, test)
        results[name] = {"test_error": err, "test_error_divergence": abs(err - bp_error),
                         "weight_divergence": divergence(net, bp)}
        print(name, results[name], flush=True)
    sigmas = [0.0, 1e-3, 1e-1, 10.0] if args.quick else [0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    rows = []
    for sigma in sigmas:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            net = train(copy.deepcopy(initial), batches,
                        lambda m, a, b: noisy_zil_gradients(m, a, b, sigma, gen), args.lr)
        err = test_error(net, test)
        row = {"sigma": sigma, "test_error": err, "test_error_divergence": abs(err - bp_error),
               "weight_divergence": divergence(net, bp)}
        rows.append(row)
        print(row, flush=True)
    results["sigma_sweep"] = rows

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    xs = [max(r["sigma"], 1e-5) for r in rows]
    axes[0].loglog(xs, [max(r["test_error_divergence"], 1e-16) for r in rows], "o-")
    axes[0].set(xlabel="sigma (sigma=0 drawn at 1e-5)", ylabel="|test err Z-IL - test err BP|",
                title="divergence of test error")
    axes[1].loglog(xs, [r["weight_divergence"]["l1"] for r in rows], "o-", label="L1 sum")
    axes[1].loglog(xs, [r["weight_divergence"]["max"] for r in rows], "s--", label="max")
    axes[1].set(xlabel="sigma", ylabel="|theta - w|", title="divergence of final weights")
    axes[1].legend()
    axes[2].semilogx(xs, [r["test_error"] for r in rows], "o-", label="Z-IL with noise sigma")
    axes[2].axhline(bp_error, color="k", ls=":", label="BP")
    axes[2].set(xlabel="sigma", ylabel="test error", title="test error (Table 2)")
    axes[2].legend()
    save_figure(fig, out, "zil_divergence")
    save_json(out, "zil_divergence", results)
    return results


if __name__ == "__main__":
    main()
