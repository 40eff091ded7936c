"""Geometry of the feature map Φ (SPEC §5): pull-back metric g(x) = J_Φ(x)ᵀ J_Φ(x), λ_max(g), √det g.

- `pullback_metric`, `metric_lambda_max`, `log_volume_element` (and `metric_stats`: both scalars from one
  pass): autograd (torch.func jacfwd/jacrev + vmap, chunked) for any `RepModel`, `BatchedMLP` or plain callable
  Φ: (B, *input_shape) -> (B, p); d = ∏ input_shape. Models with BatchNorm must be in eval mode.
  λ_max(g) = ‖J_Φ‖₂² is the top eigenvalue of the smaller Gram matrix (JᵀJ, d×d, or JJᵀ, p×p: same nonzero
  spectrum). Gram matrices are formed in the model's dtype and decomposed (eigvalsh, slogdet) in float64.
  Cost on one CPU thread: MNIST MLP (784→2000) ≈0.35 s per point for `metric_stats`; CIFAR ResNet18
  ≈40 s per point for `metric_lambda_max` (512 backward passes, ~1.3 GB).
- Where d > p (CIFAR: 3072 > 512) g has rank ≤ p < d and det g = 0: `log_volume_element` raises by default,
  or returns -inf with `singular="-inf"`; show λ_max only there.
- Closed form for the 2-D one-hidden-layer repspec MLP, Φ(x) = φ(Wx + b)/√n (width n, rows w_j, z = Wx + b):
  g = (1/n) Σ_j φ′(z_j)² w_j w_jᵀ, and by Cauchy–Binet
  det g = (1/n²) Σ_{j<k} φ′(z_j)² φ′(z_k)² (w_j1 w_k2 − w_j2 w_k1)². The 1/n is the model's own 1/√n
  feature normalisation (not an extra rescaling); say so on plots. `BatchedMLP` gives (M, N) at once.
- The MNIST plane (`digit_plane`): origin o = (x₁+x₂+x₃)/3, axes e1 = x₂ − x₁, e2 = 2√3((x₁+x₂)/2 − o),
  point(a, b) = o + a·e1 + b·e2 on a grid (a, b) ∈ [−1, 1]². Since (x₁+x₂)/2 − o = e2/(2√3) and
  x₃ − o = −e2/√3 exactly, the digits sit at (a, b) = (−½, 1/(2√3)), (½, 1/(2√3)), (0, −1/√3)
  (`DIGIT_PLANE_COORDS`): the corners of a unit-side equilateral triangle centred at 0 (equilateral in
  (a, b); in pixel space it is the affine image of that). Plane points may leave the [0, 1] pixel box; the
  metric is defined there all the same (Φ is a function on all of R^d), so no clamping.
- Figure 1 (`tradeoff_examples`): three classifiers of one 2-D binary task with piecewise-linear boundaries,
  so that accuracy and the distance of every point to the boundary are exact.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from repspec_utils.analysis.tables import DIGIT_PLANE_COORDS, square_grid
from repspec_utils.models.base import activation_derivative as _activation_derivative
from repspec_utils.models.mlp import MLP, BatchedMLP, effective_bias

_ELEMENT_BUDGET = 2**23  # Jacobian entries per chunk when `chunk` is None (~32 MB in float32)
_COTANGENT_CHUNK = 128  # reverse mode: backward passes vmapped at once per point (bounds ResNet activation memory)


# ----------------------------------------------------------------------------------------------- autograd metric


def _feature_map(model_or_phi) -> tuple[Callable[[Tensor], Tensor], bool]:
    """Φ of a model (its `features`) or the callable itself; and whether it is a BatchedMLP (outputs (M, B, p))."""
    if isinstance(model_or_phi, nn.Module):
        if model_or_phi.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model_or_phi.modules()):
            raise ValueError("the metric of a model with BatchNorm needs eval mode: call model.eval() first")
    phi = getattr(model_or_phi, "features", model_or_phi)
    if not callable(phi):
        raise TypeError(f"expected a model with .features or a callable Φ, got {type(model_or_phi).__name__}")
    return phi, isinstance(model_or_phi, BatchedMLP)


def _as_input(model_or_phi, x) -> Tensor:
    x = torch.as_tensor(x)
    if isinstance(model_or_phi, nn.Module):
        p = next((q for q in model_or_phi.parameters() if q.is_floating_point()), None)
        if p is not None:
            x = x.to(device=p.device, dtype=p.dtype)
    if not x.is_floating_point():
        x = x.float()
    return x


def _jacobian_chunks(model_or_phi, x, chunk: int | None, mode: str):
    """Yield J_Φ for consecutive chunks of x: (c, p, d), or (M, c, p, d) for a BatchedMLP."""
    if mode not in ("auto", "rev", "fwd"):
        raise ValueError(f"mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    phi, batched = _feature_map(model_or_phi)
    x = _as_input(model_or_phi, x)
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, *input_shape), got shape {tuple(x.shape)}")
    d = math.prod(x.shape[1:])

    def single(xi: Tensor) -> Tensor:  # (*input_shape) -> (p,) or (M, p)
        out = phi(xi.unsqueeze(0))
        return out[:, 0] if batched else out[0]

    with torch.no_grad():
        out = single(x[0])
    p, M = out.shape[-1], (out.shape[0] if batched else 1)
    if mode == "auto":
        mode = "fwd" if d < M * p else "rev"  # fwd: d tangent passes; rev: one cotangent pass per output
    jac = torch.func.jacfwd(single) if mode == "fwd" else torch.func.jacrev(single, chunk_size=_COTANGENT_CHUNK)
    per_chunk = chunk or max(1, min(1024, _ELEMENT_BUDGET // max(1, M * p * d)))
    if mode == "rev" and not chunk:  # bound the effective backward batch (points × cotangents) to ~256
        per_chunk = max(1, min(per_chunk, 256 // min(M * p, _COTANGENT_CHUNK)))
    for s in range(0, x.shape[0], per_chunk):
        with torch.no_grad(), warnings.catch_warnings():
            # forward-mode GELU goes through a torch.jit.script decomposition that warns about its own deprecation
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
            J = torch.func.vmap(jac)(x[s : s + per_chunk]).detach()  # (c, [M,] p, *input_shape)
        J = J.reshape(*J.shape[: 3 if batched else 2], d)
        yield (J.transpose(0, 1) if batched else J), p, d


def _reduce(model_or_phi, x, chunk, mode, fn) -> Tensor:
    parts = [fn(J, p, d) for J, p, d in _jacobian_chunks(model_or_phi, x, chunk, mode)]
    return torch.cat(parts, dim=1 if isinstance(model_or_phi, BatchedMLP) else 0)


def feature_jacobian(model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto") -> Tensor:
    """J_Φ(x) by autograd: x (N, *input_shape) -> (N, p, d); a BatchedMLP gives (M, N, p, d)."""
    return _reduce(model_or_phi, x, chunk, mode, lambda J, p, d: J)


def pullback_metric(model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto") -> Tensor:
    """g(x) = J_Φ(x)ᵀ J_Φ(x): x (N, *input_shape) -> (N, d, d) (BatchedMLP: (M, N, d, d)), in x's dtype.

    Memory is N·d² numbers; for MNIST planes reduce per chunk with `metric_lambda_max` / `log_volume_element`.
    """
    return _reduce(model_or_phi, x, chunk, mode, lambda J, p, d: J.mT @ J)


def _gram_small(J: Tensor) -> Tensor:
    """The smaller Gram matrix of J (.., p, d), formed in J's dtype, as float64: JJᵀ (p×p) if p < d else JᵀJ (d×d)."""
    return (J @ J.mT if J.shape[-2] < J.shape[-1] else J.mT @ J).double()


def metric_eigenvalues(model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto") -> Tensor:
    """The min(p, d) leading eigenvalues of g(x) (squared singular values of J_Φ), descending, float64: (N, min(p, d))."""
    return _reduce(model_or_phi, x, chunk, mode, lambda J, p, d: torch.linalg.eigvalsh(_gram_small(J)).flip(-1))


def metric_lambda_max(model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto") -> Tensor:
    """λ_max(g(x)) = ‖J_Φ(x)‖₂² (eigvalsh of the smaller of JᵀJ, JJᵀ), float64: (N,) (BatchedMLP: (M, N))."""
    return _reduce(model_or_phi, x, chunk, mode, lambda J, p, d: torch.linalg.eigvalsh(_gram_small(J))[..., -1])


def log_volume_element(
    model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto", singular: str = "raise"
) -> Tensor:
    """log √det g(x) = ½ logdet(J_Φᵀ J_Φ) (slogdet of the d×d metric in float64): (N,) (BatchedMLP: (M, N)).

    Where g is singular at a point (sign ≤ 0 from slogdet) the value is -inf. If the feature dimension p is
    smaller than d, det g = 0 everywhere: `singular="raise"` (default) raises ValueError, `singular="-inf"`
    returns -inf for every point.
    """
    if singular not in ("raise", "-inf"):
        raise ValueError(f"singular must be 'raise' or '-inf', got {singular!r}")

    def fn(J: Tensor, p: int, d: int) -> Tensor:
        if p < d:
            if singular == "raise":
                raise ValueError(
                    f"feature dimension p={p} < input dimension d={d}: g = JᵀJ has rank ≤ p, so det g = 0 "
                    "everywhere; plot λ_max(g) instead, or pass singular='-inf'"
                )
            return torch.full(J.shape[:-2], -math.inf, dtype=torch.float64, device=J.device)
        sign, logabs = torch.linalg.slogdet((J.mT @ J).double())
        return torch.where(sign > 0, 0.5 * logabs, torch.full_like(logabs, -math.inf))

    return _reduce(model_or_phi, x, chunk, mode, fn)


def metric_stats(model_or_phi, x: Tensor, chunk: int | None = None, mode: str = "auto") -> tuple[Tensor, Tensor]:
    """(λ_max(g), log √det g) from one Jacobian pass and one eigvalsh per point, float64: two (N,) (BatchedMLP: (M, N)).

    log √det g = ½ Σ log eig(g); -inf where an eigenvalue is ≤ 0 and everywhere when p < d (no error raised).
    The cheap way to get both maps of an MNIST plane.
    """

    def fn(J: Tensor, p: int, d: int) -> Tensor:
        eig = torch.linalg.eigvalsh(_gram_small(J))
        if p < d:
            logvol = torch.full(eig.shape[:-1], -math.inf, dtype=eig.dtype, device=eig.device)
        else:
            logvol = torch.where((eig > 0).all(-1), 0.5 * eig.clamp_min(1e-300).log().sum(-1), -math.inf)
        return torch.stack([eig[..., -1], logvol], dim=-1)

    out = _reduce(model_or_phi, x, chunk, mode, fn)
    return out[..., 0], out[..., 1]


# ------------------------------------------------------------------------------------ fast path, any repspec MLP
# Φ(x) = a_{L-1} with a_l = φ(z_l)/√n_l, z_l = W_l a_{l-1} + b_l, so J_Φ = D_{L-1} W_{L-1} ⋯ D_1 W_1 with
# D_l = diag(φ′(z_l))/√n_l: one forward pass and L-1 batched matmuls instead of d autograd passes, all in float64.
# log √det g = Σ log |R_ii| from a QR of J (p×d, p ≥ d): accurate down to σ_min(J) ≈ 1e-16·σ_max(J), where a Cholesky
# or eigendecomposition of g = JᵀJ fails below ≈ 1e-8·σ_max (it squares the condition number; trained MNIST nets
# reach σ_min/σ_max ≈ 1e-9 far from the data). λ_max(g) = σ_max(R)² by Lanczos on RᵀR (eigvalsh up to `_EIG_MAX`).
# MNIST MLP (784→2000): ≈0.15 s per point on one loaded CPU core, vs ≈1.6–2.8 s for the autograd `metric_stats`.
_EIG_MAX = 256


def lanczos_lambda_max(A: Tensor, tol: float = 1e-8, max_steps: int = 300, seed: int = 0) -> Tensor:
    """Top eigenvalue of symmetric PSD matrices A (..., n, n) by Lanczos with full reorthogonalisation: (...,).

    Stops when every Ritz residual β_j·|s_j| is ≤ tol·θ (the eigenvalue error is then ≤ that, and typically its
    square over the gap); exact (the full tridiagonalisation) if it runs n steps."""
    batch, n = A.shape[:-2], A.shape[-1]
    A = A.reshape(-1, n, n)
    k_max = min(int(max_steps), n)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(A.shape[0], n, generator=gen, dtype=A.dtype).to(A.device)
    Q = torch.zeros(A.shape[0], k_max, n, dtype=A.dtype, device=A.device)
    Q[:, 0] = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    alphas, betas = [], []
    theta = torch.zeros(A.shape[0], dtype=A.dtype, device=A.device)
    for j in range(k_max):
        w = (A @ Q[:, j, :, None]).squeeze(-1)
        alphas.append((w * Q[:, j]).sum(-1))
        Qj = Q[:, : j + 1]
        for _ in range(2):  # full reorthogonalisation, twice (classical Gram–Schmidt is enough then)
            w = w - (Qj.mT @ (Qj @ w[..., None])).squeeze(-1)
        beta = torch.linalg.vector_norm(w, dim=-1)
        T = torch.diag_embed(torch.stack(alphas, -1))
        if betas:
            off = torch.diag_embed(torch.stack(betas, -1), offset=1)
            T = T + off + off.mT
        evals, evecs = torch.linalg.eigh(T)
        theta = evals[:, -1]
        resid = beta * evecs[:, -1, -1].abs()
        if j + 1 == k_max or bool((resid <= tol * theta.abs().clamp_min(torch.finfo(A.dtype).tiny)).all()):
            break
        betas.append(beta)
        Q[:, j + 1] = w / beta.clamp_min(torch.finfo(A.dtype).tiny)[:, None]
    return theta.reshape(batch)


def mlp_feature_jacobian(model: MLP, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """J_Φ(x) of a repspec MLP in closed form, D_{L-1}W_{L-1}⋯D_1W_1 (D_l = diag φ′(z_l)/√n_l), computed in `dtype`
    (default: the model's): x (N, d) -> (N, p, d)."""
    if not isinstance(model, MLP) or model.batchnorm:
        raise TypeError(f"the closed-form Jacobian needs a repspec MLP without BatchNorm, got {type(model).__name__}"
                        + (" with batchnorm=True (use the autograd path, geometry.metric_stats)"
                           if isinstance(model, MLP) else ""))
    a = _as_input(model, x).flatten(1)
    dtype = dtype or a.dtype
    a = a.to(dtype)
    J = None
    with torch.no_grad():
        for layer in model.hidden:
            W, b = layer.weight.to(dtype), effective_bias(layer).to(dtype)
            z = a @ W.T + b
            scale = 1.0 / math.sqrt(layer.out_features)
            J = (activation_derivative(model.activation, z) * scale)[:, :, None] * (W if J is None else W @ J)
            a = model.act(z) * scale
    return J


def mlp_metric_stats(model: MLP, x: Tensor, chunk: int | None = None, tol: float = 1e-8) -> tuple[Tensor, Tensor]:
    """(λ_max(g), log √det g) of a repspec MLP from its closed-form Jacobian in float64: two (N,) float64. The same
    quantities as the autograd `metric_stats`, faster and more accurate: log √det g = Σ log|R_ii| from a QR of J
    (-inf where some R_ii = 0, and everywhere when p < d, where det g = 0), λ_max(g) = σ_max(J)² by eigvalsh of the
    smaller Gram up to `_EIG_MAX` wide, else by `lanczos_lambda_max` (relative residual `tol`)."""
    x = _as_input(model, x).flatten(1)
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (N, d), got shape {tuple(x.shape)}")
    p, d = model.widths[-1], x.shape[1]
    per = chunk or max(1, min(1024, 2**24 // (p * d)))
    lam, logvol = [], []
    for s in range(0, x.shape[0], per):
        J = mlp_feature_jacobian(model, x[s : s + per], dtype=torch.float64)
        if p < d:
            small = J @ J.mT  # (K, p, p): the nonzero spectrum of g
            logvol.append(torch.full((J.shape[0],), -math.inf, dtype=torch.float64, device=J.device))
        else:
            R = torch.linalg.qr(J, mode="r")[1]  # J = QR, g = RᵀR
            logvol.append(R.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1))
            small = R.mT @ R
        lam.append(torch.linalg.eigvalsh(small)[..., -1] if small.shape[-1] <= _EIG_MAX
                   else lanczos_lambda_max(small, tol=tol))
    return torch.cat(lam).cpu(), torch.cat(logvol).cpu()


# ------------------------------------------------------------------------------- closed form, 2-D one hidden layer


def activation_derivative(name: str, z: Tensor) -> Tensor:
    """φ′(z) for φ in {gelu (exact erf GELU: Φ_N(z) + z·pdf(z)), relu (1[z > 0]), tanh, softplus (sigmoid), identity}:
    `models.activation_derivative` applied to z (ValueError for an unknown name)."""
    return _activation_derivative(name)(z)


def _first_layer_2d(model) -> tuple[Tensor, Tensor, str, bool]:
    """W (M, n, 2), b (M, n), activation name, batched? of a 2-D one-hidden-layer MLP / BatchedMLP."""
    if isinstance(model, MLP) and not model.batchnorm:
        W, b, batched = model.hidden[0].weight[None], model.hidden[0].bias[None], False
    elif isinstance(model, BatchedMLP):
        W, b, batched = model.weights[0], model.biases[0], True
    else:
        raise TypeError(f"the closed form needs a repspec MLP or BatchedMLP, got {type(model).__name__}")
    if len(model.widths) != 1 or model.d_in != 2:
        raise ValueError(f"the closed form is for d_in = 2 and one hidden layer, got d_in={model.d_in}, widths={model.widths}")
    return W.detach(), b.detach(), model.activation, batched


def _weighted_s(model, x) -> tuple[Tensor, Tensor, bool]:
    """s_j = φ′(z_j)²/n: (M, N, n), and W (M, n, 2)."""
    W, b, act, batched = _first_layer_2d(model)
    x = torch.as_tensor(x).to(W.dtype).reshape(-1, 2)
    z = torch.einsum("nd,mkd->mnk", x, W) + b[:, None, :]
    return activation_derivative(act, z) ** 2 / W.shape[1], W, batched


@torch.no_grad()
def metric_2d(model, x: Tensor) -> Tensor:
    """Closed-form g(x) = (1/n) Σ_j φ′(z_j)² w_j w_jᵀ of a 2-D one-hidden-layer MLP: (N, 2, 2) (BatchedMLP: (M, N, 2, 2))."""
    s, W, batched = _weighted_s(model, x)
    g = torch.einsum("mnk,mkd,mke->mnde", s, W, W)
    return g if batched else g[0]


@torch.no_grad()
def volume_element_2d(model, x: Tensor) -> Tensor:
    """√det g(x) by Cauchy–Binet, det g = (1/n²) Σ_{j<k} φ′(z_j)²φ′(z_k)²(w_j1 w_k2 − w_j2 w_k1)²: (N,) (BatchedMLP: (M, N))."""
    s, W, batched = _weighted_s(model, x)
    minors = (W[:, :, None, 0] * W[:, None, :, 1] - W[:, :, None, 1] * W[:, None, :, 0]) ** 2  # (M, n, n), zero diagonal
    det = 0.5 * torch.einsum("mnj,mjk,mnk->mn", s, minors, s)  # ½ Σ_{j≠k} = Σ_{j<k}
    vol = det.sqrt()
    return vol if batched else vol[0]


@torch.no_grad()
def lambda_max_2d(model, x: Tensor) -> Tensor:
    """λ_max of the 2×2 metric (1/n) Σ_j φ′(z_j)² w_j w_jᵀ in closed form: (N,) (BatchedMLP: (M, N))."""
    g = metric_2d(model, x)
    a, c, e = g[..., 0, 0], g[..., 0, 1], g[..., 1, 1]
    return 0.5 * (a + e) + torch.sqrt(0.25 * (a - e) ** 2 + c * c)


# ------------------------------------------------------------------------------------------------- grids, planes


def grid_2d(lim: float = 3.5, n: int = 40, dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """`analysis.tables.square_grid` with the points (n², 2) as a tensor of `dtype`, for the models."""
    xx, yy, points = square_grid(lim, n)
    return xx, yy, torch.as_tensor(points, dtype=dtype)


class DigitPlane(NamedTuple):
    """A grid on the plane through three digits: coords (n², 2) in [−1, 1]², points (n², D) = o + a·e1 + b·e2."""

    coords: Tensor
    points: Tensor
    digit_coords: Tensor  # (3, 2): where x1, x2, x3 lie (DIGIT_PLANE_COORDS)
    origin: Tensor  # (D,)
    e1: Tensor  # (D,)
    e2: Tensor  # (D,)
    xx: np.ndarray  # (n, n) a-coordinates of the grid
    yy: np.ndarray  # (n, n) b-coordinates of the grid


def digit_plane_basis(x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Origin o = (x₁+x₂+x₃)/3 and axes e1 = x₂ − x₁, e2 = 2√3((x₁+x₂)/2 − o), each flattened to (D,)."""
    x1, x2, x3 = (torch.as_tensor(v).reshape(-1) for v in (x1, x2, x3))
    if not x1.shape == x2.shape == x3.shape:
        raise ValueError(f"the three digits must have the same size, got {x1.numel()}, {x2.numel()}, {x3.numel()}")
    o = (x1 + x2 + x3) / 3
    return o, x2 - x1, 2 * math.sqrt(3.0) * ((x1 + x2) / 2 - o)


def plane_points(origin: Tensor, e1: Tensor, e2: Tensor, coords: Tensor) -> Tensor:
    """Points o + a·e1 + b·e2 of a plane for coords (K, 2) of (a, b): (K, D)."""
    coords = torch.as_tensor(coords, dtype=origin.dtype)
    return origin + coords[:, :1] * e1 + coords[:, 1:] * e2


def digit_plane(x1: Tensor, x2: Tensor, x3: Tensor, n: int = 40, lim: float = 1.0) -> DigitPlane:
    """The n×n grid on [−lim, lim]² of the plane through digits x1, x2, x3 (SPEC §5); points (n², D), possibly outside [0, 1]."""
    o, e1, e2 = digit_plane_basis(x1, x2, x3)
    xx, yy, coords = grid_2d(lim, n, dtype=o.dtype)
    return DigitPlane(coords, plane_points(o, e1, e2, coords), torch.tensor(DIGIT_PLANE_COORDS, dtype=o.dtype), o, e1, e2, xx, yy)


class TriangleEdges(NamedTuple):
    """n points on each edge x1→x2, x2→x3, x3→x1 (endpoints included): coords (3n, 2), points (3n, D), position (3n,)."""

    coords: Tensor
    points: Tensor
    position: Tensor  # edge index + fraction along it, in [0, 3]: an x-axis for plotting along the perimeter


def triangle_edges(x1: Tensor, x2: Tensor, x3: Tensor, n: int = 40) -> TriangleEdges:
    """`n` evenly spaced points along each edge of the digit triangle, with their plane coordinates (see `digit_plane`)."""
    xs = [torch.as_tensor(v).reshape(-1) for v in (x1, x2, x3)]
    digit_plane_basis(*xs)  # shape check
    cs = torch.tensor(DIGIT_PLANE_COORDS, dtype=xs[0].dtype)
    t = torch.linspace(0, 1, n, dtype=xs[0].dtype)[:, None]
    coords, points, position = [], [], []
    for i in range(3):
        j = (i + 1) % 3
        coords.append((1 - t) * cs[i] + t * cs[j])
        points.append((1 - t) * xs[i] + t * xs[j])
        position.append(i + t[:, 0])
    return TriangleEdges(torch.cat(coords), torch.cat(points), torch.cat(position))


@torch.no_grad()
def decision_function_grid(model, points: Tensor, batch: int = 8192) -> Tensor:
    """F_1(x) − F_0(x) of a 2-class model at points (N, *input_shape): (N,) (BatchedMLP: (M, N)); its zero set is the boundary."""
    x = _as_input(model, points)
    out = torch.cat([model(x[s : s + batch]) for s in range(0, x.shape[0], batch)], dim=-2)
    if out.shape[-1] != 2:
        raise ValueError(f"decision_function_grid needs a 2-class model, got {out.shape[-1]} outputs")
    return out[..., 1] - out[..., 0]


# -------------------------------------------------------------------------------------- Figure 1: the trade-off


@dataclass(frozen=True)
class TradeoffExample:
    """A 2-D binary classifier with a piecewise-linear boundary {p : n·p = f(t·p)} (f through `knots` (u, v),
    constant beyond the end knots; t = (−n₂, n₁)); it predicts class 1 where n·p > f(t·p)."""

    key: str
    description: str
    points: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,) in {0, 1}
    normal: np.ndarray  # (2,) unit
    knots: np.ndarray  # (K, 2) of (u, v), u increasing

    @property
    def tangent(self) -> np.ndarray:
        return np.array([-self.normal[1], self.normal[0]])

    def decision(self, P: np.ndarray) -> np.ndarray:
        """n·p − f(t·p) (positive: class 1) for P (N, 2)."""
        P = np.asarray(P, dtype=float)
        return P @ self.normal - np.interp(P @ self.tangent, self.knots[:, 0], self.knots[:, 1])

    def predict(self, P: np.ndarray) -> np.ndarray:
        return (self.decision(P) > 0).astype(int)

    def nearest_boundary(self, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact Euclidean distance (N,) from each point to the boundary and the nearest boundary point (N, 2)."""
        P = np.asarray(P, dtype=float)
        q = np.stack([P @ self.tangent, P @ self.normal], axis=1)  # (u, v): a rotation, distances unchanged
        k = self.knots
        starts = np.concatenate([k[:1], k[:-1], k[-1:]])  # rays at both ends + segments between knots
        dirs = np.concatenate([[[-1.0, 0.0]], np.diff(k, axis=0), [[1.0, 0.0]]])
        smax = np.concatenate([[np.inf], np.ones(len(k) - 1), [np.inf]])
        s = np.einsum("npd,pd->np", q[:, None, :] - starts[None], dirs) / np.einsum("pd,pd->p", dirs, dirs)
        s = np.clip(s, 0.0, smax)
        closest = starts[None] + s[..., None] * dirs[None]  # (N, pieces, 2)
        dist = np.linalg.norm(q[:, None, :] - closest, axis=-1)
        best = dist.argmin(axis=1)
        c = closest[np.arange(len(P)), best]
        return dist[np.arange(len(P)), best], c[:, :1] * self.tangent + c[:, 1:] * self.normal

    def polyline(self, extent: float = 10.0) -> np.ndarray:
        """The boundary as plane vertices (K + 2, 2), the end rays cut at length `extent` from the end knots."""
        k = self.knots
        uv = np.concatenate([[[k[0, 0] - extent, k[0, 1]]], k, [[k[-1, 0] + extent, k[-1, 1]]]])
        return uv[:, :1] * self.tangent + uv[:, 1:] * self.normal

    @property
    def correct(self) -> np.ndarray:
        return self.predict(self.points) == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def distances(self) -> np.ndarray:
        """Distance to the boundary of every point (N,); the adversarial distance Δx of the correct ones."""
        return self.nearest_boundary(self.points)[0]

    @property
    def mean_distance(self) -> float:
        """Mean distance to the boundary over correctly classified points (what the attacks report)."""
        return float(self.distances[self.correct].mean())


def tradeoff_data() -> tuple[np.ndarray, np.ndarray]:
    """Figure 1 data: 6 points per class in two jittered columns with interleaved heights; class 1 = −class 0."""
    y0 = np.array([-2.75, -1.75, -0.75, 0.25, 1.25, 2.25])
    x0 = -np.array([1.0, 1.35, 1.1, 1.5, 1.2, 1.4])
    p0 = np.stack([x0, y0], axis=1)
    return np.concatenate([p0, -p0]), np.repeat([0, 1], len(p0))


def tradeoff_examples(eps: float = 0.2) -> list[TradeoffExample]:
    """Figure 1: (a) 50% accuracy, correct points far from the boundary (y = 0); (b) 100% accuracy, a zigzag
    boundary `eps` from every point (small margins); (c) 100% accuracy, large margin (x = 0)."""
    P, y = tradeoff_data()
    order = np.argsort(P[:, 1])
    zig = np.stack([P[order, 1], P[order, 0] + np.where(y[order] == 0, eps, -eps)], axis=1)  # (u, v) = (y, x − f)
    line = np.zeros((1, 2))
    return [
        TradeoffExample("a", "inaccurate, robust", P, y, np.array([0.0, 1.0]), line),
        TradeoffExample("b", "accurate, not robust", P, y, np.array([1.0, 0.0]), zig),
        TradeoffExample("c", "accurate and robust", P, y, np.array([1.0, 0.0]), line),
    ]
