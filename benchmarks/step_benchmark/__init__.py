"""The step benchmark of ``benchmarks/bench_step.py``: variants, the MAC cost model, cases,
measurements (time, memory, agreement), targets and report, profiling."""
