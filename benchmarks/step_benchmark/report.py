"""The targets of each row, and the markdown sections of benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from .cases import REPO
from .cost import bound_macs
from .variants import VARIANTS


def target_of(case: str, row: dict, quick: bool) -> tuple[str, str]:
    """The issue's target for this row and PASS / FAIL (or '' when it has none)."""
    key = row["key"]
    if "ratio" not in row:
        return "", ""
    ratio, bound = row["ratio"], row["bound"]
    if key == "bp":
        return "<= 1.00x BP (no slower than textbook)", _status(ratio <= 1.0, ratio <= 1.05)
    if key in ("z_il", "fa_z_il"):
        limit = 1.1 if case in ("d", "f") else 1.2
        return f"<= {limit:g}x BP", _status(ratio <= limit)
    if key == "pc_nudge_converged" and case in ("d", "f"):
        return "<= 3x BP (and within 1e-3 of its equilibrium)", _status(ratio <= 3)
    if key in ("pc", "pc_nudge"):
        if case == "a":
            ok_ms = row["ms"] < 5.8
            return "<= 5x BP and < 5.8 ms (PCX: 5.8 ms, 5.3x)", _status(ratio <= 5 and ok_ms)
        factor = 1.2 if case == "b" else 2.0
        return f"<= {factor:g}x MAC bound (<= {factor * bound:.2f}x BP)", _status(ratio <= factor * bound)
    if key in ("ep", "chl"):
        return f"<= 2x MAC bound (<= {2 * bound:.2f}x BP)", _status(ratio <= 2 * bound)
    return "", ""


def _status(ok: bool, close: bool = False) -> str:
    return "PASS" if ok else ("~ (within 5%)" if close else "FAIL")


def machine(device: torch.device) -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"Model name:\s*(.+)", out)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.SubprocessError):
        pass
    text = (f"CPU {model} ({os.cpu_count()} logical cores visible), torch {torch.__version__}, "
            f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}")
    if device.type == "cuda":
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return text


def code_version() -> str:
    """The commit the core was imported from, and whether pl_energy/ had uncommitted edits."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pl_energy"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head or 'unknown'}" + (" + uncommitted edits in pl_energy/" if dirty else "")


CODE_VERSION = code_version()  # taken at import, when the core is imported


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def _mb(value):
    if value is None:
        return "n/a"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


def table(result: dict) -> str:
    lines = ["| variant | median ms (IQR) | ratio to BP | MAC bound | ratio / bound | "
             "peak memory (x BP) | inference steps | target | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        if "na" in row:
            lines.append(f"| {row['key']} | {row['na']} | | | | | | | |")
            continue
        steps = row["steps"]
        if row["steps_range"] and row["steps_range"][0] != row["steps_range"][1]:
            steps = f"{steps:g} ({row['steps_range'][0]}-{row['steps_range'][1]})"
        elif steps is not None:
            steps = f"{steps:g}"
        else:
            steps = row.get("configured_steps")
        memory = _mb(row["memory"])
        if row.get("memory_ratio") is not None:
            memory += f" ({row['memory_ratio']:.2f}x)"
        lines.append(
            f"| {row['key']} | {row['ms']:.3f} ({row['q1']:.3f}-{row['q3']:.3f}) | "
            f"{row['ratio']:.2f}x | {row['bound']:.2f}x | {row['ratio'] / row['bound']:.2f} | "
            f"{memory} | {steps or '-'} | {row['target']} | {row['status']} |")
    return "\n".join(lines)


def agreement_table(result: dict) -> str:
    if not result["agreement"]:
        return "(agreement not measured: --no-agreement)"
    lines = ["| variant | inference steps taken | cosine vs BP | relative error vs BP |",
             "|---|---|---|---|"]
    for row in result["agreement"]:
        steps = "-" if row["steps"] is None else str(row["steps"])
        if row.get("converged") is False:
            steps += " (settled, not converged)" if row.get("settled") else " (hit the cap)"
        lines.append(f"| {row['key']} | {steps} | {row['cosine']:.6f} | {row['rel_error']:.3e} |")
    if any(row["key"] in HOPFIELD_KEYS for row in result["agreement"]):
        lines += ["", HOPFIELD_AGREEMENT]
    return "\n".join(lines)


HOPFIELD_KEYS = ("ep", "chl")
HOPFIELD_AGREEMENT = ("ep and chl are compared with backprop through the feedforward pass of their network (clip "
                      "units), which is not what they estimate (the gradient at their free equilibrium, "
                      "`algorithm.reference`): their rows mix that difference with the fixed steps' distance "
                      "from equilibrium.")


def section_key(case: str, device: torch.device, compiled: dict | None) -> str:
    """The key of a case's section: ``d`` (CPU, eager), ``d-cuda``, ``d-cuda-compiled`` (inductor),
    ``d-cuda-compiled-reduce-overhead``, ``c-compiled-eager``, ...: a GPU or compiled run keeps
    its own section beside the others."""
    key = case + ("" if device.type == "cpu" else f"-{device.type}")
    if compiled:
        key += "-compiled" + "".join(f"-{value}" for name, value in sorted(compiled.items())
                                     if not (name == "backend" and value == "inductor"))
    return key


def _options(compiled: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in compiled.items())


def section(result: dict, command: str, device: torch.device) -> str:
    case = result["case"]
    compiled = result.get("compiled")
    where = "" if device.type == "cpu" and not compiled else (
        f" ({device.type}" + (f", layers and inference compiled: {_options(compiled)}" if compiled else "") + ")")
    head = f"## Case ({case.key}): {case.title}{where}\n\n"
    if "skipped" in result:
        return head + f"Skipped: {result['skipped']}\n"
    macs = ", ".join(f"{m:,}" for m in result["macs"])
    return (
        head
        + f"- command: `{command}`\n"
        + f"- machine: {machine(device)}, device `{device}`\n"
        + f"- code: git {CODE_VERSION}\n"
        + (f"- compiled: every layer of the case's network, `torch.compile({_options(compiled)})`; "
           + ("ep and chl run on it too" if case.hopfield_build is None else "ep and chl's clip-unit copy is not")
           + " (their inference steps do not call the layers); AOTAutograd's buffer donation is off in the whole "
           "process (`compile_layers`), bp_textbook's pass included; BP's gradient in the agreement table is taken "
           "on an eager copy\n" if compiled else "")
        + f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; "
          f"{result['repeats']} timed rounds after {result['warmup']} warm-up step(s) per variant; "
          f"{result['seconds']:.0f} s of timing; 1-min load average {_fmt(result['load'][0], '.1f')} "
          f"before, {_fmt(result['load'][1], '.1f')} after (other jobs share the {os.cpu_count()} cores)\n"
        + f"- forward MACs per layer F_l (whole batch): {macs}; BP = {bound_macs(VARIANTS[0], result['macs']):,.0f} MACs\n\n"
        + table(result)
        + "\n\nGradient agreement with BP at the initial weights (first batch):\n\n"
        + agreement_table(result) + "\n"
    )


HEADER = """# Step-time benchmark: every algorithm against backprop

Produced by `benchmarks/bench_step.py` (the `benchmarks/step_benchmark/` package; re-run one case with `python benchmarks/bench_step.py --case a`;
it rewrites only that case's section). Each case section records the command, machine and date.

How to read the tables:

- **median ms (IQR)**: wall time of one training step (`alg.estimate(..., record=False)` + SGD update
  with `p.grad = g; opt.step()`), median and quartiles over the timed rounds.
- **ratio to BP**: median over rounds of t_variant / t_BP in the same round, where BP is textbook
  autograd (`opt.zero_grad(); CE(net(x), y).backward(); opt.step()`, row `bp_textbook`). Variants
  are timed in a rotated order each round, one thread (`torch.set_num_threads(1)`).
- **MAC bound**: multiply-accumulates the algorithm must do divided by BP's, from the per-layer
  forward MACs F_l (S = sum F_l, S2 = sum over layers 2..L). BP = S + S2 + S; PC at T steps
  = 2S + (2 T + 1) S2 (the final residual included); Fa-Z-IL = 2S + 2 (L-1) S2; EP = S + (free + nudged) 2 S2 + 2S; CHL the same but
  the clamped output is not driven (clamped steps x (2 S2 - F_L)). For the `*_converged` rows
  (the default solver, stopped by its tolerance) T is the median number of steps actually taken. **ratio / bound** near 1 means the step runs at BP's
  MAC throughput; above 1 means overhead beyond the arithmetic.
- **peak memory**: peak bytes of tensor storage allocated during one step above what was live before it
  (CPU: every alloc/free of torch's CPU allocator recorded by `torch.profiler` with
  `profile_memory=True`, summed in time order; CUDA: `torch.cuda.max_memory_allocated`). It
  includes the gradients the step returns. Inference should stay O(activations), not
  O(T x activations): compare `pc` (T = 50) with `bp`.
- **target**: the goals from issue 6. On (a) PCX measures 5.8 ms for PC vs 1.1 ms for BP
  (5.3x) on this machine with one thread.
- All variants share one network and one SGD optimiser (lr 1e-3); the update is applied and timed,
  then the initial weights are restored (untimed) before the next step, so every step of every
  variant sees the same network (a diverging estimate cannot poison the others, and the number
  of steps a tolerance-stopped inference takes stays comparable).
"""


def write_results(path: Path, sections: dict[str, str]) -> None:
    """Replace (or add) the sections of the cases just run; keep the others and the notes."""
    text = path.read_text() if path.exists() else ""
    if not text.startswith("# Step-time benchmark"):
        text = HEADER
    pattern = r"<!-- case ([\w-]+) start -->\n(.*?)<!-- case \1 end -->\n"
    blocks = dict(re.findall(pattern, text, re.S))
    blocks.update(sections)
    head = re.split(r"<!-- case [\w-]+ start -->|<!-- notes start -->", text, maxsplit=1)[0]
    notes = text[text.index("<!-- notes start -->"):] if "<!-- notes start -->" in text else ""
    body = "\n".join(f"<!-- case {key} start -->\n{blocks[key]}<!-- case {key} end -->\n"
                     for key in sorted(blocks))
    path.write_text(head.rstrip("\n") + "\n\n" + body + ("\n" + notes if notes else ""))
