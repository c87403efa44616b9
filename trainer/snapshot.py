"""The full training state: capture and restore as one mirrored pair, and atomic checkpoint files.

Everything a continuation needs is here: model (with BatchNorm buffers), optimizer (momentum
buffers, step counts), the lr schedule, every RNG, the data position, the counters and the
hyperparameters. Files load with torch.load(weights_only=True), so only tensors and plain types.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .engine import Trainer

FORMAT = 1
KEYS = ("format", "model", "optimizer", "schedule", "rng", "data", "counters", "hparams", "lineage")


class CheckpointError(RuntimeError):
    pass


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return obj


def capture(t: "Trainer") -> dict:
    """Snapshot of the trainer, detached from it (training may go on while it is written)."""
    np_state = np.random.get_state()
    return {
        "format": FORMAT,
        "model": _clone(t.model.state_dict()),
        "optimizer": _clone(t.optimizer.state_dict()),
        "schedule": {"lr_set_epoch": t.lr_set_epoch},
        "rng": {
            "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
        "data": t.batches.state(),
        "counters": {"step": t.step, "samples": t.samples, "train_time": t.train_time,
                     "best_val": t.best_val, "last_val": t.last_val},
        "hparams": t.hp_dict(),
        "lineage": {"branch": t.branch, "parent_checkpoint": t.last_checkpoint},
    }


def restore(t: "Trainer", s: dict) -> None:
    """The mirror of capture(): put every captured field back."""
    t.model.load_state_dict(s["model"])
    t.optimizer.load_state_dict(s["optimizer"])
    t.lr_set_epoch = int(s["schedule"]["lr_set_epoch"])
    rng = s["rng"]
    random.setstate(_tuples(rng["python"]))
    n = rng["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    t.batches.load_state(s["data"])
    c = s["counters"]
    t.step, t.samples, t.train_time = int(c["step"]), int(c["samples"]), float(c["train_time"])
    t.best_val, t.last_val = c["best_val"], c["last_val"]
    t.set_hp_dict(s["hparams"])
    t.last_checkpoint = s["lineage"]["parent_checkpoint"]


def _tuples(x):
    # random.setstate wants tuples; a round trip through torch.save may leave lists
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_file(state: dict, path: Path) -> None:
    """Atomic: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
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
