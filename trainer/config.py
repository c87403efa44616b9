"""The run's fixed settings: chosen when a run starts, stored in its journal, never changed live."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from .sentinel import POLICIES

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")  # fp32 | bf16 under autocast | fp16 under autocast with a GradScaler
BUILTIN_TASKS = ("spirals", "digits", "quadratic", "charlm")  # trainer/tasks.py builds them; named here without torch
TASK_HELP = {  # one line per built-in, for the New-run form and the CLI's help
    "spirals": "2-D points on 3 interleaved spirals, a small MLP with BatchNorm (spirals:N for N = 3..6 arms)",
    "digits": "scikit-learn's 8x8 handwritten digits, an MLP classifier",
    "quadratic": "one weight w minimising (w - 5)^2, the course's first TensorFlow example",
    "charlm": "a character-level GPT on Python's own stdlib source (charlm:SIZE for tiny, small, medium, large)",
}
# Run settings a built-in is meant for, where they differ from RunConfig's defaults (the CLI and the
# New-run form start from them; explicit choices win): charlm is an AdamW model, and its evaluation
# (val loss and a generated sample) costs about 15 steps on a CPU.
TASK_CONFIG: dict[str, dict[str, Any]] = {"charlm": {"optimizer": "adamw", "eval_every": 250}}


def task_config(task: str) -> dict[str, Any]:
    """TASK_CONFIG for a task spec ("charlm:medium" -> charlm's); {} for the others and plugins."""
    return dict(TASK_CONFIG.get(task.partition(":")[0], {}))


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class RunConfig:
    task: str = "spirals"  # built-in name, package.module:function or path/to/file.py:function
    run_dir: str = "runs/default"  # where the journal and checkpoints live
    optimizer: str = "sgd"  # sgd | adam | adamw
    nesterov: bool = False  # SGD only
    seed: int = 0  # seeds data order, model init and every RNG
    device: str = "auto"  # auto (cuda when present, else cpu) | cpu | cuda | cuda:N
    max_steps: int = 0  # global step at which the run stops, counted across resumes; 0 = no limit
    ckpt_every: int = 200  # automatic checkpoint cadence in steps; 0 = off
    eval_every: int = 100  # evaluation cadence in steps (also at each epoch end); 0 = epoch ends only
    eval_at_epoch_end: bool = True
    keep_last: int = 5  # automatic checkpoints kept on disk (manual, labelled and best are always kept)
    ring_size: int = 4  # in-memory snapshots for fast short rollbacks (each a full CPU copy of the state)
    log_every: int = 10  # steps between loss read-backs from the device
    deterministic: bool = True  # torch.use_deterministic_algorithms on CPU
    threads: int = 0  # CPU threads for the training thread's ops; 0 = PyTorch's default
    sentinel: str = "skip"  # what an anomaly does: warn | pause | skip | rollback (live: set_sentinel)
    sentinel_window: int = 128  # trailing steps the sentinel's statistics cover
    sentinel_sigma: float = 6.0  # a value this many standard deviations above the window's mean is anomalous
    rollback_lr_factor: float = 0.5  # a rollback (and Recover's default) multiplies the checkpoint's lr by this
    instruments: bool = True  # the update ratio (and with it the sentinel's third series) and per-layer stats
    ratio_every: int = 0  # steps between update-ratio measurements; 0 = auto: every 10th (measured every
    #                       step, the copy of the weights costs ~3.5 % of a CPU step, and memory bandwidth on a GPU)
    instrument_every: int = 50  # steps between per-layer instruments and activation stats; 0 = off
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast and a GradScaler, its state checkpointed)
    compile: bool = False  # torch.compile the model for training steps; checkpoints hold the plain state_dict

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.nesterov and self.optimizer != "sgd":
            raise ConfigError("nesterov: only SGD has Nesterov momentum")
        for name in ("max_steps", "ckpt_every", "eval_every", "keep_last", "ring_size", "log_every", "seed", "threads",
                     "sentinel_window", "instrument_every", "ratio_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name}: must be an integer >= 0, got {v!r}")
        if self.log_every < 1:
            raise ConfigError("log_every: must be >= 1")
        if self.sentinel not in POLICIES:
            raise ConfigError(f"sentinel: must be one of {', '.join(POLICIES)}, got {self.sentinel!r}")
        if self.sentinel_window < 8:
            raise ConfigError(f"sentinel_window: must be an integer >= 8, got {self.sentinel_window}")
        for name, lo, hi in (("sentinel_sigma", 0.0, 1e6), ("rollback_lr_factor", 0.0, 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
                raise ConfigError(f"{name}: must be a number in ({lo:g}, {hi:g}], got {v!r}")
        for name in ("instruments", "compile", "deterministic", "eval_at_epoch_end", "nesterov"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}")
        return cls(**d)

    def replace(self, **kw) -> "RunConfig":
        return self.from_dict({**dataclasses.asdict(self), **kw})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
