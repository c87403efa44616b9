"""Plugins that fail in each of the ways a user's plugin can."""
import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from trainer import Task

_x = torch.randn(64, 3)
_y = (_x[:, 0] > 0).long()


def wrong_type():
    return {"model": nn.Linear(3, 2)}


def raises():
    raise RuntimeError("no GPU quota left")


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(_x, _y)


def iterable():
    return Task(model=nn.Linear(3, 2), train_data=Stream(), loss=nn.functional.cross_entropy)


class Explodes(nn.Module):
    """Raises in forward at the 5th training call."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == 5:
                raise ValueError("shapes do not match in my layer")
        return self.lin(x)


def forward_error():
    return Task(model=Explodes(), train_data=TensorDataset(_x, _y), val_data=TensorDataset(_x, _y),
                loss=nn.functional.cross_entropy, defaults={"batch_size": 16})
