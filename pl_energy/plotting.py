"""Small matplotlib helpers (Agg backend, no display needed) for agreement and energy plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ENERGY_COMPONENTS = ("internal", "supervised", "total")


def energy_trace_figure(trace: Mapping[str, Sequence[float]], title: str = "",
                        weight: str = "\N{GREEK SMALL LETTER LAMDA}") -> Figure:
    """Energy components per inference step (Millidge et al. 2022, Fig. 2A).

    ``trace`` is ``InferenceTrace.as_dict()``: lists indexed by inference step, step 0 first.
    The panels are I, the supervised loss L as it is (not multiplied by its weight) and the total
    E = I + ``weight`` L that inference minimises (``weight``: the symbol of the supervised
    term's weight, lambda for PC, beta for EP).
    """
    titles = ("I (internal energy)", "L (supervised loss, unweighted)", f"E = I + {weight} L (total)")
    fig, axes = plt.subplots(1, len(ENERGY_COMPONENTS), figsize=(11, 3), squeeze=False)
    for ax, name, text in zip(axes[0], ENERGY_COMPONENTS, titles):
        values = list(trace.get(name, []))
        ax.plot(range(len(values)), values, marker="." if len(values) < 30 else None)
        ax.set_title(text, fontsize=10)
        ax.set_xlabel("inference step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _fit_flat_axis(ax, values)
    axes[0][0].set_ylabel("energy (batch mean)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _fit_flat_axis(ax, values: Sequence[float]) -> None:
    """A constant series (or a single point) gets an axis around its value, not matplotlib's
    fixed +-0.05, which flattens small energies to nothing."""
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    if finite and max(finite) == min(finite):
        pad = abs(finite[0]) * 0.05 or 1e-12
        ax.set_ylim(finite[0] - pad, finite[0] + pad)


def agreement_figure(history: Sequence[Mapping[str, float]], title: str = "") -> Figure:
    """Global agreement with the reference gradient over training.

    ``history`` holds one mapping per measurement with ``step`` and the global metrics
    ``cosine``, ``rel_error``, ``sign``, ``norm_ratio``.
    """
    metrics = ("cosine", "rel_error", "sign", "norm_ratio")
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3), squeeze=False)
    steps = [row["step"] for row in history]
    for ax, name in zip(axes[0], metrics):
        values = [row[name] for row in history]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        _fit_flat_axis(ax, values)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating folders) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def log_figure_to(trainer: "pl.Trainer", make_figure, relative_path: str | Path, key: str,
                  step: int | None = None) -> Path | None:
    """Save a figure as PNG under the trainer's ``log_dir`` and send it to W&B loggers.

    Must be called on every rank (``trainer.log_dir`` is a collective under DDP); only global
    rank 0 draws, writes and logs. Returns the path on rank 0, else None.
    """
    log_dir = trainer.log_dir or trainer.default_root_dir
    return _rank_zero_save_figure(trainer, make_figure, Path(log_dir) / relative_path, key, step)


@rank_zero_only
def _rank_zero_save_figure(trainer, make_figure, path: Path, key: str, step: int | None):
    path = save_figure(make_figure(), path)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_image(key=key, images=[str(path)], step=step)
    return path

