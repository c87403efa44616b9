"""Plugins that fail in each of the ways a user's plugin can."""
import sys

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

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


def interrupted():
    raise KeyboardInterrupt


def exits():
    sys.exit(3)


def needs_args(n_samples):
    return iterable()


def says_module() -> nn.Module:
    return nn.Linear(3, 2)


def bad_lr():
    return Task(model=nn.Linear(3, 2), train_data=TensorDataset(_x, _y), loss=nn.functional.cross_entropy,
                defaults={"lr": -1})


def typo():
    return Task(model=nn.Linear(3, 2), train_data=TensorDataset(_x, _y), loss=nn.functional.cross_entropy,
                defaults={"learnig_rate": 0.1})


def too_big_a_batch():
    return Task(model=nn.Linear(3, 2), train_data=TensorDataset(_x, _y), loss=nn.functional.cross_entropy,
                defaults={"batch_size": 65})


def no_parameters():
    return Task(model=nn.ReLU(), train_data=TensorDataset(_x, _y), loss=nn.functional.cross_entropy)


def frozen():
    model = nn.Linear(3, 2).requires_grad_(False)
    return Task(model=model, train_data=TensorDataset(_x, _y), loss=nn.functional.cross_entropy)


class Huge(Dataset):
    """A trillion items: an epoch's shuffle alone would need 8 TB."""

    def __len__(self):
        return 10**12

    def __getitem__(self, i):
        return _x[i % 64], _y[i % 64]


def huge():
    return Task(model=nn.Linear(3, 2), train_data=Huge(), loss=nn.functional.cross_entropy)


class BadLen(Huge):
    def __len__(self):
        return -1


def bad_len():
    return Task(model=nn.Linear(3, 2), train_data=BadLen(), loss=nn.functional.cross_entropy)
