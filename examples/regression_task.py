"""A complete Panda plugin: `--task examples/regression_task.py:make_task`.

A plugin is a function that returns trainer.Task: a model, map-style training and validation
datasets whose items are (input, target), a loss(output, target), and optional metrics.
"""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


def make_task() -> Task:
    g = torch.Generator().manual_seed(0)  # data from a seed: no downloads
    x = torch.randn(2000, 10, generator=g)
    w = torch.randn(10, 1, generator=g)
    y = torch.sin(x @ w / 3).squeeze(1) + 0.05 * torch.randn(2000, generator=g)
    model = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1), nn.Flatten(0))
    return Task(
        model=model,
        train_data=TensorDataset(x[:1600], y[:1600]),
        val_data=TensorDataset(x[1600:], y[1600:]),
        loss=nn.functional.mse_loss,
        metrics={"mae": lambda out, target: (out - target).abs().mean()},
        defaults={"lr": 0.05, "momentum": 0.9, "batch_size": 32},  # used unless the user overrides them
        name="sine-regression",
    )
