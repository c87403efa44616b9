"""A finite loss spike planted in the data: one poisoned training sample (its last feature is 1)
multiplies its batch's loss by 10^4. It comes round once an epoch, at a step the seeded data order
fixes. The model has BatchNorm, so a dropped update must also put the running stats back."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task

POISON = 1000  # the index of the poisoned sample


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 2))
        self.poisoned = False

    def forward(self, x):
        self.poisoned = bool(x[:, -1].max() > 0) and self.training
        return self.body(x)


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 4, generator=g)
    x[:, -1] = 0.0
    x[POISON, -1] = 1.0
    y = (x[:, 0] + x[:, 1] > 0).long()
    net = Net()

    def spiky(out, target):
        ce = nn.functional.cross_entropy(out, target)
        return ce * 1e4 if net.poisoned else ce

    return Task(model=net, train_data=TensorDataset(x, y), val_data=TensorDataset(x[:256], y[:256]),
                loss=spiky, defaults={"lr": 0.05, "momentum": 0.9, "batch_size": 32})
