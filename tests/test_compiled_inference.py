"""Compiled inference steps (``core.compiled_steps``): one graph per step, eager's numbers.

Oracles: Dynamo's own account of what it captured (``torch._dynamo.explain``: graphs and graph
breaks), and the eager steps, which ``tests/test_solvers.py`` holds to autograd's gradients of
the papers' energy; compiled steps must equal them to rounding in float64.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from pl_energy import DivergenceError, EnergyModule, build_algorithm, mlp
from pl_energy.algorithms import predictive_coding
from pl_energy.algorithms.warnings import NotConvergedWarning
from pl_energy.algorithms.predictive_coding import PAPER_SETTINGS
from pl_energy.core import Loss, PredictiveCodingEnergy, relax
from pl_energy.core import compiled_steps, solvers
from pl_energy.core.compiled_steps import compilable, compile_graph
from pl_energy.core.reduced_input import FirstLayerInRowSpace
from helpers import max_relative, papers_update


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


def test_compiled_steps_run_eagerly_past_the_recompile_limit(problem):
    """More batch shapes than torch keeps graphs for: the steps of the later ones run eagerly,
    with eager's numbers (under ``fullgraph`` torch raised there before). The limit is lowered
    with torch's own ``config.patch``: pytest >= 9.2's ``monkeypatch.setattr`` deletes a
    config entry on undo, which hides it for the rest of the process."""
    network, inputs, targets = problem
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):
        for size in (32, 16):
            pairs = [nudged(network, inputs[:size], targets[:size], first_order=False) for _ in range(2)]
            for (energy, state), compile in zip(pairs, ({"backend": "aot_eager"}, None)):
                relax(energy, state, 20, 0.1, solver="gd", compile=compile)
            assert all(torch.equal(a, b) for a, b in zip(*(state.activities for _, state in pairs)))


def test_a_backend_that_cannot_compile_is_named_in_one_line(problem):
    """A backend that fails (inductor without a C++ compiler, say) is refused in one line that
    says what to do, for the whole estimate and for the inference steps alike."""
    def failing(graph, example_inputs):
        raise RuntimeError("no C++ compiler found\n(a long trace)")

    network, inputs, targets = problem
    for settings, what in (({}, "pc_nudge's estimate"), (dict(PAPER_SETTINGS, lam=0.01, steps=60), "the inference steps")):
        with pytest.raises(RuntimeError, match=rf"^torch.compile could not compile {what} \(RuntimeError: no C\+\+ "
                                               r"compiler found\): run eagerly \(compile=False"):
            run(network, inputs, targets, {"backend": failing}, **settings)


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


@pytest.fixture
def graph_results(monkeypatch):
    """What each call of the compiled default estimate (``algorithms.graph_estimate``) returned:
    an ``Estimate``, or None where the eager path took over."""
    results = []
    original = predictive_coding.graph_estimate

    def recorded(*args):
        results.append(original(*args))
        return results[-1]

    monkeypatch.setattr(predictive_coding, "graph_estimate", recorded)
    return results


def same_estimates(compiled, eager, tolerance):
    """Gradients, nudge, error bound and inference reports of two estimates to ``tolerance``."""
    assert max_relative(compiled.gradients, eager.gradients) <= tolerance
    assert compiled.nudge == pytest.approx(eager.nudge, rel=tolerance)
    assert (compiled.error_bound is None) == (eager.error_bound is None)
    assert (compiled.error_bound or {}).keys() == (eager.error_bound or {}).keys()
    assert all(compiled.error_bound[k] == pytest.approx(eager.error_bound[k], rel=1e-3, abs=tolerance)
               for k in eager.error_bound or {})
    assert [(r.solver, r.steps, r.converged, r.tol, r.backoffs, r.settled) for r in compiled.inference] == [
        (r.solver, r.steps, r.converged, r.tol, r.backoffs, r.settled) for r in eager.inference]
    assert [r.step_size for r in compiled.inference] == [r.step_size for r in eager.inference]
    assert torch.equal(compiled.output, eager.output) or torch.allclose(compiled.output, eager.output, rtol=tolerance)
    assert compiled.loss.item() == pytest.approx(eager.loss.item(), rel=tolerance)


@pytest.mark.parametrize("settings", [
    {}, {"centered": True}, {"gamma": 0.5},
    dict(PAPER_SETTINGS, lam=0.01), dict(PAPER_SETTINGS, lam=0.01, steps=20, centered=True, error_estimate=False),
    # lam 0.3: damped steps on the ReLU kinks, halved three times at a residual of 3e-2 (at lam 0.01 the
    # residual reaches float64's rounding, 1e-17, within 6 steps, and the halvings there follow rounding
    # noise, which differs between eager and compiled with the processor's BLAS)
    {"lam": 0.3, "solver": "error", "tol": None, "steps": 12},
], ids=["default", "centered", "gamma", "papers", "papers-centered-bare", "error-fixed-steps"])
def test_the_estimate_compiled_is_one_graph_with_eager_numbers(settings, problem, graph_results):
    """pc_nudge's default estimate (its phases stop at their first-order start) and the papers'
    fixed steps (the energies judged after the graph) run as one graph without breaks
    (``fullgraph``) and give the eager estimate's numbers in float64; a second batch and a
    parameter changed in place (a training step) reuse the graph. Eager's numbers are held to
    autograd's BP by ``tests/test_limits.py`` and ``test_nudge.py``, and to the papers' loop
    written from their equations by ``test_solvers.py``."""
    torch._dynamo.reset()
    counters.clear()
    network, inputs, targets = problem
    for x, y in ((inputs, targets), (inputs.flip(0), targets.flip(0))):
        eager = run(network, x, y, None, **settings)
        compiled = run(network, x, y, {"backend": "aot_eager"}, **settings)
        same_estimates(compiled, eager, 1e-12)
        assert [r.residual for r in compiled.inference] == pytest.approx([r.residual for r in eager.inference],
                                                                          rel=1e-6, abs=1e-15)
        assert compiled.inference[0].steps == settings.get("steps", 0)
        with torch.no_grad():
            network[0][0].weight.mul_(1.01)
    assert len(graph_results) == 2 and None not in graph_results
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_the_compiled_estimate_meets_oracles_written_in_the_test(problem, graph_results):
    """Independent of the library's energy, in float64: the default (a nudge of one rounding
    unit) is backprop's gradient, autograd of the loss, to rounding, on the ReLU and a tanh MLP;
    the papers' 50 steps are the papers' loop written from their equations
    (``helpers.papers_update``)."""
    network, inputs, targets = problem
    torch.manual_seed(4)
    tanh = mlp([40, 16, 12, 10], activation="tanh").double()
    for net in (network, tanh):
        names, parameters = zip(*net.named_parameters())
        bp = dict(zip(names, torch.autograd.grad(F.cross_entropy(net(inputs), targets), parameters)))
        assert max_relative(run(net, inputs, targets, {"backend": "aot_eager"}).gradients, bp) <= 1e-9
    papers = run(tanh, inputs, targets, {"backend": "aot_eager"}, **dict(PAPER_SETTINGS, lam=0.01))
    expected = papers_update(tanh, inputs, targets, lam=0.01, steps=50, step_size=0.1)
    assert max_relative(papers.gradients, expected) <= 1e-10
    assert len(graph_results) == 3 and None not in graph_results


def test_the_estimate_compiled_by_inductor_gives_eager_numbers_in_float32(problem, graph_results):
    """Inductor's code of the whole estimate (C++ wrapper on a CPU) against eager, float32, on
    a hidden layer of ReLUs dead for the whole batch (lam's dead-layer rule without its branch),
    the default and 10 of the papers' steps: the same numbers to float32 rounding (an automatic
    lam is formed in float32 in the graph, in Python's float eagerly)."""
    network, inputs, targets = problem
    network = network.float()
    with torch.no_grad():
        network[1][0].bias.fill_(-1e3)  # the second hidden layer is 0 for every sample
    inputs = inputs.float()
    for settings in ({}, dict(PAPER_SETTINGS, lam=0.01, steps=10)):
        eager = run(network, inputs, targets, None, **settings)
        compiled = run(network, inputs, targets, {}, **settings)
        assert graph_results[-1] is not None
        same_estimates(compiled, eager, 1e-5)


def test_the_compiled_default_estimate_hands_over_to_eager_where_its_phases_do_not_stop_at_the_start(
        problem, graph_results):
    """A ReLU unit exactly on its kink at the free state (the eager path pins it), and a
    tolerance the first-order start does not meet (the eager path takes steps): the graph's
    result is dropped and the eager estimate is returned, bit for bit. Class indices out of
    range are refused as eagerly, before the graph."""
    network, inputs, targets = problem
    kinked = copy.deepcopy(network)
    with torch.no_grad():
        kinked[0][0].weight[0] = 0.0
        kinked[0][0].bias[0] = 0.0  # unit 0 of the first layer sits at 0 for every sample
    compiled = run(kinked, inputs, targets, {"backend": "aot_eager"})
    assert graph_results == [None]
    assert max_relative(compiled.gradients, run(kinked, inputs, targets, None).gradients) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)
        eager, compiled = (run(network, inputs, targets, compile, tol=1e-18) for compile in (None, {"backend": "aot_eager"}))
    assert graph_results[1] is None
    assert compiled.inference == eager.inference and compiled.inference[0].steps >= 1
    assert max_relative(compiled.gradients, eager.gradients) == 0
    bad = targets.clone()
    bad[0] = 10
    messages = []
    for compile in (None, {"backend": "aot_eager"}):
        with pytest.raises(ValueError) as error:
            run(network, inputs, bad, compile)
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "class indices" in messages[0]


def test_compiled_fixed_steps_take_lam_as_an_input_and_check_their_settings(problem, graph_results):
    """Another lam reuses the graph (a schedule or a sweep does not recompile, nor use up torch's
    recompile limit); settings changed after construction are checked as eager inference checks
    them (an independent review found step_size=0 returning an estimate)."""
    torch._dynamo.reset()
    counters.clear()
    network, inputs, targets = problem
    algorithm = build_algorithm("pc_nudge", **dict(PAPER_SETTINGS, steps=8, lam=0.01))
    algorithm.compile_inference = {"backend": "aot_eager"}
    for lam in (0.01, 0.03):
        algorithm.lam = lam
        eager = build_algorithm("pc_nudge", **dict(PAPER_SETTINGS, steps=8, lam=lam)).estimate(network, inputs, targets)
        same_estimates(algorithm.estimate(network, inputs, targets), eager, 1e-12)
    assert None not in graph_results and counters["stats"]["unique_graphs"] == 1
    algorithm.step_size = 0.0
    with pytest.raises(ValueError, match="step_size must be > 0"):
        algorithm.estimate(network, inputs, targets)


def test_compiled_fixed_steps_that_diverge_raise_the_eager_error(problem, graph_results):
    """The graph's energies judged after it: a diverging run is handed to the eager path,
    which names the first bad step as it does uncompiled."""
    network, inputs, targets = problem
    messages = []
    for compile in (None, {"backend": "aot_eager"}):
        with pytest.raises(DivergenceError) as error:
            run(network, inputs, targets, compile, **dict(PAPER_SETTINGS, lam=1.0, step_size=8.0, steps=10))
        messages.append(str(error.value))
    assert messages[0] == messages[1] and "at step" in messages[0]
    assert graph_results == [None]


def test_the_compiled_default_estimate_runs_eagerly_where_its_graph_does_not_apply(problem, graph_results):
    """No hidden layer (no response to take lam from), inputs with more than two dimensions
    (the closed forms are for flat ones), and more shapes than torch keeps graphs for: the eager
    estimate, as without compiling (found by an independent review: each raised before)."""
    network, inputs, targets = problem
    shallow = mlp([40, 10]).double()
    assert max_relative(run(shallow, inputs, targets, {"backend": "aot_eager"}).gradients,
                        run(shallow, inputs, targets, None).gradients) == 0
    sequences, dense = inputs.reshape(8, 4, 40), torch.rand(8, 4, 10, dtype=torch.float64).softmax(-1)
    compiled = run(network, sequences, dense, {"backend": "aot_eager"}, lam="auto")
    assert max_relative(compiled.gradients, run(network, sequences, dense, None).gradients) == 0
    assert graph_results == []
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):  # not monkeypatch: see the test above
        for size in (32, 16):
            compiled = run(network, inputs[:size], targets[:size], {"backend": "aot_eager"})
            same_estimates(compiled, run(network, inputs[:size], targets[:size], None), 1e-12)
    assert graph_results[0] is not None and graph_results[1] is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{}, {"mode": "reduce-overhead"}], ids=["inductor", "cuda-graphs"])
def test_the_compiled_default_estimate_on_cuda_computes_what_eager_computes(options, problem, graph_results):
    """The whole default estimate as one graph on a GPU, with CUDA graphs under
    ``reduce-overhead`` (whose replays overwrite their outputs: the estimate clones them), two
    batches, each against eager, float64."""
    network, inputs, targets = problem
    network = network.cuda()
    estimates = []
    for x, y in ((inputs, targets), (inputs.flip(0), targets.flip(0))):
        x, y = x.cuda(), y.cuda()
        eager = run(network, x, y, None)
        estimates.append((run(network, x, y, options), eager))
    for compiled, eager in estimates:  # the first batch's estimate after the second replay
        same_estimates(compiled, eager, 1e-10)
    assert None not in graph_results


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
