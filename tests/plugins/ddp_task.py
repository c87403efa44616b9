"""A task for data-parallel tests: an MLP without BatchNorm, so a 2-rank run computes what one process
does (up to the order of floating-point sums). make_dropout adds dropout, so each rank's RNG stream
matters to an exact resume. PANDA_NAN_RANK=r and PANDA_NAN_CALL=k make rank r's k-th training
forward NaN, and no other rank's; PANDA_RAISE_RANK and PANDA_RAISE_CALL make it raise instead."""
import os

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


class Net(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Dropout(p), nn.Linear(64, 64), nn.Tanh(),
                                  nn.Linear(64, 3))
        self.calls = 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "0"
            if rank == os.environ.get("PANDA_NAN_RANK") and self.calls == int(os.environ["PANDA_NAN_CALL"]):
                out = out * float("nan")
            if rank == os.environ.get("PANDA_RAISE_RANK") and self.calls == int(os.environ["PANDA_RAISE_CALL"]):
                raise RuntimeError(f"planted crash on rank {rank}")
        return out


def make(p: float = 0.0):
    g = torch.Generator().manual_seed(0)
    n = 1024
    t = torch.rand(n, generator=g) * 3
    k = torch.randint(0, 3, (n,), generator=g)
    x = torch.stack([t * torch.cos(t + 2.1 * k), t * torch.sin(t + 2.1 * k)], 1) / 3
    x = x + 0.05 * torch.randn(n, 2, generator=g)
    torch.manual_seed(0)  # the model's init
    return Task(model=Net(p), train_data=TensorDataset(x, k), val_data=TensorDataset(x[:256], k[:256]),
                loss=nn.functional.cross_entropy, defaults={"lr": 0.2, "batch_size": 64, "momentum": 0.9},
                metrics={"acc": lambda o, y: (o.argmax(1) == y).float().mean()})


def make_dropout():
    return make(p=0.2)
