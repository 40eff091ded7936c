"""Re-fitted readouts (SPEC §5): freeze Φ, fit a multinomial L2 logistic regression on Φ(train), return Φ → new
head as a `RepModel`. Conventions: 'reference' (the authors' code: raw activations, scikit-learn's defaults C = 1,
lbfgs, max_iter 100; the default) and 'scaled' (activations / √n, max_iter 1000)."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from repspec_utils.evaluation.robustness import accuracy, features, model_device, model_float_dtype

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
                  standardize: bool = False, batch_size: int | None = None, convention: str = REFIT_DEFAULT):
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

    from repspec_utils.models.base import RefitModel

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
    readout = nn.Linear(feats.shape[1], n_classes).to(model_device(model), model_float_dtype(model))
    with torch.no_grad():
        readout.weight.copy_(torch.from_numpy(W))
        readout.bias.copy_(torch.from_numpy(b))
    refit = RefitModel(copy.deepcopy(model), readout).eval()
    return refit, accuracy(refit, test_ds, batch_size)
