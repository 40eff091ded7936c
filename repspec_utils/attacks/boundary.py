"""The batched skeleton of the two hard-label attacks (see the package docstring): start points, lock-step
bisection to the boundary, the normal estimate from sign probes, the step search, and `boundary_attack`."""

from __future__ import annotations

import hashlib
import inspect
import math
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import Tensor, nn

from repspec_utils.attacks.base import (AttackResult, Oracle, check_box, check_budget, check_inputs, check_labels,
                                        eval_mode, model_dtype, query_rows)
from repspec_utils.attacks.precision import BF16_ATTACK_NOTE, BF16AttackWarning, check_precision
from repspec_utils.infra.cache import progress_enabled

# scalings of the best bf16 point, tried in turn when it is not adversarial for the fp32 model
_FP32_RESCUE_SCALES = (1.0005, 1.002, 1.01, 1.05, 1.2, 1.5, 2.0)


def finalize_fp32(oracle: Oracle, x0: Tensor, best: Tensor, start: Tensor, ok: Tensor, box, tol: float):
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
    out[idx] = binary_search(oracle, x0, cand_all[idx], idx, tol)
    dist = torch.where(found, (out - x0).norm(dim=1), torch.full((n,), math.inf, dtype=x0.dtype, device=x0.device))
    return out, dist, found


def sample_generators(x0: Tensor, seed: int) -> list[torch.Generator]:
    """One generator per sample, seeded by (seed, the sample's bytes): a sample's draws do not depend on its batch."""
    rows = x0.detach().cpu().contiguous().numpy()
    key = int(seed).to_bytes(8, "little", signed=True)
    out = []
    for r in rows:
        h = hashlib.blake2b(r.tobytes(), digest_size=8, key=key).digest()
        out.append(torch.Generator(device=x0.device).manual_seed(int.from_bytes(h, "little") & (2**63 - 1)))
    return out


def initial_adversarial(oracle: Oracle, x0: Tensor, box, gens: list, noise_std: float, init_tries: int,
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
        xb = binary_search(oracle, x0, pool[p_idx[rows]], idx[rows], tol)
        dk = (xb - x0[idx[rows]]).norm(dim=1)
        better = dk < best_d[rows]
        best_d[rows[better]], best_p[rows[better]] = dk[better], p_idx[rows[better]]
    got = best_p >= 0
    x_start[idx[got]], found[idx[got]] = pool[best_p[got]], True
    return x_start, found


def binary_search(oracle: Oracle, x0: Tensor, x_adv: Tensor, idx: Tensor, tol: float) -> Tensor:
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


def estimate_normal(oracle: Oracle, xb: Tensor, idx: Tensor, n_probe: int, delta: Tensor, box, gen,
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


def step_search(oracle: Oracle, idx: Tensor, propose: Callable[[Tensor, Tensor], Tensor], like: Tensor,
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
# The shared hard-label skeleton
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundaryOptions:
    """The settings shared by the hard-label boundary attacks (`tangent_attack`, `hop_skip_jump`), defined once:
    their keyword arguments are exactly these fields (see `OPTIONS_DOC`)."""

    T: int = 40
    max_queries: Any = None
    max_batch: int | None = None
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


def boundary_attack(step: Callable, name: str, model: nn.Module, x: Tensor, y: Tensor | None, box,
                     opts: BoundaryOptions) -> AttackResult:
    check_inputs(x, box)
    check_labels(x, y)
    if check_precision(opts.precision) == "bf16":
        warnings.warn(BF16_ATTACK_NOTE, BF16AttackWarning, stacklevel=3)
    check_budget(opts.max_queries, x.shape[0])
    vmin, vmax = check_box(box)
    if opts.max_batch is not None and (isinstance(opts.max_batch, bool) or int(opts.max_batch) != opts.max_batch
                                       or opts.max_batch < 1):
        raise ValueError(f"max_batch must be a positive integer or None (chosen for the model), got {opts.max_batch!r}")
    if opts.T < 0 or not 0 < opts.tol < 1:
        raise ValueError(f"need T >= 0 and 0 < tol < 1; got T={opts.T}, tol={opts.tol}")
    n, shape, dev = x.shape[0], tuple(x.shape[1:]), x.device
    max_batch = query_rows(model, dev) if opts.max_batch is None else int(opts.max_batch)
    dtype = model_dtype(model, x)
    x0 = x.reshape(n, -1).to(dtype)
    d = x0.shape[1]
    everyone = torch.arange(n, device=dev)
    if opts.fallback_tries < 0 or opts.fallback_random < 0 or opts.init_tries < 0:
        raise ValueError(f"need init_tries, fallback_tries, fallback_random >= 0; got {opts.init_tries}, "
                         f"{opts.fallback_tries}, {opts.fallback_random}")
    gen = torch.Generator(device=dev).manual_seed(int(opts.seed))  # probe directions: draws depend only on t
    gens = sample_generators(x0, opts.seed)
    with torch.no_grad(), eval_mode(model):
        oracle = Oracle(model, y, x0, shape, max_batch, opts.max_queries, opts.precision)
        if opts.pool is None:  # start points of last resort: the other inputs, labelled by y
            pool_x, pool_y = x0, oracle.y
        else:
            px, py = opts.pool[0], opts.pool[1]
            pool_x, pool_y = px.reshape(px.shape[0], -1).to(dev, dtype), py.to(dev).long()
        start, ok = initial_adversarial(oracle, x0, (vmin, vmax), gens, opts.noise_std, opts.init_tries, pool_x,
                                         pool_y, opts.fallback_tries, opts.fallback_random, opts.tol)
        xb = start.clone()
        idx = everyone[ok]
        xb[idx] = binary_search(oracle, x0, start[idx], idx, opts.tol)
        best = xb.clone()
        best_d = torch.where(ok, (xb - x0).norm(dim=1), torch.full((n,), math.inf, dtype=dtype, device=dev))
        n_bisect = math.ceil(math.log2(1 / opts.tol))
        for t in attack_progress(opts.T, name, opts.progress):
            n_t = min(int(opts.init_probes * math.sqrt(t)), opts.max_probes)
            idx = everyone[ok & (oracle.left(everyone) >= n_t + 1 + n_bisect)]  # can finish the iteration
            if idx.numel() == 0:
                break
            dist = (xb[idx] - x0[idx]).norm(dim=1)
            delta = torch.full_like(dist, 0.1 * (vmax - vmin)) if t == 1 else dist * opts.gamma / d
            u = estimate_normal(oracle, xb[idx], idx, n_t, delta, (vmin, vmax), gen, max_batch)
            size = dist / math.sqrt(t)

            def propose(rows, scale):
                k = idx[rows]
                return step(x0[k], xb[k], u[rows], size[rows] * scale.to(dtype)).clamp(vmin, vmax)

            cand, moved = step_search(oracle, idx, propose, xb[idx], opts.max_halvings)
            k = idx[moved]
            xb[k] = binary_search(oracle, x0, cand[moved], k, opts.tol)
            dk = (xb[k] - x0[k]).norm(dim=1)
            better = dk < best_d[k]
            best[k[better]], best_d[k[better]] = xb[k[better]], dk[better]
        if opts.precision != "fp32":  # every returned point adversarial for the fp32 model, its distance in fp32
            best, best_d, ok = finalize_fp32(oracle, x0, best, start, ok, (vmin, vmax), opts.tol)
    return AttackResult(x_adv=best.view(n, *shape), distance=best_d, queries=oracle.queries.clone(),
                        success=ok.clone())


def attack_progress(T: int, name: str, progress: bool | None):
    if progress_enabled(progress):
        from tqdm.auto import tqdm

        return tqdm(range(1, T + 1), desc=name, leave=False)
    return range(1, T + 1)


OPTIONS_DOC = """
    model: logits (B, C) from inputs (B, *x.shape[1:]); only the argmax is used. x: (N, ...) inside box.
    y: labels to move away from (N,) (default: the model's prediction, one query per sample).
    T: iterations; max_queries: per-sample budget (int or (N,)), None = no limit.
    max_batch: rows per model call; None = `base.query_rows(model)`: 64 for a convolutional net on the CPU (small
    calls run ≈ 1.6× faster per image there), else 8192. The chunking changes how many rows go into one call, never
    which rows are asked.
    tol: bisection tolerance on the interpolation coefficient; gamma: probe radius δ_t = γ‖x_b − x‖/d (t > 1).
    init_probes, max_probes: n_t = min(⌊init_probes·√t⌋, max_probes); noise_std, init_tries: start point search;
    fallback_tries, fallback_random: when no noise start flips the label, the nearest adversarial one of the
    `fallback_tries` nearest other-label points of `pool` (default: x with labels y) and `fallback_random` random
    other-label pool points are bisected toward x, and the closest boundary point's candidate is the start;
    max_halvings: cap on step halvings per iteration; seed: torch.Generator seed; progress: tqdm bar.
    precision: 'fp32', or 'bf16' (model queries under bfloat16 autocast; the returned points are then checked and
    bisected with fp32 queries, so every success is adversarial for the fp32 model at an fp32-measured distance).
"""


def with_options_signature(fn: Callable) -> Callable:
    """Give `fn(model, x, y=None, box=(0, 1), **options)` the signature that lists BoundaryOptions' fields as
    keyword-only parameters (what help(), IDEs and inspect show), and their description in the docstring."""
    head = list(inspect.signature(fn).parameters.values())[:4]
    opts = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in fields(BoundaryOptions)]
    fn.__signature__ = inspect.Signature(head + opts, return_annotation=AttackResult)
    fn.__doc__ += OPTIONS_DOC
    return fn
