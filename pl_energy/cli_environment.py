"""What the ``pl-energy`` CLI reads from the machine: CPU threads per process, and whether W&B
is installed and can authenticate."""

from __future__ import annotations

import netrc
import os
import sys
from typing import Any

import torch


#: Set by the CLI to the thread count it chose, for the processes DDP starts from it.
THREADS_VARIABLE = "PL_ENERGY_THREADS"


def cpu_threads(requested: int | str, processes: int = 1) -> tuple[int, str]:
    """The torch CPU threads of each process and why: ``requested`` if it is a number; for
    ``"auto"``, the cores this process may use shared among the node's ``processes``, less the
    cores other jobs keep busy (the 1-minute load average). Oversubscribed cores are the costly
    side: with two threads on two cores while another job used one, an epoch of chl took 585 s
    against 27 s with one thread; one thread too few costs at most its share (a CNN step 1.5x)."""
    if requested != "auto":
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ValueError(f"--threads must be a positive integer or 'auto', got {requested!r}")
        return requested, "as asked"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, processes))
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    if busy and cores - busy < share * processes:
        threads = max(1, (cores - busy) // max(1, processes))
        return threads, f"{cores} cores, about {busy} kept busy by other jobs (load average)"
    return share, f"{cores} cores" + (f" shared by {processes} processes" if processes > 1 else "")


def wandb_installed() -> bool:
    """True if the optional ``wandb`` package (``pip install 'pl-energy[wandb]'``) is importable."""
    import importlib.util

    return importlib.util.find_spec("wandb") is not None


def wandb_api_key_available() -> bool:
    """True if W&B can authenticate: ``WANDB_API_KEY`` is set or ``wandb login`` wrote ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def uses_wandb(logger: Any) -> bool:
    if logger is None or isinstance(logger, bool):
        return False
    loggers = logger if isinstance(logger, list) else [logger]
    for item in loggers:
        text = item.get("class_path", "") if hasattr(item, "get") else str(item)
        if "WandbLogger" in str(text):
            return True
    return False



def set_cpu_threads(config) -> None:
    """``--threads`` on CPU runs (GPU runs keep torch's default). The choice is exported
    (``OMP_NUM_THREADS``, ``PL_ENERGY_THREADS``), so the processes DDP starts (``ddp``
    re-runs the command, ``ddp_spawn`` spawns workers) use the same count instead of each
    reading the load average, which the others then raise."""
    accelerator = str(config.trainer.get("accelerator") or "auto")
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return
    devices = config.trainer.get("devices")
    if isinstance(devices, str) and devices.strip().isdigit():
        devices = int(devices)
    processes = devices if isinstance(devices, int) and devices > 0 else (
        len(devices) if isinstance(devices, (list, tuple)) else 1)
    requested = config.get("threads", "auto")
    inherited = os.environ.get(THREADS_VARIABLE)
    try:
        threads, why = ((int(inherited), "the launching process's choice") if requested == "auto" and inherited
                        else cpu_threads(requested, processes))
    except ValueError as error:
        raise SystemExit(f"pl-energy: {error}") from None
    os.environ[THREADS_VARIABLE] = os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    if requested != "auto" or not inherited:
        print(f"pl-energy: {threads} CPU thread{'s' if threads > 1 else ''} per process ({why}; "
              "--threads N sets it)", file=sys.stderr)
