"""A checkpoint restores the whole module: network, optimiser, scheduler, algorithm.

Oracles: the restored network computes the same outputs as the trained one; the checkpoint reads
back with ``torch.load(weights_only=True)`` (plain data only); what cannot be saved is said when
the checkpoint is written, and loading without it fails in one line.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from lightning_helpers import REPO, loader, quiet_trainer
from pl_energy import EnergyModule
from pl_energy.cli import make_cli
from pl_energy.core.activations import Clip
from pl_energy.core.network_spec import build_network, describe_network
from pl_energy.core.networks import ConvNet, mlp

NETWORKS = {
    "mlp": lambda: mlp([784, 16, 10], activation="tanh"),
    "convnet": lambda: ConvNet(channels=(2, 3), hidden=(5,), flat_input=True),
    "sequential": lambda: nn.Sequential(
        nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 2, 5, stride=2), nn.MaxPool2d(2), Clip()),
        nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 8), nn.BatchNorm1d(8), nn.Dropout(0.2),
                      nn.LeakyReLU(0.3)),
        nn.Linear(8, 10, bias=False)),
}


class Scaled(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.hidden_factor = factor

    def forward(self, x):
        return self.hidden_factor * x


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_a_described_network_is_built_back_with_the_same_structure(kind):
    network = NETWORKS[kind]()
    description = describe_network(network)
    assert description is not None
    rebuilt = build_network(description)
    assert repr(rebuilt) == repr(network)
    rebuilt.load_state_dict(network.state_dict())
    x = torch.rand(4, 784)
    network.eval(), rebuilt.eval()
    assert torch.equal(rebuilt(x), network(x))


def test_a_module_whose_arguments_cannot_be_read_back_has_no_description():
    assert describe_network(nn.Sequential(nn.Linear(3, 3), Scaled(2.0))) is None
    assert describe_network(nn.Sequential(nn.GRU(3, 4))) is None  # its weights are not layer args


def _train_and_save(module, tmp_path, steps: int = 2):
    x, y = torch.rand(32, 784), torch.randint(0, 10, (32,))
    trainer = quiet_trainer(max_steps=steps)
    trainer.fit(module, loader(x, y, 16))
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    return path, x


def test_load_from_checkpoint_restores_a_cnn_and_its_optimiser_with_no_arguments(tmp_path):
    module = EnergyModule(network=ConvNet(channels=(2,), flat_input=True), algorithm="pc_nudge",
                          optimizer=functools.partial(torch.optim.Adam, lr=0.01),
                          lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3),
                          trace_every_n_steps=0)
    path, x = _train_and_save(module, tmp_path)
    saved = torch.load(path, weights_only=True)["hyper_parameters"]  # plain data only
    assert saved["network"]["class_path"] == "pl_energy.core.networks.ConvNet"
    assert saved["optimizer"] == {"class_path": "torch.optim.adam.Adam", "init_args": {"lr": 0.01}}
    restored = EnergyModule.load_from_checkpoint(path)
    assert isinstance(restored.network, ConvNet)
    assert torch.equal(restored(x), module(x))
    optimizer = restored.configure_optimizers()
    assert isinstance(optimizer["optimizer"], torch.optim.Adam) and optimizer["optimizer"].defaults["lr"] == 0.01
    assert optimizer["lr_scheduler"]["scheduler"].step_size == 3


def test_an_optimiser_the_checkpoint_cannot_hold_is_named_at_saving_and_at_loading(tmp_path):
    module = EnergyModule(algorithm="bp", optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    with pytest.warns(UserWarning, match="cannot hold this module's optimizer"):
        path, x = _train_and_save(module, tmp_path)
    restored = EnergyModule.load_from_checkpoint(path)
    assert torch.equal(restored(x), module(x))  # the network is there
    with pytest.raises(ValueError, match="pass optimizer= to load_from_checkpoint"):
        restored.configure_optimizers()
    again = EnergyModule.load_from_checkpoint(path, optimizer=functools.partial(torch.optim.SGD, lr=0.2))
    assert again.configure_optimizers().defaults["lr"] == 0.2


def test_a_cnn_from_yaml_is_restored_by_test_with_only_the_checkpoint(mnist_root, tmp_path):
    common = ["--trainer.default_root_dir", str(tmp_path), "--data.data_dir", str(mnist_root),
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = make_cli(["fit", "--config", str(REPO / "configs" / "mnist_cnn_pc_nudge.yaml"),
                    "--model.network.init_args.channels", "[2, 3]", "--data.limit_train", "128",
                    "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                    "--agreement.every_n_steps", "0", *common])
    (checkpoint,) = (tmp_path / "lightning_logs").glob("version_0/checkpoints/*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert saved["network"]["init_args"]["channels"] == [2, 3]
    assert saved["optimizer"]["class_path"] == "torch.optim.Adam"
    restored = EnergyModule.load_from_checkpoint(checkpoint)
    assert isinstance(restored.network, ConvNet)
    images = torch.rand(3, 1, 28, 28)
    assert torch.equal(restored(images), cli.model(images))
    tested = make_cli(["test", "--ckpt_path", str(checkpoint), "--trainer.limit_test_batches", "1",
                       "--data.init_args.flatten", "false", *common])
    assert isinstance(tested.model.network, ConvNet)
    assert [m.out_channels for m in tested.model.network.modules() if isinstance(m, nn.Conv2d)] == [2, 3]


def test_tensorboard_gets_the_figures_scalars_and_config_in_the_run_folder(mnist_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = make_cli(["fit", "--algorithm", "pc_nudge", "--steps", "10", "--data.data_dir", str(mnist_root),
                    "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
                    "--trainer.logger.save_dir", str(tmp_path), "--data.limit_train", "128",
                    "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
                    "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
                    "--agreement.every_n_steps", "2", "--model.trace_every_n_steps", "2"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert cli.trainer.log_dir == str(run)
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "agreement.png", "energy", "checkpoints"}
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert {"energy/trace", "agreement/plot"} <= set(events.Tags()["images"])
    assert [event.step for event in events.Images("energy/trace")] == [0, 2]
    assert [event.step for event in events.Scalars("agreement/cosine")] == [0, 2]
    hparams = (run / "hparams.yaml").read_text()
    assert "torch.optim.SGD" in hparams and "lr: 0.001" in hparams


def test_what_cannot_be_described_is_named_not_pickled(tmp_path):
    """A LambdaLR's lr_lambda, frozen or tied parameters and float64 weights: the review's cases."""
    from pl_energy.configuration import describe_factory

    assert describe_factory(functools.partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=lambda e: 0.9 ** e)) is None
    assert describe_factory(functools.partial(torch.optim.Adam, betas=(0.8, 0.9))) == {
        "class_path": "torch.optim.adam.Adam", "init_args": {"betas": [0.8, 0.9]}}
    frozen = mlp([4, 3, 2])
    frozen[0][0].weight.requires_grad_(False)
    assert describe_network(frozen) is None
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert describe_network(tied) is None
    network = mlp([784, 256, 10]).double()
    state = torch.random.get_rng_state()
    wide = describe_network(network)
    assert torch.equal(torch.random.get_rng_state(), state)  # rebuilt on the meta device
    assert wide["dtype"] == "float64" and next(build_network(wide).parameters()).dtype == torch.float64


def test_the_logged_hyperparameters_are_descriptions_not_objects(tmp_path):
    module = EnergyModule(network=mlp([784, 16, 10]), algorithm="bp",
                          optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    for hparams in (module.hparams, module.hparams_initial):  # loggers get hparams_initial
        assert hparams["network"] == {"class_path": "pl_energy.core.networks.MLP",
                                      "init_args": {"sizes": [784, 16, 10], "activation": "relu", "bias": True}}
        assert hparams["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}
