"""``pc_negative``: predictive coding with negative nudging, as in the PC benchmarks' configurations
(Pinchetti et al. 2024, PCX: positive, negative and centered nudging of the output).

The output is pushed away from the target: inference relaxes E = I - lam L from the free
equilibrium, and the update is the contrast of the free phase (whose weight gradient is zero,
Millidge et al. 2022 Eq. 20) against that phase:

    g = (0 - dE^{-lam}/dtheta (x_{-lam})) / lam  ->  dL/dtheta  as lam -> 0.

Its error is O(lam), as positive nudging's (``pc_nudge``), with the opposite sign to first order:
the mean of the two is centered nudging (``pc_nudge`` with ``centered=True``), whose error is
O(lam^2). A configuration of the contrastive estimate in one file: this module is the whole of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .predictive_coding import PredictiveCoding


@dataclass
class NegativeNudging(PredictiveCoding):
    """PC with negative nudging.

    Args:
        lam: strength of the negative nudge, E = I - lam L, or "auto" (as pc_nudge's).
        error_tolerance: warn when the worst layer's ``error_bound`` exceeds this (None: never).
        centered: +lam and -lam phases, error O(lam^2) (the same estimate as ``pc_nudge`` with
            ``centered=True``).

    ``gamma`` and the inference settings are ``PredictiveCoding``'s.
    """

    lam: float | str = "auto"
    centered: bool = False
    error_tolerance: float | None = 0.05
    name = "pc_negative"

    @property
    def traced_phase(self) -> str:  # centered: the trace is the +lam phase's, as pc_nudge's
        return "the +lam phase" if self.centered else "the negatively nudged phase"

    def __post_init__(self):
        super().__post_init__()
        if self.lam != "auto" and self.lam <= 0:
            raise ValueError(f"lam is the strength of the negative nudge and must be > 0, got {self.lam}")

    def signs(self) -> tuple[int, ...]:
        """-lam alone, or +lam and -lam when centered."""
        return (1, -1) if self.centered else (-1,)
