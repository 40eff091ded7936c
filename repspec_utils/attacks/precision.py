"""The precision policy of the attacks: 'fp32' (default) or 'bf16' autocast for the model's queries, with a
warning where bf16 is slow or inexact; `full_fp32_matmuls` keeps float32 matmuls exact (no TF32) inside attacks."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from repspec_utils.infra import registry

PRECISIONS = ("fp32", "bf16")
registry.PRECISIONS.register("fp32", "float32 throughout (the default)")
registry.PRECISIONS.register("bf16", "the model's matmuls under torch.autocast(bfloat16); master weights, optimiser state, "
                             "the spectral penalty and the attacks' final bisection in float32")


@contextmanager
def full_fp32_matmuls():
    """Within the block, CUDA matmuls and cuDNN convolutions run in full fp32: TF32 (10 mantissa bits, cuDNN's
    default for convolutions) is off, then restored. An attack's small probes need every bit (the bf16 attack
    overstated distances by 28-35 %, figures/validation_bf16); a no-op on the CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def in_full_fp32(fn: Callable) -> Callable:
    """An attack that runs inside `full_fp32_matmuls` (its bf16 option is autocast on top, asked for by name)."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with full_fp32_matmuls():
            return fn(*args, **kwargs)

    return run


class BF16AttackWarning(UserWarning):
    """A hard-label attack run with bf16 queries: its distances are biased upward (figures/validation_bf16)."""


BF16_ATTACK_NOTE = ("bf16 queries round every input to 8 mantissa bits, which swallows the boundary attacks' small "
                    "probes: the attack stops short of the boundary and overstates the distance (measured in "
                    "figures/validation_bf16); use precision='fp32' for results, bf16 only to time the machinery")


def check_precision(precision: str) -> str:
    """'fp32' or 'bf16' (model queries under bfloat16 autocast); ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision
