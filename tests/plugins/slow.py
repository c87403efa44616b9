"""A task whose steps take 0.1 s each, like a big model on a small machine."""
import time

import torch
from torch import nn
from torch.utils.data import TensorDataset

from trainer import Task


class Slow(nn.Linear):
    def forward(self, x):
        time.sleep(0.1)
        return super().forward(x)


def make() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    return Task(model=Slow(4, 1), train_data=TensorDataset(x, x.sum(1, keepdim=True)),
                loss=nn.functional.mse_loss, defaults={"batch_size": 16})
