"""pl_energy in ten minutes: every algorithm against backprop on one batch, then one trained with
Lightning, its agreement with BP logged, and the run reloaded from its checkpoint.

    python examples/tutorial.py [--data-dir DIR] [--steps 300] [--out runs/tutorial]

``--data-dir`` is a folder holding ``MNIST/raw/`` (default ``$PL_ENERGY_DATA`` or ``./data``,
where it is downloaded when missing). The tests run it with ``--quick`` (a few steps).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch

import pl_energy
from pl_energy.callbacks import GradientAgreement
from pl_energy.metrics import agreement_metrics
from pl_energy.data import MNISTDataModule


def compare_on_one_batch(data: MNISTDataModule) -> dict[str, float]:
    """1. Each algorithm's update on one batch, against backprop's gradient on the same weights.

    ``alg.estimate`` runs the algorithm's phases (inference to equilibrium, by default) and returns
    an ``Estimate``; ``alg.reference`` is the exact gradient the algorithm approximates.
    """
    inputs, targets = next(iter(data.train_dataloader()))
    inputs = inputs.double()  # float64: Z-IL's equality with BP shows to rounding
    torch.manual_seed(0)
    network = pl_energy.mlp([784, 128, 64, 10]).double()  # Millidge et al. 2022's MNIST net
    cosines = {}
    for name in pl_energy.ALGORITHMS:
        if name in ("ep", "chl"):
            continue  # Hopfield energies want bounded units: they get their own network below
        algorithm = pl_energy.build_algorithm(name)
        estimate = algorithm.estimate(network, inputs, targets)
        reference = algorithm.reference(network, inputs, targets)
        update = torch.cat([estimate.gradients[k].flatten() for k in reference])
        exact = torch.cat([g.flatten() for g in reference.values()])
        cosines[name] = agreement_metrics(update, exact)["cosine"]
        print(f"{name:9s} cosine with BP {cosines[name]:.6f}  inference steps "
              f"{sum(report.steps for report in estimate.inference)}")
    clip_network = pl_energy.mlp([784, 128, 10], activation="clip").double()
    for name in ("ep", "chl"):
        algorithm = pl_energy.build_algorithm(name)
        estimate = algorithm.estimate(clip_network, inputs, targets)
        reference = algorithm.reference(clip_network, inputs, targets)  # BP through the equilibrium
        update = torch.cat([estimate.gradients[k].flatten() for k in reference])
        cosines[name] = agreement_metrics(update, torch.cat([g.flatten() for g in reference.values()]))["cosine"]
        print(f"{name:9s} cosine with its reference {cosines[name]:.6f}")
    return cosines


def train_with_lightning(data: MNISTDataModule, steps: int, out: str) -> tuple[pl.Trainer, pl_energy.EnergyModule]:
    """2. PC-Nudge under Lightning's Trainer: the module applies the algorithm's update with
    manual optimisation; ``GradientAgreement`` logs its cosine with BP every n steps."""
    module = pl_energy.EnergyModule(algorithm="pc_nudge", trace_every_n_steps=0)
    agreement = GradientAgreement(every_n_steps=max(1, steps // 5))
    trainer = pl.Trainer(max_steps=steps, logger=pl.loggers.CSVLogger(out), callbacks=[agreement],
                         limit_val_batches=20, val_check_interval=steps, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    print("agreement with BP over training:",
          ", ".join(f"step {int(row['step'])}: {row['cosine']:.5f}" for row in agreement.history))
    print("validation accuracy", float(trainer.callback_metrics["val/acc"]))
    return trainer, module


def reload(trainer: pl.Trainer, module: pl_energy.EnergyModule, data: MNISTDataModule) -> float:
    """3. The checkpoint holds the network, optimiser and algorithm: no arguments to reload."""
    path = trainer.checkpoint_callback.best_model_path
    restored = pl_energy.EnergyModule.load_from_checkpoint(path)
    inputs, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        difference = float((restored(inputs) - module(inputs)).abs().max())
    print(f"reloaded {restored.algorithm_name} from {path}: outputs differ by {difference}")
    return difference


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding MNIST/raw/")
    parser.add_argument("--steps", type=int, default=300, help="training steps with Lightning")
    parser.add_argument("--out", default="runs/tutorial", help="folder of the Lightning run")
    parser.add_argument("--quick", action="store_true", help="a few steps on 256 images (the tests)")
    args = parser.parse_args(argv)
    pl.seed_everything(0, verbose=False)
    data = MNISTDataModule(data_dir=args.data_dir, limit_train=256 if args.quick else None)
    data.prepare_data()
    data.setup("fit")
    cosines = compare_on_one_batch(data)
    trainer, module = train_with_lightning(data, 4 if args.quick else args.steps, args.out)
    difference = reload(trainer, module, data)
    return {"cosines": cosines, "val_acc": float(trainer.callback_metrics["val/acc"]),
            "reload_difference": difference}


if __name__ == "__main__":
    main()
