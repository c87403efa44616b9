"""The full training state as a value: capture and restore as one mirrored pair, and atomic files.

A snapshot holds everything a continuation needs: the model (with BatchNorm buffers), the optimizer
(momentum buffers, step counts), every RNG, the data position, plus the engine's own fields (lr
schedule, counters, hyperparameters, lineage). Both directions copy tensors, so nothing live ever
aliases a stored snapshot: a ring snapshot can be restored any number of times. Files load with
torch.load(weights_only=True): tensors and plain types only.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Batches

FORMAT = 1
KEYS = ("format", "model", "optimizer", "schedule", "rng", "data", "counters", "hparams", "lineage")


class CheckpointError(RuntimeError):
    pass


def clone(obj: Any) -> Any:
    """A deep copy with every tensor copied to the CPU. Device tensors are copied without waiting
    (into pinned memory) and waited for once at the end: one sync per snapshot, not one per tensor."""
    devices: set[torch.device] = set()
    out = _clone(obj, devices)
    for d in devices:
        torch.cuda.synchronize(d)
    return out


def _clone(obj: Any, devices: set) -> Any:
    if isinstance(obj, torch.Tensor):
        if obj.device.type == "cuda":
            devices.add(obj.device)
            return obj.detach().to("cpu", copy=True, non_blocking=True)
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone(v, devices) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if _PLAIN.issuperset(map(type, obj)):  # a sentinel window or an RNG state: nothing to copy inside
            return type(obj)(obj)
        return type(obj)(_clone(v, devices) for v in obj)
    return obj


_PLAIN = frozenset((int, float, bool, str, type(None)))


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(rng: dict) -> None:
    random.setstate(_tuples(rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def capture(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, **fields: Any) -> dict:
    """A snapshot detached from the live objects (training may go on while it is written).

    `fields` are the engine's own: schedule, counters, hparams, lineage (plain values).
    """
    return clone({"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "rng": rng_state(), "data": batches.state(), **fields})


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Batches, s: dict) -> None:
    """The mirror of capture() for the live objects; the caller puts back the engine's fields."""
    model.load_state_dict(s["model"])  # copies into the model's own tensors
    # Optimizer.load_state_dict keeps the tensors it is given when device and dtype already match:
    # without this copy later steps would write into the snapshot.
    optimizer.load_state_dict(clone(s["optimizer"]))
    set_rng_state(s["rng"])
    batches.load_state(s["data"])


def _tuples(x):
    # random.setstate wants tuples; a round trip through torch.save may leave lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_file(state: dict, path: Path) -> None:
    """Atomic: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_file(path: Path | str) -> dict:
    """Load and check a checkpoint file; any failure is a CheckpointError naming the file."""
    try:
        s = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot be loaded ({type(e).__name__}: {e})") from None
    if not isinstance(s, dict) or any(k not in s for k in KEYS):
        raise CheckpointError(f"checkpoint {path}: not a Panda checkpoint (missing fields)")
    if s["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {s['format']} is not {FORMAT}")
    return s
