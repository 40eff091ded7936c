"""Minimum-norm L2 adversarial attacks on a batch: Tangent Attack, HopSkipJump (hard-label) and FMN (white-box).

Δx = min ‖δ‖₂ such that argmax_k F_k(x + δ) ≠ y with x + δ inside the box [vmin, vmax] (SPEC §4).

The two hard-label attacks share one batched skeleton, `_boundary_attack`:

    init      a misclassified start point per sample (Gaussian noise, else another given sample)
    bisect    to the decision boundary (tolerance `tol` on the interpolation coefficient)
    repeat t = 1..T:
        estimate the boundary normal at the boundary point x_b from n_t sign probes
        step      (TA: tangent point of a hemisphere; HSJ: geometric step along the normal),
                  halving the step until the proposal is adversarial
        bisect    back to the boundary between x and the proposal

Every model call carries the rows of all active samples at once (chunked to `max_batch` rows) and the
binary searches run in lock-step. `_Oracle` is the only path to the model: it observes only the argmax,
counts one query per row for the sample that owns the row, and every caller checks the per-sample budget
before asking, so no sample ever exceeds `max_queries`. A sample whose budget cannot pay for the next
iteration stops and keeps its best adversarial point so far. Every returned adversarial point is a point
the model itself labelled adversarial (no re-interpolation after the query).

Randomness: the start-point draws of a sample (its noise starts, its random fallback candidates) come from a
generator of its own, seeded by `seed` and the sample's bytes; the probe directions of iteration t come from one
`torch.Generator(seed)` shared by the batch, whose draws depend only on t. So the same inputs, arguments and seed
give the same result, and with a `pool` given a sample's result does not depend on which other samples share its
batch (with `pool=None` the pool *is* the batch, so the fallback start depends on it by construction).
"""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import progress_enabled

__all__ = ["AttackResult", "tangent_attack", "hop_skip_jump", "fmn_attack", "pgd_linf", "pgd_examples",
           "robust_accuracy", "ATTACKS",
           "run_attack",
           "check_box", "check_inputs", "check_budget"]


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
@contextmanager
def _eval_mode(model: nn.Module):
    """Run with every submodule in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _model_dtype(model: nn.Module, x: Tensor) -> torch.dtype:
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


class _Oracle:
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


PRECISIONS = ("fp32", "bf16")


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


def _in_full_fp32(fn: Callable) -> Callable:
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


# scalings of the best bf16 point, tried in turn when it is not adversarial for the fp32 model
_FP32_RESCUE_SCALES = (1.0005, 1.002, 1.01, 1.05, 1.2, 1.5, 2.0)


def _finalize_fp32(oracle: _Oracle, x0: Tensor, best: Tensor, start: Tensor, ok: Tensor, box, tol: float):
    """Make a bf16 attack's result exact for the fp32 model: every returned point is checked with fp32 queries
    (counted); a point that the fp32 model does not call adversarial (bf16 rounding near the boundary) is pushed
    outward along x0 → point, or replaced by its start point; then a final fp32 bisection toward x0.
    -> (points, distances measured in fp32, success)."""
    oracle.precision = "fp32"
    n = x0.shape[0]
    everyone = torch.arange(n, device=x0.device)
    found = torch.zeros(n, dtype=torch.bool, device=x0.device)
    cand_all = best.clone()
    for scale in (None, *_FP32_RESCUE_SCALES, 0.0):  # None: the point itself; 0.0: its start point
        idx = everyone[ok & ~found & (oracle.left(everyone) >= 1)]
        if idx.numel() == 0:
            break
        if scale is None:
            cand = best[idx]
        elif scale == 0.0:
            cand = start[idx]
        else:
            cand = (x0[idx] + scale * (best[idx] - x0[idx])).clamp(*box)
        adv = oracle(cand, idx)
        cand_all[idx[adv]], found[idx[adv]] = cand[adv], True
    idx = everyone[found]
    out = cand_all.clone()
    out[idx] = _binary_search(oracle, x0, cand_all[idx], idx, tol)
    dist = torch.where(found, (out - x0).norm(dim=1), torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device))
    return out, dist, found


def _sample_generators(x0: Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, the sample's bytes): a sample's draws do not depend on its batch."""
    rows = x0.detach().cpu().contiguous().numpy()
    key = int(seed).to_bytes(8, "little", signed=True)
    out = []
    for r in rows:
        h = hashlib.blake2b(r.tobytes(), digest_size=8, key=key).digest()
        out.append(torch.Generator(device=x0.device).manual_seed(int.from_bytes(h, "little") & (2**63 - 1)))
    return out


def _initial_adversarial(oracle: _Oracle, x0: Tensor, box, gens: list, noise_std: float, init_tries: int,
                         pool: Tensor, pool_y: Tensor, fallback_tries: int, fallback_random: int,
                         tol: float) -> tuple[Tensor, Tensor]:
    """A misclassified start point per sample: clamp(x + N(0, noise_std²)) retried `init_tries` times (draws from
    the sample's own generator `gens[i]`); else the fallback: the nearest pool point whose label differs and that
    the model calls adversarial (the first of the `fallback_tries` nearest), and `fallback_random` other-label pool
    points drawn at random, each bisected toward x; the candidate whose boundary point is closest to x is the start.
    -> (points (N, d), found (N,))."""
    n, d = x0.shape
    x_start, found = x0.clone(), torch.zeros(n, dtype=torch.bool, device=x0.device)
    everyone = torch.arange(n, device=x0.device)
    for _ in range(init_tries):
        idx = everyone[~found & (oracle.left(everyone) >= 1)]
        if idx.numel() == 0:
            break
        noise = torch.stack([torch.randn(d, generator=gens[i], device=x0.device, dtype=x0.dtype)
                             for i in idx.tolist()])
        cand = (x0[idx] + noise_std * noise).clamp(*box)
        adv = oracle(cand, idx)
        x_start[idx[adv]], found[idx[adv]] = cand[adv], True
    idx = everyone[~found]
    if idx.numel() == 0 or pool is None or pool.shape[0] == 0 or fallback_tries + fallback_random <= 0:
        return x_start, found
    other = pool_y[None, :] != oracle.y[idx, None]  # (m, P) other-label pool points per sample
    cands = []  # candidate columns: (pool index (m,), valid (m,))
    if fallback_tries > 0:
        dist = torch.cdist(x0[idx], pool)
        dist[~other] = math.inf
        k = min(fallback_tries, pool.shape[0])
        order_d, order = dist.topk(k, dim=1, largest=False)
        first = torch.full((idx.numel(),), -1, dtype=torch.long, device=x0.device)
        for j in range(k):  # the nearest other-label point that the model calls adversarial
            m = (first < 0) & torch.isfinite(order_d[:, j]) & (oracle.left(idx) >= 1)
            if not m.any():
                continue
            adv = oracle(pool[order[m, j]], idx[m])
            rows = m.nonzero()[:, 0][adv]
            first[rows] = order[rows, j]
        cands.append((first.clamp_min(0), first >= 0))
    if fallback_random > 0:
        picks = torch.full((idx.numel(), fallback_random), -1, dtype=torch.long, device=x0.device)
        for r, i in enumerate(idx.tolist()):
            choices = other[r].nonzero()[:, 0]
            if choices.numel():
                take = torch.randperm(choices.numel(), generator=gens[i], device=x0.device)[:fallback_random]
                picks[r, :take.numel()] = choices[take]
        for j in range(fallback_random):
            m = (picks[:, j] >= 0) & (oracle.left(idx) >= 1)
            ok = torch.zeros_like(m)
            if m.any():
                ok[m] = oracle(pool[picks[m, j]], idx[m])
            cands.append((picks[:, j].clamp_min(0), ok))
    best_d = torch.full((idx.numel(),), math.inf, dtype=x0.dtype, device=x0.device)
    best_p = torch.full((idx.numel(),), -1, dtype=torch.long, device=x0.device)
    for p_idx, ok in cands:  # one column at a time: no sample has two rows in one bisection
        rows = ok.nonzero()[:, 0]
        if rows.numel() == 0:
            continue
        xb = _binary_search(oracle, x0, pool[p_idx[rows]], idx[rows], tol)
        dk = (xb - x0[idx[rows]]).norm(dim=1)
        better = dk < best_d[rows]
        best_d[rows[better]], best_p[rows[better]] = dk[better], p_idx[rows[better]]
    got = best_p >= 0
    x_start[idx[got]], found[idx[got]] = pool[best_p[got]], True
    return x_start, found


def _binary_search(oracle: _Oracle, x0: Tensor, x_adv: Tensor, idx: Tensor, tol: float) -> Tensor:
    """Lock-step bisection of the segments x0[idx] -> x_adv (adversarial end) until the interpolation
    coefficient is known to `tol` (or the budget ends); returns the adversarial ends, points the model labelled."""
    n = idx.numel()
    lo = torch.zeros(n, dtype=x0.dtype, device=x0.device)
    hi = torch.ones_like(lo)
    best = x_adv.clone()
    rows = torch.arange(n, device=x0.device)
    while True:
        j = rows[(hi - lo > tol) & (oracle.left(idx) >= 1)]
        if j.numel() == 0:
            return best
        mid = (lo[j] + hi[j]) / 2
        start = x0[idx[j]]
        pts = start + mid[:, None] * (x_adv[j] - start)
        adv = oracle(pts, idx[j])
        best[j[adv]] = pts[adv]
        hi[j] = torch.where(adv, mid, hi[j])
        lo[j] = torch.where(adv, lo[j], mid)


def _estimate_normal(oracle: _Oracle, xb: Tensor, idx: Tensor, n_probe: int, delta: Tensor, box, gen,
                     max_batch: int) -> Tensor:
    """Unit boundary normal at xb (n, d), pointing to the adversarial side, from n_probe sign queries at
    p = clamp(xb + δ·u), u uniform on the unit sphere (normalised Gaussian): the normalised mean of
    (±1 − baseline)·(p − xb) (the probed direction after the box; its 1/δ scale cancels in the normalisation).
    The baseline (mean sign) is subtracted unless all signs agree (then it would cancel everything).
    The n_probe directions are drawn once per call and shared by the samples: each sample's estimate has
    exactly the HSJA distribution (the samples are independent attacks), and drawing d numbers per row
    would otherwise cost ~10% of the model time of a 784-2000-10 MLP."""
    n, d = xb.shape
    u = torch.empty(n_probe, d, device=xb.device, dtype=xb.dtype).normal_(generator=gen)
    u /= u.norm(dim=1, keepdim=True)
    out = torch.empty_like(xb)
    per = max(1, max_batch // n_probe)  # samples per model call
    for s in range(0, n, per):
        e = min(n, s + per)
        base = xb[s:e, None, :]
        pts = torch.addcmul(base, delta[s:e, None, None], u[None]).clamp_(*box)
        sign = oracle(pts.view(-1, d), idx[s:e].repeat_interleave(n_probe)).view(e - s, n_probe).to(xb.dtype)
        sign = 2 * sign - 1
        mean = sign.mean(1, keepdim=True)
        sign = torch.where(mean.abs() == 1, sign, sign - mean)
        g = torch.bmm(sign[:, None, :], pts)[:, 0] - sign.sum(1, keepdim=True) * xb[s:e]  # Σ sign·(p − xb)
        out[s:e] = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(xb.dtype).tiny)
    return out


def _step_search(oracle: _Oracle, idx: Tensor, propose: Callable[[Tensor, Tensor], Tensor], like: Tensor,
                 max_halvings: int) -> tuple[Tensor, Tensor]:
    """Lock-step: query propose(rows, scale) (scale = 1, 1/2, 1/4, ...) until adversarial, one query per try.
    -> (points shaped like `like` (n, d), found (n,)); a row not found after `max_halvings` halvings (or out
    of budget) is left out of this iteration's move."""
    n = idx.numel()
    rows = torch.arange(n, device=idx.device)
    scale = torch.ones(n, device=idx.device, dtype=torch.float64)
    pts, found = torch.empty_like(like), torch.zeros(n, dtype=torch.bool, device=idx.device)
    for _ in range(max_halvings + 1):
        rows = rows[oracle.left(idx[rows]) >= 1]
        if rows.numel() == 0:
            break
        cand = propose(rows, scale[rows])
        adv = oracle(cand, idx[rows])
        pts[rows[adv]], found[rows[adv]] = cand[adv], True
        rows = rows[~adv]
        scale[rows] /= 2
    return pts, found


# ----------------------------------------------------------------------------------------------------
# The two steps
# ----------------------------------------------------------------------------------------------------
def _tangent_point(x0: Tensor, xb: Tensor, u: Tensor, radius: Tensor) -> Tensor:
    """Tangent point, seen from x0, of the hemisphere {‖z − xb‖ = R, (z − xb)·u ≥ 0} (rows; u unit normal).

    Geometry (Ma et al. 2021), in the 2-D plane through xb spanned by u and x0 − xb, origin xb:
      v = x0 − xb = a·u + b·e2 with a = v·u (< 0 when x0 lies on the benign side), b = ‖v − a u‖ ≥ 0,
      e2 = (v − a u)/b, D = ‖v‖ ≥ R (R = D/√t·2^-k), s = √(D² − R²) (the tangent length from x0).
      A point K = R(cos θ u + sin θ e2) of the circle is a tangent point iff (K)·(v − K) = 0, i.e.
      a cos θ + b sin θ = R/D. Of the two roots, θ = atan2(b, a) − arccos(R/D) is the one on x0's side
      (sin θ ≥ 0), the one whose tangent line from x0 cuts the plane {z·u = 0} closest to x0's foot:
          K = xb + (R/D²)·[(aR + b s)·u + (bR − a s)·e2]      (‖K − xb‖ = R, K·v = R²).
      It lies on the adversarial hemisphere iff cos θ ≥ 0 ⇔ aR + b s ≥ 0 ⇔ (for a < 0) b ≥ R.
      If b < R the foot of x0 on the plane, xb + b e2, is inside the hemisphere's base: no tangent line
      does better than the perpendicular from x0, and we take the hemisphere point above that foot,
          K = xb + √(R² − b²)·u + b·e2,
      which meets the tangent formula at b = R (both give xb + R e2), so K is continuous in R. (At t = 1,
      R = D, this reflects x0 across the plane.) If b = 0 (x0 straight below xb), e2 = 0 and K = xb + R u.
    The caller clamps K to the box."""
    v = x0 - xb
    a = (v * u).sum(1)
    w = v - a[:, None] * u
    b = w.norm(dim=1)
    d2 = (v * v).sum(1)
    e2 = w / b.clamp_min(torch.finfo(v.dtype).tiny)[:, None]
    e2 = torch.where((b > 1e-12 * d2.sqrt())[:, None], e2, torch.zeros_like(e2))
    r = radius.to(v.dtype)
    s = (d2 - r * r).clamp_min(0).sqrt()
    cu, ce = a * r + b * s, b * r - a * s
    tangent = xb + (r / d2)[:, None] * (cu[:, None] * u + ce[:, None] * e2)
    above_foot = xb + (r * r - b * b).clamp_min(0).sqrt()[:, None] * u + b[:, None] * e2
    return torch.where((cu >= 0)[:, None], tangent, above_foot)


def _tangent_step(x0: Tensor, xb: Tensor, u: Tensor, size: Tensor) -> Tensor:
    """TA proposal: tangent point of the hemisphere of radius `size` centred at xb."""
    return _tangent_point(x0, xb, u, size)


def _hsj_step(x0: Tensor, xb: Tensor, u: Tensor, size: Tensor) -> Tensor:
    """HSJ proposal: xb + size·u (geometric progression along the estimated gradient direction)."""
    return xb + size.to(xb.dtype)[:, None] * u


# ----------------------------------------------------------------------------------------------------
# The shared hard-label skeleton
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundaryOptions:
    """The settings shared by the hard-label boundary attacks (`tangent_attack`, `hop_skip_jump`), defined once:
    their keyword arguments are exactly these fields (see `_DOC_ARGS`)."""

    T: int = 40
    max_queries: Any = None
    max_batch: int = 8192
    tol: float = 1e-5
    gamma: float = 1.0
    init_probes: int = 100
    max_probes: int = 10000
    noise_std: float = 0.5
    init_tries: int = 50
    fallback_tries: int = 20
    fallback_random: int = 4
    max_halvings: int = 30
    seed: int = 0
    pool: Any = None
    progress: bool | None = None
    precision: str = "fp32"


def _boundary_attack(step: Callable, name: str, model: nn.Module, x: Tensor, y: Tensor | None, box,
                     opts: BoundaryOptions) -> AttackResult:
    check_inputs(x, box)
    check_labels(x, y)
    if check_precision(opts.precision) == "bf16":
        warnings.warn(BF16_ATTACK_NOTE, BF16AttackWarning, stacklevel=3)
    check_budget(opts.max_queries, x.shape[0])
    vmin, vmax = check_box(box)
    if opts.T < 0 or opts.max_batch < 1 or not 0 < opts.tol < 1:
        raise ValueError(f"need T >= 0, max_batch >= 1 and 0 < tol < 1; got T={opts.T}, max_batch={opts.max_batch}, "
                         f"tol={opts.tol}")
    n, shape, dev = x.shape[0], tuple(x.shape[1:]), x.device
    dtype = _model_dtype(model, x)
    x0 = x.reshape(n, -1).to(dtype)
    d = x0.shape[1]
    everyone = torch.arange(n, device=dev)
    if opts.fallback_tries < 0 or opts.fallback_random < 0 or opts.init_tries < 0:
        raise ValueError(f"need init_tries, fallback_tries, fallback_random >= 0; got {opts.init_tries}, "
                         f"{opts.fallback_tries}, {opts.fallback_random}")
    gen = torch.Generator(device=dev).manual_seed(int(opts.seed))  # probe directions: draws depend only on t
    gens = _sample_generators(x0, opts.seed)
    with torch.no_grad(), _eval_mode(model):
        oracle = _Oracle(model, y, x0, shape, opts.max_batch, opts.max_queries, opts.precision)
        if opts.pool is None:  # start points of last resort: the other inputs, labelled by y
            pool_x, pool_y = x0, oracle.y
        else:
            px, py = opts.pool[0], opts.pool[1]
            pool_x, pool_y = px.reshape(px.shape[0], -1).to(dev, dtype), py.to(dev).long()
        start, ok = _initial_adversarial(oracle, x0, (vmin, vmax), gens, opts.noise_std, opts.init_tries, pool_x,
                                         pool_y, opts.fallback_tries, opts.fallback_random, opts.tol)
        xb = start.clone()
        idx = everyone[ok]
        xb[idx] = _binary_search(oracle, x0, start[idx], idx, opts.tol)
        best = xb.clone()
        best_d = torch.where(ok, (xb - x0).norm(dim=1), torch.full((n,), math.inf, dtype=dtype, device=dev))
        n_bisect = math.ceil(math.log2(1 / opts.tol))
        for t in _trange(opts.T, name, opts.progress):
            n_t = min(int(opts.init_probes * math.sqrt(t)), opts.max_probes)
            idx = everyone[ok & (oracle.left(everyone) >= n_t + 1 + n_bisect)]  # can finish the iteration
            if idx.numel() == 0:
                break
            dist = (xb[idx] - x0[idx]).norm(dim=1)
            delta = torch.full_like(dist, 0.1 * (vmax - vmin)) if t == 1 else dist * opts.gamma / d
            u = _estimate_normal(oracle, xb[idx], idx, n_t, delta, (vmin, vmax), gen, opts.max_batch)
            size = dist / math.sqrt(t)

            def propose(rows, scale):
                k = idx[rows]
                return step(x0[k], xb[k], u[rows], size[rows] * scale.to(dtype)).clamp(vmin, vmax)

            cand, moved = _step_search(oracle, idx, propose, xb[idx], opts.max_halvings)
            k = idx[moved]
            xb[k] = _binary_search(oracle, x0, cand[moved], k, opts.tol)
            dk = (xb[k] - x0[k]).norm(dim=1)
            better = dk < best_d[k]
            best[k[better]], best_d[k[better]] = xb[k[better]], dk[better]
        if opts.precision != "fp32":  # every returned point adversarial for the fp32 model, its distance in fp32
            best, best_d, ok = _finalize_fp32(oracle, x0, best, start, ok, (vmin, vmax), opts.tol)
    return AttackResult(x_adv=best.view(n, *shape), distance=best_d, queries=oracle.queries.clone(),
                        success=ok.clone())


def _trange(T: int, name: str, progress: bool | None):
    if progress_enabled(progress):
        from tqdm.auto import tqdm

        return tqdm(range(1, T + 1), desc=name, leave=False)
    return range(1, T + 1)


_DOC_ARGS = """
    model: logits (B, C) from inputs (B, *x.shape[1:]); only the argmax is used. x: (N, ...) inside box.
    y: labels to move away from (N,) (default: the model's prediction, one query per sample).
    T: iterations; max_queries: per-sample budget (int or (N,)), None = no limit; max_batch: rows per model call.
    tol: bisection tolerance on the interpolation coefficient; gamma: probe radius δ_t = γ‖x_b − x‖/d (t > 1).
    init_probes, max_probes: n_t = min(⌊init_probes·√t⌋, max_probes); noise_std, init_tries: start point search;
    fallback_tries, fallback_random: when no noise start flips the label, the nearest adversarial one of the
    `fallback_tries` nearest other-label points of `pool` (default: x with labels y) and `fallback_random` random
    other-label pool points are bisected toward x, and the closest boundary point's candidate is the start;
    max_halvings: cap on step halvings per iteration; seed: torch.Generator seed; progress: tqdm bar.
    precision: 'fp32', or 'bf16' (model queries under bfloat16 autocast; the returned points are then checked and
    bisected with fp32 queries, so every success is adversarial for the fp32 model at an fp32-measured distance).
"""


def _with_options_signature(fn: Callable) -> Callable:
    """Give `fn(model, x, y=None, box=(0, 1), **options)` the signature that lists BoundaryOptions' fields as
    keyword-only parameters (what help(), IDEs and inspect show), and their description in the docstring."""
    head = list(inspect.signature(fn).parameters.values())[:4]
    opts = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in fields(BoundaryOptions)]
    fn.__signature__ = inspect.Signature(head + opts, return_annotation=AttackResult)
    fn.__doc__ += _DOC_ARGS
    return fn


@_in_full_fp32
@_with_options_signature
def tangent_attack(model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0), **options) -> AttackResult:
    """Tangent Attack (Ma et al. 2021, hemisphere, L2, untargeted, hard-label): x (N, ...) -> AttackResult."""
    return _boundary_attack(_tangent_step, "tangent", model, x, y, box, BoundaryOptions(**options))


@_in_full_fp32
@_with_options_signature
def hop_skip_jump(model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0), **options) -> AttackResult:
    """HopSkipJump (Chen et al. 2020, L2, untargeted, geometric step ‖x_b − x‖/√t): x (N, ...) -> AttackResult."""
    return _boundary_attack(_hsj_step, "hsj", model, x, y, box, BoundaryOptions(**options))


# ----------------------------------------------------------------------------------------------------
# White-box reference: Fast Minimum-Norm attack (Pintor et al. 2021), L2
# ----------------------------------------------------------------------------------------------------
@_in_full_fp32
def fmn_attack(model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0), *, steps: int = 200,
               n_targets: int | str | None = "all", alpha_init: float = 1.0, alpha_final: float = 0.01,
               gamma_init: float = 0.05, gamma_final: float = 0.001, tol: float = 1e-5, max_batch: int = 4096,
               max_queries=None, seed: int = 0, pool=None, progress: bool | None = None) -> AttackResult:
    """White-box FMN (L2, untargeted success) with a final bisection along the found direction: an upper bound on Δx.

    Per step k (cosine-annealed relative step α_k and ε-factor γ_k), with the margin L = F_y − F_t at x + δ
    (t = the strongest other class, or a fixed target class, see n_targets): if argmax F(x + δ) ≠ y record δ
    when it is the smallest so far and shrink ε ← min(ε, ‖δ‖)(1 − γ_k); else grow ε ← ε(1 + γ_k), or, before
    any adversarial point was seen, jump to the linear estimate ε ← (‖δ‖ + L/‖∇L‖)(1 + γ_k); then
    δ ← δ − α_k·ε·∇L/‖∇L‖, projected onto the ε-ball and into the box. (The step is relative to ε, not
    absolute as in the paper, so the attack behaves the same at every scale of Δx: with an absolute step,
    samples with Δx ≈ 0.05 on MNIST oscillated and ended ~10% above the TA distance.)
    n_targets: None = untargeted margin only (one run per sample); k = also one targeted run against each of
    the k classes with the highest logits at x, 'all' = every other class (C − 1 runs; none extra when C = 2),
    keeping the smallest adversarial point: untargeted FMN can settle on a farther facet of the boundary
    (seen on 6 of 30 digits samples, up to 18% farther than TA), the targeted runs cover every facet.
    queries counts forward passes per sample. max_queries, seed, pool and progress are accepted for a uniform
    interface (the attack is deterministic; max_queries must be None or at least the passes it runs)."""
    check_inputs(x, box)
    check_labels(x, y)
    check_budget(max_queries, x.shape[0])
    vmin, vmax = check_box(box)
    if not (n_targets is None or n_targets == "all" or (isinstance(n_targets, int) and n_targets >= 1)):
        raise ValueError(f"n_targets must be None, 'all' or a positive int, got {n_targets!r}")
    if steps < 1 or not 0 < tol < 1:
        raise ValueError(f"need steps >= 1 and 0 < tol < 1, got steps={steps}, tol={tol}")
    n_bisect = math.ceil(math.log2(1 / tol))
    n, shape, dev = x.shape[0], tuple(x.shape[1:]), x.device
    dtype = _model_dtype(model, x)
    x0 = x.reshape(n, -1).to(dtype)
    with _eval_mode(model):
        with torch.no_grad():
            logits0 = torch.cat([model(x0[s:s + max_batch].view(-1, *shape)) for s in range(0, n, max_batch)])
        check_finite_logits(logits0, "fmn_attack")
        y = logits0.argmax(1) if y is None else y.to(dev).long()
        n_classes = logits0.shape[1]
        check_label_range(y, n_classes)
        n_targets = (n_classes - 1 if n_targets == "all" else n_targets) if n_classes > 2 else None
        if n_targets is not None and n_targets >= n_classes:
            raise ValueError(f"n_targets must be below the number of classes {n_classes}, got {n_targets}")
        n_runs = 1 + (n_targets or 0)
        if max_queries is not None and int(torch.as_tensor(max_queries).min()) < n_runs * (steps + 1) + 1 + n_bisect:
            raise ValueError(f"fmn_attack runs {n_runs * (steps + 1) + 1 + n_bisect} passes per sample; "
                             f"max_queries={max_queries} is smaller")
        rows = torch.arange(n, device=dev)
        target = torch.full((n,), -1, dtype=torch.long, device=dev)  # -1: untargeted margin
        if n_targets:
            ranked = logits0.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)[:, :n_targets]
            rows = rows.repeat(n_runs)  # run-major: rows [r*n:(r+1)*n] are run r for every sample
            target = torch.cat([target, ranked.t().reshape(-1)])
        best, found = x0[rows].clone(), torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        for s in range(0, rows.numel(), max_batch):
            sl = slice(s, s + max_batch)
            best[sl], found[sl] = _fmn_chunk(model, x0[rows[sl]], y[rows[sl]], target[sl], shape, (vmin, vmax),
                                             steps, alpha_init, alpha_final, gamma_init, gamma_final)
        norm = torch.where(found, (best - x0[rows]).norm(dim=1), torch.full_like(found, math.inf, dtype=dtype))
        pick = norm.view(n_runs, n).argmin(0) * n + torch.arange(n, device=dev)  # best run per sample
        best, ok = best[pick], found[pick]
        oracle = _Oracle(model, y, x0, shape, max_batch)
        oracle.queries += n_runs * (steps + 1) + 1
        idx = torch.arange(n, device=dev)[ok]
        with torch.no_grad():
            best[idx] = _binary_search(oracle, x0, best[idx], idx, tol)
    dist = torch.where(ok, (best - x0).norm(dim=1), torch.full((n,), math.inf, dtype=dtype, device=dev))
    return AttackResult(x_adv=best.view(n, *shape), distance=dist, queries=oracle.queries.clone(), success=ok)


def _fmn_chunk(model, x0, y, target, shape, box, steps, alpha_init, alpha_final, gamma_init, gamma_final):
    """FMN on one chunk of rows (N, d), target (N,) (−1: untargeted)
    -> (smallest adversarial point seen (x0 if none), found (N,))."""
    n = x0.shape[0]
    vmin, vmax = box
    inf = torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device)
    delta = torch.zeros_like(x0)
    eps, best_norm, best = inf.clone(), inf.clone(), x0.clone()
    seen = torch.zeros(n, dtype=torch.bool, device=x0.device)
    tiny = torch.finfo(x0.dtype).tiny
    targeted = target >= 0
    for k in range(steps + 1):
        delta.requires_grad_(True)
        with torch.enable_grad():
            logits = check_finite_logits(model((x0 + delta).view(-1, *shape)), "fmn_attack")
            strongest = logits.scatter(1, y[:, None], -math.inf).amax(1)
            other = torch.where(targeted, logits.gather(1, target.clamp_min(0)[:, None])[:, 0], strongest)
            margin = logits.gather(1, y[:, None])[:, 0] - other
            grad = torch.autograd.grad(margin.sum(), delta)[0]
        delta, margin = delta.detach(), margin.detach()
        with torch.no_grad():
            norm = delta.norm(dim=1)
            adv = logits.detach().argmax(1) != y
            better = adv & (norm < best_norm)
            best[better], best_norm[better] = x0[better] + delta[better], norm[better]
            if k == steps:
                break
            cos = 0.5 * (1 + math.cos(math.pi * k / steps))
            gamma = gamma_final + (gamma_init - gamma_final) * cos
            gnorm = grad.norm(dim=1).clamp_min(tiny)
            eps = torch.where(adv, torch.minimum(eps, norm) * (1 - gamma),
                              torch.where(seen, eps * (1 + gamma), (norm + margin.clamp_min(0) / gnorm) * (1 + gamma)))
            seen |= adv
            alpha = (alpha_final + (alpha_init - alpha_final) * cos) * eps  # the step is relative to the ε-ball
            delta = delta - alpha[:, None] * grad / gnorm[:, None]
            delta = delta * torch.clamp(eps / delta.norm(dim=1).clamp_min(tiny), max=1.0)[:, None]
            delta = (x0 + delta).clamp(vmin, vmax) - x0
    return best, torch.isfinite(best_norm)


# ----------------------------------------------------------------------------------------------------
# Fixed-budget white-box attack: L∞ PGD (Madry et al. 2018), the base of adversarial training (issue 13)
# ----------------------------------------------------------------------------------------------------
@_in_full_fp32
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
    dtype = _model_dtype(model, x)
    x0, y = x.to(dtype), torch.as_tensor(y, device=dev).long()
    target = None if target is None else torch.as_tensor(target, device=dev).long()
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    out = x0.clone()
    with _eval_mode(model):
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
    with torch.no_grad(), _eval_mode(model):
        clean = model(x.to(_model_dtype(model, x))).argmax(1) == torch.as_tensor(y, device=x.device)
    res = pgd_linf(model, x, y, eps, box, **pgd_kwargs)
    return (clean & ~res.success).double().mean().item()


# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------
ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "tangent": tangent_attack,
    "hsj": hop_skip_jump,
    "fmn": fmn_attack,
}
ALIASES = {"ta": "tangent", "tangent_attack": "tangent", "hopskipjump": "hsj", "hop_skip_jump": "hsj"}


def resolve_attack(name: str) -> str:
    """The canonical attack name ('tangent', 'hsj', 'fmn'); ValueError for an unknown one."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)} (aliases {sorted(ALIASES)})")
    return key


def run_attack(name: str, model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0),
               **kwargs) -> AttackResult:
    """Run the attack called `name` ('tangent', 'hsj', 'fmn') on x (N, ...)."""
    return ATTACKS[resolve_attack(name)](model, x, y, box, **kwargs)
