"""65 training items in batches of 32: the epoch's last sample would be a batch of its own, which
BatchNorm refuses in training mode ("Expected more than 1 value per channel")."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(65, 3, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return Task(model=model, train_data=TensorDataset(x, y), val_data=TensorDataset(x, y),
                loss=nn.functional.cross_entropy, defaults={"lr": 0.1, "batch_size": 32})
