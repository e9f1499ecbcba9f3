"""Shared helpers for the Lightning-shell tests (module, callbacks, CLI, DDP, W&B)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]


def quiet_trainer(**kwargs) -> pl.Trainer:
    """A CPU Trainer without progress bar, logger, checkpointing or model summary."""
    options = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0)
    options.update(kwargs)
    return pl.Trainer(**options)


def flat_parameters(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).cpu() for p in module.parameters()])


def mnist_subset(mnist_tensors, count: int, dtype=torch.float64, start: int = 0):
    images, labels = mnist_tensors
    return images[start:start + count].to(dtype), labels[start:start + count].clone()


def loader(inputs, targets, batch_size: int) -> DataLoader:
    """A sequential (unshuffled) loader (Lightning's DistributedSampler shuffles it under DDP)."""
    return DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=False)


class DestroyProcessGroupAtExit(Callback):
    """In each DDP worker, destroy the process group when the interpreter exits (torch's advice):
    one run in eight of the suite once ended with a gloo worker aborting at exit ("terminate
    called without an active exception") after training had finished."""

    def setup(self, trainer, pl_module, stage):
        import atexit

        def destroy():
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

        atexit.register(destroy)


class RankWeightSpread(Callback):
    """At the end of training, puts into ``callback_metrics`` the largest difference between the
    weights of any rank and rank 0 (``rank_weight_spread``): callback_metrics come back from
    ``ddp_spawn`` workers, the other ranks' weights do not."""

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().reshape(-1) for p in pl_module.parameters()])
        gathered = pl_module.all_gather(flat)
        if gathered.dim() == 1:
            gathered = gathered.unsqueeze(0)
        spread = (gathered - gathered[0]).abs().max()
        trainer.callback_metrics["rank_weight_spread"] = spread.detach().cpu()


# ------------------------------------------------------------------ W&B's offline .wandb file
_BLOCK = 32 * 1024
_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path):
    """The ``wandb_internal_pb2.Record`` protobufs of an offline ``run-<id>.wandb`` file.

    The file is a LevelDB-style log: a 7-byte header (``b":W&B"``, uint16 0xBEE1, uint8 version)
    then 32 KiB blocks of records, each with a crc/length/type header; a record that does not fit
    in a block is split into FIRST/MIDDLE/LAST pieces.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    magic, ident, _version = struct.unpack("<4sHB", data[:7])
    assert magic == b":W&B" and ident == 0xBEE1, f"not a .wandb file: {path}"
    records, pending, offset = [], b"", 7
    while offset + _HEADER <= len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < _HEADER:  # block trailer: padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset:offset + _HEADER])
        payload = data[offset + _HEADER:offset + _HEADER + length]
        offset += _HEADER + length
        if kind == 0 and length == 0:
            offset += _BLOCK - offset % _BLOCK if offset % _BLOCK else 0
            continue
        if kind == FULL:
            pending = b""
            chunks = [payload]
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            chunks = [pending + payload]
            pending = b""
        else:
            break
        for chunk in chunks:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
    return records


def wandb_history_keys(records) -> dict[str, list]:
    """Every key logged in ``history`` records, with its JSON-decoded values."""
    history: dict[str, list] = {}
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def wandb_config(records) -> dict[str, object]:
    config: dict[str, object] = {}
    for record in records:
        if record.WhichOneof("record_type") != "config":
            continue
        for item in record.config.update:
            key = item.key or "/".join(item.nested_key)
            config[key] = json.loads(item.value_json)
    return config
