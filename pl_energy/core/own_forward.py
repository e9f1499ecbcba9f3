"""Whether calling a module computes its own ``forward`` on its own parameters, the premise of
the closed forms the predictive-coding energies put in a layer's place (``core.linearization``;
the Hopfield energy, which has no other way to evaluate a layer, warns about such modules or
refuses them: ``core.hopfield.check_own_forwards``)."""

from __future__ import annotations

from torch import nn


def computes_itself(module: nn.Module) -> bool:
    """Whether a call of ``module`` is its ``forward`` on its own parameters, differentiated as
    autograd differentiates it: no forward hooks or pre-hooks (which may change its input and
    output; the older weight_norm, spectral_norm and pruning are pre-hooks), no backward hooks
    (which may change the gradients autograd passes through it; nor on its parameters, as
    ``p.register_hook`` puts them), and no parametrized parameter (``torch.nn.utils.parametrize``:
    the weight is computed from other tensors, which are the parameters)."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or "parametrizations" in module._modules
                or any(p is not None and p._backward_hooks for p in module._parameters.values()))
