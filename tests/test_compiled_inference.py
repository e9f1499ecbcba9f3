"""Compiled inference steps (``core.compiled_steps``): one graph per step, eager's numbers.

Oracles: Dynamo's own account of what it captured (``torch._dynamo.explain``: graphs and graph
breaks), and the eager steps, which ``tests/test_solvers.py`` holds to autograd's gradients of
the papers' energy; compiled steps must equal them to rounding in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from pl_energy import DivergenceError, EnergyModule, build_algorithm, mlp
from pl_energy.algorithms.predictive_coding import PAPER_SETTINGS
from pl_energy.core import Loss, PredictiveCodingEnergy, relax
from pl_energy.core import compiled_steps, solvers
from pl_energy.core.compiled_steps import compilable, compile_graph
from pl_energy.core.reduced_input import FirstLayerInRowSpace
from helpers import max_relative


@pytest.fixture
def problem():
    """Millidge et al. 2022's MLP shape at a tenth of the width, ReLU, float64."""
    torch.manual_seed(3)
    network = mlp([40, 16, 12, 10]).double()
    return network, torch.randn(32, 40, dtype=torch.float64), torch.randint(0, 10, (32,))


def nudged(network, inputs, targets, lam=0.01, first_order=True):
    energy = PredictiveCodingEnergy(network, Loss("cross_entropy"))
    free = energy.free_state(inputs, targets)
    return energy, energy.nudged(free, lam, energy.first_order_response(free) if first_order else None)


def explained(function, *args):
    explanation = torch._dynamo.explain(function)(*args)
    return explanation.graph_count, explanation.graph_break_count, explanation.break_reasons


def test_each_step_of_the_default_and_the_papers_solver_is_one_graph_without_breaks(problem):
    """The error solver's measure and damped advance (pc_nudge's default), the fixed-step gd
    step in the plain and in the faster coordinates, and a whole fixed-step run (the papers'
    settings: ``relax``'s plain loop calls it once per phase)."""
    energy, state = nudged(*problem)
    step_size = torch.tensor(1.0, dtype=torch.float64)
    error = solvers.ErrorDescent()
    coordinates, iteration = error.coordinates(energy), error.start()
    gradients, balance = solvers.measure(coordinates, state)
    cases = {
        "measure": (solvers.measure, coordinates, state),
        "advance": (solvers.advance, coordinates, iteration, state, gradients, balance, step_size),
        "error step": (solvers.step, coordinates, iteration, state, step_size),
        "gd step": (solvers.step, solvers.ActivityCoordinates(energy), solvers.Iteration(), state, step_size),
    }
    _, free = nudged(*problem, first_order=False)
    faster = FirstLayerInRowSpace.around(energy, free, 50)
    assert faster is not None
    cases["gd step, faster coordinates"] = (solvers.step, faster, solvers.Iteration(), free, step_size)
    cases["50 gd steps, faster coordinates"] = (solvers.run, faster, solvers.Iteration(), free, step_size, 50, 10)
    for name, (function, *args) in cases.items():
        graphs, breaks, reasons = explained(function, *args)
        assert (graphs, breaks) == (1, 0), (name, reasons)


def run(network, inputs, targets, compile, **settings):
    algorithm = build_algorithm("pc_nudge", **settings)
    algorithm.compile_inference = compile
    return algorithm.estimate(network, inputs, targets)


@pytest.mark.parametrize("settings", [
    {"lam": 0.01, "tol": 1e-10},  # the default error solver, made to take steps and damp them
    dict(PAPER_SETTINGS, lam=0.01),  # the papers' fixed steps (faster coordinates)
], ids=["error", "gd"])
def test_compiled_steps_give_eager_numbers_to_rounding(settings, problem, monkeypatch):
    """Inductor's code (pattern matcher off: ``compiled_steps.compile_graph``) against eager, in
    float64, with the same steps taken; a second batch reuses the graphs (no recompiles). Every
    step function compiled, as on a GPU (a CPU compiles only whole fixed-step runs); the 50
    fixed steps in compiled runs of 20, 20 and 10 (``RUN_LENGTH``), each watching its steps."""
    monkeypatch.setattr(compiled_steps, "COMPILED_ON_CPU", frozenset({"measure", "advance", "run"}))
    monkeypatch.setattr(compiled_steps, "RUN_LENGTH", 20)
    torch._dynamo.reset()
    counters.clear()
    network, inputs, targets = problem
    eager = run(network, inputs, targets, None, **settings)
    compiled = run(network, inputs, targets, {}, **settings)
    assert max_relative(compiled.gradients, eager.gradients) <= 1e-10
    (mine,), (theirs,) = compiled.inference, eager.inference
    assert (mine.steps, mine.converged, mine.settled, mine.backoffs) == (
        theirs.steps, theirs.converged, theirs.settled, theirs.backoffs)
    assert mine.steps > 1 and mine.residual == pytest.approx(theirs.residual, rel=1e-6)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1 and not counters["graph_break"]
    run(network, inputs.flip(0), targets.flip(0), {}, **settings)
    assert counters["stats"]["unique_graphs"] == graphs


def test_inductor_keeps_the_alpha_of_an_add_after_a_matrix_product():
    """torch 2.14's inductor fuses ``add(e, mm(g, W), alpha=a)`` into ``addmm(e, g, W)``, losing
    a; the error gradient is made of such sums, and ``compile_graph`` turns that pattern off."""
    torch.manual_seed(0)
    error, cotangent, weight = (torch.randn(8, 6, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64),
                                torch.randn(5, 6, dtype=torch.float64))

    def gradient(e, g, w):
        return torch.add(e, g @ w, alpha=0.01)

    expected = gradient(error, cotangent, weight)
    torch.testing.assert_close(compile_graph(gradient, {})(error, cotangent, weight), expected, rtol=1e-12, atol=0)


def test_energy_module_compiles_the_inference_steps_of_a_dense_network(problem):
    """``EnergyModule(compile=...)`` hands its options to the algorithm's inference, which runs
    compiled graphs on a dense MLP (the layers have closed forms) with eager's numbers."""
    network, inputs, targets = problem
    module = EnergyModule(network=network, algorithm="pc_nudge", algorithm_hparams=PAPER_SETTINGS,
                          compile={"backend": "aot_eager"})
    assert module.algorithm.compile_inference == {"backend": "aot_eager"}
    counters.clear()
    compiled = module.algorithm.estimate(module.network, inputs, targets)
    assert counters["stats"]["calls_captured"] > 0 and not counters["graph_break"]
    eager = build_algorithm("pc_nudge", **PAPER_SETTINGS).estimate(network, inputs, targets)
    assert max_relative(compiled.gradients, eager.gradients) <= 1e-12


def test_only_energies_whose_steps_trace_as_one_graph_are_compiled(problem):
    """Layers without a closed form linearise through autograd, and rules that read values back
    break graphs: their steps stay eager."""
    energy, _ = nudged(*problem)
    assert compilable(energy, solvers.ErrorDescent()) and compilable(energy, solvers.GradientDescent())
    assert not compilable(energy, solvers.Nesterov())  # it reads the turning test back every step
    convolutional = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()),
                                        torch.nn.Linear(8, 3))
    assert not compilable(PredictiveCodingEnergy(convolutional, Loss("cross_entropy")), solvers.GradientDescent())


def test_relax_compiled_names_the_same_first_bad_step_as_eager(problem):
    """Divergence is still caught when the steps are compiled, and named as eager names it."""
    network, inputs, targets = problem
    messages = []
    for compile in (None, {"backend": "aot_eager"}):
        energy, state = nudged(network, inputs, targets, lam=1.0, first_order=False)
        with pytest.raises(DivergenceError) as error:
            relax(energy, state, 100, 8.0, solver="gd", compile=compile)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "at step" in messages[0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{}, {"mode": "reduce-overhead"}], ids=["inductor", "cuda-graphs"])
@pytest.mark.parametrize("settings", [{"lam": 0.01, "tol": 1e-10}, dict(PAPER_SETTINGS, lam=0.01, steps=120)],
                         ids=["error", "gd"])
def test_compiled_inference_on_cuda_computes_what_eager_computes(options, settings, problem):
    """On a GPU every step function is compiled (``COMPILED_ON_CPU`` is for CPUs), with CUDA
    graphs under ``reduce-overhead``, whose replays write their outputs where the last ones
    were: 120 fixed steps are three compiled runs. Two batches, each against eager, float64."""
    network, inputs, targets = problem
    network = network.cuda()
    for batch in (slice(None), slice(None, None, -1)):
        x, y = inputs[batch].cuda(), targets[batch].cuda()
        eager = run(network, x, y, None, **settings)
        compiled = run(network, x, y, options, **settings)
        assert max_relative(compiled.gradients, eager.gradients) <= 1e-10
        assert compiled.inference[0].steps == eager.inference[0].steps
