"""The warnings of the algorithms (also exported by ``pl_energy`` and ``pl_energy.algorithms``), and
the messages they carry. ``EnergyModule`` logs each kind once per run."""

import warnings


class NotConvergedWarning(UserWarning):
    """Inference stopped (step cap, or settled on kinks) before its residual reached the tolerance."""


class BatchStatisticsWarning(UserWarning):
    """A BatchNorm in training mode: the update treats the batch statistics as constants."""


class EstimateErrorWarning(UserWarning):
    """The estimate's own error bound (``Estimate.error_bound``) exceeds its tolerance."""


class PrecisionWarning(UserWarning):
    """The nudge is so weak that the dtype's rounding is a large part of the estimate."""


#: The message of :class:`BatchStatisticsWarning`.
BATCH_STATISTICS = (
    "BatchNorm in training mode: the update of an energy-based algorithm is the gradient with this "
    "batch's statistics held constant (inference re-evaluates the layers many times, so one set of "
    "statistics is fixed per batch), not backprop through the statistics as bp computes it; its "
    "agreement with its reference says nothing about that difference. On a BatchNorm ResNet on MNIST "
    "z_il reached 37% after one epoch where bp reached 98%: compare with bp, or leave BatchNorm out "
    "(or in eval mode)")

#: The message of :class:`NotConvergedWarning`.
NOT_CONVERGED = (
    "inference stopped before its residual reached tol, so this estimate is read off a state that "
    "may be short of equilibrium: the step cap was hit (raise steps, loosen tol, or use a faster "
    "solver: 'error' for pc and pc_nudge, 'newton' for pc's lam = 1 on a trained smooth network, "
    "'nesterov' or 'sweep' for ep and chl), or the damped "
    "steps settled on the kinks of a ReLU/max-pool energy and the active-set solve of its linear "
    "pieces (pc, pc_nudge) did not find its piece within its rounds or cycled, or is off "
    "(active_set=False), so the update depends on where descent stopped (a smooth activation "
    "avoids it); Estimate.inference has the residual"
)


def warn_if_not_converged(report, stacklevel: int) -> None:
    """A :class:`NotConvergedWarning` for an inference phase (its ``InferenceReport``) that was
    given a tolerance and did not reach it; ``stacklevel`` as the caller's own."""
    if report.tol is not None and not report.converged:
        warnings.warn(NOT_CONVERGED, NotConvergedWarning, stacklevel=stacklevel + 1)
