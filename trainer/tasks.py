"""Tasks: a model, its data and its loss. Built-ins and user plugins (`module:function`, `file.py:function`)."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

from . import charlm
from .config import BUILTIN_TASKS
from .data import check_size
from .hparams import HParamError, HParams, validate


class TaskError(ValueError):
    pass


@dataclass
class Task:
    """What a plugin function returns. Items of the datasets are (input, target) pairs.

    loss(output, target) -> scalar tensor; metrics map a name to fn(output, target) -> tensor
    (a per-batch mean, e.g. accuracy). `defaults` are hyperparameters suited to the task.
    """
    model: nn.Module
    train_data: Dataset
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    val_data: Dataset | None = None
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    name: str = "task"
    grid: Callable[[nn.Module, torch.device], dict] | None = None  # decision-boundary picture for 2-D tasks
    # A few values shown at each evaluation, e.g. {"w": 4.99} or {"sample": "generated text"}: called
    # in eval mode under no_grad; it must not draw from the global RNGs (the run's exactness rests on them).
    show: Callable[[nn.Module, torch.device], dict[str, float | str]] | None = None


def accuracy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out.argmax(dim=1) == y).float().mean()


# --- spirals: the course's softmax pictures ---------------------------------------------------

def make_spirals(classes: int, per_class: int, seed: int, noise: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(classes):
        r = np.linspace(0.05, 1.0, per_class)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, per_class) * 3.0 / classes + rng.standard_normal(per_class) * noise
        xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
        ys.append(np.full(per_class, c))
    return torch.tensor(np.concatenate(xs), dtype=torch.float32), torch.tensor(np.concatenate(ys))


def mlp(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(n_in, h), nn.BatchNorm1d(h), nn.ReLU()]
        n_in = h
    layers.append(nn.Linear(n_in, n_out))  # logits; softmax lives in the cross-entropy loss
    return nn.Sequential(*layers)


def spiral_grid(model: nn.Module, device: torch.device, n: int = 60, lim: float = 1.1) -> dict:
    """Class probabilities on an n x n grid; call in eval mode under no_grad."""
    axis = torch.linspace(-lim, lim, n)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(device)
    probs = torch.softmax(model(pts), dim=1).reshape(n, n, -1)
    return {"axis": axis.tolist(), "probs": probs.cpu().numpy()}


def spirals(classes: int = 3, per_class: int = 1000, seed: int = 0) -> Task:
    if not 3 <= int(classes) <= 6:
        raise TaskError(f"spirals: classes must be from 3 to 6, got {classes}")
    classes = int(classes)
    torch.manual_seed(seed)
    x, y = make_spirals(classes, per_class, seed)
    vx, vy = make_spirals(classes, per_class // 5, seed + 10_000)
    return Task(
        name=f"spirals{classes}", model=mlp(2, [64, 64], classes),
        train_data=TensorDataset(x, y), val_data=TensorDataset(vx, vy),
        loss=nn.functional.cross_entropy, metrics={"acc": accuracy},
        defaults={"lr": 0.1, "momentum": 0.9, "batch_size": 64}, grid=spiral_grid,
    )


# --- digits: scikit-learn's 8x8 handwritten digits (ships with the package) -------------------

def digits(seed: int = 0) -> Task:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))  # fixed split
    tr, va = perm[:1437], perm[1437:]
    torch.manual_seed(seed)
    return Task(
        name="digits", model=mlp(64, [128, 64], 10),
        train_data=TensorDataset(x[tr], y[tr]), val_data=TensorDataset(x[va], y[va]),
        loss=nn.functional.cross_entropy, metrics={"acc": accuracy},
        defaults={"lr": 0.05, "momentum": 0.9, "batch_size": 32},
    )


# --- quadratic: the course's first TensorFlow example ----------------------------------------

class Quadratic(nn.Module):
    """cost = x0 * w^2 + x1 * w + x2, with w starting at 0 and the coefficients as data.

    Computed as x0 * (w + x1 / 2x0)^2 + (x2 - x1^2 / 4x0): the same function and gradient, but the
    course's (1, -10, 25) gives (w - 5)^2 exactly, never the tiny negative values that float32
    rounding of the expanded form gives near w = 5 (a log-scale loss chart cannot draw those).
    """

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, coeffs: torch.Tensor) -> torch.Tensor:
        c = coeffs.reshape(-1, 3)
        a, b, k = c[:, 0], c[:, 1], c[:, 2]
        square = a != 0
        a_ = torch.where(square, a, torch.ones_like(a))  # no 0/0 in the branch torch.where discards
        completed = a * (self.w + b / (2 * a_)) ** 2 + (k - b * b / (4 * a_))
        return torch.where(square, completed, b * self.w + k)


def _cost(out: torch.Tensor, _target: torch.Tensor) -> torch.Tensor:
    return out.mean()


def quadratic(coefficients: tuple[float, float, float] = (1.0, -10.0, 25.0), seed: int = 0) -> Task:
    c = torch.tensor([list(coefficients)], dtype=torch.float32)
    data = TensorDataset(c, torch.zeros(1))

    def show(model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"w": model.w.item(), "cost": model(c.to(device)).item()}

    return Task(
        name="quadratic", model=Quadratic(), train_data=data, val_data=data, loss=_cost, show=show,
        defaults={"lr": 0.01, "momentum": 0.0, "batch_size": 1},
    )


# --- charlm: a character-level GPT on the stdlib's source (trainer/charlm.py) ----------------

CHARLM_DEFAULT = "small"
CHARLM_SIZES = {  # size -> (model, defaults beyond CHARLM_DEFAULTS); small: ~27 steps/s on 2 CPU cores
    "tiny": (charlm.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32), {"batch_size": 32}),
    "small": (charlm.GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64), {"batch_size": 32}),
    "medium": (charlm.GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256), {"lr": 1e-3, "batch_size": 64}),
    "large": (charlm.GPTConfig(n_layer=8, n_head=8, n_embd=512, block_size=256), {"lr": 6e-4, "batch_size": 64}),
}
CHARLM_DEFAULTS = {"lr": 3e-3, "momentum": 0.9, "weight_decay": 0.1, "grad_clip": 1.0, "warmup": 100}


def charlm_task(size: str = CHARLM_DEFAULT, seed: int = 0) -> Task:
    if size not in CHARLM_SIZES:
        raise TaskError(f"charlm: unknown size {size!r}; sizes are {', '.join(CHARLM_SIZES)}")
    cfg, defaults = CHARLM_SIZES[size]
    train, val = charlm.datasets(cfg.block_size)
    torch.manual_seed(seed)
    return Task(
        name="charlm" if size == CHARLM_DEFAULT else f"charlm-{size}", model=charlm.GPT(cfg),
        train_data=train, val_data=val, loss=charlm.loss, metrics={"char_acc": charlm.char_acc},
        defaults={**CHARLM_DEFAULTS, **defaults}, show=lambda model, device: {"sample": charlm.sample(model, device)},
    )


BUILTINS: dict[str, Callable[..., Task]] = dict(zip(BUILTIN_TASKS, (spirals, digits, quadratic, charlm_task),
                                                   strict=True))


def _parse_builtin(spec: str) -> tuple[str, dict]:
    # "spirals" or "spirals:5" (number of classes); "charlm" or "charlm:medium" (model size)
    name, _, arg = spec.partition(":")
    kw = {}
    if name == "spirals" and arg:
        if not arg.isdigit():
            raise TaskError(f"spirals: the class count must be an integer, got {arg!r}")
        kw["classes"] = int(arg)
    if name == "charlm" and arg:
        kw["size"] = arg
    return name, kw


def _import_plugin(spec: str) -> Callable:
    target, sep, fn_name = spec.rpartition(":")
    if not sep or not target or not fn_name:
        raise TaskError(f"task {spec!r}: expected a built-in ({', '.join(BUILTINS)}), "
                        "package.module:function or path/to/file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise TaskError(f"task {spec!r}: no such file {target}")
            mod_name = f"panda_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
            s = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(s)
            sys.modules[mod_name] = module
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except TaskError:
        raise
    except BaseException as e:  # a plugin may raise anything at import, even SystemExit
        raise TaskError(f"task {spec!r}: import failed: {type(e).__name__}: {e}") from e
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise TaskError(f"task {spec!r}: {target} has no function {fn_name!r}")
    # Any other callable could be anything: os.abort ends the process from C, where no exception
    # can stop it. A Python function's failures are exceptions that load_task turns into TaskError.
    if not inspect.isfunction(fn) or not _may_return_task(fn):
        raise TaskError(f"task {spec!r}: {fn_name} is not a Python function returning trainer.Task")
    required = [p.name for p in inspect.signature(fn).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise TaskError(f"task {spec!r}: {fn_name} takes arguments ({', '.join(required)}); "
                        "a plugin is called with none")
    return fn


def _may_return_task(fn: Callable) -> bool:
    """True unless fn is annotated to return something other than Task (or a subclass)."""
    ann = inspect.signature(fn).return_annotation
    if ann is inspect.Signature.empty:
        return True
    if isinstance(ann, str):  # `from __future__ import annotations`: "Task", "trainer.Task", ...
        return ann.strip("'\" ").rpartition(".")[2] == "Task"
    return isinstance(ann, type) and issubclass(ann, Task)


def check_task(task: Any, spec: str) -> Task:
    if not isinstance(task, Task):
        raise TaskError(f"task {spec!r}: the function must return trainer.Task, got {type(task).__name__}")
    if not isinstance(task.model, nn.Module):
        raise TaskError(f"task {spec!r}: model must be an nn.Module, got {type(task.model).__name__}")
    if not any(p.requires_grad for p in task.model.parameters()):  # the optimizer would have nothing to do
        raise TaskError(f"task {spec!r}: model has no trainable parameters")
    for name in ("train_data", "val_data"):
        ds = getattr(task, name)
        if ds is None and name == "val_data":
            continue
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise TaskError(f"task {spec!r}: {name} must be a map-style Dataset (with __getitem__ and "
                            f"__len__); {type(ds).__name__} is not (IterableDatasets cannot be resumed exactly)")
        try:
            n = len(ds)  # the plugin's own __len__: it may return anything
        except Exception as e:
            raise TaskError(f"task {spec!r}: len({name}) raised {type(e).__name__}: {e}") from e
        if n == 0:
            raise TaskError(f"task {spec!r}: {name} is empty")
    n_train = len(task.train_data)
    try:
        check_size(n_train)  # before Batches tries to allocate the shuffle
    except ValueError as e:
        raise TaskError(f"task {spec!r}: train_data has {e}") from e
    if not callable(task.loss):
        raise TaskError(f"task {spec!r}: loss must be callable")
    try:  # the run starts from these, so a bad one is the plugin's error, not the user's
        validate(HParams(), task.defaults, dataset_size=n_train)
    except HParamError as e:
        raise TaskError(f"task {spec!r}: defaults: {e}") from e
    return task


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def load_task(spec: str, seed: int = 0) -> Task:
    """Build the task named by `spec`; raises TaskError with a message naming the plugin."""
    if not isinstance(spec, str) or not spec.strip():
        raise TaskError("task: empty task name")
    name, kw = _parse_builtin(spec)
    if name in BUILTINS:
        task = BUILTINS[name](seed=seed, **kw)
    else:
        fn = _import_plugin(spec)
        torch.manual_seed(seed)  # a plugin's model init is reproducible from the run seed
        try:
            task = fn()
        except BaseException as e:  # SystemExit and KeyboardInterrupt too: this runs on the training thread
            raise TaskError(f"task {spec!r}: the function raised {_describe(e)}") from e
    task = check_task(task, spec)
    if task.name == "task":
        task.name = spec
    return task
