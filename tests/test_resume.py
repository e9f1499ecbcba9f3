"""Exact resume mid-epoch: a run killed with SIGKILL after a step checkpoint and resumed from it
ends with the same weights, bit for bit on CPU, as a run that was never interrupted. The oracle is
the uninterrupted run itself; each run is its own process, as a real kill -9 leaves it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

#: One process of the experiment: ``full``, ``kill`` (SIGKILL itself at step KILL_AT, after the
#: checkpoint of step 6 was written) or ``resume`` (from that checkpoint). MNIST, 160 shuffled
#: images in batches of 16 (10 steps an epoch), 2 epochs: the kill falls in epoch 0's middle.
RUN = textwrap.dedent("""
    import os, signal, sys
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from pl_energy import EnergyModule
    from pl_energy.data import MNISTDataModule

    mode, data_dir, out = sys.argv[1], sys.argv[2], sys.argv[3]
    KILL_AT = 8

    class KillAt(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)

    pl.seed_everything(0 if mode != "resume" else 123, verbose=False)  # a resumed run owes nothing to its seed
    data = MNISTDataModule(data_dir=data_dir, batch_size=16, limit_train=160, val_size=100)
    model = EnergyModule(sizes=(784, 12, 10), algorithm="pc_nudge", trace_every_n_steps=0,
                         algorithm_hparams={"steps": 20})
    callbacks = [ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=3, save_top_k=-1)]
    if mode == "kill":
        callbacks.insert(0, KillAt())
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, data, ckpt_path=os.path.join(out, "step=6.ckpt") if mode == "resume" else None)
    torch.save(model.network.state_dict(), os.path.join(out, mode + ".pt"))
""")


def run(mode: str, data_dir: Path, out: Path) -> subprocess.CompletedProcess:
    script = out / "run.py"
    script.write_text(RUN)
    return subprocess.run([sys.executable, str(script), mode, str(data_dir), str(out)], capture_output=True,
                          text=True, timeout=300)


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(mnist_root, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir(), interrupted.mkdir()
    done = run("full", mnist_root, straight)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = run("kill", mnist_root, interrupted)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: nothing after the kill ran
    assert not (interrupted / "kill.pt").exists() and (interrupted / "step=6.ckpt").exists()
    checkpoint = torch.load(interrupted / "step=6.ckpt", weights_only=False)
    saved = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved[0]["batches_done"] == 6 and saved[0]["seed"] is not None  # mid-epoch 0: its order and position
    resumed = run("resume", mnist_root, interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for loaders that cannot resume
    expected = torch.load(straight / "full.pt")
    got = torch.load(interrupted / "resume.pt")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_the_sampler_shuffles_as_torch_random_sampler_and_resumes_its_epoch():
    """Oracle: torch's RandomSampler under the same global seed (the order runs had before)."""
    from torch.utils.data import RandomSampler

    from pl_energy.data.resumable import ResumableSampler

    torch.manual_seed(5)
    expected = [list(RandomSampler(range(20))) for _ in range(2)]
    torch.manual_seed(5)
    done = [0]
    sampler = ResumableSampler(20, batch_size=4, batches_done=lambda: done[0])
    assert [list(sampler) for _ in range(2)] == expected
    done[0] = 3
    state = sampler.state_dict()
    fresh = ResumableSampler(20, batch_size=4)
    fresh.load_state_dict(state)
    assert list(fresh) == expected[1][12:]  # the rest of the interrupted epoch
    assert list(ResumableSampler(6, 4, shuffle=False)) == list(range(6))
