"""Adversarial-training methods beside the spectral ones (issue 13), registered in `registry.METHODS`, so that
`train()` runs them with the same burn-in, cache and resume as every other method:

| method       | each step trains on                                            | cfg.lam weighs             |
|--------------|----------------------------------------------------------------|----------------------------|
| `pgd_at`     | PGD-L∞ examples, cross-entropy (Madry et al. 2018)             | nothing (unused)           |
| `rep+pgd_at` | PGD-L∞ examples, cross-entropy, plus rep-spectral Σ σ_max²     | rep-spectral's term        |
| `arat`       | AR-AT (Waseda et al., ICLR 2025): both branches + alignment    | the cosine alignment term  |
| `lsp`        | clean inputs, plus the LSP-style neighbourhood KL              | the KL term                |
| `lsp+pgd_at` | PGD-L∞ examples, plus the LSP-style KL (x̃ = the PGD example)   | the KL term                |

Settings come from `cfg.method_kwargs` and are checked by `training.validate` before any data is loaded:
- PGD (every method but `lsp`): `eps` (default 0.1 on MNIST-like data, 8/255 on CIFAR), `steps` k (10), `alpha`
  (2.5·ε/k; CIFAR 2/255). A uniform random start in the ε-ball, k sign steps, projected to the ball and to the
  input box [0, 1], on the whole minibatch at once (`attacks.pgd_examples`). The examples are generated with the
  model in eval mode (as TRADES does; the BatchNorm statistics are not touched by the attack) and trained on in
  train mode.
- AR-AT: `split_bn` (default: whether the model has BatchNorm), `layers` (the aligned features: module names, or
  'features' for Φ; default ResNet18: layer4's four BatchNorms, MLP: Φ), `acc_samples` (1000), `predictor_ratio` (4).
- LSP: `k` (10 neighbours).

AR-AT, as its public code defines it: L = w_adv·CE(f_adv(x′), y) + w_clean·CE(f_clean(x), y)
+ (λ/|𝓛|)·Σ_l [1 − cos(h_l(z_l(x′)), stopgrad(z_l(x)))], x′ the PGD example through the adversarial branch, h_l a
predictor Linear(d → d/4, no bias) → BatchNorm1d → ReLU → Linear(d/4 → d) trained with the model and applied to the
adversarial features only, w_adv the clean accuracy of 1000 training images (clean branch, eval mode) measured at the
start of each epoch, w_clean = 1 − w_adv. With `split_bn` every BatchNorm has a clean and an adversarial copy
(`SplitBatchNorm`, both starting from the burn-in's), routed per forward; evaluation and attacks use the
adversarial copy. A ReLU + global average pool turns a (B, C, H, W) feature into (B, C); on ResNet18 the bn2 of a
block is taken before the residual add (its own output), as AR-AT does.

LSP-style (labelled so everywhere: reconstructed from the abstract of Wei, Zhou, Wu 2023, no public formula):
within a minibatch, P_i = softmax over the k nearest neighbours j of −‖x_i − x_j‖²/τ_x, Q_i = the same over the same
neighbours of −‖Φ(x̃_i) − Φ(x_j)‖²/τ_Φ, each τ the median of those squared distances (held constant in the
gradient), and the term is mean_i KL(P_i ‖ Q_i): zero when Φ preserves the neighbourhood distances up to scale.

For these methods the history's `train_loss` is the method's whole objective on the examples it trains on and
`train_acc` the accuracy on those (adversarial) examples; `penalty` is the method's own term (alignment, KL).
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repspec_utils.attacks.base import eval_mode as _eval
from repspec_utils.attacks.pgd import pgd_examples
from repspec_utils.infra.registry import DATASETS, METHODS, MODELS
from repspec_utils.method import spectral
from repspec_utils.method.penalties import penalised_layers
from repspec_utils.models.base import build_model
from repspec_utils.models.mlp import MLP
from repspec_utils.training.config import MethodParts, TrainConfig

__all__ = ["SplitBatchNorm", "split_batchnorm", "bn_route", "has_batchnorm", "pgd_settings", "lsp_kl",
           "arat_loss", "aligned_layer_names", "ADVERSARIAL_METHODS", "RESNET_ALIGNED"]

ADVERSARIAL_METHODS = ("pgd_at", "rep+pgd_at", "arat", "lsp", "lsp+pgd_at")
PGD_KEYS = ("eps", "steps", "alpha")
ARAT_KEYS = PGD_KEYS + ("split_bn", "layers", "acc_samples", "predictor_ratio")
LSP_KEYS = ("k",)
RESNET_ALIGNED = ("layer4.0.bn1", "layer4.0.bn2", "layer4.1.bn1", "layer4.1.bn2")
BOX = (0.0, 1.0)  # the image datasets' input box (the only kind these methods accept)


# ----------------------------------------------------------------------------------------------------
# settings and their checks (train.validate calls `check` before any data is loaded)
# ----------------------------------------------------------------------------------------------------
def _is_cifar(dataset: str) -> bool:
    return "cifar" in dataset


def pgd_settings(cfg: TrainConfig) -> dict:
    """eps, steps, alpha of a config: its method_kwargs over the dataset's defaults (MNIST-like: ε 0.1, k 10,
    α 2.5·ε/k; CIFAR: ε 8/255, k 10, α 2/255)."""
    kw = cfg.method_kwargs
    eps = float(kw.get("eps", 8 / 255 if _is_cifar(cfg.dataset) else 0.1))
    steps = kw.get("steps", 10)
    alpha = kw.get("alpha")
    if alpha is None:
        alpha = 2 / 255 if _is_cifar(cfg.dataset) and "eps" not in kw else 2.5 * eps / max(int(steps), 1)
    return {"eps": eps, "steps": steps, "alpha": float(alpha)}


BOX_KINDS = ("image", "transfer")  # dataset kinds whose inputs live in the [0, 1] box that PGD projects onto


def _check_keys(cfg: TrainConfig, allowed: Sequence[str]) -> None:
    unknown = sorted(set(cfg.method_kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"method {cfg.method!r} does not know the method_kwargs {unknown}; it takes {list(allowed)}")


def _check_common(cfg: TrainConfig) -> None:
    kind = DATASETS.meta(cfg.dataset).get("kind")
    if kind not in BOX_KINDS:  # images in [0, 1]: the datasets as loaded and their resized transfer versions
        allowed = [d for k in BOX_KINDS for d in DATASETS.where(kind=k)]
        raise ValueError(f"method {cfg.method!r} needs an image dataset with inputs in [0, 1] (the PGD box), got "
                         f"{cfg.dataset!r} ({kind}); image datasets: {', '.join(allowed)}")
    if cfg.objective != "supervised":
        raise ValueError(f"method {cfg.method!r} trains the supervised objective only, got objective "
                         f"{cfg.objective!r}")


def _check_pgd(cfg: TrainConfig) -> None:
    s = pgd_settings(cfg)
    eps, steps, alpha = s["eps"], s["steps"], s["alpha"]
    width = BOX[1] - BOX[0]
    if not (math.isfinite(eps) and 0 <= eps <= width):
        raise ValueError(f"method {cfg.method!r}: eps (the L∞ radius) must lie in [0, {width:g}] (the input box's "
                         f"width), got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"method {cfg.method!r}: steps (PGD's k) must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"method {cfg.method!r}: alpha (PGD's step size) must be > 0, got {alpha!r}")


def check_pgd_at(cfg: TrainConfig) -> None:
    _check_keys(cfg, PGD_KEYS)
    _check_common(cfg)
    _check_pgd(cfg)


def check_lsp(cfg: TrainConfig, with_pgd: bool = False) -> None:
    _check_keys(cfg, LSP_KEYS + (PGD_KEYS if with_pgd else ()))
    _check_common(cfg)
    k = cfg.method_kwargs.get("k", 10)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"method {cfg.method!r}: k (neighbours) must be an integer >= 1, got {k!r}")
    if k >= cfg.batch_size:
        raise ValueError(f"method {cfg.method!r}: k = {k} neighbours need batch_size > k, got {cfg.batch_size}")
    if with_pgd:
        _check_pgd(cfg)


def _skeleton(cfg: TrainConfig) -> nn.Module:
    """The config's architecture, built small enough to read its module names (d_in 4 / 2 classes if unsized)."""
    spec = dict(cfg.model)
    if MODELS.meta(spec["kind"]).get("sized_by_data"):
        spec.setdefault("d_in", 4)
        spec.setdefault("n_classes", 2)
    return build_model(spec)


def check_arat(cfg: TrainConfig) -> None:
    _check_keys(cfg, ARAT_KEYS)
    _check_common(cfg)
    _check_pgd(cfg)
    kw = cfg.method_kwargs
    model = _skeleton(cfg)
    if kw.get("split_bn") and not has_batchnorm(model):
        hint = " (an MLP gets one with model {'batchnorm': True})" if isinstance(model, MLP) else ""
        raise ValueError(f"method 'arat': split_bn=True asked for on a model without BatchNorm "
                         f"({cfg.model['kind']}){hint}; use split_bn=False or a model with BatchNorm")
    names = aligned_layer_names(model, kw.get("layers"))
    modules = dict(model.named_modules())
    missing = [n for n in names if n != "features" and n not in modules]
    if missing:
        raise ValueError(f"method 'arat': aligned layers {missing} do not exist in the model; valid: 'features' or "
                         f"module names such as {', '.join(list(n for n in modules if n)[-6:])}")
    for key, low in (("acc_samples", 1), ("predictor_ratio", 1)):
        v = kw.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"method 'arat': {key} must be an integer >= {low}, got {v!r}")


# ----------------------------------------------------------------------------------------------------
# split BatchNorm
# ----------------------------------------------------------------------------------------------------
_BN = nn.modules.batchnorm._BatchNorm


class SplitBatchNorm(nn.Module):
    """A BatchNorm with a clean and an adversarial copy (affine parameters and running statistics each); `route`
    ('clean' | 'adv', default 'adv', the copy used in evaluation) selects the copy a forward uses."""

    def __init__(self, bn: _BN):
        super().__init__()
        self.clean, self.adv = copy.deepcopy(bn), copy.deepcopy(bn)
        self.route = "adv"

    def forward(self, x: Tensor) -> Tensor:
        return (self.clean if self.route == "clean" else self.adv)(x)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, (_BN, SplitBatchNorm)) for m in model.modules())


def split_batchnorm(model: nn.Module) -> nn.Module:
    """Replace every BatchNorm of `model` (in place) by a SplitBatchNorm whose two copies start from it."""
    for name, child in list(model.named_children()):
        if isinstance(child, _BN):
            setattr(model, name, SplitBatchNorm(child))
        elif not isinstance(child, SplitBatchNorm):
            split_batchnorm(child)
    return model


@contextlib.contextmanager
def bn_route(model: nn.Module, route: str) -> Iterator[None]:
    """Route every SplitBatchNorm of `model` to its 'clean' or 'adv' copy inside the block (restored after)."""
    if route not in ("clean", "adv"):
        raise ValueError(f"route must be 'clean' or 'adv', got {route!r}")
    splits = [m for m in model.modules() if isinstance(m, SplitBatchNorm)]
    old = [m.route for m in splits]
    for m in splits:
        m.route = route
    try:
        yield
    finally:
        for m, r in zip(splits, old):
            m.route = r


# ----------------------------------------------------------------------------------------------------
# PGD examples inside a training step
# ----------------------------------------------------------------------------------------------------
def _step_generator(gen: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator for this step's random start, drawn from the epoch's generator (so resume stays exact)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if gen is not None else 0
    return torch.Generator(device=device).manual_seed(seed)


def _adversarial(model: nn.Module, x: Tensor, y: Tensor, gen, s: dict) -> Tensor:
    with _eval(model):
        return pgd_examples(model, x, y, s["eps"], s["steps"], s["alpha"], BOX, _step_generator(gen, x.device))


def make_pgd_wrap(cfg: TrainConfig) -> Callable:
    s = pgd_settings(cfg)

    def wrap(objective: Callable) -> Callable:
        def pgd_objective(model, x, y, gen):
            return objective(model, _adversarial(model, x, y, gen, s), y, gen)
        return pgd_objective
    return wrap


@METHODS.register("pgd_at", doc="PGD adversarial training (Madry et al. 2018): cross-entropy on L∞ PGD examples",
                  check=check_pgd_at, adversarial=True)
def make_pgd_at(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> MethodParts:
    return MethodParts(wrap=make_pgd_wrap(cfg))


def check_rep_pgd_at(cfg: TrainConfig) -> None:
    check_pgd_at(cfg)


@METHODS.register("rep+pgd_at", doc="rep-spectral (λ·Σσ² over Φ's layers) added to PGD adversarial training",
                  check=check_rep_pgd_at, adversarial=True)
def make_rep_pgd_at(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> MethodParts:
    layers = penalised_layers(model, "rep", max_layer=cfg.max_layer)
    penalty = spectral.SpectralPenalty(layers, input_shapes=spectral.conv_input_sizes(model, example_x),
                                       mode=cfg.spectral_mode, n_iter=cfg.n_power_iter)
    return MethodParts(penalty=penalty, wrap=make_pgd_wrap(cfg))


# ----------------------------------------------------------------------------------------------------
# LSP-style
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_sparse():
    """Without PyTorch's notice that its CSR support is in beta (the three ops used here are tested against the
    dense form: tests/test_adversarial.py)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        yield


class _NeighbourSquaredDistances(torch.autograd.Function):
    """(B, k) squared distances ‖q_i − r_m‖² to the k neighbours m = nb[i, j], as ‖q_i‖² + ‖r_m‖² − 2 q_i·r_m with the
    dot products computed at the B·k neighbour positions only (`torch.sparse.sampled_addmm` on a CSR pattern), and
    the backward as two weighted sums of rows (`F.embedding_bag`, mode 'sum' with per-sample weights: once over each
    query's neighbours, once over each reference's queries): no (B, k, p) tensor of neighbour features is formed,
    forward or backward. `nb`: each row's indices sorted and distinct (sorted top-k indices are)."""

    @staticmethod
    def forward(ctx, q: Tensor, r: Tensor, nb: Tensor) -> Tensor:
        b, k = nb.shape
        crow = torch.arange(0, b * k + 1, k, device=nb.device)
        with _quiet_sparse():
            pattern = torch.sparse_csr_tensor(crow, nb.reshape(-1), torch.ones(b * k, dtype=q.dtype, device=q.device),
                                              (b, r.shape[0]), check_invariants=False)
            dots = torch.sparse.sampled_addmm(pattern, q, r.t(), beta=0.0).values().view(b, k)
        ctx.save_for_backward(q, r, nb)
        q_sq = torch.einsum("ip,ip->i", q, q)
        r_sq = q_sq if r is q else torch.einsum("ip,ip->i", r, r)
        return (r_sq[nb] + q_sq[:, None]).sub_(dots, alpha=2)

    @staticmethod
    def backward(ctx, g: Tensor):
        q, r, nb = ctx.saved_tensors
        b, k = nb.shape
        g = g.contiguous()
        dq = dr = None
        if ctx.needs_input_grad[0]:  # Σ_j g_ij · 2(q_i − r_m): 2 q_i Σ_j g_ij − 2 Σ_j g_ij r_{nb_ij}
            near = F.embedding_bag(nb, r, per_sample_weights=g, mode="sum")
            dq = torch.addcmul(near.mul_(-2), q, g.sum(1, keepdim=True), value=2)
        if ctx.needs_input_grad[1]:  # Σ_{(i, j): nb_ij = m} g_ij · 2(r_m − q_i), grouped by m
            cols = nb.reshape(-1)
            order = torch.argsort(cols, stable=True)
            counts = torch.bincount(cols, minlength=r.shape[0])
            offsets = torch.cumsum(counts, 0).sub_(counts)
            rows = torch.arange(b, device=nb.device).repeat_interleave(k)[order]
            weights = g.reshape(-1)[order]
            near = F.embedding_bag(rows, q, offsets, per_sample_weights=weights, mode="sum")
            per_ref = torch.zeros(r.shape[0], dtype=g.dtype, device=g.device).index_add_(0, cols, g.reshape(-1))
            dr = torch.addcmul(near.mul_(-2), r, per_ref[:, None], value=2)
        return dq, dr, None


def lsp_kl(x: Tensor, phi_query: Tensor, phi_ref: Tensor, k: int = 10) -> Tensor:
    """mean_i KL(P_i ‖ Q_i) over a minibatch (see the module docstring): x (B, ...) the clean inputs, phi_query
    (B, p) = Φ(x̃) (x̃ = x or its PGD example), phi_ref (B, p) = Φ(x). Neighbours: the k nearest other inputs."""
    X = x.flatten(1).float()
    b = X.shape[0]
    k = min(int(k), b - 1)
    if k < 1:
        raise ValueError(f"the LSP term needs at least 2 samples in a batch, got {b}")
    with torch.no_grad():
        sq = torch.einsum("ip,ip->i", X, X)
        dx = torch.addmm(sq[None, :], X, X.t(), alpha=-2).add_(sq[:, None]).clamp_min_(0)  # ‖x_i − x_j‖², one GEMM
        dx.fill_diagonal_(math.inf)
        dxn, nb = dx.topk(k, dim=1, largest=False)
        nb, order = nb.sort(dim=1)  # the KL sums over the k slots: their order is free; the sparse pattern wants it
        dxn = dxn.gather(1, order)
        tau_x = dxn.median().clamp_min(torch.finfo(dxn.dtype).tiny)
        log_p = F.log_softmax(-dxn / tau_x, dim=1)
    q, r = phi_query.float(), phi_ref.float()
    dphi = _NeighbourSquaredDistances.apply(q, r, nb)  # (B, k), without a (B, k, p) neighbour tensor
    tau_phi = dphi.detach().median().clamp_min(torch.finfo(dphi.dtype).tiny)
    log_q = F.log_softmax(-dphi / tau_phi, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


def _make_lsp(cfg: TrainConfig, with_pgd: bool) -> MethodParts:
    parts = MethodParts()
    k, lam = cfg.method_kwargs.get("k", 10), cfg.lam
    s = pgd_settings(cfg) if with_pgd else None

    def wrap(objective: Callable) -> Callable:
        def lsp_objective(model, x, y, gen):
            x_t = _adversarial(model, x, y, gen, s) if with_pgd else x
            loss, feats_t, n_correct = objective(model, x_t, y, gen)
            feats_c = model.features(x) if with_pgd else feats_t
            reg = lsp_kl(x, feats_t, feats_c, k)
            parts.last_value = reg.detach()
            return loss + lam * reg, feats_t, n_correct
        return lsp_objective

    parts.wrap = wrap
    return parts


@METHODS.register("lsp", doc="LSP-style (reconstructed from the abstract, no public formula): λ·mean KL of the "
                  "k-nearest-neighbour softmax in input space vs representation space", check=check_lsp,
                  adversarial=False)
def make_lsp(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> MethodParts:
    return _make_lsp(cfg, with_pgd=False)


def check_lsp_pgd(cfg: TrainConfig) -> None:
    check_lsp(cfg, with_pgd=True)


@METHODS.register("lsp+pgd_at", doc="LSP-style term (reconstructed from the abstract) on PGD examples, with PGD "
                  "adversarial training", check=check_lsp_pgd, adversarial=True)
def make_lsp_pgd(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> MethodParts:
    return _make_lsp(cfg, with_pgd=True)


# ----------------------------------------------------------------------------------------------------
# AR-AT
# ----------------------------------------------------------------------------------------------------
def aligned_layer_names(model: nn.Module, layers=None) -> list[str]:
    """The aligned features' names: `layers` if given, else the BatchNorms of the last residual stage's blocks
    (ResNet18: layer4's four, RESNET_ALIGNED; a small_resnet with one block per stage: two) or Φ ('features')."""
    if layers is not None:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError("method 'arat': layers must name at least one feature")
        return names
    last = [n for n, _ in model.named_modules() if re.fullmatch(r"layer4\.\d+\.bn[12]", n)]
    return last or ["features"]


def _predictor(d: int, ratio: int) -> nn.Sequential:
    h = max(1, d // ratio)
    return nn.Sequential(nn.Linear(d, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, d))


def _feature_dim(module: nn.Module) -> int:
    if isinstance(module, SplitBatchNorm):
        module = module.adv
    if isinstance(module, _BN):
        return module.num_features
    raise ValueError(f"method 'arat': cannot tell the width of aligned layer {type(module).__name__}; name a "
                     f"BatchNorm or 'features'")


def prepare_arat(cfg: TrainConfig, model: nn.Module) -> nn.Module:
    """AR-AT's model change (idempotent): split BatchNorm (if `split_bn`) and the predictor heads, attached as
    `model.arat_predictors` so that the optimiser trains them and the cache stores them."""
    if hasattr(model, "arat_predictors"):
        return model
    kw = cfg.method_kwargs
    if kw.get("split_bn", has_batchnorm(model)):
        split_batchnorm(model)
    names = aligned_layer_names(model, kw.get("layers"))
    mods = dict(model.named_modules())
    p = next(model.parameters())
    dims = []
    for n in names:
        if n == "features":
            with torch.no_grad(), _eval(model):
                x = torch.zeros(2, *_input_shape(model), device=p.device, dtype=p.dtype)
                dims.append(model.features(x).shape[1])
        else:
            dims.append(_feature_dim(mods[n]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 7919 + 17)
        heads = nn.ModuleList(_predictor(d, int(kw.get("predictor_ratio", 4))) for d in dims)
    model.arat_predictors = heads.to(device=p.device, dtype=p.dtype)
    model.arat_layers = names
    return model


def _input_shape(model: nn.Module) -> tuple:
    if isinstance(model, MLP):
        return (model.d_in,)
    return (3, 32, 32)


def _forward_aligned(model: nn.Module, x: Tensor, names: Sequence[str]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """logits, Φ(x) and the aligned features (ReLU + global average pool for (B, C, H, W) outputs)."""
    mods = dict(model.named_modules())
    got: dict[str, Tensor] = {}
    # a copy at the hook: ResNet's blocks change their BatchNorms' outputs in place afterwards (ReLU, residual add)
    hooks = [mods[n].register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out.clone()))
             for n in names if n != "features"]
    try:
        feats = model.features(x)
        logits = model.readout(feats)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for n in names:
        z = feats if n == "features" else got[n]
        out.append(F.relu(z).mean(dim=(2, 3)) if z.dim() == 4 else z)
    return logits, feats, out


def arat_loss(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, w_adv: float, lam: float
              ) -> tuple[Tensor, Tensor, Tensor, int]:
    """AR-AT's loss on one batch (model prepared by `prepare_arat`, in train mode): the clean inputs through the
    clean branch, x_adv through the adversarial branch. -> (loss, alignment term, Φ(x_adv), n correct on x_adv)."""
    names = model.arat_layers
    with bn_route(model, "clean"):
        logits_c, _, z_c = _forward_aligned(model, x, names)
    with bn_route(model, "adv"):
        logits_a, feats_a, z_a = _forward_aligned(model, x_adv, names)
    align = torch.stack([(1 - F.cosine_similarity(h(za.float()), zc.float().detach(), dim=1)).mean()
                         for h, za, zc in zip(model.arat_predictors, z_a, z_c)]).mean()
    loss = (w_adv * F.cross_entropy(logits_a.float(), y) + (1 - w_adv) * F.cross_entropy(logits_c.float(), y)
            + lam * align)
    return loss, align, feats_a, int((logits_a.argmax(1) == y).sum())


@METHODS.register("arat", doc="AR-AT (Waseda et al. 2025): adversarial + clean cross-entropy weighted by the clean "
                  "accuracy, plus λ·(1 − cos) alignment of adversarial to stop-gradient clean features through "
                  "per-layer predictors, with split BatchNorm", check=check_arat, prepare=prepare_arat,
                  adversarial=True)
def make_arat(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> MethodParts:
    prepare_arat(cfg, model)
    s = pgd_settings(cfg)
    parts = MethodParts()
    state: dict[str, Any] = {"w_adv": 0.0}
    n_acc = int(cfg.method_kwargs.get("acc_samples", 1000))

    def epoch_start(model, x_all, y_all, epoch):
        """w_adv = the clean-branch accuracy (eval mode) of a fixed set of training images (the first `acc_samples`
        of a permutation seeded by the config's seed)."""
        idx = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(cfg.seed))[:n_acc].to(y_all.device)
        with torch.no_grad(), _eval(model), bn_route(model, "clean"):
            pred = torch.cat([model(x_all[idx[i:i + 1024]]).argmax(1) for i in range(0, len(idx), 1024)])
        state["w_adv"] = float((pred == y_all[idx]).double().mean())

    def wrap(objective: Callable) -> Callable:
        def arat_objective(model, x, y, gen):
            with bn_route(model, "adv"):
                x_adv = _adversarial(model, x, y, gen, s)
            loss, align, feats_a, n_correct = arat_loss(model, x, x_adv, y, state["w_adv"], cfg.lam)
            parts.last_value = align.detach()
            return loss, feats_a, n_correct
        return arat_objective

    parts.wrap, parts.epoch_start = wrap, epoch_start
    return parts
