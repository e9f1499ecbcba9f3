"""Shared by ``ep`` and ``chl``: the free phase of the Hopfield energy and its exact reference."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..core.arithmetic import TF32_EPSILON, describe_tf32, tf32_remedy
from ..core.hopfield import HopfieldEnergy, HopfieldState
from ..core.implicit import equilibrium_gradient
from ..core.inference import InferenceReport, Relaxation
from ..core.losses import Loss, as_loss
from .validation import check_batch
from .warnings import NotConvergedWarning, PrecisionWarning
from .contrastive import ContrastiveAlgorithm

#: Above this free-phase residual the implicit-differentiation reference is flagged.
REFERENCE_RESIDUAL = 1e-6
#: The rounding floor of a residual measured against the nudge's move: this many machine
#: epsilons of the O(1) states over the relative move h (float32 sigmoid nets stall at about
#: 60 eps / h; with 10 the nudged phases of EP's default ran to the step cap).
ROUNDING_EPSILONS = 100
#: The resolution of relaxed states computed through TF32 products or convolutions: this many
#: TF32 epsilons over the move (emulated TF32 moved EP's and CHL's estimates by 0.06 to 1.35 of
#: them on clip MLPs and a small clip CNN, up to 12 with truncation instead of rounding, far more
#: on ill-conditioned energies; ``core.arithmetic``).
TF32_EPSILONS = 1
#: A nudge whose rounding floor exceeds this fraction is refused (allow_imprecise: stops there).
REFUSED_ROUNDING = 0.1


def check_resolution(algorithm: "HopfieldAlgorithm", tf32: tuple[str, ...], moved: float, state: HopfieldState,
                     what: str, fix: str, warned: float) -> float:
    """The rounding floor of an estimate read divided by ``moved`` (the relative move its nudge
    makes), ``ROUNDING_EPSILONS`` machine epsilons of the O(1) states' dtype over ``moved``,
    which is returned (the tolerances' floor: a residual measured in that arithmetic reaches
    it). The estimate's resolution is that floor, or ``TF32_EPSILONS`` TF32 epsilons over
    ``moved`` where a GPU runs the network's products or convolutions in TF32 (``tf32``, from
    ``core.arithmetic.tf32_operations``): above ``warned`` a ``PrecisionWarning`` (more on an
    ill-conditioned energy), above ``REFUSED_ROUNDING`` refused in one line unless
    ``allow_imprecise``. ``what`` names the nudge, ``fix`` says what to change."""
    floor = rounding_floor(state) / moved if moved > 0 else 0.0
    resolved = max(floor, TF32_EPSILONS * TF32_EPSILON / moved if tf32 and moved > 0 else 0.0)
    if resolved > warned:
        in_tf32 = resolved > floor
        arithmetic = describe_tf32(tf32) if in_tf32 else str(state.output.dtype)
        problem = (f"{what} moves the state by {moved:.1e} of its size, which {arithmetic} resolves to about "
                   f"{resolved:.0%} (rounding of the relaxed O(1) states; more on an ill-conditioned energy)")
        if in_tf32:
            fix = f"run them in IEEE float32 ({tf32_remedy(tf32)}), or {fix}"
        if resolved > REFUSED_ROUNDING and not algorithm.allow_imprecise:
            raise ValueError(f"{problem}; {fix} (allow_imprecise=True returns it anyway, with a PrecisionWarning)")
        warnings.warn(f"{problem}; {fix}", PrecisionWarning, stacklevel=5)
    return floor


def warn_if_stalled_by_tf32(tf32: tuple[str, ...], reports: tuple[InferenceReport, ...]) -> None:
    """A ``PrecisionWarning`` naming TF32 where a phase stopped short of its tolerance and a GPU
    runs the network's products or convolutions in TF32 (``tf32``, from
    ``core.arithmetic.tf32_operations``): its relaxed states stall above the tolerances float32
    reaches (emulated on a clip MLP: the free phase at 1.6e-6, the nudged ones at 1e-4 of what
    the nudge changed), so more steps do not help."""
    if tf32 and any(report.tol is not None and not report.converged for report in reports):
        warnings.warn(f"inference stopped short of tol with {describe_tf32(tf32)}, in which relaxed states stall "
                      f"above the tolerances float32 reaches: run them in IEEE float32 ({tf32_remedy(tf32)}) or "
                      "loosen tol", PrecisionWarning, stacklevel=4)


def read_tolerance(tol: float, moved: float, state: HopfieldState) -> float:
    """The residual a phase measured against the O(1) state must reach when the estimate reads
    it divided by the relative move ``moved`` the nudge makes (a one-sided EP's free phase; both
    of CHL's phases, whose move at the first layer is gamma^(L-1)): tol * min(1, moved), since
    an error of the state of r relative is one of r / moved in the estimate; never below the
    rounding floor of the O(1) states, ``ROUNDING_EPSILONS`` machine epsilons."""
    return max(tol * min(1.0, moved), rounding_floor(state))


def rounding_floor(state: HopfieldState) -> float:
    """The relative residual below which relaxed O(1) states are rounding: ``ROUNDING_EPSILONS``
    machine epsilons of their dtype."""
    return ROUNDING_EPSILONS * torch.finfo(state.output.dtype).eps


@dataclass
class HopfieldAlgorithm(ContrastiveAlgorithm):
    """Free phase: relax the Hopfield energy from the feedforward pass (``steps``, ``tol``).

    Args:
        gamma: feedback strength; layer l's energy is weighted gamma^(l-1).

    The inference settings (``solver``, ``steps``, ``step_size``, ``tol``, ``trace``) are
    ``RelaxingAlgorithm``'s. By default every phase converges: over-relaxed even/odd sweeps
    (successive over-relaxation of Scellier & Bengio's asynchronous updates, halved if the
    energy ever rises, ``step_size="auto"``) to a relative residual of 1e-6, at most 500 sweeps;
    the default ``solver="adaptive_sweep"`` starts at the factor 1.3 and raises it towards the
    optimum the sweeps' own contraction implies (``core.adaptive_sweep``), ``solver="sweep"``
    keeps 1.3. On Millidge et al. 2022's MLP at initialisation ``sweep`` takes 15 sweeps per phase, 0.23x the time of descent at step 0.5 (110
    steps) and 0.42x of nesterov (``benchmarks/RESULTS.md``); along the first 200 batches of
    EP's training a median of 105 sweeps per batch (three phases) where the fixed 1.3 of
    ``solver="sweep"`` takes 157.5. With 30 sweeps and no tolerance, EP on MNIST reached 28% after
    one epoch; converged, 74-78%.

    The default network of ``EnergyModule`` for these algorithms has ``clip`` units
    (min(max(x, 0), 1), Scellier & Bengio 2017): bounded, so the energy always has a minimum,
    with slope 1, so signals do not shrink layer by layer as with sigmoid units.
    """

    default_activation: ClassVar[str] = "clip"
    solver: str = "adaptive_sweep"
    steps: int = 500
    step_size: float | str | None = "auto"
    tol: float | None = 1e-6
    gamma: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.gamma <= 1:
            raise ValueError(f"{self.name}: gamma (feedback strength) must lie in (0, 1], got {self.gamma}")

    def energy(self, network: nn.Module, loss: Loss) -> HopfieldEnergy:
        return HopfieldEnergy(network, loss, gamma=self.gamma)

    def free_phase(self, network: nn.Module, inputs: Tensor, targets: Tensor | None,
                   loss: Loss) -> tuple[HopfieldEnergy, HopfieldState, Relaxation]:
        energy = self.energy(network, loss)
        with self._precision(inputs):
            state = energy.free_state(inputs, targets)
            return energy, state, self.relax(energy, state)

    def predict(self, network: nn.Module, inputs: Tensor) -> Tensor:
        """The output at the free equilibrium (detached). The relaxation differentiates the
        couplings, so it leaves inference mode and works on a copy of the batch made outside it:
        this works under ``torch.inference_mode()``, ``torch.no_grad()`` and Lightning's
        evaluation loops alike."""
        with torch.inference_mode(False), torch.enable_grad():
            inputs = inputs.clone()  # a tensor made in inference mode cannot enter autograd
            return self.free_phase(network, inputs, None, as_loss("mse"))[1].output.detach()

    def reference(self, network: nn.Module, inputs: Tensor, targets: Tensor,
                  loss: str | Loss = "cross_entropy") -> dict[str, Tensor]:
        """dL/dtheta at this algorithm's free equilibrium (implicit differentiation)."""
        loss = as_loss(loss)
        check_batch(inputs, targets)
        energy, state, relaxation = self.free_phase(network, inputs, targets, loss)
        if relaxation.report.residual > REFERENCE_RESIDUAL:
            warnings.warn(
                f"the reference is the implicit gradient at a free equilibrium, but the free phase "
                f"stopped at a relative residual of {relaxation.report.residual:.1e}: it is taken at "
                "a state that is not one; set tol (e.g. 1e-8) and enough steps", NotConvergedWarning,
                stacklevel=2)
        # each trainable parameter once (a tied weight gets the total over its uses)
        trainable = [(name, p) for name, p in network.named_parameters() if p.requires_grad]
        with self._precision(inputs):
            grads = equilibrium_gradient(energy.internal_energy, inputs, state.activities[1:],
                                         loss.per_sample_gradient(state.output, state.targets),
                                         [p for _, p in trainable])
        return {name: g for (name, _), g in zip(trainable, grads)}
