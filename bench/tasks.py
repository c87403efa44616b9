"""Benchmark tasks as plugins: `--task bench/tasks.py:wide_mlp` (or `:wide_mlp_small` for a CPU smoke test).

wide_mlp is sized for a GPU: 4 hidden layers of 2048 with BatchNorm and ReLU (17 M parameters), batch
512, on synthetic data whose labels a fixed random teacher network assigns, so the loss really falls.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task
from trainer.tasks import accuracy, mlp

N_IN, CLASSES = 256, 10


def teacher_data(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian inputs labelled by a random one-hidden-layer tanh network. The data come from their own
    generator: every run seed trains on the same data (the run seed only sets the model's init)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(N_IN, 64, generator=g) / N_IN ** 0.5
    w2 = torch.randn(64, CLASSES, generator=g)
    x = torch.randn(rows, N_IN, generator=g)
    return x, (torch.tanh(x @ w1) @ w2).argmax(dim=1)


def wide(width: int, depth: int = 4, rows: int = 65_536) -> Task:
    x, y = teacher_data(rows + 4096, seed=1234)
    return Task(
        name=f"wide-mlp-{width}", model=mlp(N_IN, [width] * depth, CLASSES),
        train_data=TensorDataset(x[:rows], y[:rows]), val_data=TensorDataset(x[rows:], y[rows:]),
        loss=nn.functional.cross_entropy, metrics={"acc": accuracy},
        defaults={"lr": 0.02, "momentum": 0.9, "batch_size": 512},
    )


def wide_mlp() -> Task:
    """The GPU-sized task: 4 x 2048, 65,536 training rows (128 batches of 512 an epoch)."""
    return wide(2048)


def wide_mlp_small() -> Task:
    """The same shape at width 256 and 8,192 rows, for CPU smoke tests."""
    return wide(256, rows=8192)
