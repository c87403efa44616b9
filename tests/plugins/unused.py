"""An MLP with a spare head that only some batches use (those whose first point has a positive
coordinate `gate`), and a parameter no step ever reaches: PyTorch's optimizers skip a parameter whose
.grad is None, so momentum and weight decay must leave both alone on the steps that did not use them."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


class Net(nn.Module):
    def __init__(self, gaps: bool, never: bool, gate: int):
        super().__init__()
        self.gaps, self.gate = gaps, gate
        self.body = nn.Sequential(nn.Linear(2, 16), nn.Tanh())
        self.head = nn.Linear(16, 3)
        self.spare = nn.Linear(16, 3)
        if never:
            self.never = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = self.body(x)
        out = self.head(h)
        if not self.gaps or x[0, self.gate] > 0:
            out = out + self.spare(h)
        return out


def make(gaps: bool = True, never: bool = True, gate: int = 0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 2, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Task(model=Net(gaps, never, gate), train_data=TensorDataset(x, y), val_data=TensorDataset(x[:64], y[:64]),
                loss=nn.functional.cross_entropy,
                defaults={"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, "batch_size": 32})


def make_dense():
    """Every parameter gets a gradient every step."""
    return make(gaps=False, never=False)


def make_gaps():
    """The spare head sits some steps out (the first step uses it); nothing is never reached."""
    return make(never=False)


def make_late():
    """The spare head is first used at step 3 (seed 0): its parameters have no momentum buffer when
    the others do, which torch's fused SGD cannot take (None among the buffers)."""
    return make(never=False, gate=1)
