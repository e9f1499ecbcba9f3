"""Figures of agreement and energy traces, as ``matplotlib.figure.Figure`` objects.

The figures are built without ``pyplot``: no backend is chosen or changed (inline plots in a
notebook keep working), no display is needed, and nothing is left open in pyplot's registry.
matplotlib itself is imported when the first figure is drawn.
In a notebook, show one by leaving it as a cell's last value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .metrics import METRICS

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn, not with the shell
    from matplotlib.figure import Figure

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
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 3))
    axes = fig.subplots(1, len(ENERGY_COMPONENTS), squeeze=False)
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
    ``cosine``, ``rel_error``, ``sign``, ``norm_ratio``; where it also holds
    ``worst_layer_rel_error``, that is drawn in the ``rel_error`` panel beside the global one.
    """
    metrics = METRICS
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    steps = [row["step"] for row in history]
    for ax, name in zip(axes[0], metrics):
        values = [row[name] for row in history]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label="global")
        if name == "rel_error" and all("worst_layer_rel_error" in row for row in history):
            worst = [row["worst_layer_rel_error"] for row in history]
            ax.plot(steps, worst, marker="." if len(steps) < 30 else None, label="worst layer")
            ax.legend(fontsize=8)
            values = values + worst
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        _fit_flat_axis(ax, values)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
