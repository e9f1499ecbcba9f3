"""A train loader that resumes mid-epoch exactly: Lightning saves its position and shuffling in
every checkpoint and restores them when a run resumes from one (``ckpt_path``).

Lightning's fit loop stores the ``state_dict`` of each train loader that has one (a
``_Stateful`` loader) and, when it resumes inside an epoch, hands it back through
``load_state_dict`` before the first batch; the loop itself starts counting at the batches the
checkpoint had completed. :class:`ResumableSampler` then rebuilds the epoch's order from its
seed and skips those batches, so the resumed run sees the same batches in the same order as an
uninterrupted one, and its weights are the same bit for bit (on CPU).

The order is drawn as ``torch.utils.data.RandomSampler`` draws it (one int64 seed from the global
torch generator at the start of each epoch, then ``randperm``), so runs shuffle exactly as they
did before. The seed of an epoch that a checkpoint interrupted is taken from the checkpoint
instead of drawn; and since the resumed run creates the epoch's loader iterator again, which
draws a seed of its own from the global generator (the uninterrupted run drew it before the
checkpoint), the sampler then sets that generator back to its state at the checkpoint, where the
uninterrupted run has it (the later epochs' orders come from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import RefusedValue


class ResumableSampler(Sampler[int]):
    """Indices of one epoch, shuffled (``RandomSampler``'s draw) or in order, that a checkpoint
    can stop and resume.

    Args:
        size: number of items in the dataset.
        batch_size: the loader's batch size (a resumed epoch skips whole batches).
        shuffle: a new random order every epoch; False: 0, 1, ..., size - 1.
        batches_done: how many batches of the current epoch the training loop has taken (read
            when a checkpoint is saved); None: the sampler cannot say, and saves position 0.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool = True,
                 batches_done: Callable[[], int] | None = None) -> None:
        self.size, self.batch_size, self.shuffle = int(size), int(batch_size), shuffle
        self.batches_done = batches_done
        #: The seed of the current epoch's order (None before the first epoch, or unshuffled).
        self.seed: int | None = None
        self._resume: dict[str, Any] | None = None

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        resume, self._resume = self._resume, None
        if resume is not None:
            self.seed, skip = resume["seed"], resume["batches_done"] * self.batch_size
            if resume["rng"] is not None:
                torch.set_rng_state(resume["rng"])
        else:
            self.seed = int(torch.empty((), dtype=torch.int64).random_().item()) if self.shuffle else None
            skip = 0
        if self.seed is None:
            order = torch.arange(self.size)
        else:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        yield from order[skip:].tolist()

    def state_dict(self) -> dict[str, Any]:
        """The current epoch's seed, the batches of it the training loop has taken, and the
        global torch generator's state (which draws the later epochs' seeds)."""
        done = int(self.batches_done()) if self.batches_done is not None else 0
        return {"seed": self.seed, "batches_done": done, "batch_size": self.batch_size, "size": self.size,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the saved epoch at the next iteration: its order, less the batches taken."""
        if not state:
            return
        if (state.get("size"), state.get("batch_size")) != (self.size, self.batch_size):
            raise RefusedValue(f"the checkpoint's train loader had {state.get('size')} items in batches of "
                             f"{state.get('batch_size')}, this one {self.size} in batches of {self.batch_size}: "
                             "resume with the data settings of the interrupted run")
        if int(state["batches_done"]) * self.batch_size >= self.size:
            return  # saved after the epoch's last batch: the next iteration is a new epoch
        self._resume = {"seed": state["seed"], "batches_done": int(state["batches_done"]), "rng": state.get("rng")}


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` whose state Lightning keeps in its
    checkpoints (the loader's ``state_dict``/``load_state_dict``, see the module docstring)."""

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict() if isinstance(self.sampler, ResumableSampler) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.load_state_dict(state)
