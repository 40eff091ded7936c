"""What every attack shares: `AttackResult`, the input checks (box, inputs, budget, labels), `eval_mode`, and `Oracle`
— the only path to the model in the hard-label attacks: it sees the argmax only and counts one query per row."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from repspec_utils.attacks.precision import check_precision
from repspec_utils.models.base import CONV_CALL_ROWS, call_rows, eval_mode  # noqa: F401 (eval_mode: re-exported)


@dataclass
class AttackResult:
    """Per-sample attack output: x_adv (N, ...), distance ‖x_adv − x‖₂ (N,) (inf if no adversarial point),
    queries (N,) int64 model rows used, success (N,) bool (x_adv was labelled adversarial by the model)."""

    x_adv: Tensor
    distance: Tensor
    queries: Tensor
    success: Tensor


# ----------------------------------------------------------------------------------------------------
# Input checks (all raise ValueError before the model is called)
# ----------------------------------------------------------------------------------------------------
def check_box(box) -> tuple[float, float]:
    """(vmin, vmax) as floats; ValueError unless both are finite and vmin < vmax."""
    try:
        vmin, vmax = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"box must be a pair (vmin, vmax), got {box!r}") from exc
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax):
        raise ValueError(f"box must satisfy vmin < vmax (both finite), got ({vmin}, {vmax})")
    return vmin, vmax


def check_inputs(x: Tensor, box) -> None:
    """ValueError unless x is a non-empty batch (N, ...) of finite values inside the box."""
    vmin, vmax = check_box(box)
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch tensor (N, ...), got {getattr(x, 'shape', type(x))}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains non-finite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < vmin or hi > vmax:
        raise ValueError(f"inputs lie outside the box: values in [{lo:g}, {hi:g}], box [{vmin:g}, {vmax:g}]")


def check_budget(max_queries, n: int | None = None) -> None:
    """ValueError unless max_queries is None, a positive integer, or n positive integers (one per sample)."""
    if max_queries is None:
        return
    q = torch.as_tensor(max_queries)
    if q.is_floating_point() or q.dtype == torch.bool or q.numel() == 0 or q.dim() > 1:
        raise ValueError(f"max_queries must be a positive integer (or per-sample integers), got {max_queries!r}")
    if n is not None and q.dim() == 1 and q.numel() not in (1, n):
        raise ValueError(f"max_queries has {q.numel()} entries for {n} samples")
    if (q <= 0).any():
        raise ValueError(f"max_queries must be positive, got {max_queries!r}")


def check_labels(x: Tensor, y: Tensor | None) -> None:
    """ValueError unless y is None or holds one integer label per sample of x (no model call)."""
    if y is None:
        return
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one label per sample: x has {x.shape[0]} samples, y has shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")


def check_label_range(y: Tensor, n_classes: int) -> None:
    """ValueError unless every label is a class of the model (0..C−1): a label outside them would make every
    prediction 'adversarial' and the attack report distance 0. Checked at the attack's first model call."""
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (the model has {n_classes} classes), got values in "
                         f"{int(y.min())}..{int(y.max())}")


# ----------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------
def model_dtype(model: nn.Module, x: Tensor) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else x.dtype


class NonFiniteLogits(FloatingPointError):
    """The attacked model returned NaN or ±inf logits: no attack result would mean anything (an argmax over NaN
    reads as 'no adversarial point' for every sample)."""


def check_finite_logits(logits: Tensor, where: str) -> Tensor:
    """`logits`, or NonFiniteLogits naming how many rows are not finite and where (`where`: the attack)."""
    bad = ~torch.isfinite(logits).all(dim=-1)
    if bool(bad.any()):
        raise NonFiniteLogits(f"{where}: the model returned non-finite logits (NaN or inf) for {int(bad.sum())} of "
                              f"{bad.numel()} inputs; an attack on it would report nonsense. Check the model (a "
                              f"diverged training, a bad checkpoint) before attacking it.")
    return logits


DENSE_QUERY_ROWS = 8192  # rows per model call for an MLP, or any net on a GPU: large GEMMs run at their best rate
CONV_QUERY_ROWS = CONV_CALL_ROWS  # ... for a convolutional net on the CPU (`models.base.call_rows`)


def query_rows(model: nn.Module, device: torch.device | str = "cpu") -> int:
    """Rows per model call of a hard-label attack when `max_batch` is not given (`models.base.call_rows`)."""
    return call_rows(model, device, dense=DENSE_QUERY_ROWS)


class Oracle:
    """Hard-label access: which rows are adversarial for the sample owning them; counts 1 query per row.
    With y None the label to leave is the model's prediction at x0 (one counted query per sample)."""

    def __init__(self, model: nn.Module, y: Tensor | None, x0: Tensor, shape: tuple, max_batch: int,
                 max_queries=None, precision: str = "fp32"):
        self.model, self.shape, self.max_batch = model, tuple(shape), int(max_batch)
        self.checked = y is None  # given labels are checked against the classes at the first model call
        self.precision = check_precision(precision)
        n, dev = x0.shape[0], x0.device
        self.queries = torch.zeros(n, dtype=torch.long, device=dev)
        big = torch.iinfo(torch.long).max // 2
        self.budget = torch.as_tensor(big if max_queries is None else max_queries, dtype=torch.long,
                                      device=dev).expand(n).clone()
        if y is None:
            with torch.no_grad():
                y = torch.cat([self._logits(x0[s:s + self.max_batch]).argmax(1) for s in range(0, n, self.max_batch)])
            self.queries += 1
        self.y = y.to(dev).long()

    def _logits(self, pts: Tensor) -> Tensor:
        with torch.autocast(device_type=pts.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(pts.view(-1, *self.shape)).float()
        check_finite_logits(out, "a hard-label attack's query")
        if not self.checked:  # given labels: the first call that tells the number of classes
            check_label_range(self.y, out.shape[-1])
            self.checked = True
        return out

    def left(self, idx: Tensor) -> Tensor:
        """Queries still allowed for samples idx."""
        return self.budget[idx] - self.queries[idx]

    def __call__(self, pts: Tensor, owner: Tensor) -> Tensor:
        """pts (M, d), owner (M,) sample index per row -> bool (M,): argmax F(pt) ≠ y[owner]."""
        out = torch.empty(pts.shape[0], dtype=torch.bool, device=pts.device)
        for s in range(0, pts.shape[0], self.max_batch):
            logits = self._logits(pts[s:s + self.max_batch])
            out[s:s + self.max_batch] = logits.argmax(1) != self.y[owner[s:s + self.max_batch]]
        self.queries.index_add_(0, owner, torch.ones_like(owner))
        if (self.queries[owner] > self.budget[owner]).any():  # callers check `left` first; this guards them
            raise RuntimeError("internal error: a sample exceeded its query budget")
        return out
