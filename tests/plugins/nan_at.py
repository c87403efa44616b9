"""The training loss becomes NaN at step 37 (the 37th training forward), and only there. make_bn: the
same with a BatchNorm after the NaN, so that forward also writes NaN into its running stats."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task

NAN_STEP = 37


class Net(nn.Module):
    def __init__(self, bn: bool = False):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2) if bn else nn.Identity()
        self.calls = 0

    def forward(self, x):
        out = self.lin(x)
        if self.training:
            self.calls += 1
            if self.calls == NAN_STEP:
                out = out * float("nan")
        return self.bn(out)


def make(bn: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(model=Net(bn), train_data=TensorDataset(x, y), val_data=TensorDataset(x[:64], y[:64]),
                loss=nn.functional.cross_entropy, defaults={"lr": 0.1, "batch_size": 32})


def make_bn():
    return make(bn=True)
