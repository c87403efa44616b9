"""A task whose training path draws from every RNG: torch (dropout), NumPy and Python (augmentation)."""
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainer import Task


class Jittered(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = torch.tensor(np.random.normal(0, 0.05, 4), dtype=torch.float32) * random.random()
        return self.x[i] + noise, self.y[i]


def make():
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    return Task(model=model, train_data=Jittered(200, 1), val_data=Jittered(50, 2),
                loss=nn.functional.cross_entropy, defaults={"lr": 0.05, "batch_size": 16})
