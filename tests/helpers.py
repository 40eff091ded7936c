"""Test helpers shared by several test files."""

import torch
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


def conv_matrix(conv, h, w, weight=None):
    """The matrix of the actual conv operator on (in_channels, h, w) inputs (bias included if the conv has one),
    column j = conv(e_j), in the weight's dtype; differentiable in `weight` (then without bias)."""
    n = conv.in_channels * h * w
    dtype = (conv.weight if weight is None else weight).dtype
    basis = torch.eye(n, dtype=dtype).reshape(n, conv.in_channels, h, w)
    out = conv(basis) if weight is None else conv._conv_forward(basis, weight, None)
    return out.reshape(n, -1).T
