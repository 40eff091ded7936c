"""Evaluation: test accuracy, adversarial distance tables (SPEC §4) and readout re-training.

- `accuracy` / `predict`: on the full set, batched, no grad, model in eval mode (its modes are restored).
- `evaluate_robustness`: the first n correctly classified test samples after a seeded shuffle are attacked
  (box from the dataset); one row per sample: index, label, distance, queries, success, attack. Cached
  under a content key when the caller describes the model (`cache_key`).
- `refit_readout`: freeze Φ, fit a multinomial L2 logistic regression (C = 1, lbfgs) on Φ(train), and
  return Φ → new head as a `RepModel` the same evaluation accepts.
"""

from __future__ import annotations

import contextlib
import math
import copy
import time

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from . import attacks as _attacks
from . import bounds, cache
from .attacks import _eval_mode, check_box, check_budget, check_inputs, resolve_attack

__all__ = ["predict", "accuracy", "features", "check_model_output", "select_correct", "evaluate_robustness",
           "refit_readout", "whitebox_robustness", "autoattack_accuracy", "ATTACK_TABLE_VERSION"]

# Bump when a change to the attacks alters the tables they produce (it is part of every cache key).
ATTACK_TABLE_VERSION = 2  # 2: per-sample start draws, several fallback candidates (issue 12 item 11)
COLUMNS = ["index", "label", "distance", "queries", "success", "attack"]
# added after the attack, never cached: the certified radius of one-hidden-layer MLPs (bounds.certified_radius)
CERTIFIED = "certified_radius"


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _batched(fn, x: Tensor, model: nn.Module, batch_size: int) -> Tensor:
    dev, dtype = _device(model), _dtype(model)
    with torch.no_grad(), _eval_mode(model):
        return torch.cat([fn(x[s:s + batch_size].to(dev, dtype)) for s in range(0, x.shape[0], batch_size)])


def predict(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """Predicted labels argmax F(x): x (N, ...) -> int64 (N,) on the model's device."""
    return _batched(lambda b: model(b).argmax(1), x, model, batch_size)


def features(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """The representation Φ(x): x (N, ...) -> (N, p) on the model's device (no grad)."""
    return _batched(model.features, x, model, batch_size)


def accuracy(model: nn.Module, ds, batch_size: int = 4096) -> float:
    """Test accuracy of argmax F on the whole dataset `ds` (x (N, ...), y (N,))."""
    return (predict(model, ds.x, batch_size).cpu() == ds.y.cpu()).double().mean().item()


def check_model_output(model: nn.Module, x: Tensor) -> int:
    """One call on the first (up to) 2 rows of x; ValueError unless the output is logits (batch, classes ≥ 2).
    Returns the number of classes. (A shape check, not a query of any attack.)"""
    probe = x[:2]
    with torch.no_grad(), _eval_mode(model):
        out = model(probe.to(_device(model), _dtype(model)))
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != probe.shape[0] or out.shape[1] < 2:
        raise ValueError(f"the model must map a batch {tuple(probe.shape)} to logits (batch, classes >= 2); "
                         f"it returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return int(out.shape[1])


def select_correct(model: nn.Module, ds, n: int, seed: int = 0, batch_size: int = 4096,
                   correct: Tensor | None = None) -> Tensor:
    """Indices (n,) of the first n correctly classified samples of ds after a seeded shuffle (torch.Generator);
    ValueError if fewer than n are correctly classified. `correct` (N,) bool skips the predictions."""
    if correct is None:
        correct = predict(model, ds.x, batch_size).cpu() == ds.y.cpu()
    perm = torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(int(seed)))
    chosen = perm[correct[perm]]
    if n > chosen.numel():
        raise ValueError(f"asked to attack n={n} samples but only {chosen.numel()} of {len(ds.y)} test samples "
                         f"are correctly classified")
    return chosen[:n]


ATTACK_CHUNK = 200  # samples per resumable piece of a cached attack (n ≤ this: one piece, as before chunking)


def _chunk_seed(seed: int, chunk: int) -> int:
    """The attack seed of piece `chunk` (piece 0 keeps the table's seed, so n ≤ ATTACK_CHUNK is unchanged)."""
    return int(seed) + 1_000_003 * int(chunk)


def _identity(ds) -> str | None:
    """The content fingerprint of an ArrayDataset (`ArrayDataset.identity`), None for other dataset types."""
    return getattr(ds, "identity", None)


def _attack_key(cache_key: dict, name: str, kwargs: dict, n: int, seed: int, test_ds, chunk: int):
    pieces = {"chunk": chunk} if n > chunk else {}  # one piece: the key (and the result) as before chunking
    key = cache.make_key(kind="attack", model=cache_key, attack=name, kwargs=kwargs, n=n, seed=seed,
                         data=[getattr(test_ds, "name", None), len(test_ds.y), _identity(test_ds)], version=ATTACK_TABLE_VERSION,
                         **pieces)
    return key, cache.cache_root() / "attacks" / f"{key}.pt"


def attack_is_cached(cache_key: dict, test_ds, n: int, seed: int = 0, attack: str = "tangent",
                     attack_kwargs: dict | None = None, precision: str = "fp32", chunk: int = ATTACK_CHUNK) -> bool:
    """Whether `evaluate_robustness` with these arguments would load its table from the cache (the executor submits
    only the attacks that are not)."""
    kwargs = dict(attack_kwargs or {})
    if precision != "fp32":
        kwargs["precision"] = precision
    kwargs.setdefault("seed", seed)
    return _attack_key(cache_key, resolve_attack(attack), kwargs, int(n), seed, test_ds, int(chunk))[1].exists()


def evaluate_robustness(model: nn.Module, test_ds, n: int, seed: int = 0, attack: str = "tangent",
                        attack_kwargs: dict | None = None, cache_key: dict | None = None,
                        progress: bool = True, batch_size: int = 4096, precision: str = "fp32",
                        chunk: int = ATTACK_CHUNK, certify: bool = True) -> pd.DataFrame:
    """Attack the first n correctly classified test samples (seeded shuffle) inside test_ds.box; one row per
    sample: index (in test_ds), label, distance ‖x_adv − x‖₂ (inf if no adversarial point), queries, success,
    attack, certified_radius (the local certified radius for one-hidden-layer MLPs, else NaN; `certify=False`
    skips computing it and leaves the column NaN, for a second attack on the same samples). With `cache_key` (a
    dict describing the model) the table is cached and reloaded. The samples are attacked in pieces of `chunk`
    (piece c with seed `_chunk_seed(seed, c)`); with a cache key each finished piece is cached at once, so an
    interrupted attack resumes at its first unfinished piece with results identical to an uninterrupted run.
    precision 'bf16': the attack's model queries under bfloat16 autocast, its final bisection and success check in
    fp32. Bad input (box, inputs outside it, budget ≤ 0, unknown attack, output not (batch, classes), n too large)
    raises ValueError before the attack makes any query."""
    name = resolve_attack(attack)
    kwargs = dict(attack_kwargs or {})
    if precision != "fp32":  # fp32 is the default: left out of kwargs (and the key) so existing keys are unchanged
        _attacks.check_precision(precision)
        if name == "fmn":
            raise ValueError("precision 'bf16' applies to the hard-label attacks (tangent, hsj), not to fmn")
        kwargs["precision"] = precision
    check_budget(kwargs.get("max_queries"))
    box = check_box(test_ds.box)
    check_inputs(test_ds.x, box)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    n, chunk = int(n), int(chunk)
    check_model_output(model, test_ds.x)
    kwargs.setdefault("seed", seed)
    path = key = None
    if cache_key is not None:
        key, path = _attack_key(cache_key, name, kwargs, n, seed, test_ds, chunk)
    with cache.key_lock(path) if path is not None else contextlib.nullcontext():  # one process per key
        if path is not None:
            stored = cache.load(path)
            if stored is not None:
                seconds = stored.pop("seconds")
                cache.note_compute("attack", key, seconds)
                table = _with_certified(pd.DataFrame(stored)[COLUMNS], model, test_ds, certify)
                table.attrs["seconds"] = seconds
                return table
        correct = predict(model, test_ds.x, batch_size).cpu() == test_ds.y.cpu()
        idx = select_correct(model, test_ds, n, seed, batch_size, correct=correct)
        dev = _device(model)
        if name != "fmn":  # start points of last resort: other correctly classified test samples
            kwargs.setdefault("pool", (test_ds.x[correct].to(dev), test_ds.y[correct].to(dev)))
        kwargs.setdefault("progress", progress)
        parts = []
        starts = range(0, n, chunk)
        for c, s in enumerate(starts):
            part_path = path.with_name(f"{key}.part{c}.pt") if path is not None and len(starts) > 1 else None
            part = cache.load(part_path) if part_path is not None else None
            if part is None:
                t_part = time.perf_counter()
                rows = idx[s:s + chunk]
                res = _attacks.ATTACKS[name](model, test_ds.x[rows].to(dev), test_ds.y[rows].to(dev), box,
                                             **{**kwargs, "seed": _chunk_seed(kwargs["seed"], c)})
                part = {
                    "index": rows.numpy().astype(np.int64).tolist(),
                    "label": test_ds.y[rows].numpy().astype(np.int64).tolist(),
                    "distance": res.distance.detach().double().cpu().numpy().tolist(),
                    "queries": res.queries.cpu().numpy().astype(np.int64).tolist(),
                    "success": res.success.cpu().numpy().astype(bool).tolist(),
                    "seconds": time.perf_counter() - t_part,
                }
                if part_path is not None:
                    cache.save(part, part_path)
            parts.append(part)
        table = {k: [v for p in parts for v in p[k]] for k in ("index", "label", "distance", "queries", "success")}
        table["attack"] = [name] * n
        seconds = sum(p["seconds"] for p in parts)  # the attack's compute time, resumed pieces at their original time
        if path is not None:
            cache.save({**table, "seconds": seconds}, path)
            for c in range(len(starts)):
                path.with_name(f"{key}.part{c}.pt").unlink(missing_ok=True)
        cache.note_compute("attack", key, seconds)  # uncached attacks count too (key None: a new entry per call)
        out = _with_certified(pd.DataFrame(table)[COLUMNS], model, test_ds, certify)  # as from the cache
        out.attrs["seconds"] = seconds  # the attack's compute time (the original one when loaded from the cache)
        return out


def _with_certified(table: pd.DataFrame, model: nn.Module, test_ds, certify: bool = True) -> pd.DataFrame:
    """The attack table with a `certified_radius` column: the local certified L2 radius of each attacked sample for
    one-hidden-layer MLPs (a lower bound on Δx: every attack distance must lie above it), NaN for other models.
    Computed from the model on every call (≈ 5 ms per MNIST sample), so cached attack tables gain it too."""
    if not (certify and bounds.supports(model)):
        return table.assign(**{CERTIFIED: np.nan})
    idx = torch.as_tensor(table["index"].to_numpy(dtype=np.int64, copy=True))
    radius = bounds.certified_radius(model, test_ds.x[idx], test_ds.y[idx])
    return table.assign(**{CERTIFIED: radius.numpy()})


# The conventions of readout re-training (SPEC §4): what the logistic regression is fitted on, and scikit-learn's
# settings. 'reference' is the authors' code (their ContrastiveWrap: LogisticRegression() with its defaults on
# the raw hidden activations φ(W₁x + b₁) of the training set); 'scaled' is repspec's earlier fit on Φ = φ/√n with
# max_iter 1000 (for an MLP the same as a ≈ n× stronger L2 penalty). For models whose Φ has no 1/√n (ResNets) the
# two fit the same features and differ only in max_iter.
REFIT_CONVENTIONS: dict[str, dict] = {
    "reference": {"features": "raw", "C": 1.0, "max_iter": 100},
    "scaled": {"features": "phi", "C": 1.0, "max_iter": 1000},
}
REFIT_DEFAULT = "reference"


def check_refit_settings(convention: str, C: float | None = None, max_iter: int | None = None) -> dict:
    """The settings of a re-fit convention with overrides, checked: ValueError naming a bad value."""
    if convention not in REFIT_CONVENTIONS:
        raise ValueError(f"unknown re-fit convention {convention!r}; choose one of {sorted(REFIT_CONVENTIONS)}")
    out = dict(REFIT_CONVENTIONS[convention])
    if C is not None:
        if isinstance(C, bool) or not isinstance(C, (int, float)) or not math.isfinite(C) or C <= 0:
            raise ValueError(f"the re-fit's C (inverse L2 strength) must be a finite number > 0, got {C!r}")
        out["C"] = float(C)
    if max_iter is not None:
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"the re-fit's max_iter must be an integer >= 1, got {max_iter!r}")
        out["max_iter"] = int(max_iter)
    return out


def raw_feature_scale(model: nn.Module) -> float:
    """Φ = s · (raw hidden activations): s = 1/√n for a repspec MLP (`MLP.feature_scale`), 1 for other models."""
    return float(getattr(model, "feature_scale", 1.0))


def refit_readout(model: nn.Module, train_ds, test_ds, C: float | None = None, max_iter: int | None = None,
                  standardize: bool = False, batch_size: int = 4096, convention: str = REFIT_DEFAULT):
    """Readout re-training: freeze Φ, fit multinomial L2 logistic regression (lbfgs) on the training set.

    `convention` (REFIT_CONVENTIONS) chooses the features and scikit-learn's settings: 'reference' (default, the
    authors' code) fits LogisticRegression's defaults (C = 1, max_iter = 100) on the raw hidden activations
    (Φ/s, `raw_feature_scale`); 'scaled' fits Φ itself with max_iter 1000. `C` / `max_iter` override the
    convention's. Returns (RefitModel, test accuracy); the RefitModel's `features` is a frozen copy of Φ (the
    original model is untouched) and its `readout` an nn.Linear on Φ holding the fitted coefficients (a fit on
    Φ/s is folded in as W/s). `standardize=True` fits on z-scored features and folds the scaling back into the
    Linear (W' = W/σ, b' = b − W'μ), which changes the L2 penalty's geometry. For two classes scikit-learn fits a
    binomial model; it is mapped exactly onto the 2-class multinomial one (C → 2C, W = [−w/2, w/2])."""
    from sklearn.linear_model import LogisticRegression

    from .models import RefitModel

    settings = check_refit_settings(convention, C, max_iter)
    n_classes = int(getattr(train_ds, "n_classes", int(train_ds.y.max()) + 1))
    scale = raw_feature_scale(model) if settings["features"] == "raw" else 1.0
    feats = (features(model, train_ds.x, batch_size).double() / scale).cpu().numpy()
    labels = train_ds.y.cpu().numpy()
    mu = feats.mean(0) if standardize else np.zeros(feats.shape[1])
    sd = feats.std(0) if standardize else np.ones(feats.shape[1])
    sd = np.where(sd > 0, sd, 1.0)
    classes = np.unique(labels)
    binary = classes.size == 2
    c = settings["C"]
    clf = LogisticRegression(C=2 * c if binary else c, max_iter=settings["max_iter"], solver="lbfgs")
    clf.fit((feats - mu) / sd, labels)
    coef, intercept = clf.coef_, clf.intercept_
    if binary:
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    W = np.zeros((n_classes, feats.shape[1]))
    b = np.full(n_classes, -1e4)  # a class absent from the training labels is never predicted
    W[clf.classes_], b[clf.classes_] = coef / sd / scale, intercept - (coef / sd) @ mu
    readout = nn.Linear(feats.shape[1], n_classes).to(_device(model), _dtype(model))
    with torch.no_grad():
        readout.weight.copy_(torch.from_numpy(W))
        readout.bias.copy_(torch.from_numpy(b))
    refit = RefitModel(copy.deepcopy(model), readout).eval()
    return refit, accuracy(refit, test_ds, batch_size)


# ----------------------------------------------------------------------------------------------------
# White-box robust accuracy at fixed L∞ budgets (issue 13): PGD and AutoAttack
# ----------------------------------------------------------------------------------------------------
WHITEBOX_VERSION = 1
AUTOATTACK_HINT = ("AutoAttack comes from torchattacks, installed without its dependencies (its requests pin "
                   "conflicts with JupyterLab's, and it never imports requests): "
                   "pip install --no-deps 'torchattacks==3.5.1' (scripts/setup.sh does this)")


class _AsImage(nn.Module):
    """A flat-input model seen as an image model (torchattacks' Square attack needs (N, C, H, W))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.flatten(1))


def _image_shape(d: int) -> tuple[int, int, int]:
    side = int(round(d ** 0.5))
    return (1, side, side) if side * side == d else (1, 1, d)


def autoattack_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, seed: int = 0,
                        version: str = "standard", batch_size: int = 500) -> tuple[float, Tensor]:
    """Robust accuracy under AutoAttack (Croce & Hein 2020; torchattacks' implementation: APGD-CE, APGD-T, FAB-T,
    Square at `version='standard'`) at L∞ radius ε, inputs in [0, 1]: (fraction of samples still classified
    correctly, per-sample bool). Flat inputs are shown to it as (N, 1, H, W) images. ImportError with the install
    line when torchattacks is missing."""
    if int(n_classes) < 4:
        raise ValueError(f"AutoAttack's targeted DLR loss needs at least 4 classes, got {n_classes}")
    try:
        import torchattacks
    except ImportError as err:
        raise ImportError(AUTOATTACK_HINT) from err
    flat = x.dim() == 2
    net = _AsImage(model) if flat else model
    xs = x.reshape(x.shape[0], *_image_shape(x.shape[1])) if flat else x
    robust = torch.zeros(x.shape[0], dtype=torch.bool)
    with _eval_mode(net):
        attack = torchattacks.AutoAttack(net, norm="Linf", eps=float(eps), version=version, n_classes=int(n_classes),
                                         seed=int(seed))
        for s in range(0, x.shape[0], batch_size):
            xb, yb = xs[s:s + batch_size], y[s:s + batch_size]
            adv = attack(xb, yb)
            with torch.no_grad():
                robust[s:s + batch_size] = (net(adv).argmax(1) == yb).cpu()
    return robust.double().mean().item(), robust


def _whitebox_key(cache_key: dict, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa):
    """The cache key and path of one white-box evaluation (`whitebox_robustness`)."""
    key = cache.make_key(kind="whitebox", model=cache_key, eps=[float(e) for e in eps], n=int(n), seed=seed,
                         pgd_steps=int(pgd_steps), autoattack_eps=autoattack_eps,
                         autoattack_n=None if autoattack_eps is None else n_aa,
                         data=[getattr(test_ds, "name", None), len(test_ds.y), _identity(test_ds)], version=WHITEBOX_VERSION)
    return key, cache.cache_root() / "whitebox" / f"{key}.pt"


def whitebox_is_cached(cache_key: dict, test_ds, eps: list, n: int, seed: int = 0, pgd_steps: int = 40,
                       autoattack_eps: float | None = None, autoattack_n: int | None = None) -> bool:
    """Whether `whitebox_robustness` with these arguments would load its values from the cache (the executor
    submits only the evaluations that are not)."""
    n_aa = int(n) if autoattack_n is None else int(autoattack_n)
    return _whitebox_key(cache_key, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa)[1].exists()


def whitebox_robustness(model: nn.Module, test_ds, eps: list, n: int, seed: int = 0, pgd_steps: int = 40,
                        autoattack_eps: float | None = None, autoattack_n: int | None = None,
                        cache_key: dict | None = None, batch_size: int = 4096) -> dict:
    """White-box robust accuracy of a model on the first n test samples of a seeded shuffle (every sample, not
    only the correctly classified ones: a misclassified sample counts as broken): `pgd_acc_eps=<ε>` for each ε
    (L∞ PGD, uniform random start, `pgd_steps` steps of 2.5ε/steps, one restart) and, with `autoattack_eps`,
    `autoattack_acc` (AutoAttack standard at that ε, on the first `autoattack_n` of the n samples; None: all n).
    Cached under `cache_key` like the attack tables. -> dict of those values with `n_eval`, `clean_acc_eval`
    (accuracy on the same samples), `n_autoattack` and `seconds`."""
    box = check_box(test_ds.box)
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= len(test_ds.y):
        raise ValueError(f"n must be an integer in [1, {len(test_ds.y)}] (the test set's size), got {n!r}")
    width = box[1] - box[0]
    for e in [*eps, *([] if autoattack_eps is None else [autoattack_eps])]:
        if not 0 <= float(e) <= width:
            raise ValueError(f"every ε must lie in [0, {width:g}] (the box's width), got {e!r}")
    if isinstance(pgd_steps, bool) or int(pgd_steps) != pgd_steps or pgd_steps < 1:
        raise ValueError(f"pgd_steps must be an integer >= 1, got {pgd_steps!r}")
    n_aa = int(n) if autoattack_n is None else int(autoattack_n)
    if autoattack_eps is not None and not 1 <= n_aa <= n:
        raise ValueError(f"autoattack_n must be an integer in [1, n={n}], got {autoattack_n!r}")
    path = None
    if cache_key is not None:
        key, path = _whitebox_key(cache_key, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa)
        stored = cache.load(path)
        if stored is not None:
            cache.note_compute("whitebox", key, stored["seconds"])
            return stored
    t0 = time.perf_counter()
    idx = torch.randperm(len(test_ds.y), generator=torch.Generator().manual_seed(int(seed)))[:int(n)]
    dev = _device(model)
    x, y = test_ds.x[idx].to(dev), test_ds.y[idx].to(dev)
    out = {"n_eval": int(n), "clean_acc_eval": (predict(model, x, batch_size) == y).double().mean().item()}
    for j, e in enumerate(eps):
        out[f"pgd_acc_eps={float(e):g}"] = _attacks.robust_accuracy(model, x, y, float(e), box, steps=int(pgd_steps),
                                                                   seed=int(seed) + j, max_batch=batch_size)
    if autoattack_eps is not None:
        n_classes = check_model_output(model, test_ds.x[:2])
        out["autoattack_acc"] = autoattack_accuracy(model, x[:n_aa], y[:n_aa], autoattack_eps, n_classes,
                                                    seed=seed)[0]
        out["n_autoattack"] = n_aa
    out["seconds"] = time.perf_counter() - t0
    if path is not None:
        cache.save(out, path)
        cache.note_compute("whitebox", key, out["seconds"])
    return out
