"""The checks of the Lightning shell's edges, each refusing in one line (``pl_energy.errors``):
checkpoint files, batches given as mappings, and the contract between a network and its data
(input width, number of classes)."""

from __future__ import annotations

import warnings
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor, nn

from .errors import MissingFile, RefusedValue, UnusableFile

#: The (inputs, targets) key pairs a mapping batch is read with when ``batch_keys`` is not set:
#: pl_energy's own, torchvision's and Hugging Face datasets' habits.
DEFAULT_BATCH_KEYS: tuple[tuple[str, str], ...] = (
    ("x", "y"), ("image", "label"), ("images", "labels"), ("img", "label"), ("input", "target"),
    ("inputs", "targets"), ("pixel_values", "labels"), ("pixel_values", "label"), ("data", "target"),
    ("features", "labels"),
)
#: The first bytes of a pickle (torch's legacy, pre-1.6 checkpoint format).
_PICKLE_MAGIC = b"\x80"


def check_checkpoint_file(path: str | Path) -> None:
    """Refuse a local checkpoint path that is missing or not a complete torch checkpoint (a
    truncated copy, an interrupted save, another kind of file). Remote paths (``s3://``...) and
    folders (sharded checkpoints) are left to their loaders."""
    text = str(path)
    if "://" in text:
        return
    file = Path(text)
    if not file.exists():
        raise MissingFile(f"checkpoint {file} does not exist: give the path of a .ckpt file a run saved "
                          "(in its checkpoints/ folder)")
    if file.is_dir():
        return
    try:
        with zipfile.ZipFile(file) as archive:
            damaged = archive.testzip()  # the first member whose data fails its CRC, else None
        problem = None if damaged is None else f"its entry {damaged} is damaged"
    except zipfile.BadZipFile:
        with open(file, "rb") as handle:
            if handle.read(1) == _PICKLE_MAGIC:
                return  # torch's legacy format: torch.load reads and checks it
        problem = "it is not a complete zip archive, as torch.save writes"
    except (OSError, EOFError, zlib.error) as exc:
        problem = f"reading it failed: {type(exc).__name__}: {exc}"
    if problem is not None:
        raise UnusableFile(f"checkpoint {file} ({file.stat().st_size} bytes) is truncated or corrupt ({problem}): "
                           "copy or save it again, or use another checkpoint (e.g. last.ckpt)")


def check_checkpoint_arguments(tokens: Sequence[str]) -> None:
    """:func:`check_checkpoint_file` on the value of a ``--ckpt_path`` command-line argument
    (before LightningCLI reads the checkpoint's hyper-parameters with torch); Lightning's names
    ``last``, ``best``, ``hpc`` and ``registry:...`` are left to it."""
    for index, token in enumerate(tokens):
        name, equals, value = str(token).partition("=")
        if name != "--ckpt_path":
            continue
        value = value if equals else (tokens[index + 1] if index + 1 < len(tokens) else "")
        if value and value not in ("last", "best", "hpc", "null") and not value.startswith("registry"):
            check_checkpoint_file(value)


class CheckedCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that refuses a missing or damaged checkpoint file in one
    line (:func:`check_checkpoint_file`) before torch's zip reader fails without naming it."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        check_checkpoint_file(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def unpack_batch(batch: Any, keys: Sequence[str] | None = None, need_targets: bool = True) -> tuple[Tensor, Tensor | None]:
    """(inputs, targets) of a batch: a sequence ``(inputs, targets, ...)``, a mapping read with
    ``keys`` (or the first pair of :data:`DEFAULT_BATCH_KEYS` it holds), or, when
    ``need_targets`` is False (prediction), the inputs alone."""
    if isinstance(batch, Mapping):
        pairs = [tuple(keys)] if keys else [pair for pair in DEFAULT_BATCH_KEYS if pair[0] in batch]
        for input_key, target_key in pairs:
            if input_key in batch and (target_key in batch or not need_targets):
                return batch[input_key], batch.get(target_key)
        how = (f"it lacks {[k for k in keys if k not in batch]}" if keys else
               f"none of the pairs {[list(pair) for pair in DEFAULT_BATCH_KEYS]} is among them")
        raise RefusedValue(f"the batch is a mapping with keys {sorted(map(str, batch))} and {how}: name its "
                           "input and target keys with EnergyModule(batch_keys=['<inputs>', '<targets>']) "
                           "(--model.batch_keys '[<inputs>, <targets>]')")
    if isinstance(batch, Tensor):
        if need_targets:
            raise RefusedValue(f"the batch is one tensor of shape {tuple(batch.shape)}, without targets: give "
                               "(inputs, targets) pairs, or a mapping such as {'x': inputs, 'y': targets}")
        return batch, None
    if isinstance(batch, Sequence) and not isinstance(batch, str) and len(batch) >= (2 if need_targets else 1):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise RefusedValue(f"cannot read inputs and targets from a batch of type {type(batch).__name__}: give "
                       "(inputs, targets) pairs, or a mapping such as {'x': inputs, 'y': targets}")


def input_width(network: nn.Module) -> tuple[str, int] | None:
    """("features" or "channels", the width) the network's first ``Linear`` or convolution takes."""
    for module in network.modules():
        if isinstance(getattr(module, "in_features", None), int):
            return "features", module.in_features
        if isinstance(getattr(module, "in_channels", None), int):
            return "channels", module.in_channels
    return None


def check_network_fits_batch(network: nn.Module, num_classes: int, inputs: Tensor, targets: Tensor | None) -> None:
    """Refuse, naming both sides, inputs whose width the network's first layer does not take
    and class targets at or beyond the network's ``num_classes`` outputs."""
    expected = input_width(network)
    if expected is not None:
        kind, width = expected
        # flat vectors into a Linear, images into a convolution; other pairs are the network's
        # own business (a Flatten before the Linear, an Unflatten before the convolution)
        given = (inputs.shape[-1] if kind == "features" and inputs.dim() == 2 else
                 inputs.shape[1] if kind == "channels" and inputs.dim() >= 3 else None)
        if given is not None and given != width:
            raise RefusedValue(f"the batch's inputs have {given} {kind} (shape {tuple(inputs.shape)}) but the "
                               f"network's first layer takes {width}: build the network for this data (e.g. "
                               f"sizes starting with {given}) or use the data it was built for")
    if targets is not None and not targets.is_floating_point() and targets.dim() == 1 and targets.numel():
        top = int(targets.max())
        if top >= num_classes:
            raise RefusedValue(f"the batch has class {top} but the network has {num_classes} outputs "
                               f"(classes 0..{num_classes - 1}): give it as many outputs as the data has "
                               "classes (e.g. sizes ending with the data module's num_classes)")


def check_network_fits_data(num_classes: int, datamodule: Any) -> None:
    """Refuse a data module whose ``num_classes`` differs from the network's output width."""
    given = getattr(datamodule, "num_classes", None)
    if isinstance(given, int) and given != num_classes:
        raise RefusedValue(f"{type(datamodule).__name__} has {given} classes but the network has {num_classes} "
                           f"outputs: build the network with {given} outputs (sizes ending with {given}, or "
                           f"num_classes: {given} of its builder)")


def quiet_warnings_off_rank_zero(global_rank: int, categories: Sequence[type[Warning]]) -> None:
    """Show pl_energy's warnings once per run, not once per process: on every rank but 0 of a
    multi-process run, ignore ``categories`` and every warning raised from pl_energy's modules."""
    if global_rank == 0:
        return
    for category in categories:
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=r"pl_energy(\.|$)")
