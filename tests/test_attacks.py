"""Attacks against closed-form references and their contracts (queries, budgets, box, determinism).

Reference: for a linear classifier F(x) = Wx + b the minimal L2 adversarial distance of x (label y) is
Δx = min_{k≠y} (F_y − F_k)/‖w_y − w_k‖ when the box does not bind (here the box is [−10, 10] and every
point and every path stays well inside it).
Tolerances (measured, then given margin): 2-D two-class TA/HSJ ≤ 1e-3 relative (seen ≤ 5e-5: the only error
is the 1e-5 bisection); 784-D ten-class at T = 40: TA and HSJ ≤ 10% above Δx (seen 3–6% TA, 4–7% HSJ over
3 seeds), never below Δx − 1e-4 relative (float32); FMN ≤ 1e-3 (seen ≤ 2e-5).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import Counting
from torch import nn

from repspec_utils import attacks
from repspec_utils.attacks import tangent as attacks_tangent

BIG_BOX = (-10.0, 10.0)



# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def linear_model(d: int, c: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(d, c)
    with torch.no_grad():
        m.weight.copy_(torch.randn(c, d, generator=g) * 3 / math.sqrt(d))
        m.bias.copy_(torch.randn(c, generator=g))
    return m


def facet_distances(m: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sorted distances to each facet {F_y = F_k}, k ≠ y, computed in float64: (N, C − 1)."""
    W, b, x = m.weight.detach().double(), m.bias.detach().double(), x.double()
    Fx = x @ W.T + b
    r = (Fx.gather(1, y[:, None]) - Fx) / (W[y][:, None, :] - W[None]).norm(dim=2).clamp_min(1e-300)
    r[torch.arange(len(y)), y] = math.inf
    return r.sort(1).values[:, :-1]


def linear_case(d: int, c: int, n: int, seed: int, sep: float):
    """A linear model and n points whose nearest facet is at least `sep` times closer than the next one
    (so the minimum is unambiguous and local searches cannot settle on another facet)."""
    m = linear_model(d, c, seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(4000, d, generator=g)
    with torch.no_grad():
        y = m(x).argmax(1)
    fd = facet_distances(m, x, y)
    keep = (fd[:, 1] >= sep * fd[:, 0]) if c > 2 else torch.ones(len(y), dtype=torch.bool)
    keep = keep.nonzero()[:, 0][:n]
    return m, x[keep], y[keep], fd[keep, 0]


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP (64 → 32 → 10, GELU) trained for 300 steps on sklearn digits, and 12 test points."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(0, 1400, (64,), generator=g)
        loss = F.cross_entropy(m(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    xt, yt = x[1400:], y[1400:]
    with torch.no_grad():
        ok = m(xt).argmax(1) == yt
    assert ok.float().mean() > 0.85
    return m, xt[ok][:12], yt[ok][:12]


BLACK_BOX = [attacks.tangent_attack, attacks.hop_skip_jump]


# ----------------------------------------------------------------------------------------------------
# closed-form references
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", BLACK_BOX)
def test_linear_2d_two_class_exact(attack):
    m, x, y, dx = linear_case(2, 2, 12, seed=0, sep=1.0)
    r = attack(m, x, y, BIG_BOX, T=40, progress=False)
    assert r.success.all()
    rel = r.distance.double() / dx - 1
    assert rel.min() > -1e-5 and rel.max() < 1e-3, rel


@pytest.mark.parametrize("attack", BLACK_BOX)
def test_linear_784d_ten_class(attack):
    m, x, y, dx = linear_case(784, 10, 6, seed=0, sep=2.0)
    assert len(set(y.tolist())) >= 3
    r = attack(m, x, y, BIG_BOX, T=40, progress=False)
    assert r.success.all()
    rel = r.distance.double() / dx - 1
    assert rel.min() > -1e-4 and rel.max() < 0.10, rel


@pytest.mark.parametrize("d,c", [(2, 2), (784, 10)])
def test_fmn_linear_exact(d, c):
    m, x, y, dx = linear_case(d, c, 8, seed=1, sep=1.0)  # sep 1: FMN's targeted runs must find the nearest facet
    r = attacks.fmn_attack(m, x, y, BIG_BOX, steps=50)
    assert r.success.all()
    rel = r.distance.double() / dx - 1
    assert rel.min() > -1e-4 and rel.max() < 1e-3, rel


def test_tangent_point_geometry():
    """Closed-form tangent point: on the sphere, tangent from x0, on the adversarial hemisphere, and optimal:
    of all lines from x0 through the hemisphere, its line meets the plane {(z − xb)·u = 0} closest to x0."""
    g = torch.Generator().manual_seed(0)
    d = 3
    xb = torch.zeros(64, d, dtype=torch.float64)
    u = torch.randn(64, d, generator=g, dtype=torch.float64)
    u /= u.norm(dim=1, keepdim=True)
    x0 = torch.randn(64, d, generator=g, dtype=torch.float64) * 2
    x0 -= (2.5 * (x0 * u).sum(1, keepdim=True).abs() + 0.1) * u  # x0 on the benign side: (x0 − xb)·u < 0
    D = x0.norm(dim=1)
    for frac in [0.05, 0.3, 0.7, 1.0]:
        R = D * frac
        K = attacks_tangent._tangent_point(x0, xb, u, R)
        assert torch.allclose(K.norm(dim=1), R, rtol=1e-10)
        assert ((K * u).sum(1) >= -1e-12).all()  # on the adversarial hemisphere

        def crossing(P):  # where the line x0 → P meets the plane {z·u = 0}
            a0, a1 = (x0 * u).sum(1), (P * u).sum(1)
            return x0 + (a0 / (a0 - a1))[:, None] * (P - x0)

        best = (crossing(K) - x0).norm(dim=1)
        v = torch.randn(64, 4000, d, generator=g, dtype=torch.float64)  # random hemisphere points
        v /= v.norm(dim=2, keepdim=True)
        v = torch.where(((v * u[:, None]).sum(2) < 0)[..., None], -v, v) * R[:, None, None]
        a0, a1 = (x0 * u).sum(1)[:, None], (v * u[:, None]).sum(2)
        cross = x0[:, None] + (a0 / (a0 - a1))[..., None] * (v - x0[:, None])
        brute = (cross - x0[:, None]).norm(dim=2).min(1).values
        assert (best <= brute + 1e-9).all()
        tangent = (x0 * u).sum(1) * R + _b(x0, u) * (D**2 - R**2).clamp_min(0).sqrt() >= 0
        if tangent.any():  # proper tangent points: (K − xb)·(x0 − K) = 0
            assert torch.allclose((K * (x0 - K)).sum(1)[tangent], torch.zeros(int(tangent.sum()), dtype=K.dtype),
                                  atol=1e-9)


def _b(x0, u):
    return (x0 - (x0 * u).sum(1, keepdim=True) * u).norm(dim=1)


# ----------------------------------------------------------------------------------------------------
# contracts on a trained MLP
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", BLACK_BOX)
def test_query_count_exact_and_points_verified(attack, digits_mlp):
    m, x, y = digits_mlp
    wrapped = Counting(m)
    r = attack(wrapped, x, y, (0.0, 1.0), T=12, max_batch=512, progress=False)
    assert int(r.queries.sum()) == wrapped.rows  # every row a sample contributed counts once
    assert r.success.all()
    with torch.no_grad():
        assert (m(r.x_adv).argmax(1) != y).all()  # fresh call: each returned point is adversarial
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert torch.allclose(r.distance, (r.x_adv - x).flatten(1).norm(dim=1))


def test_budget_respected(digits_mlp):
    m, x, y = digits_mlp
    budget = torch.tensor([300, 700, 1500, 3000] * 3)
    wrapped = Counting(m)
    r = attacks.tangent_attack(wrapped, x, y, (0.0, 1.0), T=40, max_queries=budget, progress=False)
    assert (r.queries <= budget).all()
    assert int(r.queries.sum()) == wrapped.rows
    # a sample stops only when the next iteration (n_t probes + 1 step + 17 bisections) no longer fits
    n_t = torch.tensor([min(int(100 * math.sqrt(t)), 10000) for t in range(1, 41)])
    assert (budget - r.queries <= n_t.max() + 18 + 30).all()
    assert r.success.all()
    with torch.no_grad():  # adversarial: the true logit is not above the best other one, up to the rounding of a
        logits = m(r.x_adv)  # differently sized GEMM (the points sit on the boundary: a tie of 1e-4 was seen)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    assert (logits.gather(1, y[:, None]).squeeze(1) - other <= 1e-5 * logits.abs().amax(1)).all()
    full = attacks.tangent_attack(m, x, y, (0.0, 1.0), T=40, progress=False)
    assert r.distance.mean() > full.distance.mean()  # more queries, smaller distance


def test_white_box_below_black_box(digits_mlp):
    m, x, y = digits_mlp
    fmn = attacks.fmn_attack(m, x, y, (0.0, 1.0), steps=100)
    ta = attacks.tangent_attack(m, x, y, (0.0, 1.0), T=40, progress=False)
    hsj = attacks.hop_skip_jump(m, x, y, (0.0, 1.0), T=40, progress=False)
    assert fmn.success.all() and ta.success.all() and hsj.success.all()
    with torch.no_grad():
        assert (m(fmn.x_adv).argmax(1) != y).all()
    assert (fmn.distance <= ta.distance * 1.01).all()
    assert (fmn.distance <= hsj.distance * 1.01).all()
    assert fmn.x_adv.min() >= 0 and fmn.x_adv.max() <= 1


@pytest.mark.parametrize("attack", BLACK_BOX)
def test_same_seed_same_result(attack, digits_mlp):
    m, x, y = digits_mlp
    a = attack(m, x[:4], y[:4], (0.0, 1.0), T=5, seed=3, progress=False)
    b = attack(m, x[:4], y[:4], (0.0, 1.0), T=5, seed=3, progress=False)
    c = attack(m, x[:4], y[:4], (0.0, 1.0), T=5, seed=4, progress=False)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.queries, b.queries) and torch.equal(a.distance, b.distance)
    assert not torch.equal(a.x_adv, c.x_adv)


def test_fallback_start_from_other_sample():
    """Noise never flips a point far from the boundary: the start point is another sample of the other class."""
    m = nn.Linear(2, 2)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        m.bias.zero_()
    x = torch.tensor([[5.0, 0.0], [-5.0, 1.0]])
    y = torch.tensor([0, 1])
    wrapped = Counting(m)
    r = attacks.tangent_attack(wrapped, x, y, BIG_BOX, T=30, init_tries=5, progress=False)
    assert r.success.all()
    assert torch.allclose(r.distance, torch.tensor([5.0, 5.0]), rtol=1e-3)
    assert int(r.queries.sum()) == wrapped.rows
    lone = attacks.tangent_attack(m, x[:1], y[:1], BIG_BOX, T=3, init_tries=5, progress=False)  # nothing to fall back on
    assert not lone.success.any() and torch.isinf(lone.distance).all()
    assert torch.equal(lone.x_adv, x[:1]) and int(lone.queries[0]) == 5


@pytest.mark.parametrize("attack", BLACK_BOX)
@pytest.mark.parametrize("noise_std", [0.5, 1e-3])  # 1e-3: no noise start flips the label, every start is a fallback
def test_result_independent_of_batch_mates(attack, noise_std, digits_mlp):
    """With a pool given, a sample's result (start, path, distance, queries) does not depend on the other samples
    attacked in the same batch: its draws come from its own generator, the probes' only from the iteration."""
    m, x, y = digits_mlp
    pool = (x, y)
    kw = dict(T=4, seed=5, pool=pool, noise_std=noise_std, init_tries=3, progress=False)
    full = attack(m, x[:8], y[:8], (0.0, 1.0), **kw)
    part = attack(m, x[[6, 2, 11]], y[[6, 2, 11]], (0.0, 1.0), **kw)
    for a, b in ((6, 0), (2, 1)):  # the same path; equal up to the float rounding of differently sized GEMMs
        assert torch.allclose(full.x_adv[a], part.x_adv[b], rtol=0, atol=1e-5)
        assert full.distance[a] == pytest.approx(float(part.distance[b]), rel=1e-4)
        assert full.queries[a] == part.queries[b]


def test_fallback_keeps_closest_of_several_candidates():
    """No noise start flips the label: the start is the closest boundary point over the nearest other-label pool
    point and random ones, so it is never farther than the nearest alone and, here, strictly closer: the nearest
    other-label point lies straight across a far part of the boundary, a farther one across its nearest part."""
    m = nn.Linear(2, 2)
    with torch.no_grad():  # class 1 iff x₀ > 1 (boundary at x₀ = 1)
        m.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        m.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([0])
    # other-label pool points: (1.5, 3) is the nearest to x (‖·‖ 3.35) but its segment crosses x₀ = 1 at
    # distance 2.24; (6, 0) is farther (6) but its segment crosses at 1, the true minimum
    pool_x = torch.tensor([[1.5, 3.0], [6.0, 0.0], [7.0, 5.0], [8.0, -4.0], [-1.0, 0.0]])
    pool_y = torch.tensor([1, 1, 1, 1, 0])
    kw = dict(T=0, init_tries=2, noise_std=1e-3, pool=(pool_x, pool_y), progress=False)
    near = attacks.tangent_attack(m, x, y, BIG_BOX, fallback_random=0, **kw)
    several = attacks.tangent_attack(m, x, y, BIG_BOX, fallback_random=4, **kw)
    assert near.success.all() and several.success.all()
    assert near.distance[0] == pytest.approx(math.hypot(1.0, 2.0), rel=1e-4)
    assert several.distance[0] == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="fallback_random"):
        attacks.tangent_attack(m, x, y, BIG_BOX, fallback_random=-1, **kw)


def test_float64_model(digits_mlp):
    m, x, y = digits_mlp
    m64 = _copy(m).double()
    r = attacks.tangent_attack(m64, x[:3], y[:3], (0.0, 1.0), T=5, progress=False)
    assert r.x_adv.dtype == torch.float64 and r.success.all()


def _copy(m):
    import copy

    return copy.deepcopy(m)


# ----------------------------------------------------------------------------------------------------
# bad input raises before any query
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tangent", "hsj", "fmn"])
@pytest.mark.parametrize("case", ["box_order", "box_equal", "outside", "budget_zero", "budget_neg",
                                  "budget_float", "budget_len", "nan"])
def test_bad_input_raises_before_any_query(name, case, digits_mlp):
    m, x, y = digits_mlp
    wrapped = Counting(m)
    box, kw, xx = (0.0, 1.0), {}, x[:2].clone()
    if case == "box_order":
        box = (1.0, 0.0)
    elif case == "box_equal":
        box = (0.5, 0.5)
    elif case == "outside":
        xx[0, 0] = 1.5
    elif case == "budget_zero":
        kw["max_queries"] = 0
    elif case == "budget_neg":
        kw["max_queries"] = torch.tensor([100, -1])
    elif case == "budget_float":
        kw["max_queries"] = 1.5
    elif case == "budget_len":
        kw["max_queries"] = torch.tensor([100, 100, 100])
    elif case == "nan":
        xx[0, 0] = math.nan
    with pytest.raises(ValueError):
        attacks.run_attack(name, wrapped, xx, y[:2], box, **kw)
    assert wrapped.calls == 0


def test_unknown_attack_name():
    wrapped = Counting(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="unknown attack"):
        attacks.run_attack("boundary", wrapped, torch.zeros(1, 2), None, (0.0, 1.0))
    assert wrapped.calls == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda(digits_mlp):
    m, x, y = digits_mlp
    mc = _copy(m).cuda()
    r = attacks.tangent_attack(mc, x[:4].cuda(), y[:4].cuda(), (0.0, 1.0), T=10, progress=False)
    assert r.x_adv.is_cuda and r.success.all()
    with torch.no_grad():
        assert (mc(r.x_adv).argmax(1) != y[:4].cuda()).all()
    f = attacks.fmn_attack(mc, x[:4].cuda(), y[:4].cuda(), (0.0, 1.0), steps=20)
    assert f.success.all()


def test_default_labels_are_predictions(digits_mlp):
    """y=None: the label to leave is the model's prediction, one counted query per sample."""
    m, x, y = digits_mlp
    wrapped = Counting(m)
    r = attacks.hop_skip_jump(wrapped, x[:3], None, (0.0, 1.0), T=2, progress=False)
    assert int(r.queries.sum()) == wrapped.rows
    with torch.no_grad():
        assert (m(r.x_adv).argmax(1) != y[:3]).all()


@pytest.mark.parametrize("attack", [*BLACK_BOX, attacks.fmn_attack])
def test_labels_of_wrong_length_type_or_range_are_rejected(attack, digits_mlp):
    """issue 12 item 6: a label outside the model's classes would make every point 'adversarial' (distance 0)."""
    m, x, y = digits_mlp
    wrapped = Counting(m)
    with pytest.raises(ValueError, match="one label per sample"):
        attack(wrapped, x, y[:-1], (0.0, 1.0), progress=False)
    with pytest.raises(ValueError, match="integer class labels"):
        attack(wrapped, x, y.float(), (0.0, 1.0), progress=False)
    assert wrapped.calls == 0  # rejected before the model is called
    for bad in (10, -1):
        wrong = y.clone()
        wrong[0] = bad
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9 \(the model has 10 classes\)"):
            attack(wrapped, x, wrong, (0.0, 1.0), progress=False)
    assert wrapped.calls <= 2  # at the first model call, before any attack step


# ----------------------------------------------------------------------------------------------------
# L∞ PGD (issue 13's base) against a linear model's closed-form worst case
# ----------------------------------------------------------------------------------------------------
def test_pgd_reaches_the_linear_models_worst_case_margin():
    """For F = Wx + b the smallest margin F_y − F_k over the L∞ ball of radius ε is (F_y − F_k)(x) − ε‖w_y − w_k‖₁,
    at δ = −ε·sign(w_y − w_k) (the box [−10, 10] does not bind): targeted PGD must reach it exactly."""
    m = linear_model(20, 4, seed=3).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 20, generator=g, dtype=torch.float64)
    y = m(x).argmax(1)
    k = (y + 1) % 4
    eps = 0.05
    W = m.weight.detach()
    with torch.no_grad():
        before = m(x).gather(1, y[:, None])[:, 0] - m(x).gather(1, k[:, None])[:, 0]
    expected = before - eps * (W[y] - W[k]).abs().sum(1)
    for start in (False, True):
        r = attacks.pgd_linf(m, x, y, eps, BIG_BOX, steps=10, target=k, random_start=start, seed=1)
        with torch.no_grad():
            after = m(r.x_adv).gather(1, y[:, None])[:, 0] - m(r.x_adv).gather(1, k[:, None])[:, 0]
        assert torch.allclose(after, expected, atol=1e-9)
        assert (r.x_adv - x).abs().max() <= eps + 1e-12 and r.success[after < 0].all()  # k overtook y
    untargeted = attacks.pgd_linf(m, x, y, eps, BIG_BOX, steps=10)
    assert (untargeted.x_adv - x).abs().max() <= eps + 1e-12


def test_pgd_respects_the_box_and_rejects_bad_settings(digits_mlp):
    m, x, y = digits_mlp
    r = attacks.pgd_linf(m, x, y, 0.3, (0.0, 1.0), steps=5)
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1 and (r.x_adv - x).abs().max() <= 0.3 + 1e-6
    acc = attacks.robust_accuracy(m, x, y, 0.3, (0.0, 1.0), steps=5)
    assert 0 <= acc <= attacks.robust_accuracy(m, x, y, 0.0, (0.0, 1.0), steps=1) <= 1  # ε = 0 is the clean accuracy
    for bad, match in (({"eps": -0.1}, "eps"), ({"eps": 1.5}, "eps"), ({"steps": 0}, "steps"),
                       ({"alpha": 0.0}, "alpha")):
        kwargs = {"eps": 0.1, **bad}
        with pytest.raises(ValueError, match=match):
            attacks.pgd_linf(m, x, y, kwargs.pop("eps"), (0.0, 1.0), **kwargs)


# ----------------------------------------------------------------------------------------------------
# rows per model call
# ----------------------------------------------------------------------------------------------------
class _LargestCall(Counting):
    """Counting, plus the largest batch one call carried."""

    def __init__(self, model):
        super().__init__(model)
        self.largest = 0

    def forward(self, x):
        self.largest = max(self.largest, x.shape[0])
        return super().forward(x)


def _tiny_conv(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).eval()


def test_rows_per_call_follow_the_model():
    """None chooses: a conv net on the CPU gets small calls, an MLP (and any net on a GPU) large ones."""
    from repspec_utils.attacks.base import CONV_QUERY_ROWS, DENSE_QUERY_ROWS, query_rows

    assert CONV_QUERY_ROWS < DENSE_QUERY_ROWS
    assert query_rows(_tiny_conv(), "cpu") == CONV_QUERY_ROWS
    assert query_rows(_tiny_conv(), "cuda") == DENSE_QUERY_ROWS  # a device name: no GPU needed to ask
    assert query_rows(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), "cpu") == DENSE_QUERY_ROWS


@pytest.mark.parametrize("attack", BLACK_BOX)
def test_a_conv_nets_attack_asks_the_same_rows_in_smaller_calls(attack):
    """max_batch=None on a conv net: no call above CONV_QUERY_ROWS rows, and the same queries and distances as one
    call of up to 8192 rows (the chunking changes how rows are grouped, never which are asked)."""
    from repspec_utils.attacks.base import CONV_QUERY_ROWS

    net = _tiny_conv()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    small, large = _LargestCall(net), _LargestCall(net)
    a = attack(small, x, None, (0.0, 1.0), T=3, init_probes=40, progress=False)
    b = attack(large, x, None, (0.0, 1.0), T=3, init_probes=40, max_batch=8192, progress=False)
    assert small.largest <= CONV_QUERY_ROWS < large.largest
    assert small.rows == large.rows and torch.equal(a.queries, b.queries)
    torch.testing.assert_close(a.distance, b.distance, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="max_batch"):
        attack(net, x, None, (0.0, 1.0), T=1, max_batch=0, progress=False)
    with pytest.raises(ValueError, match="max_batch"):
        attack(net, x, None, (0.0, 1.0), T=1, max_batch=2.5, progress=False)
