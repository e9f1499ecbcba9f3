"""Deep and convolutional networks on MNIST, one epoch, every algorithm side by side.

Two networks, each trained by bp, z_il, pc_nudge, pc and (for the CNN) ep from the same
initialisation, with the same batch order (batch 64) and optimiser (Adam at ``--lr``,
cosine-annealed to 0 over the epoch), with the library's defaults (converged inference):

- ``cnn``: a VGG-style CNN (``ConvNet``): 3x3 conv blocks of 32 and 64 channels, each conv ->
  2x2 max-pool -> activation (relu; clip for ep, whose Hopfield energy needs bounded units, and
  for ``bp_clip``, BP on ep's network), and a linear output layer;
- ``smooth_cnn`` (``--networks smooth_cnn``): the same CNN with tanh units and 2x2 average
  pooling, a smooth energy on which PC-Nudge's inference converges instead of settling on
  kinks and pooling ties;
- ``resnet`` (``--networks resnet``): ResNet-18's stages (2, 2, 2, 2 basic blocks, each block one
  energy layer) at 1/8 of its widths (8-16-32-64), with BatchNorm (``--no-batch-norm``: without;
  there one-sided PC-Nudge's O(lam) bias runs away, and ``pc_nudge_centered``, PC-Nudge with
  ``centered=True``, is the variant to train with);
- ``resmlp``: a 20-layer residual MLP of width 128 (``ResidualMLP``, tanh, muPC parameterisation
  of Innocenti et al. 2025 with ``--parameterisation mupc``). EP has no residual Hopfield energy:
  it is not run on it.

Reported: validation accuracy (10,000 images held out) and time per epoch, test accuracy, the
fraction of converged (or settled) inference, and every 100 batches the update's cosine with its
exact reference (BP for the PC family; BP through the free equilibrium for ep).

    python examples/deep_mnist.py --out docs/results --threads 1
    python examples/deep_mnist.py --algorithms bp z_il pc_nudge pc --threads 1   # without ep

On this 2-core CPU, EP's epoch of the CNN (a conv Hopfield energy relaxed to 1e-6 by sweeps, in
three phases per batch) takes 71 minutes on one thread; the other algorithms take 20 s (bp) to
6 min (pc) on the CNN, and pc_nudge_centered 31 minutes on the ResNet without BatchNorm.
"""

from __future__ import annotations

import torch

from common import mnist_splits, parser, plt, save_figure, save_json, setup, train

import pl_energy
from pl_energy.core.networks import ConvNet
from pl_energy.core.residual import ResidualMLP, ResNet

ALGORITHMS = {"cnn": ("bp", "z_il", "pc_nudge", "pc", "ep", "bp_clip"), "resmlp": ("bp", "z_il", "pc_nudge", "pc"),
              "smooth_cnn": ("bp", "z_il", "pc_nudge", "pc"),
              "resnet": ("bp", "z_il", "pc_nudge", "pc_nudge_centered", "pc")}
#: run names that are not an algorithm's name: the algorithm and its hyper-parameters
RUNS = {"pc_nudge": ("pc_nudge", {"lam": 0.01}), "pc_nudge_centered": ("pc_nudge", {"centered": True, "lam": 0.01}),
        "bp_clip": ("bp", {})}  # the recorded runs' lam (the paper's), not the per-batch default
RUN_NAMES = tuple(dict.fromkeys(name for names in ALGORITHMS.values() for name in names))
#: runs on the CNN with clip units (a Hopfield energy needs bounded units)
CLIP_RUNS = ("ep", "bp_clip")


def network_for(kind: str, name: str, quick: bool, parameterisation: str, batch_norm: bool = True):
    if kind == "resnet":  # ResNet-18's stages and blocks at 1/8 of its widths, on 1x28x28
        return ResNet(in_shape=(1, 28, 28), widths=(2, 4) if quick else (8, 16, 32, 64),
                      blocks=(1, 1) if quick else (2, 2, 2, 2), batch_norm=batch_norm)
    if kind == "cnn":
        return ConvNet(channels=(4, 8) if quick else (32, 64), activation="clip" if name in CLIP_RUNS else "relu")
    if kind == "smooth_cnn":
        return ConvNet(channels=(4, 8) if quick else (32, 64), activation="tanh", pool="avg")
    return ResidualMLP(width=16 if quick else 128, depth=6 if quick else 20, activation="tanh",
                       parameterisation=parameterisation)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--networks", nargs="+", choices=tuple(ALGORITHMS), default=["cnn", "resmlp"],
                   help="cnn and resmlp by default; smooth_cnn: the CNN with tanh and average pooling; "
                        "resnet: ResNet-18's stages at 1/8 width, BatchNorm")
    p.add_argument("--parameterisation", choices=("standard", "mupc"), default="mupc")
    p.add_argument("--no-batch-norm", action="store_true",
                   help="the ResNet without BatchNorm (with it, every energy-based update holds the batch "
                        "statistics constant: BatchStatisticsWarning)")
    p.add_argument("--algorithms", nargs="+", default=None, choices=RUN_NAMES,
                   help="a subset (default: every algorithm each network takes)")
    args = p.parse_args(argv)
    for name in args.algorithms or ():
        if not any(name in ALGORITHMS[kind] for kind in args.networks):
            p.error(f"{name} is run on {', '.join(k for k in ALGORITHMS if name in ALGORITHMS[k])}, "
                    f"not on {', '.join(args.networks)}: add one of those to --networks")
    out = setup(args)
    batches = 10 if args.quick else None
    results: dict = {"setup": {"optimizer": "Adam, cosine-annealed", "lr": args.lr, "batch": 64, "epochs": 1,
                               "batches_per_epoch": batches, "parameterisation": args.parameterisation}}
    for kind in args.networks:
        data = mnist_splits(args.data_dir, args.quick, images=kind in ("cnn", "smooth_cnn", "resnet"))
        results["setup"][kind] = repr(network_for(kind, "bp", args.quick, args.parameterisation, not args.no_batch_norm))
        for name in ALGORITHMS[kind]:
            if args.algorithms is not None and name not in args.algorithms:
                continue
            torch.manual_seed(0)
            network = network_for(kind, name, args.quick, args.parameterisation, not args.no_batch_norm)
            algorithm, hyperparameters = RUNS.get(name, (name, {}))
            algorithm = pl_energy.build_algorithm(algorithm, **hyperparameters)
            # the BatchNorm ResNet is this example's measurement of the constant-statistics update
            algorithm.allow_constant_batch_statistics = True
            results[f"{kind}/{name}"] = train(algorithm, network, data, 1, args.lr, batches)
            results[f"{kind}/{name}"]["network"] = repr(network)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, (key, label) in zip(axes, (("test_accuracy", "test accuracy"), ("seconds", "seconds per epoch"))):
        names = [name for name in results if name != "setup"]
        values = [results[name][key] if key == "test_accuracy" else results[name][key][-1] for name in names]
        axis.barh(names, values)
        axis.set(xlabel=label)
        if key == "test_accuracy":
            axis.set_xlim(min(values) - 0.02, 1.0)
    figure.suptitle("One epoch of MNIST: VGG-style CNN and 20-layer residual MLP")
    save_figure(figure, out, "deep_mnist")
    save_json(out, "deep_mnist", results)
    return results


if __name__ == "__main__":
    main()
