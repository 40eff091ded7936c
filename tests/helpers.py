"""Test helpers shared by several test files."""

from torch import nn


class Counting(nn.Module):
    """Wraps a model; counts calls and rows (every row is one query of a hard-label attack)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)
