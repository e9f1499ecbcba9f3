#!/usr/bin/env python3
"""What TF32 does to each algorithm's estimate, emulated on a CPU (``RESULTS.md``, "TF32,
emulated on a CPU"; ``pl_energy/core/arithmetic.py``).

TF32 keeps 10 of float32's 23 mantissa bits of every operand of a matrix product or convolution
and accumulates in float32. ``TF32`` emulates it at torch's dispatcher: the float32 operands of
``mm``, ``addmm``, ``bmm``, ``convolution`` and ``convolution_backward`` are rounded to nearest
(ties away from zero, as the tensor cores' conversion rounds) before the IEEE kernel runs. Both
products and convolutions are emulated on the MLP, convolutions only on VGG-5 (PyTorch's default
on Ampere and later GPUs).

For each algorithm the script reports the worst layer's relative change of the estimate under
TF32 against IEEE float32. For ep and chl it adds the nudge's relative move h, and the change in
TF32 epsilons over h (the unit of ep's and chl's TF32 check). For the exact algorithms it adds
their distance from bp when both run in TF32.

    python benchmarks/tf32_emulated.py            # the seed MLP (real MNIST) and VGG-5 at 1/8 width
    python benchmarks/tf32_emulated.py --quick    # tiny networks (the smoke test)
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS))
import bench_step  # noqa: E402,F401  (puts the repository and step_benchmark on sys.path)
from step_benchmark.cases import seed_mlp_batch  # noqa: E402
import pl_energy  # noqa: E402
from pl_energy.core.arithmetic import TF32_EPSILON  # noqa: E402
from pl_energy.core.networks import VGG  # noqa: E402

aten = torch.ops.aten


class TF32(TorchDispatchMode):
    """TF32 emulated: the float32 operands of products and convolutions rounded to nearest at 10
    mantissa bits (13 of float32's 23 dropped)."""

    OPERANDS = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2), aten.bmm.default: (0, 1),
                aten.convolution.default: (0, 1), aten.convolution_backward.default: (0, 1, 2)}

    def __init__(self, products: bool = True, convolutions: bool = True):
        super().__init__()
        self.rounded = {op: operands for op, operands in self.OPERANDS.items()
                        if (products if op in (aten.mm.default, aten.addmm.default, aten.bmm.default) else convolutions)}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        args = list(args)
        for index in self.rounded.get(func, ()):
            if args[index].dtype == torch.float32:
                bits = args[index].contiguous().view(torch.int32)
                args[index] = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
        return func(*args, **(kwargs or {}))


def worst_change(estimate: dict, reference: dict) -> float:
    """max over parameters of ||estimate - reference|| / ||reference||."""
    return max(float((estimate[k] - reference[k]).norm() / reference[k].norm()) for k in reference)


def moved_by(algorithm, network, inputs, targets) -> float:
    """The relative move h of ep's or chl's nudge on this batch (what their TF32 check reads),
    caught on its way to ``check_resolution``."""
    module, seen = sys.modules[type(algorithm).__module__], []
    check = module.check_resolution

    def spy(owner, tf32, moved, *args, **kwargs):
        seen.append(moved)
        return check(owner, tf32, moved, *args, **kwargs)

    module.check_resolution = spy
    try:
        algorithm.estimate(network, inputs, targets)
    finally:
        module.check_resolution = check
    return seen[0]


def run_case(label: str, settings: list[tuple[str, dict]], network, inputs, targets, products: bool) -> None:
    """One line per algorithm setting on one network and batch."""
    emulation = TF32(products=products, convolutions=True)
    with emulation:
        bp_tf32 = pl_energy.build_algorithm("bp").gradients(network, inputs, targets)
    for name, kwargs in settings:
        algorithm = pl_energy.build_algorithm(name, **kwargs)
        ieee = algorithm.gradients(network, inputs, targets)
        with emulation:
            tf32 = algorithm.gradients(network, inputs, targets)
        line = f"{label:10s} {name:8s} {str(kwargs):32s} TF32 vs IEEE {worst_change(tf32, ieee):.2e}"
        if name in ("ep", "chl"):
            moved = moved_by(algorithm, network, inputs, targets)
            line += f"  h {moved:.2e}  = {worst_change(tf32, ieee) / (TF32_EPSILON / moved):.2f} TF32 epsilons over h"
        else:
            line += f"  vs bp, both TF32: {worst_change(tf32, bp_tf32):.1e}"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks (the smoke test)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # TF32 stalls ep's phases above tol: the numbers are the point here
    exact = [("pc_nudge", {}), ("z_il", {})]
    hopfield = [("ep", {}), ("ep", {"beta": "auto", "allow_imprecise": True}), ("chl", {"allow_imprecise": True})]
    if args.quick:
        inputs, targets = torch.rand(8, 12), torch.randint(0, 4, (8,))
        run_case("mlp", exact, pl_energy.mlp([12, 8, 4]), inputs, targets, products=True)
        run_case("mlp clip", hopfield[:1], pl_energy.mlp([12, 8, 4], activation="clip"), inputs, targets, products=True)
        return
    _, inputs, targets, real = seed_mlp_batch()
    print(f"data: {'real MNIST' if real else 'RANDOM (MNIST not found)'}")
    torch.manual_seed(0)
    run_case("seed MLP", exact, pl_energy.mlp([784, 128, 64, 10]), inputs, targets, products=True)
    torch.manual_seed(0)
    run_case("seed MLP", hopfield, pl_energy.mlp([784, 128, 64, 10], activation="clip"), inputs, targets, products=True)
    images, labels = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    torch.manual_seed(0)
    run_case("VGG-5 1/8", exact, VGG(5, width=1 / 8), images, labels, products=False)
    torch.manual_seed(0)
    run_case("VGG-5 1/8", [("ep", {}), ("chl", {"gamma": 0.5})], VGG(5, width=1 / 8, activation="clip"), images,
             labels, products=False)


if __name__ == "__main__":
    main()
