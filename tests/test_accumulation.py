"""EnergyModule's own accumulation of gradients (manual optimisation) against an oracle written
here: plain autograd gradients of each batch, their mean over each window, one SGD step per
window, in float64. A window stays whole across a validation run inside it and across a
checkpoint saved inside it."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from lightning_helpers import loader, quiet_trainer
from pl_energy import mlp
from pl_energy.data.loading import SplitDataModule
from pl_energy.module import WINDOW_KEY, EnergyModule


def sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.3)


def module(accumulate: int, seed: int = 0) -> EnergyModule:
    torch.manual_seed(seed)
    return EnergyModule(network=mlp([6, 5, 3], activation="tanh").double(), algorithm="z_il", optimizer=sgd,
                        accumulate_grad_batches=accumulate, trace_every_n_steps=0)


def windows_by_autograd(network, batches, accumulate: int) -> list[torch.Tensor]:
    """The parameters after one SGD step (lr 0.3) on the mean autograd gradient of each window
    of ``accumulate`` batches (the last window shorter), in place on ``network``."""
    parameters = list(network.parameters())
    for start in range(0, len(batches), accumulate):
        window = batches[start:start + accumulate]
        mean = [torch.zeros_like(p) for p in parameters]
        for x, y in window:
            for m, g in zip(mean, torch.autograd.grad(F.cross_entropy(network(x), y), parameters)):
                m += g / len(window)
        with torch.no_grad():
            for p, m in zip(parameters, mean):
                p -= 0.3 * m
    return parameters


@pytest.mark.parametrize("accumulate, every", [(2, 3), (3, 4), (3, 2)])
def test_a_validation_inside_a_window_keeps_its_gradients(accumulate, every):
    """Lightning frees the gradients before validating unless its own accumulation is in a
    window; the module's windows (the Trainer's accumulation at 1) lost the batches before a
    validation run inside them (1e-2 off the oracle at accumulation 2, validation every 3)."""
    torch.manual_seed(1)
    x, y = torch.rand(56, 6, dtype=torch.float64), torch.randint(0, 3, (56,))
    trained = module(accumulate)
    expected = mlp([6, 5, 3], activation="tanh").double()
    expected.load_state_dict(trained.network.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's remarks on workers and small logging intervals
        quiet_trainer(max_epochs=1, val_check_interval=every).fit(trained, loader(x, y, 7), loader(x[:14], y[:14], 7))
    oracle = windows_by_autograd(expected, [(x[i:i + 7], y[i:i + 7]) for i in range(0, 56, 7)], accumulate)
    for p, q in zip(trained.network.parameters(), oracle):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


class RandomData(SplitDataModule):
    """50 random float64 samples, shuffled (or not), in batches of 7 (a resumable train loader)."""

    def __init__(self, shuffle: bool = True):
        super().__init__()
        self.set_loader_options(7, 0, False, False, shuffle)

    def setup(self, stage=None):
        generator = torch.Generator().manual_seed(5)
        data = torch.utils.data.TensorDataset(torch.rand(50, 6, dtype=torch.float64, generator=generator),
                                              torch.randint(0, 3, (50,), generator=generator))
        self.train_set = self.val_set = self.test_set = data


class SaveAt(Callback):
    """Saves a checkpoint after one batch, with the module's open window at that moment."""

    def __init__(self, path, epoch: int, batch: int):
        self.path, self.at, self.open = path, (epoch, batch), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == self.at:
            self.open = pl_module.accumulated
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("accumulate, batch", [(2, 2), (3, 4)])
def test_a_checkpoint_inside_a_window_resumes_exactly(tmp_path, accumulate, batch):
    """A checkpoint saved between two optimiser steps (OnExceptionCheckpoint, a callback's save_checkpoint) holds
    the window's gradients: the resumed run's weights equal the uninterrupted run's bit for bit
    (before, its batches were dropped and later windows shifted: 3e-2 to 0.19 off)."""
    path = tmp_path / "inside.ckpt"
    torch.manual_seed(0)
    straight, saver = module(accumulate), SaveAt(path, 1, batch)
    quiet_trainer(max_epochs=3, limit_val_batches=0, callbacks=[saver]).fit(straight, datamodule=RandomData())
    assert saver.open and WINDOW_KEY in torch.load(path, weights_only=True)
    torch.manual_seed(7)  # another start: everything comes from the checkpoint
    resumed = module(accumulate, seed=3)
    quiet_trainer(max_epochs=3, limit_val_batches=0).fit(resumed, datamodule=RandomData(), ckpt_path=path)
    assert resumed.global_step == straight.global_step
    for p, q in zip(resumed.network.parameters(), straight.network.parameters()):
        assert torch.equal(p, q)


def test_a_window_of_another_length_is_dropped_with_a_warning(tmp_path):
    """Its sum was divided by its own length: resumed with another accumulate_grad_batches, the
    window's batches are dropped, and said so."""
    path = tmp_path / "inside.ckpt"
    quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[SaveAt(path, 1, 2)]).fit(module(2),
                                                                                        datamodule=RandomData())
    with pytest.warns(UserWarning, match=r"window of 2 batches \(1 summed\), but this run accumulates 3: those "
                                         "batches' gradients are dropped"):
        quiet_trainer(max_epochs=2, limit_val_batches=0).fit(module(3), datamodule=RandomData(), ckpt_path=path)


def test_several_processes_save_no_window_and_say_so():
    """Each process holds its own partial sum and the checkpoint is rank 0's: no window is
    saved, with a warning that the resumed run starts it again."""
    energy = module(3)

    class Trainer:  # what _open_window reads of a Trainer under two processes
        world_size = 2

    energy._trainer, energy.accumulated = Trainer(), 2
    with pytest.warns(UserWarning, match=r"inside an accumulation window \(2 of 3 batches\) under 2 processes"):
        assert energy._open_window() is None


def test_a_mid_epoch_resume_with_a_loader_that_cannot_resume_is_warned_about(tmp_path):
    """With a plain DataLoader the resumed epoch starts its batches again. Lightning's warning
    counts the epoch's steps with the Trainer's accumulation (1 here), so under the module's it
    missed this; the module warns, and not for a resumable loader or an end-of-epoch checkpoint."""
    torch.manual_seed(1)
    x, y = torch.rand(56, 6, dtype=torch.float64), torch.randint(0, 3, (56,))
    inside, end = SaveAt(tmp_path / "inside.ckpt", 1, 3), SaveAt(tmp_path / "end.ckpt", 0, 7)
    quiet_trainer(max_epochs=2, callbacks=[inside, end]).fit(module(3), loader(x, y, 7))
    with pytest.warns(UserWarning, match=r"resumes inside an epoch \(after 4 of its 8 batches\) with a train loader "
                                         "that cannot resume it"):
        quiet_trainer(max_epochs=2).fit(module(3), loader(x, y, 7), ckpt_path=inside.path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_trainer(max_epochs=2).fit(module(3), loader(x, y, 7), ckpt_path=end.path)
        path = tmp_path / "resumable.ckpt"
        quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[SaveAt(path, 1, 3)]).fit(module(3),
                                                                                          datamodule=RandomData())
        quiet_trainer(max_epochs=2, limit_val_batches=0).fit(module(3), datamodule=RandomData(), ckpt_path=path)
    assert not [w for w in caught if "resumes inside an epoch" in str(w.message)]


def test_an_exception_inside_a_window_resumes_exactly(tmp_path):
    """An error inside training_step (saved by OnExceptionCheckpoint) leaves the window as the
    batches before it made it: the batch counts once its gradient is in p.grad, and the train
    loader resumes at that batch, which Lightning takes again (the count and the loader's
    position were one batch ahead: 9e-2 off)."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    torch.manual_seed(0)
    straight = module(3)
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(straight, datamodule=RandomData())
    torch.manual_seed(0)
    failing = module(3)
    estimate = failing.algorithm.estimate

    def estimate_failing_at_epoch_1_batch_4(*args, **kwargs):
        if (failing.trainer.current_epoch, failing.trainer.fit_loop.epoch_loop.batch_idx) == (1, 4):
            raise RuntimeError("out of memory, say")
        return estimate(*args, **kwargs)

    failing.algorithm.estimate = estimate_failing_at_epoch_1_batch_4
    with pytest.raises(RuntimeError, match="out of memory, say"):
        quiet_trainer(max_epochs=2, limit_val_batches=0, enable_checkpointing=True,
                      callbacks=[OnExceptionCheckpoint(tmp_path)]).fit(failing, datamodule=RandomData())
    window = torch.load(tmp_path / "on_exception.ckpt", weights_only=True)[WINDOW_KEY]
    assert (window["batches"], window["length"]) == (1, 3)  # batch 3 of the window 3-5
    resumed = module(3, seed=3)
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(resumed, datamodule=RandomData(),
                                                         ckpt_path=tmp_path / "on_exception.ckpt")
    for p, q in zip(resumed.network.parameters(), straight.network.parameters()):
        assert torch.equal(p, q)


def test_a_resumed_fit_that_stops_early_leaves_no_window_behind(tmp_path):
    """A fit resumed from a checkpoint inside a window that stops before training starts (here a
    validation loader that fails in the sanity check) leaves the window unused: the module's next,
    fresh fit does not add it to its first window (6e-3 off the oracle before)."""
    path = tmp_path / "inside.ckpt"
    quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[SaveAt(path, 1, 4)]).fit(module(3),
                                                                                        datamodule=RandomData())

    class BrokenValidation(RandomData):
        def val_dataloader(self):
            raise RuntimeError("no validation data")

    energy = module(3, seed=6)
    with pytest.raises(RuntimeError, match="no validation data"):
        quiet_trainer(max_epochs=2, num_sanity_val_steps=2).fit(energy, datamodule=BrokenValidation(), ckpt_path=path)
    expected = mlp([6, 5, 3], activation="tanh").double()
    expected.load_state_dict(energy.network.state_dict())
    data = RandomData(shuffle=False)
    data.setup()
    x, y = data.train_set.tensors
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(energy, datamodule=data)
    oracle = windows_by_autograd(expected, [(x[i:i + 7], y[i:i + 7]) for i in range(0, 50, 7)], 3)
    for p, q in zip(energy.network.parameters(), oracle):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


def test_the_agreement_callback_skips_a_window_it_did_not_see_whole(tmp_path):
    """Resumed inside a window, GradientAgreement holds only the batches after the checkpoint:
    it used to compare the whole window's update with their mean (rel_error 0.76 where z_il is
    exact); it now leaves that step out and measures the others as the uninterrupted run does."""
    from pl_energy.callbacks import GradientAgreement

    def run(seed, **options):
        callback = GradientAgreement(every_n_steps=1, per_layer=False, plot=False)
        callbacks = [callback, *options.pop("callbacks", [])]
        quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=callbacks).fit(module(3, seed), datamodule=RandomData(),
                                                                                  **options)
        return {int(row["step"]): row["rel_error"] for row in callback.history}

    path = tmp_path / "inside.ckpt"
    straight = run(0, callbacks=[SaveAt(path, 1, 4)])  # the window of batches 3-5 of epoch 1: step 4
    resumed = run(2, ckpt_path=path)
    assert sorted(resumed) == [step for step in sorted(straight) if step != 4]
    assert max(resumed.values()) < 1e-12
