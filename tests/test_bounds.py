"""Certified radii (repspec_utils.evaluation.bounds) against exact references.

References: for an MLP with the identity activation, F is linear and Δx = min_k m_k/‖∇m_k‖ exactly (the local bound
is tight there: ρ = 0); with W₁ a multiple of an orthogonal matrix the global bound is tight too. For any net, no
certified radius may exceed the distance of a point a white-box attack (FMN) shows to be adversarial, and in one
dimension the true Δx is found by root-finding, which catches a wrong Lipschitz constant (GELU's is 1.1289, not 1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repspec_utils.attacks import fmn_attack
from repspec_utils.data import get_data
from repspec_utils.evaluation import bounds, robustness
from repspec_utils.models import MLP, RefitModel, activation_derivative

BIG_BOX = (-50.0, 50.0)


def _linear_reference(m: MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact Δx of the identity-activation MLP: min over k of the margin over the norm of the margin's gradient."""
    W = (m.readout.weight.double() @ m.hidden[0].weight.double()) / math.sqrt(m.widths[0])
    logits = m.double()(x.double()).detach()
    out = []
    for i in range(len(y)):
        out.append(min(((logits[i, y[i]] - logits[i, k]) / (W[y[i]] - W[k]).norm()).item()
                       for k in range(W.shape[0]) if k != y[i]))
    return torch.tensor(out, dtype=torch.float64)


def _identity_mlp(d=6, n=9, c=4, seed=1) -> MLP:
    return MLP(d, [n], c, activation="identity", init_std=1.0, seed=seed).double()


def test_local_radius_is_exact_on_a_linear_net():
    m = _identity_mlp()
    x = torch.randn(60, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = m(x).argmax(1)
    ref = _linear_reference(m, x, y)
    local = bounds.certified_radius(m, x, y, rtol=1e-10)
    assert torch.allclose(local, ref, rtol=1e-8, atol=0)
    glob = bounds.certified_radius(m, x, y, method="global")
    assert (glob <= ref * (1 + 1e-12)).all() and (glob < 0.999 * ref).any()  # a random W₁ is not orthogonal


def test_global_radius_is_exact_when_w1_is_orthogonal():
    m = _identity_mlp(d=5, n=5, c=3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    with torch.no_grad():
        m.hidden[0].weight.copy_(2.5 * q)
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = m(x).argmax(1)
    assert torch.allclose(bounds.certified_radius(m, x, y, method="global"), _linear_reference(m, x, y), rtol=1e-10)


def test_radius_slightly_above_the_certified_one_is_broken_by_fmn_on_a_linear_net():
    """Tightness: on the linear net a white-box search finds an adversarial point within 0.1 % of the certificate."""
    m = _identity_mlp(d=8, n=12, c=5, seed=7).float()
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(8))
    y = m(x).argmax(1)
    r = bounds.certified_radius(m, x, y, rtol=1e-9)
    found = fmn_attack(m, x, y, box=BIG_BOX).distance.double()
    assert (found <= r * 1.001).all()
    assert (found >= r * (1 - 1e-4)).all()  # and nothing closer exists (float32 forward: 1e-4 slack)


def test_gelu_lipschitz_constant_and_derivative_ranges():
    z = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    for act in ("gelu", "relu", "tanh", "softplus", "identity"):
        d = activation_derivative(act)(z)
        assert bounds.derivative_bound(act) >= d.abs().max().item() - 1e-12
        if act != "softplus":  # sigmoid only tends to its supremum 1
            assert bounds.derivative_bound(act) <= d.abs().max().item() + 1e-6  # attained: no slack
    assert bounds.derivative_bound("gelu") == pytest.approx(1.1289, abs=1e-4)
    gen = torch.Generator().manual_seed(0)
    for act in ("gelu", "tanh", "softplus", "relu"):
        a = torch.randn(300, generator=gen, dtype=torch.float64) * 3
        b = a + torch.rand(300, generator=gen, dtype=torch.float64) * 4
        low, high = bounds.derivative_range(act, a, b)
        t = torch.linspace(0, 1, 4001, dtype=torch.float64)
        vals = activation_derivative(act)(a[:, None] + (b - a)[:, None] * t)
        assert (low <= vals.min(1).values + 1e-12).all() and (high >= vals.max(1).values - 1e-12).all()
        if act != "relu":  # continuous φ′: the range is attained (up to the sampling)
            assert torch.allclose(low, vals.min(1).values, atol=1e-5)
            assert torch.allclose(high, vals.max(1).values, atol=1e-5)


def test_one_dimensional_gelu_net_never_certifies_beyond_the_true_distance():
    """One GELU unit at z = √2, where |φ′| peaks at 1.1289: the true Δx ≈ m/(1.1289|v|); a bound with L = 1 (or
    without the 1/√n of the readout) would certify past it."""
    m = MLP(1, [1], 2, init_std=1.0, seed=0).double()
    with torch.no_grad():
        m.hidden[0].weight.fill_(1.0)
        m.hidden[0].bias.fill_(0.0)
        m.readout.weight.copy_(torch.tensor([[0.0], [-1.0]], dtype=torch.float64))
        # margin F_0 − F_1 = gelu(z) + b_0 − b_1, zero at z slightly below √2
        m.readout.bias.copy_(torch.tensor([-F.gelu(torch.tensor(math.sqrt(2) - 1e-3, dtype=torch.float64)).item(),
                                           0.0], dtype=torch.float64))
    x = torch.tensor([[math.sqrt(2)]], dtype=torch.float64)
    y = torch.tensor([0])
    assert m(x).argmax(1).item() == 0
    lo, hi = 0.0, 1e-3 + 1e-9  # bisection for the boundary point x − t in float64
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if m(x - mid).argmax(1).item() == 0 else (lo, mid)
    true = hi
    for method in bounds.METHODS:
        r = bounds.certified_radius(m, x, y, method=method, rtol=1e-9).item()
        assert 0 < r <= true
    assert bounds.certified_radius(m, x, y, rtol=1e-9).item() > 0.99 * true  # the local bound is tight here


def _digits_mlp(seed: int, width: int = 64, steps: int = 300):
    train, test = get_data("digits", seed=0)
    g = torch.Generator().manual_seed(seed)
    m = MLP(train.x.shape[1], [width], 10, init_std=0.1, seed=seed)
    opt = torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        idx = torch.randint(0, len(train.y), (128,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(train.x[idx]), train.y[idx]).backward()
        opt.step()
    return m.eval(), test


@pytest.mark.parametrize("trained", [True, False])
def test_certified_radius_never_exceeds_fmn_and_local_beats_global(trained):
    if trained:
        m, test = _digits_mlp(0)
        x, y = test.x, test.y
    else:
        m = MLP(20, [50], 5, init_std=1.0, seed=2)
        x = torch.randn(300, 20, generator=torch.Generator().manual_seed(5))
        y = m(x).argmax(1)
    keep = m(x).argmax(1) == y
    x, y = x[keep], y[keep]
    assert len(y) >= 200
    local = bounds.certified_radius(m, x, y)
    glob = bounds.certified_radius(m, x, y, method="global")
    found = fmn_attack(m, x, y, box=BIG_BOX).distance.double()
    assert (glob > 0).all() and (local >= glob).all()
    assert (local <= found * (1 + 1e-5)).all()  # float32 forward of the attack: tiny slack
    assert (local > 1.2 * glob).float().mean() > 0.5  # the local bound is worth its cost


def test_refit_model_misclassified_samples_and_bad_input():
    m, test = _digits_mlp(1, steps=100)
    readout = torch.nn.Linear(64, 10)
    refit = RefitModel(m, readout)
    pred = refit(test.x).argmax(1)
    r = bounds.certified_radius(refit, test.x[:50], pred[:50])
    assert (r > 0).all()
    wrong = (pred[:50] + 1) % 10
    assert (bounds.certified_radius(refit, test.x[:50], wrong) == 0).all()
    with pytest.raises(TypeError, match="one-hidden-layer"):
        bounds.certified_radius(MLP(4, [3, 3], 2, seed=0), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        bounds.certified_radius(m, test.x[:3], torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match="samples"):
        bounds.certified_radius(m, test.x[:3], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="features"):
        bounds.certified_radius(m, torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="method"):
        bounds.certified_radius(m, test.x[:3], test.y[:3], method="tight")


def test_evaluate_robustness_adds_the_certified_radius_below_every_attack_distance():
    m, test = _digits_mlp(2)
    table = robustness.evaluate_robustness(m, test, n=40, attack="tangent", attack_kwargs={"T": 10}, progress=False)
    assert robustness.CERTIFIED in table.columns
    assert np.isfinite(table.certified_radius).all() and (table.certified_radius > 0).all()
    assert (table.certified_radius <= table.distance).all()
    deep = MLP(64, [16, 16], 10, init_std=0.5, seed=0)
    table = robustness.evaluate_robustness(deep, test, n=5, attack="fmn", attack_kwargs={"steps": 20}, progress=False)
    assert table.certified_radius.isna().all()  # not a one-hidden-layer MLP: no certificate, said as NaN


def _models_table(cert_gain: float, attack_gain: float, noise: float = 0.0) -> "pd.DataFrame":
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        base = {"dataset": "mnist", "width": "2000", "weight_decay": 1e-4, "readout": "original", "seed": seed,
                "test_acc": 0.95}
        c0, a0 = 1.0 + 0.1 * seed, 2.0 + 0.1 * seed
        wobble = np.exp(noise * rng.standard_normal())
        rows.append({**base, "method": "none", "certified_radius": c0, "certified_global": c0 / 2,
                     "fmn_distance": a0, "ta_distance": 1.2 * a0})
        rows.append({**base, "method": "rep", "certified_radius": c0 * cert_gain * wobble,
                     "certified_global": c0 / 2, "fmn_distance": a0 * attack_gain, "ta_distance": 1.2 * a0 * attack_gain})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("cert_gain, attack_gain, noise, expected", [(1.3, 1.1, 0.01, "holds"),
                                                                      (1.05, 1.2, 0.01, "fails"),
                                                                      (1.1, 1.1, 0.3, "inconclusive")])
def test_bound_claims_pair_the_gains_by_seed(cert_gain, attack_gain, noise, expected):
    from repspec_utils.analysis import claims, tables

    models = _models_table(cert_gain, attack_gain, noise)
    gains = tables.bound_gains(models, "none")
    cert = gains[(gains.quantity == "certified_radius")].gain
    if noise == 0.01:
        assert np.allclose(cert, cert_gain, rtol=0.05)  # the gain is per seed, against the same seed's None
    rows = claims.bound_claims(models, {"claim": 7, "figure": "x", "test": "t", "profile": "cpu"})
    assert {r["test"] for r in rows} == {"t (Tangent Attack)", "t (FMN)"}
    assert all(r["verdict"] == expected for r in rows), rows
    assert all(r["n_seeds"] == 5 for r in rows)
    with pytest.raises(ValueError, match="baseline"):
        tables.bound_gains(models, "ll")


@pytest.mark.slow
def test_mnist_scale_certificates_never_exceed_fmn():
    """Slow (≈ 2 min; `pytest -m slow`): on the real 784→2000→10 MNIST MLP shape, briefly trained, the local
    certificate of 300 test images stays below FMN's distance, above the global one, and takes seconds."""
    import time

    try:
        train_ds, test_ds = get_data("mnist")
    except Exception as exc:  # noqa: BLE001 - no data on this machine: say so instead of passing
        pytest.skip(f"MNIST not available ({exc}); run bash scripts/fetch_data.sh")
    m = MLP(784, [2000], 10, seed=0)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(train_ds.y), (256,), generator=g)
        opt.zero_grad()
        F.cross_entropy(m(train_ds.x[idx]), train_ds.y[idx]).backward()
        opt.step()
    m.eval()
    x, y = test_ds.x[:400], test_ds.y[:400]
    keep = m(x).argmax(1) == y
    x, y = x[keep][:300], y[keep][:300]
    t0 = time.perf_counter()
    local = bounds.certified_radius(m, x, y)
    seconds = time.perf_counter() - t0
    glob = bounds.certified_radius(m, x, y, method="global")
    found = fmn_attack(m, x, y, box=(0.0, 1.0), steps=100).distance.double()
    assert (local >= glob).all() and (local <= found * (1 + 1e-5)).all()
    assert seconds < 10, seconds
