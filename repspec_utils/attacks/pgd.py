"""L∞ PGD (Madry et al. 2018) with a random start, and the robust accuracy it gives at a fixed budget ε."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repspec_utils.attacks.base import (AttackResult, check_box, check_finite_logits, check_inputs, check_label_range,
                                        check_labels, eval_mode, model_dtype)
from repspec_utils.attacks.precision import in_full_fp32


# ----------------------------------------------------------------------------------------------------
# Fixed-budget white-box attack: L∞ PGD (Madry et al. 2018), the base of adversarial training (issue 13)
# ----------------------------------------------------------------------------------------------------
@in_full_fp32
def pgd_linf(model: nn.Module, x: Tensor, y: Tensor, eps: float, box=(0.0, 1.0), *, steps: int = 10,
             alpha: float | None = None, random_start: bool = True, target: Tensor | None = None, seed: int = 0,
             max_batch: int = 4096) -> AttackResult:
    """L∞ PGD inside the ε-ball ∩ box, on the whole batch at once: x (N, ...) -> AttackResult (x_adv, its L2
    distance, queries = forward passes per sample, success = argmax F(x_adv) ≠ y).

    Untargeted (target None) it ascends the cross-entropy of y; with `target` (N,) it ascends the margin
    F_target − F_y. Each step: δ ← Π(δ + α·sign ∇), Π = clip to [−ε, ε] and to the box; from a uniform random start
    in the ball when `random_start`. α defaults to 2.5·ε/steps. ε = 0 returns x (the clean predictions). The model is run in eval mode; its modes are
    restored."""
    check_inputs(x, box)
    check_labels(x, y)
    vmin, vmax = check_box(box)
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and 0 <= eps <= vmax - vmin):
        raise ValueError(f"eps must lie in [0, {vmax - vmin:g}] (the box's width), got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if alpha is None:
        alpha = 2.5 * eps / steps if eps > 0 else 1.0  # ε = 0: nothing moves whatever the step
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha (the step size) must be > 0, got {alpha!r}")
    if target is not None:
        check_labels(x, target)
    n, dev = x.shape[0], x.device
    dtype = model_dtype(model, x)
    x0, y = x.to(dtype), torch.as_tensor(y, device=dev).long()
    target = None if target is None else torch.as_tensor(target, device=dev).long()
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    out = x0.clone()
    with eval_mode(model):
        with torch.no_grad():  # every label against the number of classes, before any step
            check_label_range(y, check_finite_logits(model(x0[:max_batch]), "pgd_linf").shape[-1])
        for s in range(0, n, max_batch):
            sl = slice(s, s + max_batch)
            out[sl] = pgd_examples(model, x0[sl], y[sl], eps, steps, alpha, (vmin, vmax), gen, random_start,
                                   None if target is None else target[sl])
        with torch.no_grad():
            pred = torch.cat([check_finite_logits(model(out[s:s + max_batch]), "pgd_linf").argmax(1)
                              for s in range(0, n, max_batch)])
    dist = (out - x0).flatten(1).norm(dim=1)
    queries = torch.full((n,), steps + 1, dtype=torch.long, device=dev)
    return AttackResult(x_adv=out, distance=dist, queries=queries, success=pred != y)


def pgd_examples(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, alpha: float, box, gen,
                 random_start: bool = True, target: Tensor | None = None) -> Tensor:
    """The PGD-L∞ core, unchecked (callers validate): the adversarial points of one batch, detached, computed in
    the model's current mode (pgd_linf runs it in eval mode; training methods choose). Gradients flow only to δ:
    the parameters' .grad are untouched. gen: a torch.Generator on x's device (the random start)."""
    vmin, vmax = box
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        delta = (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
        delta = (x + delta).clamp(vmin, vmax) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x + delta).float()
            if target is None:
                objective = F.cross_entropy(logits, y, reduction="sum")
            else:
                objective = (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).sum()
            grad = torch.autograd.grad(objective, delta)[0]
        with torch.no_grad():
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(vmin, vmax) - x
    return (x + delta).detach()


def robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, box=(0.0, 1.0), **pgd_kwargs) -> float:
    """Fraction of samples that the model classifies correctly and that L∞ PGD at radius ε does not break."""
    with torch.no_grad(), eval_mode(model):
        clean = model(x.to(model_dtype(model, x))).argmax(1) == torch.as_tensor(y, device=x.device)
    res = pgd_linf(model, x, y, eps, box, **pgd_kwargs)
    return (clean & ~res.success).double().mean().item()
