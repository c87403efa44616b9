"""A classifier whose loss is multiplied by 10^4: under fp16 its scaled gradients overflow at the
GradScaler's initial scale (65536), so the first steps are skipped by the scaler while it backs off."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task

LOUD = 1e4


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 2))
    return Task(model=model, train_data=TensorDataset(x, y), val_data=TensorDataset(x[:256], y[:256]),
                loss=lambda out, t: LOUD * nn.functional.cross_entropy(out, t),
                defaults={"lr": 1e-6, "momentum": 0.9, "batch_size": 64}, name="loud")
