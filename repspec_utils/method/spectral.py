"""Top singular values σ_max of weight layers and the spectral penalties Σ σ_max² (SPEC §2).

- Linear maps W (..., m, n), stacked or not: exact σ via `torch.linalg.matrix_norm(W, 2)`, or power iteration
  with a persistent right singular vector v; the penalty term is ‖W v‖² with v detached (gradient 2σ u vᵀ).
- Conv2d with circular padding, stride s: a block-circulant operator. Zero-pad (wrap) the kernel to the
  input grid h×w, split it into s_h·s_w polyphase components K^(i,j)[:, :, p, q] = K̄[:, :, i+s_h·p, j+s_w·q],
  2-D FFT each over the (h/s_h)×(w/s_w) grid and stack them along the input channels: one complex block
  P(f) of shape c_out × (c_in·s_h·s_w) per frequency f, and σ_max(conv) = max_f σ_max(P(f)).
  Derivation (1-D, stride s, n = h/s): with the kernel placed at offsets 0..k-1 (a circular shift of the input
  relative to PyTorch's `padding=p`, a permutation, so singular values are unchanged),
  y[o, a] = Σ_{c,t} K̄[o,c,t] x[c, s·a + t] = Σ_{c,i,q} K^(i)[o,c,q] x_i[c, a + q] with x_i[c, m] = x[c, i + s·m];
  in the unitary DFT over n this is Y(f) = conj(P(f)) X(f), and conj(P) has the singular values of P.
  The kernel is real, so P(-f) = conj(P(f)): the half spectrum of `rfft2` already holds every σ.
  The value is exact when the conv really is that operator (circular padding and (h/s_h)×(w/s_w) outputs,
  e.g. k odd with p = k//2, or 1×1 with p = 0); for zero padding it is only an estimate.
- `SpectralPenalty` keeps the persistent vectors of a list of layers and returns Σ σ_max² (rep- or ll-spectral,
  depending on which layers `spectral_layers` hands it). A conv's persistent vectors are one per frequency
  block, (F, c_in·s²) complex. Its σ_max² = max_f of the block values depends on the top block f* only, so
  the blocks are built without grad and the gradient flows through P(f*) rebuilt from the k×k taps
  (`conv_block_at`), the same gradient as through the full FFT at a fraction of the cost. A 1×1 conv is
  treated as its c_out×c_in channel matrix (exact for any stride).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_SETS = ("none", "rep", "ll")  # which layers spectral_layers returns


# ----------------------------------------------------------------------------------------------- power iteration


def _matvec(A: Tensor, x: Tensor) -> Tensor:
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _rmatvec(A: Tensor, y: Tensor) -> Tensor:
    """Aᴴy as (yᴴA)ᴴ: no transposed copy of A (about twice as fast as A.mH @ y on CPU)."""
    return (y.conj().unsqueeze(-2) @ A).squeeze(-2).conj()


def _sqnorm(x: Tensor) -> Tensor:
    return (x * x.conj()).real.sum(dim=-1)


def _normalize(x: Tensor, fallback: Tensor | None = None) -> Tensor:
    """x / ‖x‖ over the last axis; zero vectors give 0, or `fallback` where given."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    unit = x / norm.clamp_min(torch.finfo(norm.dtype).tiny)
    return unit if fallback is None else torch.where(norm > 0, unit, fallback)


def _power_step(W: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One step u = Wv/‖Wv‖, v = Wᴴu/‖Wᴴu‖ (v kept where Wv = 0); also σ ≈ ‖Wᴴu‖ (increases to σ_max)."""
    u = _normalize(_matvec(W, v))
    wu = _rmatvec(W, u)
    return u, _normalize(wu, fallback=v), torch.linalg.vector_norm(wu, dim=-1)


def _power_steps(W: Tensor, v: Tensor, n_iter: int) -> Tensor:
    for _ in range(n_iter):
        _, v, _ = _power_step(W, v)
    return v


@torch.no_grad()
def power_iteration(W: Tensor, v: Tensor, n_iter: int = 1) -> tuple[Tensor, Tensor]:
    """`n_iter` power-iteration steps, no grad: W (..., m, n) real or complex, v (..., n) → (u (..., m), v)."""
    v = _power_steps(W.detach(), v.to(W.dtype), n_iter)
    return _normalize(_matvec(W, v)), v


def random_vector(W: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A random unit starting vector for power iteration on W (..., m, n) → (..., n), W's dtype and device."""
    v = torch.randn(W.shape[:-2] + W.shape[-1:], dtype=W.dtype, generator=generator)
    return _normalize(v).to(W.device)


@torch.no_grad()
def power_iteration_converged(
    W: Tensor,
    v: Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    joint: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Power iteration until σ's remaining relative change is ≤ tol (or max_iter): W (..., m, n) → (u, v, steps).

    The estimates σ_k increase geometrically to σ_max (steps Δ_k shrink by ρ = (σ_2/σ_1)² per step), so the
    change still to come is Δ_k·ρ/(1-ρ) with ρ ≈ Δ_k/Δ_{k-1}; stopping on it, rather than on Δ_k alone, keeps
    the error ≤ tol even when the spectral gap is small. Runs in float64 (steps at its rounding level count as
    converged) and returns vectors in W's dtype.
    `joint=False`: the batch holds independent matrices, each judged against its own σ.
    `joint=True`: the batch holds the blocks of one operator (conv frequencies); every block is judged
    against the operator's σ_max = max over the blocks.
    """
    dtype = W.dtype
    W = W.detach().to(torch.complex128 if W.is_complex() else torch.float64)  # float32 rounding would blur tol
    v = random_vector(W, generator) if v is None else v.to(W.dtype)
    sigma = torch.linalg.vector_norm(_matvec(W, v), dim=-1)
    prev_delta = None
    steps = 0
    while steps < max_iter:
        _, v, new = _power_step(W, v)
        steps += 1
        delta, sigma = (new - sigma).abs(), new
        if prev_delta is not None:
            scale = sigma.amax() if joint else sigma
            rho = (delta / prev_delta).clamp(max=1)
            remaining = delta * rho / (1 - rho)  # inf while not contracting
            at_rounding_level = delta <= 8 * torch.finfo(delta.dtype).eps * scale
            if bool(((remaining <= tol * scale) | at_rounding_level).all()):
                break
        prev_delta = delta
    return _normalize(_matvec(W, v)).to(dtype), v.to(dtype), steps


@torch.no_grad()
def top_right_singular_vectors(W: Tensor) -> Tensor:
    """Exact top right singular vector of every matrix, via eigh of the smaller Gram: W (..., m, n) → (..., n)."""
    W = W.detach()
    m, n = W.shape[-2:]
    if n <= m:
        return torch.linalg.eigh(W.mH @ W).eigenvectors[..., -1]
    u = torch.linalg.eigh(W @ W.mH).eigenvectors[..., -1]
    first_axis = torch.zeros(n, dtype=W.dtype, device=W.device)
    first_axis[0] = 1
    return _normalize(_rmatvec(W, u), fallback=first_axis)  # (any unit vector for an all-zero block)


# ------------------------------------------------------------------------------------------------------- linear


def linear_sigma_exact(W: Tensor) -> Tensor:
    """Exact σ_max of W (..., m, n) → (...,) via the matrix 2-norm (differentiable)."""
    return torch.linalg.matrix_norm(W, ord=2)


def linear_sigma(W: Tensor, exact: bool = True, tol: float = 1e-6, max_iter: int = 1000) -> Tensor:
    """σ_max of W (..., m, n) → (...,): exact 2-norm, or ‖Wv‖ after a converged power iteration (no grad)."""
    if exact:
        return linear_sigma_exact(W)
    _, v, _ = power_iteration_converged(W, tol=tol, max_iter=max_iter, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.linalg.vector_norm(_matvec(W, v), dim=-1)


# --------------------------------------------------------------------------------------------------------- conv


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _wrap_kernel(weight: Tensor, h: int, w: int) -> Tensor:
    """K̄: the kernel (c_out, c_in, k_h, k_w) placed on the h×w torus → (c_out, c_in, h, w).

    Zero padding when k ≤ h, w; taps beyond the grid wrap around and add up (circular convolution).
    """
    kh, kw = weight.shape[-2:]
    rh, rw = -(-kh // h), -(-kw // w)  # ceil(k / size)
    padded = F.pad(weight, (0, rw * w - kw, 0, rh * h - kh))
    return padded.reshape(*weight.shape[:2], rh, h, rw, w).sum(dim=(2, 4))


def conv_blocks(weight: Tensor, input_size: Sequence[int], stride: int | Sequence[int] = 1) -> Tensor:
    """Per-frequency blocks P(f) of a circular conv: weight (c_out, c_in, k_h, k_w), input (h, w) →
    (F, c_out, c_in·s_h·s_w) complex with F = (h/s_h)·((w/s_w)//2 + 1) (half spectrum), differentiable."""
    c_out, c_in = weight.shape[:2]
    h, w = (int(n) for n in input_size[-2:])
    sh, sw = _pair(stride)
    if h % sh or w % sw:
        raise ValueError(f"input size {h}x{w} is not divisible by the stride {sh}x{sw}")
    nh, nw = h // sh, w // sw
    kbar = _wrap_kernel(weight, h, w)
    # polyphase split: poly[o, c, i, j, p, q] = K̄[o, c, i + s_h·p, j + s_w·q]
    poly = kbar.reshape(c_out, c_in, nh, sh, nw, sw).permute(0, 1, 3, 5, 2, 4)
    khat = torch.fft.rfft2(poly.reshape(c_out, c_in * sh * sw, nh, nw))
    return khat.flatten(2).permute(2, 0, 1)


def conv_block_at(weight: Tensor, input_size: Sequence[int], stride: int | Sequence[int], index: int) -> Tensor:
    """The block `conv_blocks(...)[index]` computed straight from the k×k taps: (c_out, c_in·s_h·s_w) complex,
    differentiable at the cost of the kernel's size (no FFT over the whole grid)."""
    c_out, c_in, kh, kw = weight.shape
    h, w = (int(n) for n in input_size[-2:])
    sh, sw = _pair(stride)
    nh, nw = h // sh, w // sw
    fh, fw = divmod(int(index), nw // 2 + 1)
    dtype = weight.dtype.to_complex()

    def phases(k: int, size: int, s: int, n: int, f: int) -> Tensor:
        # tap a lies at torus position a mod size = i + s·p: polyphase component i, DFT phase e^{-2πi f p / n}
        pos = torch.arange(k) % size
        E = torch.zeros(k, s, dtype=torch.complex128)
        E[torch.arange(k), pos % s] = torch.exp(-2j * torch.pi * f * (pos // s).double() / n)
        return E.to(dtype=dtype, device=weight.device)

    Eh, Ew = phases(kh, h, sh, nh, fh), phases(kw, w, sw, nw, fw)
    return torch.einsum("ocab,ai,bj->ocij", weight.to(dtype), Eh, Ew).reshape(c_out, c_in * sh * sw)


def gram_top_eigenvalues(P: Tensor) -> Tensor:
    """σ_max² of every block, by batched `eigvalsh` on the smaller Gram (PPᴴ or PᴴP): P (..., m, n) → (...,)."""
    m, n = P.shape[-2:]
    gram = P @ P.mH if m <= n else P.mH @ P
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0)


def blocks_sigma2_exact(P: Tensor) -> Tensor:
    """σ_max² of a block-diagonal operator = max over blocks of λ_max(PᴴP): P (..., m, n) → scalar (differentiable)."""
    return gram_top_eigenvalues(P).amax()


def conv_sigma_exact(weight: Tensor, input_size: Sequence[int], stride: int | Sequence[int] = 1) -> Tensor:
    """Exact σ_max of a circular-padded conv (FFT/polyphase): weight (c_out, c_in, k_h, k_w), input (h, w) → scalar.

    Exact for circular padding with (h/s_h)×(w/s_w) outputs; an estimate for zero padding. Differentiable.
    """
    return blocks_sigma2_exact(conv_blocks(weight, input_size, stride)).sqrt()


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.groups != 1:
        raise ValueError(f"spectral norm of grouped convolutions is not supported (groups={conv.groups})")
    if _pair(conv.dilation) != (1, 1):
        raise ValueError(f"spectral norm of dilated convolutions is not supported (dilation={conv.dilation})")


def conv_sigma(conv: nn.Conv2d, input_size: Sequence[int], exact: bool = True) -> Tensor:
    """σ_max of the operator of an nn.Conv2d on inputs of spatial size (h, w) → scalar: exact FFT/eigvalsh, or
    a converged joint power iteration over the blocks (a check, not the training path; ~10 s for a 64×64×3×3
    conv on 32×32 on one CPU thread)."""
    _check_conv(conv)
    P = conv_blocks(conv.weight, input_size, conv.stride)
    if exact:
        return blocks_sigma2_exact(P).sqrt()
    _, v, _ = power_iteration_converged(P, joint=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.linalg.vector_norm(_matvec(P, v), dim=-1).amax()


@torch.no_grad()
def conv_input_sizes(model: nn.Module, example_input: Tensor) -> dict[nn.Module, tuple[int, int]]:
    """Spatial input size (h, w) of every nn.Conv2d in `model`, found by one eval-mode forward pass with hooks.

    The model's train/eval flags are restored afterwards and BatchNorm statistics are not touched.
    """
    sizes: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        size = tuple(int(n) for n in args[0].shape[-2:])
        if sizes.setdefault(module, size) != size:
            raise ValueError(f"{module} is applied to inputs of different sizes {sizes[module]} and {size}")

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks = [m.register_forward_pre_hook(record) for m in convs]
    flags = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
        for m, flag in flags.items():
            m.training = flag
    return sizes


# ------------------------------------------------------------------------------------------------------ penalty


def _weight(layer: nn.Module | Tensor) -> Tensor:
    return layer if isinstance(layer, Tensor) else layer.weight


class _MatrixOp:
    """A layer that is one matrix (Linear, 1×1 conv) or a stack of independent matrices (M, m, n)."""

    joint = False

    def __init__(self, layer: nn.Module | Tensor):
        self.layer = layer

    def matrices(self) -> Tensor:
        """The weight as (m, n) or (M, m, n), differentiable."""
        W = _weight(self.layer)
        return W.flatten(1) if W.dim() == 4 else W  # 1×1 conv: (c_out, c_in, 1, 1) → (c_out, c_in)

    def sigma2(self, W: Tensor, v: Tensor | None) -> Tensor:
        """σ_max² (exact if v is None, else ‖W v‖²): () or (M,), differentiable."""
        return linear_sigma_exact(W) ** 2 if v is None else _sqnorm(_matvec(W, v))


class _ConvOp:
    """A conv layer as its per-frequency blocks (F, c_out, c_in·s²): one operator, σ_max² = max over blocks."""

    joint = True

    def __init__(self, conv: nn.Conv2d, input_size: tuple[int, int]):
        (h, w), (sh, sw) = input_size, _pair(conv.stride)
        if h % sh or w % sw:
            raise ValueError(f"input size {h}x{w} of {conv} is not divisible by its stride {sh}x{sw}")
        self.conv, self.input_size = conv, input_size

    @torch.no_grad()
    def matrices(self) -> Tensor:
        """All frequency blocks (F, c_out, c_in·s²), without grad."""
        return conv_blocks(self.conv.weight, self.input_size, self.conv.stride)

    def sigma2(self, P: Tensor, v: Tensor | None) -> Tensor:
        """max_f σ_f² (exact if v is None, else max_f ‖P_f v_f‖²): scalar, differentiable.

        The max only depends on the top frequency f*, found without grad; just that block is rebuilt from the
        taps with grad, which gives the same gradient as backpropagating through the FFT of every block.
        """
        with torch.no_grad():
            per_block = gram_top_eigenvalues(P) if v is None else _sqnorm(_matvec(P, v))
        top = int(per_block.argmax())
        block = conv_block_at(self.conv.weight, self.input_size, self.conv.stride, top)
        return gram_top_eigenvalues(block) if v is None else _sqnorm(block @ v[top])


def _make_op(layer: nn.Module | Tensor, input_shapes: Mapping) -> _MatrixOp | _ConvOp:
    if isinstance(layer, nn.Conv2d):
        _check_conv(layer)
        if layer.kernel_size == (1, 1) and layer.padding in ((0, 0), "valid", "same"):
            # A 1×1 conv (any stride) is subsampling followed by the channel matrix at every pixel, and
            # subsampling is a coordinate projection, so σ_max(conv) = σ_max(W[:, :, 0, 0]) exactly.
            return _MatrixOp(layer)
        if layer not in input_shapes:
            raise ValueError(f"no input size for {layer}; pass input_shapes=conv_input_sizes(model, example)")
        return _ConvOp(layer, tuple(int(n) for n in input_shapes[layer][-2:]))
    W = _weight(layer)
    if not isinstance(W, Tensor) or W.dim() not in (2, 3):
        raise ValueError(f"a spectral layer must be Linear, Conv2d or a weight (m, n) / (M, m, n); got {layer}")
    return _MatrixOp(layer)


class SpectralPenalty:
    """Σ_l σ_max(W_l)² over a list of layers, with persistent power-iteration vectors (SPEC §2).

    layers: nn.Linear, nn.Conv2d (groups 1, dilation 1), or raw weights (m, n) / stacked (M, m, n) for
    BatchedMLP (then every layer must be stacked with the same M). input_shapes: {conv: (h, w)} for every conv
    that is not 1×1, e.g. from `conv_input_sizes`. mode 'power': `n_iter` steps per `penalty()` call from the
    stored vectors, warm-started on first use (power iteration to `tol` for matrices, exact eigh vectors for conv
    frequency blocks); mode 'exact': batched 2-norm / eigvalsh, differentiable, no state.
    """

    def __init__(
        self,
        layers: Iterable[nn.Module | Tensor],
        input_shapes: Mapping[nn.Module, Sequence[int]] | None = None,
        mode: str = "power",
        n_iter: int = 1,
        tol: float = 1e-6,
        max_iter: int = 1000,
        seed: int = 0,
    ):
        if mode not in ("power", "exact"):
            raise ValueError(f"unknown mode {mode!r}; choose 'power' or 'exact'")
        self.layers = list(layers)
        self.mode, self.n_iter, self.tol, self.max_iter, self.seed = mode, int(n_iter), tol, max_iter, seed
        self._ops = [_make_op(layer, input_shapes or {}) for layer in self.layers]
        n_stacked = {_weight(layer).shape[0] for layer in self.layers if _weight(layer).dim() == 3}
        n_plain = sum(_weight(layer).dim() != 3 for layer in self.layers)
        if len(n_stacked) > 1 or (n_stacked and n_plain):
            raise ValueError("layers must be either all stacked (M, m, n) with the same M, or none stacked")
        self.n_models: int | None = n_stacked.pop() if n_stacked else None
        self._vectors: list[Tensor | None] = [None] * len(self._ops)
        self._last: list[Tensor] | None = None  # σ_max² per layer of the latest penalty() / accumulate_grad()

    def __len__(self) -> int:
        return len(self._ops)

    def __repr__(self) -> str:
        return f"SpectralPenalty({len(self)} layers, mode={self.mode!r}, n_iter={self.n_iter})"

    # -- persistent vectors

    def _converged_vector(self, i: int, A: Tensor) -> Tensor:
        """Warm start: a converged power iteration for matrices; for convs the exact per-frequency vectors
        (eigh of the small Grams, as in the exact path), since converging hundreds of frequency blocks jointly
        by power iteration is slow where some block has a small gap."""
        if self._ops[i].joint:
            return top_right_singular_vectors(A)
        gen = torch.Generator().manual_seed(self.seed + i)
        _, v, _ = power_iteration_converged(A, None, self.tol, self.max_iter, joint=False, generator=gen)
        return v

    def _advance(self, i: int, A: Tensor) -> Tensor:
        """Warm-start layer i if needed, then run n_iter steps; returns the new (stored) vector."""
        A = A.detach()
        v = self._vectors[i]
        if v is None:
            v = self._converged_vector(i, A)
        with torch.no_grad():
            v = _power_steps(A, v.to(A.device, A.dtype), self.n_iter)
        self._vectors[i] = v
        return v

    def warm_start(self) -> None:
        """Re-initialise every persistent vector from the current weights (as on first use)."""
        with torch.no_grad():
            self._vectors = [self._converged_vector(i, op.matrices()) for i, op in enumerate(self._ops)]

    # -- penalties

    def _sigma2_terms(self, advance: bool) -> list[Tensor]:
        """σ_max² per layer, () or (M,) each; `advance`: run the power steps and store the vectors."""
        terms = []
        for i, op in enumerate(self._ops):
            A = op.matrices()
            if self.mode == "exact":
                v = None
            elif advance:
                v = self._advance(i, A)
            elif self._vectors[i] is not None:
                v = self._vectors[i].to(A.device, A.dtype)
            else:  # not started yet: report a converged estimate without storing it
                v = self._converged_vector(i, A.detach())
            terms.append(op.sigma2(A, v))  # power: ‖A v‖² with v detached, gradient 2σ u vᴴ
        if advance:
            self._last = [t.detach() for t in terms]
        return terms

    def penalty(self) -> Tensor:
        """R = Σ_l σ_max(W_l)² (summed over stacked models too): scalar, differentiable w.r.t. the weights."""
        terms = self._sigma2_terms(advance=True)
        return torch.stack([t.sum() for t in terms]).sum() if terms else torch.zeros(())

    def penalty_per_model(self) -> Tensor:
        """σ_max² per stacked model and layer: (M, n_layers), differentiable (stacked layers only)."""
        if self.n_models is None:
            raise ValueError("penalty_per_model needs stacked (M, m, n) layers; use penalty()")
        return torch.stack(self._sigma2_terms(advance=True), dim=-1)

    @property
    def direct_grad(self) -> bool:
        """Whether `accumulate_grad` applies: power mode and every layer one matrix or a stack of them (Linear,
        1×1 conv, raw weights); a conv's gradient goes through its frequency block, so convs use autograd."""
        return self.mode == "power" and all(isinstance(op, _MatrixOp) for op in self._ops)

    @torch.no_grad()
    def accumulate_grad(self, scale: float) -> Tensor:
        """`(scale * penalty()).backward()` without autograd, for `direct_grad` penalties: advance the power
        iteration, then add scale·∇_W ‖W v‖² = 2·scale·(W v) vᴴ (v detached, as in `penalty`) to each weight's
        .grad in one in-place rank-1 update (addr_ / baddbmm_), with no outer-product tensor and no second
        accumulation pass. Returns R = Σ_l ‖W_l v_l‖² (detached), the value `penalty()` would return."""
        if not self.direct_grad:
            raise ValueError("accumulate_grad needs mode='power' and matrix layers (Linear, 1x1 conv, weights); "
                             "use penalty().backward() for convs and mode='exact'")
        total = torch.zeros(())
        last = []
        for i, op in enumerate(self._ops):
            param = _weight(self.layers[i])
            W = op.matrices()
            v = self._advance(i, W)
            y = _matvec(W, v)
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            grad = param.grad.view(W.shape)  # a 1×1 conv's (c_out, c_in, 1, 1) grad as its matrix
            if W.dim() == 2:
                grad.addr_(y, v, alpha=2 * scale)
            else:
                grad.baddbmm_(y.unsqueeze(-1), v.unsqueeze(-2), alpha=2 * scale)
            last.append(_sqnorm(y))
            total = total.to(y.device) + last[-1].sum()
        self._last = last
        return total

    @torch.no_grad()
    def last_sigmas(self) -> Tensor:
        """The σ_max estimates that entered the latest `penalty()` or `accumulate_grad()` call (the weights and
        vectors of that step): (n_layers,), or (M, n_layers) for stacked layers."""
        if self._last is None:
            raise ValueError("last_sigmas: no penalty() or accumulate_grad() call yet")
        if not self._last:
            return torch.zeros(0)
        return torch.stack(self._last, dim=-1).clamp_min(0).sqrt()

    @torch.no_grad()
    def sigmas(self) -> Tensor:
        """Current σ_max estimates without side effects: (n_layers,), or (M, n_layers) for stacked layers."""
        terms = self._sigma2_terms(advance=False)
        if not terms:
            return torch.zeros(0)
        return torch.stack(terms, dim=-1).clamp_min(0).sqrt()

    # -- checkpointing

    def state_dict(self) -> dict[str, Tensor]:
        """The persistent vectors {'v.<layer index>': (..., n)} of the layers started so far (copies)."""
        return {f"v.{i}": v.clone() for i, v in enumerate(self._vectors) if v is not None}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the vectors saved by `state_dict` (layers missing from it are warm-started on next use)."""
        vectors: list[Tensor | None] = [None] * len(self._ops)
        for key, v in state.items():
            index = int(key[2:]) if key.startswith("v.") and key[2:].isdigit() else -1
            if not 0 <= index < len(self._ops):
                raise ValueError(f"unexpected key {key!r} in SpectralPenalty state (it has {len(self)} layers)")
            with torch.no_grad():
                A = self._ops[index].matrices()
            expected = A.shape[:-2] + A.shape[-1:]
            if tuple(v.shape) != tuple(expected):
                raise ValueError(f"{key}: saved vector of shape {tuple(v.shape)}, layer needs {tuple(expected)}")
            vectors[index] = v.detach().clone().to(A.device, A.dtype)
        self._vectors = vectors

    def to(self, device: torch.device | str) -> SpectralPenalty:
        """Move the persistent vectors to `device` (the layers are moved with their model)."""
        self._vectors = [None if v is None else v.to(device) for v in self._vectors]
        return self


def spectral_layers(model: nn.Module, method: str, max_layer: int | None = None) -> list[nn.Module]:
    """Layers to penalise: 'rep' → `model.feature_layers(max_layer)` (Φ's layers; MLP: the first `max_layer`
    hidden layers, ResNet: stem + the first `max_layer` stages), 'll' → those plus `model.readout`, 'none' → []."""
    if method not in LAYER_SETS:
        raise ValueError(f"unknown spectral method {method!r}; choose one of {LAYER_SETS}")
    if method == "none":
        return []
    layers = list(model.feature_layers() if max_layer is None else model.feature_layers(max_layer))
    return layers + [model.readout] if method == "ll" else layers
