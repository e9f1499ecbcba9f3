"""The solver's step functions, eager or compiled by ``torch.compile`` as whole graphs.

Compiled where they trace as one graph (``compilable``): predictive-coding energies of layers
with closed forms (dense MLPs, ``ResidualMLP``); elsewhere the steps run eagerly.

``relax`` runs a phase through three functions of ``core.solvers``: ``measure`` (gradients and
the residual's pieces), ``advance`` (the rule's step size and the move) and ``run`` (fixed steps
nobody checks, each a ``step``: both, with the watched energies left on the device; compiled,
a whole run is one graph, which on a CPU saves the per-call cost of a compiled function, tens of
microseconds, at every step). Each is written without host reads (a damped step size is a tensor:
``solvers.DampedIteration``; moves by a tensor step: ``core.moves``), so that ``torch.compile``
traces each as one graph (``fullgraph=True``: a graph break raises) with static shapes
(``dynamic=False``): the energy gradient through every layer's closed form
(``core.linearization``), the residual's norms, the move and the re-linearisation of the moved
layers. The step size is an input of the graph, so a halved step does not recompile.

Inductor workaround: torch 2.14's post-grad pattern that fuses ``add(inp, mm(a, b))`` into
``addmm`` drops ``add``'s ``alpha`` (``torch.add(e, g @ W, alpha=lam)`` compiles to e + g W),
which the error gradient (``PredictiveCodingEnergy.error_gradients``) is made of; inductor's
pattern matcher is therefore turned off for these graphs (``tests/test_compiled_inference.py``
holds the reproduction: plain ``torch.compile`` is off by 8.9 there, in float64).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import solvers
from .kinks import has_pins
from .predictive_coding import PredictiveCodingEnergy


@dataclass(frozen=True)
class StepFunctions:
    """``measure``, ``advance`` and ``run`` of ``core.solvers``, eager or compiled; a compiled
    ``run`` unrolls its steps into one graph, so it is called for at most ``run_length`` steps
    at a time (a longer phase calls it again), which bounds the graph and its compile time."""

    measure: Callable
    advance: Callable
    run: Callable
    compiled: bool = False
    run_length: int | None = None


EAGER = StepFunctions(solvers.measure, solvers.advance, solvers.run)
_COMPILED: dict[tuple, StepFunctions] = {}
_GRAPHS: dict[tuple, Callable] = {}  # ``compiled``
#: The step functions compiled on a CPU. There a compiled call costs guards and wrappers, some
#: 70 us more than the eager ``measure`` of the seed MLP (126 against 58 us), which only a whole
#: run of fixed steps amortises (``benchmarks/RESULTS.md``): the watched loop's ``measure`` and
#: ``advance`` stay eager there. On a GPU all three are compiled.
COMPILED_ON_CPU = frozenset({"run"})
#: Steps per compiled run (the papers' 50: one graph per phase).
RUN_LENGTH = 50


def compilable(energy: object, solver: solvers.Solver) -> bool:
    """Whether the steps of ``solver`` on ``energy`` trace as whole graphs: a rule that reads
    nothing back (``Solver.compiles``) on a predictive-coding energy whose layers all have closed
    forms (``core.linearization``: dense and ``ResidualMLP`` layers) and no unit on a pinned kink
    (``core.kinks``: a pin is not traced). Others linearise through autograd, which
    ``torch.compile`` does not trace as one graph."""
    return solver.compiles and isinstance(energy, PredictiveCodingEnergy) and all(
        linearizer.parts is not None or linearizer.scaled_parts is not None for linearizer in energy.linearizers
    ) and not has_pins(energy.layers)


def step_functions(options: dict[str, Any] | None, energy: object = None,
                   solver: solvers.Solver | None = None) -> StepFunctions:
    """The eager functions for None or an energy that is not ``compilable``, else the ones
    compiled with ``torch.compile``'s keyword ``options`` (e.g. ``{}``, ``{"mode":
    "reduce-overhead"}`` for CUDA graphs on a GPU, ``{"backend": "aot_eager"}``; on a CPU only
    those of ``COMPILED_ON_CPU``), compiled once per process, device type and set of options."""
    if options is None or not compilable(energy, solver):
        return EAGER
    device = next(energy.layers[0].parameters()).device.type
    chosen = COMPILED_ON_CPU if device == "cpu" else frozenset({"measure", "advance", "run"})
    key = (device, tuple(sorted(chosen)), RUN_LENGTH,
           *sorted((name, repr(value)) for name, value in options.items()))
    if key not in _COMPILED:
        _COMPILED[key] = StepFunctions(*(
            compiled(function, options, device, function, "the inference steps") if function.__name__ in chosen
            else function for function in (solvers.measure, solvers.advance, solvers.run)),
            compiled=True, run_length=RUN_LENGTH)
    return _COMPILED[key]


def compiled(function: Callable, options: dict[str, Any], device: str, fallback: Callable, what: str) -> Callable:
    """``function`` compiled by ``compile_graph``, once per process, device type and set of
    options. Where torch has used up its ``recompile_limit`` graphs of it (8 by default: batch
    sizes, dtypes, networks in one process) ``fallback`` is called instead (under ``fullgraph``
    torch raises then, before the graph runs, so nothing was changed); a backend that fails to
    compile is refused in one line naming ``what`` (``compile_failure``)."""
    key = (function, fallback, device, *sorted((name, repr(value)) for name, value in options.items()))
    if key not in _GRAPHS:
        graph = compile_graph(function, options, device)

        def call(*args):
            try:
                return graph(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                return fallback(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:
                raise compile_failure(error, what) from error

        _GRAPHS[key] = call
    return _GRAPHS[key]


def compile_failure(error: Exception, what: str) -> RuntimeError:
    """One line for a ``torch.compile`` backend that failed (e.g. inductor without a C++
    compiler on a CPU), saying what to do; the backend's own error is chained."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in lines if not line.startswith("backend=")), type(error).__name__)
    return RuntimeError(f"torch.compile could not compile {what} ({cause}): run eagerly (compile=False, the same "
                        "numbers) or pick a backend that works on this machine, e.g. compile={'backend': 'aot_eager'}")


def replays_cuda_graphs(options: dict[str, Any]) -> bool:
    """Whether ``compile_graph``'s ``options`` record CUDA graphs, whose replays write their
    outputs where the last replay's were (a caller keeps what it returns by cloning it)."""
    import torch._inductor  # noqa: F401  (list_mode_options)

    if options.get("backend") == "cudagraphs":
        return True
    mode = options.get("mode")
    inductor = {**(torch._inductor.list_mode_options(mode) if mode else {}), **options.get("options", {})}
    return bool(inductor.get("triton.cudagraphs"))


def compile_graph(function: Callable, options: dict[str, Any], device: str = "cpu") -> Callable:
    """``torch.compile(function, fullgraph=True, dynamic=False, **options)``, with inductor's
    pattern matcher off (the module docstring's workaround; a ``mode`` becomes its options)
    and, on a CPU, inductor's C++ wrapper unless the options say otherwise: the graph is then
    called without a Python wrapper around its kernels (seed MLP, 50 gd steps, two interleaved
    runs: 3.87x and 3.97x plain BP against 4.40x and 4.35x with the Python wrapper; some 20 s
    more compiling)."""
    import torch._inductor  # noqa: F401  (list_mode_options)

    options = dict(options)
    if options.get("backend", "inductor") == "inductor":
        mode = options.pop("mode", None)
        inductor = {**({"cpp_wrapper": True} if device == "cpu" else {}),
                    **(torch._inductor.list_mode_options(mode) if mode else {}), **options.pop("options", {}),
                    "pattern_matcher": False}
        options["options"] = inductor
    return torch.compile(function, fullgraph=True, dynamic=False, **options)
