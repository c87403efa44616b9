"""The run's public read API: an immutable Status the training thread publishes, swapped in whole.

Readers (the dashboard, the CLI, tests, later a client in another process) never touch a Trainer's
attributes: they read the latest Status and the journal. Every field is a value: numbers, strings,
tuples, frozen dataclasses, read-only mappings and read-only arrays.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

from .hparams import HParams, to_dict


@dataclass(frozen=True)
class RunInfo:
    """What does not change while a trainer lives."""
    run_dir: str
    task: str
    task_name: str
    optimizer: str
    nesterov: bool
    device: str
    n_train: int
    ckpt_every: int
    metrics: tuple[str, ...]  # the task's declared metrics, e.g. ("acc",) or ("mae",)
    has_grid: bool  # a 2-D task with a decision-boundary picture
    points: tuple[np.ndarray, np.ndarray] | None = None  # a sample of 2-D training points (read-only)
    classes: int | None = None  # a classifier's class count (its loss at init should be log C), else None
    precision: str = "fp32"  # fp32 | bf16 | fp16 (RunConfig.precision)
    compiled: bool = False  # training steps run a torch.compile'd model
    world_size: int = 1  # ranks of a torchrun data-parallel job (1: one process)
    backend: str | None = None  # its collectives' backend: gloo (CPU) or nccl (CUDA)


@dataclass(frozen=True)
class Grid:
    """Class probabilities on a grid, from the last evaluation."""
    step: int
    axis: tuple[float, ...]
    probs: np.ndarray  # (n, n, classes), read-only


@dataclass(frozen=True)
class Status:
    state: str  # one of commands.STATES
    error: str | None
    step: int
    epoch: int
    epoch_progress: float  # fraction of the current epoch done
    steps_per_epoch: int
    branch: int
    hparams: HParams
    effective_lr: float  # after decay
    loss: float | None  # the last read-back train loss
    samples_per_s: float
    max_steps: int
    last_checkpoint: int | None
    eval: Mapping[str, float] | None  # the last evaluation: step, val_loss, val_acc, train_*, plugin metrics
    grid: Grid | None
    accepts: frozenset[str]  # commands the run accepts in this state (commands.ACCEPTS)
    run: RunInfo
    version: int = 0  # grows with every publication
    anomaly: Mapping[str, Any] | None = None  # what the sentinel paused on (sentinel.Anomaly.to_dict), if it did
    sentinel: Mapping[str, Any] | None = None  # policy, window, sigma, lr_factor
    skipped: int = 0  # updates the sentinel dropped
    memory: int = 0  # bytes: CUDA max allocated, or the process's peak RSS
    probe: Mapping[str, Any] | None = None  # while probing: kind, index, samples, step, steps, eta_s, results
    loss_scale: float | None = None  # fp16: the GradScaler's scale at the last read-back
    overflows: int = 0  # fp16: steps the scaler skipped because the gradients overflowed
    compile_s: float = 0.0  # seconds spent compiling the model (torch.compile), so far in this process
    ranks: tuple[Mapping[str, Any], ...] = ()  # DDP: per rank, samples_per_s (of its busy time), busy, memory

    @property
    def sound(self) -> bool:
        """Whether training can go on from the live weights (no anomaly said they are damaged)."""
        return self.anomaly is None or bool(self.anomaly.get("sound", True))

    @property
    def hp(self) -> dict[str, Any]:
        return to_dict(self.hparams)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (no grid or points): for the CLI and other processes."""
        d = {k: getattr(self, k) for k in ("state", "error", "step", "epoch", "epoch_progress", "steps_per_epoch",
                                           "branch", "effective_lr", "loss", "samples_per_s", "max_steps",
                                           "last_checkpoint", "version", "skipped", "memory", "loss_scale",
                                           "overflows", "compile_s")}
        d["ranks"] = [dict(r) for r in self.ranks]
        d["anomaly"] = dict(self.anomaly) if self.anomaly is not None else None
        d["sentinel"] = dict(self.sentinel) if self.sentinel is not None else None
        d["probe"] = (None if self.probe is None else
                      {**self.probe, "results": [dict(r) for r in self.probe.get("results", ())]})
        d["hparams"] = self.hp
        d["eval"] = dict(self.eval) if self.eval is not None else None
        d["accepts"] = sorted(self.accepts)
        d["run"] = {k: v for k, v in asdict(self.run).items() if k != "points"}
        d["run"]["metrics"] = list(self.run.metrics)
        return d


def frozen_map(d: Mapping | None) -> Mapping | None:
    return None if d is None else MappingProxyType(dict(d))


def frozen_array(a: Any) -> np.ndarray:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a
