"""The variants a step benchmark times: every algorithm, with the papers' and the default settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from pl_energy import build_algorithm
from pl_energy.algorithms.predictive_coding import PAPER_SETTINGS


@dataclass(frozen=True)
class Variant:
    key: str                    # row label
    algorithm: str | None       # None: textbook autograd BP
    hparams: dict = field(default_factory=dict)
    hopfield: bool = False      # ep, chl: run on the case's network of bounded units

    def build(self):
        return build_algorithm(self.algorithm, **self.hparams)


VARIANTS = (
    Variant("bp_textbook", None),
    Variant("bp", "bp"),
    Variant("z_il", "z_il"),
    Variant("fa_z_il", "fa_z_il"),
    Variant("pc", "pc", dict(PAPER_SETTINGS)),
    Variant("pc_nudge", "pc_nudge", dict(PAPER_SETTINGS, lam=0.01)),
    Variant("pc_converged", "pc"),
    Variant("pc_nudge_converged", "pc_nudge"),
    Variant("ep", "ep", dict(solver="gd", steps=50, step_size=0.5, tol=None, beta=0.1, centered=False),
            hopfield=True),
    # allow_imprecise: on VGG-5 in float32 chl's clamped phase is below the rounding of the relaxed
    # states (refused by default); the step is timed all the same, its agreement table shows the error
    Variant("chl", "chl", dict(solver="gd", steps=50, step_size=0.5, tol=None, allow_imprecise=True), hopfield=True),
)
VARIANT_NOTES = {
    "bp_textbook": "opt.zero_grad(); CE(net(x), y).backward(); opt.step()  (the reference)",
    "bp": "build_algorithm('bp')",
    "z_il": "defaults (inference_rate=1, lam=1)",
    "fa_z_il": "defaults (depth-1 steps)",
    "pc": "the papers' inference: solver='gd', steps=50, step_size=0.1 (lam=1)",
    "pc_nudge": "the papers' inference: solver='gd', steps=50, step_size=0.1 (lam=0.01)",
    "pc_converged": "defaults: solver='error', tol=1e-4 (relative residual), steps<=100 (lam=1)",
    "pc_nudge_converged": "defaults: solver='error', tol=1e-4, steps<=100 (lam=0.01)",
    "ep": "steps=50 free + 50 nudged, one-sided (beta=0.1, step_size=0.5)",
    "chl": "steps=50 free + 50 clamped (gamma=0.1, step_size=0.5)",
}
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-6, 1e-8)
