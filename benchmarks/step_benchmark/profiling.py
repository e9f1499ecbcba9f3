"""Where a step's time goes: torch.profiler ops and cProfile functions."""

from __future__ import annotations

import statistics

import torch

from .cases import Case, data_root, mnist_batches, random_batches
from .measure import Stepper, compile_for_timing, sync
from .variants import VARIANTS


def profile_variant(case: Case, key: str, device: torch.device, steps: int = 5,
                    compiled: dict | None = None) -> str:
    """Where a step's time goes: torch.profiler ops (self time) and cProfile Python functions,
    on the network the benchmark times the variant on (``compiled``: ``compile_layers``' options,
    also given to the inference steps)."""
    import cProfile
    import io
    import pstats
    from torch.profiler import ProfilerActivity, profile

    variant = next(v for v in VARIANTS if v.key == key)
    root = data_root()
    pool = (mnist_batches(case, 1, root) if case.data == "mnist" and root else random_batches(case, 1))
    x, y = (t.to(device) for t in pool[0])
    torch.manual_seed(0)
    network = case.builder(variant.hopfield)().to(device)
    if compiled is not None:
        compile_for_timing(network, compiled)
    initial = [p.detach().clone() for p in network.parameters()]
    stepper = Stepper(variant, network, torch.optim.SGD(network.parameters(), lr=1e-3), initial, compiled)
    for _ in range(2):
        stepper.restore()
        stepper.release(stepper(x, y))
    wall = statistics.median(stepper.timed(x, y, device) for _ in range(steps))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            stepper.restore()
            stepper.release(stepper(x, y))
        sync(device)
    averages = prof.key_averages()
    aten_self = sum(e.self_cpu_time_total for e in averages) / steps / 1e3
    out = [f"{case.key}/{key}: median step {wall * 1e3:.3f} ms without the profiler; "
           f"profiled ops' self CPU time {aten_self:.3f} ms per step (profiler-inflated)\n",
           averages.table(sort_by="self_cpu_time_total", row_limit=25)]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        stepper.restore()
        stepper.release(stepper(x, y))
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    out.append(f"cProfile over {steps} steps (tottime = time in the function itself):\n"
               + stream.getvalue())
    return "\n".join(out)
