"""Certified lower bounds on Δx for one-hidden-layer MLPs: the paper's bound (SPEC §1) made exact per sample.

For F(x) = W_r Φ(x) + b_r with Φ(x) = φ(W₁x + b₁)/√n (a repspec `MLP` with one hidden layer, or a `RefitModel`
on one), the margin against class k is m_k = F_y − F_k and its gradient ∇m_k(ξ) = W₁ᵀ(φ′(z(ξ)) ∘ v_k)/√n with
v_k = W_r[y] − W_r[k]. Along the segment to any x + δ, m_k drops by at most ‖δ‖ · sup_{ball} ‖∇m_k‖, so a ball of
radius r around x holds no adversarial point when m_k(x) > r · sup_{‖ξ−x‖≤r} ‖∇m_k(ξ)‖ for every k ≠ y.

* **global**: sup ‖∇m_k‖ ≤ L ‖W₁‖₂ ‖v_k‖ / √n with L = sup |φ′| (GELU: φ′(√2) = 1.1289…, not 1), so
  r = min_k m_k / (L ‖W₁‖₂ ‖v_k‖ / √n).
* **local**: on the ball each pre-activation stays in z_j(x) ± r‖W₁[j]‖, where φ′ takes values in the exact range
  [l_j, u_j]; with c = (l + u)/2 and ρ = (u − l)/2, sup ‖∇m_k‖ ≤ (‖W₁ᵀ(c ∘ v_k)‖ + ‖W₁‖₂ ‖ρ ∘ v_k‖)/√n. A radius
  that passes this test is certified; it is searched per (sample, k) upward from the global radius (doubling,
  then bisection to `rtol`), so the local radius is never below the global one.

Everything is computed in float64 from the model's parameters (not through its float32 forward). The input box
is ignored, so the radius also bounds box-constrained attacks from below. A misclassified sample has radius 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from repspec_utils.models.base import RefitModel, activation_derivative, get_activation
from repspec_utils.models.mlp import MLP, effective_bias

__all__ = ["certified_radius", "supports", "derivative_bound", "derivative_range", "METHODS"]

METHODS = ("local", "global")
_SQRT2 = math.sqrt(2.0)


def derivative_bound(activation: str) -> float:
    """L = sup_z |φ′(z)| of the activation (GELU: φ′(√2) ≈ 1.1289, where GELU″ = pdf(z)(2 − z²) vanishes)."""
    if activation == "gelu":
        return float(activation_derivative("gelu")(torch.tensor(_SQRT2, dtype=torch.float64)))
    if activation in ("relu", "tanh", "softplus", "identity"):
        return 1.0
    raise ValueError(f"no derivative bound for activation {activation!r}; "
                     f"supported: gelu, relu, tanh, softplus, identity")


def derivative_range(activation: str, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The exact range [min, max] of φ′ over each interval [lo, hi] (elementwise, lo ≤ hi): two tensors like lo."""
    if activation == "gelu":  # extrema of GELU′ at the endpoints or at ±√2 (its only critical points)
        d = activation_derivative("gelu")
        cands = [d(lo), d(hi)]
        peak = torch.full_like(lo, float(d(torch.tensor(_SQRT2, dtype=torch.float64))))
        dip = torch.full_like(lo, float(d(torch.tensor(-_SQRT2, dtype=torch.float64))))
        inside_peak = (lo <= _SQRT2) & (hi >= _SQRT2)
        inside_dip = (lo <= -_SQRT2) & (hi >= -_SQRT2)
        low = torch.minimum(*cands)
        high = torch.maximum(*cands)
        return torch.where(inside_dip, torch.minimum(low, dip), low), torch.where(inside_peak,
                                                                                  torch.maximum(high, peak), high)
    if activation == "relu":  # the generalised derivative at 0 is [0, 1]
        return (lo > 0).to(lo.dtype), (hi >= 0).to(lo.dtype)
    if activation == "tanh":  # 1 − tanh²: largest nearest 0, smallest at the endpoint farthest from 0
        d = activation_derivative("tanh")
        nearest = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.where(lo > 0, lo, hi))
        farthest = torch.where(lo.abs() > hi.abs(), lo, hi)
        return d(farthest), d(nearest)
    if activation == "softplus":  # sigmoid, increasing
        return torch.sigmoid(lo), torch.sigmoid(hi)
    if activation == "identity":
        return torch.ones_like(lo), torch.ones_like(lo)
    raise ValueError(f"no derivative range for activation {activation!r}; "
                     f"supported: gelu, relu, tanh, softplus, identity")


def _one_hidden_mlp(model: nn.Module) -> MLP | None:
    base = model.base if isinstance(model, RefitModel) else model
    return base if isinstance(base, MLP) and len(base.widths) == 1 and not base.batchnorm else None


def supports(model: nn.Module) -> bool:
    """True when `certified_radius` applies: a one-hidden-layer repspec MLP, or a re-fitted readout on one."""
    return _one_hidden_mlp(model) is not None


class _Net:
    """The float64 parameters of F = W_r φ(W₁x + b₁)/√n + b_r."""

    def __init__(self, model: nn.Module):
        mlp = _one_hidden_mlp(model)
        if mlp is None:
            kind = type(model.base if isinstance(model, RefitModel) else model).__name__
            widths = getattr(model, "widths", None)
            raise TypeError(f"certified_radius needs a one-hidden-layer repspec MLP without BatchNorm (or a RefitModel "
                            f"on one); got {kind}" + (f" with hidden widths {widths}" if widths is not None else "")
                            + (" and batchnorm=True" if getattr(model, "batchnorm", False) else ""))
        derivative_bound(mlp.activation)  # a clear error for an unsupported activation, before any work
        self.activation = mlp.activation
        self.W1, self.b1, self.Wr, self.br = (t.detach().to("cpu", torch.float64) for t in (
            mlp.hidden[0].weight, mlp.hidden[0].bias, model.readout.weight, effective_bias(model.readout)))
        self.n = self.W1.shape[0]
        self.scale = 1.0 / math.sqrt(self.n)
        self.sigma1 = torch.linalg.matrix_norm(self.W1, ord=2)
        self.row_norms = self.W1.norm(dim=1)

    def preacts(self, x: Tensor) -> Tensor:
        return x @ self.W1.T + self.b1

    def logits(self, z: Tensor) -> Tensor:
        return (get_activation(self.activation)(z) * self.scale) @ self.Wr.T + self.br


def _pairs(y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
    """(sample index, other class k) of every (sample, k ≠ y) pair: two (N·(C−1),) int64."""
    n = y.shape[0]
    ks = torch.arange(n_classes, device=y.device).expand(n, n_classes)
    keep = ks != y[:, None]
    rows = torch.arange(n, device=y.device)[:, None].expand(n, n_classes)[keep]
    return rows, ks[keep]


def _local_slack(net: _Net, z: Tensor, v: Tensor, margin: Tensor, r: Tensor, chunk: int) -> Tensor:
    """The local test's slack m − r · (‖W₁ᵀ(c ∘ v)‖ + ‖W₁‖₂ ‖ρ ∘ v‖)/√n at radius r (R,) for the pairs with
    pre-activations z (R, n), readout difference v (R, n) and margin (R,): r is certified where it is > 0."""
    out = torch.empty(r.shape[0], dtype=torch.float64)
    for s in range(0, r.shape[0], chunk):
        sl = slice(s, s + chunk)
        spread = r[sl, None] * net.row_norms
        low, high = derivative_range(net.activation, z[sl] - spread, z[sl] + spread)
        centre, radius = (low + high) / 2, (high - low) / 2
        bound = ((centre * v[sl]) @ net.W1).norm(dim=1) + net.sigma1 * (radius * v[sl]).norm(dim=1)
        out[sl] = margin[sl] - r[sl] * bound * net.scale
    return out


def certified_radius(model: nn.Module, x: Tensor, y: Tensor, method: str = "local", rtol: float = 1e-3,
                     max_doublings: int = 60, chunk: int = 2048) -> Tensor:
    """Certified L2 radius of every sample: no point within it changes argmax F (module docstring). x (N, ...) in the
    model's input layout, y (N,) labels -> (N,) float64 on the CPU (0 for a misclassified sample, inf when no
    class can overtake y). method 'global' or 'local' (≥ global; bisection to relative tolerance `rtol`)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not (isinstance(rtol, (int, float)) and 0 < rtol < 1):
        raise ValueError(f"rtol must lie in (0, 1), got {rtol!r}")
    net = _Net(model)
    x = torch.as_tensor(x).detach().to("cpu", torch.float64).flatten(1)
    y = torch.as_tensor(y).detach().to("cpu").long().reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")
    if x.shape[1] != net.W1.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features per sample; the model's first layer takes {net.W1.shape[1]}")
    n_classes = net.Wr.shape[0]
    if y.numel() and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got values in {int(y.min())}..{int(y.max())}")
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64)
    z = net.preacts(x)
    logits = net.logits(z)
    rows, ks = _pairs(y, n_classes)
    margin = logits[rows, y[rows]] - logits[rows, ks]
    v = net.Wr[y[rows]] - net.Wr[ks]
    denom = derivative_bound(net.activation) * net.sigma1 * v.norm(dim=1) * net.scale
    lo = torch.where(margin <= 0, torch.zeros_like(margin),
                     torch.where(denom > 0, margin / denom.clamp_min(torch.finfo(torch.float64).tiny),
                                 torch.full_like(margin, math.inf)))
    if method == "local":
        lo = _search(net, z[rows], v, margin, lo, rows, x.shape[0], rtol, max_doublings, chunk)
    radius = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    return radius.scatter_reduce(0, rows, lo, reduce="amin")


def _search(net: _Net, z: Tensor, v: Tensor, margin: Tensor, lo: Tensor, rows: Tensor, n: int, rtol: float,
            max_doublings: int, chunk: int) -> Tensor:
    """Per pair, the largest radius found that passes the local test, starting from the certified `lo`: double
    until the test fails, then bisect the bracket [passes, fails] to rtol. The test need not be monotone in r:
    every radius kept as `lo` passed the test itself, so the result is certified whatever the search does. A pair
    whose lo already reaches the smallest failing radius of another pair of its sample cannot set the sample's
    minimum and is dropped; until a sample has a failing radius, only its pair with the smallest lo is tested."""
    lo = lo.clone()
    hi = torch.full_like(lo, math.inf)
    open_ = (margin > 0) & torch.isfinite(lo) & (lo > 0)
    doublings = torch.zeros_like(lo, dtype=torch.long)
    inf = torch.full((n,), math.inf, dtype=torch.float64)
    for _ in range(max_doublings + 200):
        best_hi = inf.scatter_reduce(0, rows, hi, reduce="amin")
        open_ &= lo < best_hi[rows]  # pruning: this pair cannot be the sample's minimum
        open_ &= torch.isinf(hi) | (hi - lo > rtol * lo)
        open_ &= doublings < max_doublings
        critical = inf.scatter_reduce(0, rows, torch.where(open_, lo, math.inf), reduce="amin")
        idx = (open_ & (torch.isfinite(best_hi[rows]) | (lo <= critical[rows]))).nonzero().flatten()
        if idx.numel() == 0:
            break
        a, b = lo[idx], hi[idx]
        trial = torch.where(torch.isinf(b), 2 * a, (a + b) / 2)
        ok = _local_slack(net, z[idx], v[idx], margin[idx], trial, chunk) > 0
        lo[idx] = torch.where(ok, trial, a)
        hi[idx] = torch.where(ok, b, trial)
        doublings[idx] += (torch.isinf(b) & ok).long()
    return lo
