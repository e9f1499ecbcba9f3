"""Where a run's outputs go: one folder per run, for every logger, and figures sent to the loggers.

The run's folder is the first logger's: its ``log_dir`` for the CSV and TensorBoard loggers
(``./lightning_logs/version_N``, the folder Lightning's ``ModelCheckpoint`` puts ``checkpoints/``
in; with TensorBoard's ``sub_dir`` the files go to that sub-folder and the checkpoints stay
above it), ``<save_dir>/<project>/<run id>`` for W&B (beside its checkpoints; there
``trainer.log_dir`` is the shared ``save_dir``, where each run would overwrite the last one's
files). The
configuration, plots, energy traces and predictions of a run are written there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .plotting import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def run_directory(trainer: pl.Trainer) -> Path:
    """The run's own folder (see the module docstring). A collective under DDP: call it on
    every rank; all get rank 0's answer."""
    if not trainer.loggers:
        path = trainer.default_root_dir
    elif isinstance(trainer.loggers[0], (CSVLogger, TensorBoardLogger)):
        path = trainer.loggers[0].log_dir
    else:
        logger = trainer.loggers[0]
        if trainer.is_global_zero:
            logger.experiment  # noqa: B018  (starts the run, which names its version)
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        path = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return Path(trainer.strategy.broadcast(str(path)))


def log_figure(trainer: pl.Trainer, make_figure: Callable[[], Figure], relative_path: str | Path,
               key: str, step: int | None = None) -> Path | None:
    """Save a figure as PNG in the run's folder and send it to the loggers: an image in W&B,
    a figure in TensorBoard (``key``, at ``step``).

    Must be called on every rank (:func:`run_directory` is a collective); only global rank 0
    draws, writes and logs. Returns the PNG's path on rank 0, else None.
    """
    path = run_directory(trainer) / relative_path
    if not trainer.is_global_zero:
        return None
    figure = make_figure()
    save_figure(figure, path)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
        elif type(logger).__name__ == "WandbLogger":
            logger.log_image(key=key, images=[str(path)], step=step)
    return path
