"""A finite loss whose gradients are NaN from the first step (a broken backward): under fp16 the
GradScaler reads that as overflow, at every scale."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


class NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return NanGrad.apply(self.lin(x))


def make():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(model=Net(), train_data=TensorDataset(x, y), val_data=TensorDataset(x[:64], y[:64]),
                loss=nn.functional.cross_entropy, defaults={"lr": 0.1, "batch_size": 32})
