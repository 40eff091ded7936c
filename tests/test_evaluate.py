"""evaluate.py: accuracy, the robustness table (selection, cache, bad input) and readout re-training."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import Counting
from torch import nn

from repspec_utils import attacks as A
from repspec_utils.data import ArrayDataset, get_data
from repspec_utils.evaluation import refit as evaluation_refit
from repspec_utils.evaluation import robustness
from repspec_utils.infra import cache
from repspec_utils.models import MLP, RefitModel, RepModel


@pytest.fixture(scope="module")
def digits():
    """sklearn digits (real), and an MLP(64, [32], 10) trained 300 steps: test accuracy ≈ 0.9, not 1."""
    train, test = get_data("digits", seed=0)
    m = MLP(64, [32], 10, seed=0)
    opt = torch.optim.SGD(m.parameters(), lr=2.0, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        i = torch.randint(0, len(train), (64,), generator=g)
        loss = F.cross_entropy(m(train.x[i]), train.y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m, train, test


def test_accuracy_and_predict(digits):
    m, _, test = digits
    with torch.no_grad():
        manual = (m(test.x).argmax(1) == test.y).double().mean().item()
    assert robustness.accuracy(m, test, batch_size=37) == pytest.approx(manual, abs=1e-12)
    assert torch.equal(robustness.predict(m, test.x, batch_size=50), m(test.x).argmax(1))
    assert 0.8 < manual < 1.0  # some misclassified samples exist for the next test


def test_robustness_table_attacks_only_correct_samples(digits):
    m, _, test = digits
    df = robustness.evaluate_robustness(m, test, 10, seed=4, attack="tangent", attack_kwargs=dict(T=5), progress=False)
    assert list(df.columns) == ["index", "label", "distance", "queries", "success", "attack", "certified_radius"]
    assert len(df) == 10 and (df.attack == "tangent").all() and df.success.all()
    pred = robustness.predict(m, test.x)
    idx = torch.tensor(df["index"].to_numpy())
    assert (pred[idx] == test.y[idx]).all()  # misclassified samples are never attacked
    assert (df.label.values == test.y[idx].numpy()).all()
    # the first 10 correctly classified after the seeded shuffle, in that order; with seed 4 two misclassified
    # samples come first in the shuffle and are skipped
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(4))
    expected = perm[(pred == test.y)[perm]][:10]
    assert torch.equal(idx, expected)
    assert (pred[perm[:12]] != test.y[perm[:12]]).sum() == 2
    assert np.isfinite(df.distance).all() and (df.distance > 0).all()
    # deterministic
    df2 = robustness.evaluate_robustness(m, test, 10, seed=4, attack="tangent", attack_kwargs=dict(T=5), progress=False)
    pd.testing.assert_frame_equal(df, df2)


def test_misclassified_in_shuffle_are_skipped(digits):
    m, _, test = digits
    pred = robustness.predict(m, test.x)
    wrong = (pred != test.y).nonzero()[:, 0]
    assert wrong.numel() > 0
    n = int((pred == test.y).sum())
    idx = robustness.select_correct(m, test, n, seed=1)
    assert set(idx.tolist()).isdisjoint(wrong.tolist()) and len(set(idx.tolist())) == n


def test_cache_reloads_instead_of_recomputing(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path))
    m, _, test = digits
    key = {"model": "digits-mlp", "seed": 0}
    wrapped = Counting(m)
    kw = dict(T=3, max_queries=2000)
    first = robustness.evaluate_robustness(wrapped, test, 4, attack="hsj", attack_kwargs=kw, cache_key=key, progress=False)
    assert list(tmp_path.rglob("*.pt"))
    wrapped.calls = wrapped.rows = 0
    again = robustness.evaluate_robustness(wrapped, test, 4, attack="hsj", attack_kwargs=kw, cache_key=key, progress=False)
    pd.testing.assert_frame_equal(first, again)
    assert wrapped.calls == 1 and wrapped.rows <= 2  # only the output-shape check
    # the reloaded table reports the attack's original compute time, not the time the reload took
    assert first.attrs["seconds"] > 0 and again.attrs["seconds"] == first.attrs["seconds"]
    other = robustness.evaluate_robustness(wrapped, test, 4, attack="hsj", attack_kwargs=dict(T=2), cache_key=key,
                                  progress=False)
    assert wrapped.rows > 1000  # different kwargs: a different entry, recomputed
    assert (other.queries < first.queries).all()


def test_n_larger_than_correct_raises_before_attacking(digits, monkeypatch):
    m, _, test = digits
    n_correct = int((robustness.predict(m, test.x) == test.y).sum())

    def boom(*a, **k):
        raise AssertionError("attack must not run")

    monkeypatch.setitem(A.ATTACKS, "tangent", boom)
    with pytest.raises(ValueError, match=rf"n={n_correct + 1}.*only {n_correct} of {len(test)}"):
        robustness.evaluate_robustness(m, test, n_correct + 1, progress=False)


def _duck(x, y, box):
    return SimpleNamespace(x=x, y=y, box=box, name="duck", n_classes=2)


@pytest.mark.parametrize("case", ["box_order", "outside", "budget", "attack", "n_zero"])
def test_bad_input_raises_before_any_model_call(case):
    model = Counting(nn.Linear(2, 2))
    x = torch.rand(6, 2)
    y = torch.zeros(6, dtype=torch.long)
    ds, kw = _duck(x, y, (0.0, 1.0)), {}
    n, attack = 2, "tangent"
    if case == "box_order":
        ds = _duck(x, y, (1.0, 0.0))
    elif case == "outside":
        ds = _duck(x + 2, y, (0.0, 1.0))
    elif case == "budget":
        kw = {"max_queries": 0}
    elif case == "attack":
        attack = "pgd"
    elif case == "n_zero":
        n = 0
    with pytest.raises(ValueError):
        robustness.evaluate_robustness(model, ds, n, attack=attack, attack_kwargs=kw, progress=False)
    assert model.calls == 0


@pytest.mark.parametrize("out", ["vector", "3d", "one_class"])
def test_model_output_shape_checked_with_one_small_call(out):
    class Bad(nn.Module):
        def forward(self, x):
            z = torch.stack([x.sum(1), -x.sum(1)], 1)
            return {"vector": z[:, 0], "3d": z[:, :, None], "one_class": z[:, :1]}[out]

    model = Counting(Bad())
    ds = _duck(torch.rand(6, 2), torch.zeros(6, dtype=torch.long), (0.0, 1.0))
    with pytest.raises(ValueError, match="logits"):
        robustness.evaluate_robustness(model, ds, 2, progress=False)
    assert model.calls == 1 and model.rows <= 2


class Blobs(RepModel):
    """Φ = a fixed random linear map + tanh of 2-D inputs; a useless head that always says class 0."""

    def __init__(self, n_classes):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(2, 16)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(16, 2, generator=g))
            self.lin.bias.copy_(torch.randn(16, generator=g) * 0.1)
        self.readout = nn.Linear(16, n_classes)
        with torch.no_grad():
            self.readout.weight.zero_()
            self.readout.bias.copy_(torch.eye(n_classes)[0])

    def features(self, x):
        return torch.tanh(self.lin(x))

    def feature_layers(self, max_layer=None):
        return [self.lin]


def blobs(n_classes, n_per, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.stack([torch.tensor([math.cos(a), math.sin(a)]) for a in
                           torch.arange(n_classes) * 2 * math.pi / n_classes]) * 1.2
    y = torch.arange(n_classes).repeat_interleave(n_per)
    x = (centres[y] + 0.15 * torch.randn(len(y), 2, generator=g)).clamp(-2, 2)
    return ArrayDataset(x=x.float(), y=y, name="blobs", source="synthetic test blobs", box=(-2.0, 2.0),
                        n_classes=n_classes)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("standardize", [False, True])
def test_refit_readout(n_classes, standardize):
    from sklearn.linear_model import LogisticRegression

    model = Blobs(n_classes)
    before = copy.deepcopy(model.state_dict())
    grads = [p.requires_grad for p in model.parameters()]
    train, test = blobs(n_classes, 60, 0), blobs(n_classes, 40, 1)
    refit, acc = evaluation_refit.refit_readout(model, train, test, C=1.0, standardize=standardize)
    assert acc >= 0.95 and acc == pytest.approx(robustness.accuracy(refit, test))
    assert robustness.accuracy(model, test) == pytest.approx(1 / n_classes)  # the old head was useless
    assert isinstance(refit, RepModel) and isinstance(refit.readout, nn.Linear)
    with torch.no_grad():
        assert torch.equal(refit(test.x), refit.readout(refit.features(test.x)))
        assert torch.equal(refit.features(test.x), model.features(test.x))
    for k, v in model.state_dict().items():  # the original Φ and head are unchanged
        assert torch.equal(v, before[k])
    assert [p.requires_grad for p in model.parameters()] == grads
    assert not any(p.requires_grad for p in refit.base.parameters())
    # the head is the scikit-learn fit (multinomial; binomial with C → 2C for two classes), mapped exactly
    with torch.no_grad():
        feats = model.features(train.x).double().numpy()
        probs = torch.softmax(refit(test.x).double(), 1).numpy()
        tf = model.features(test.x).double().numpy()
    if not standardize:
        clf = LogisticRegression(C=2.0 if n_classes == 2 else 1.0, max_iter=1000).fit(feats, train.y.numpy())
        assert np.allclose(probs, clf.predict_proba(tf), atol=1e-5)


def test_refit_model_is_attackable(digits):
    m, train, test = digits
    small_train = train.subset(slice(0, 600))
    refit, acc = evaluation_refit.refit_readout(m, small_train, test, max_iter=300)
    assert isinstance(refit, RefitModel) and acc > 0.5
    df = robustness.evaluate_robustness(refit, test, 3, attack="tangent", attack_kwargs=dict(T=3), progress=False)
    assert df.success.all()


def test_fmn_table(digits):
    m, _, test = digits
    df = robustness.evaluate_robustness(m, test, 4, attack="fmn", attack_kwargs=dict(steps=30), progress=False)
    assert (df.attack == "fmn").all() and df.success.all()


def test_compute_ledger_counts_cached_entries_once_and_every_uncached_attack(digits, tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path))
    m, _, test = digits
    kw = dict(T=2, max_queries=500)
    cache.reset_compute()
    for _ in range(2):  # one cache entry, used twice: one ledger entry
        robustness.evaluate_robustness(m, test, 2, attack="hsj", attack_kwargs=kw, cache_key={"m": 0}, progress=False)
    assert cache.compute_summary()["attack"]["entries"] == 1
    for _ in range(2):  # no cache key: computed on every call, each one counted
        robustness.evaluate_robustness(m, test, 2, attack="hsj", attack_kwargs=kw, progress=False)
    row = cache.compute_summary()["attack"]
    assert row["entries"] == 3 and row["unrecorded"] == 0 and row["seconds"] > 0


def test_an_interrupted_attack_resumes_at_its_first_unfinished_piece_with_identical_results(digits, tmp_path,
                                                                                          monkeypatch):
    """issue 12 item 9: a cached attack is computed in pieces of `chunk` samples, each cached when done; killed in
    the middle, the rerun attacks only the missing pieces and returns the table an uninterrupted run returns."""
    from repspec_utils import attacks as A

    m, _, test = digits
    kw = dict(n=12, seed=3, attack="tangent", attack_kwargs={"T": 3}, progress=False, chunk=5)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "whole"))
    whole = robustness.evaluate_robustness(m, test, cache_key={"model": "digits"}, **kw)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "killed"))
    calls = []
    real = A.ATTACKS["tangent"]

    def dies_on_the_second_piece(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setitem(A.ATTACKS, "tangent", dies_on_the_second_piece)
    with pytest.raises(KeyboardInterrupt):
        robustness.evaluate_robustness(m, test, cache_key={"model": "digits"}, **kw)
    assert len(list((tmp_path / "killed" / "attacks").glob("*.part0.pt"))) == 1  # the first piece is kept
    calls.clear()
    monkeypatch.setitem(A.ATTACKS, "tangent", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    resumed = robustness.evaluate_robustness(m, test, cache_key={"model": "digits"}, **kw)
    assert calls == [5, 2]  # pieces 1 and 2 only
    pd.testing.assert_frame_equal(resumed, whole)
    assert not list((tmp_path / "killed" / "attacks").glob("*.part*.pt"))  # pieces removed once the table is whole
    # n within one piece: the same key and the same table as before attacks were chunked (one call, the table's seed)
    one = robustness.evaluate_robustness(m, test, 5, seed=3, attack="tangent", attack_kwargs={"T": 3}, progress=False)
    rows = torch.as_tensor(one["index"].to_numpy(copy=True))
    direct = real(m, test.x[rows], test.y[rows],
                  test.box, T=3, seed=3, progress=False,
                  pool=(test.x[robustness.predict(m, test.x) == test.y], test.y[robustness.predict(m, test.x) == test.y]))
    assert np.allclose(one.distance.to_numpy(), direct.distance.double().numpy())


def test_more_samples_attack_only_the_new_ones_and_give_the_table_of_a_fresh_run(digits, tmp_path, monkeypatch):
    """Raising n (Fig 4: 200 → the paper's 1000 samples per model) reuses the whole pieces of the largest cached
    smaller table: only the new samples are attacked, and the table equals one computed from nothing."""
    from repspec_utils import attacks as A

    m, _, test = digits
    kw = dict(seed=3, attack="tangent", attack_kwargs={"T": 3}, progress=False, chunk=5, cache_key={"model": "d"})
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "fresh"))
    fresh = robustness.evaluate_robustness(m, test, 15, **kw)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "grown"))
    calls = []
    real = A.ATTACKS["tangent"]
    monkeypatch.setitem(A.ATTACKS, "tangent", lambda *a, **k: (calls.append((len(a[1]), k["seed"])), real(*a, **k))[1])
    small = robustness.evaluate_robustness(m, test, 5, **kw)  # one piece: the key of an unchunked table
    ten = robustness.evaluate_robustness(m, test, 10, **kw)
    assert calls == [(5, 3), (5, robustness._chunk_seed(3, 1))]  # n=10 attacked piece 1 only
    calls.clear()
    grown = robustness.evaluate_robustness(m, test, 15, **kw)
    assert calls == [(5, robustness._chunk_seed(3, 2))]  # pieces 0-1 from the n=10 table
    pd.testing.assert_frame_equal(grown, fresh)
    pd.testing.assert_frame_equal(ten, fresh.iloc[:10])
    pd.testing.assert_frame_equal(small, fresh.iloc[:5])
    calls.clear()  # another seed shuffles other samples: nothing to reuse
    robustness.evaluate_robustness(m, test, 10, **{**kw, "seed": 4})
    assert [c[0] for c in calls] == [5, 5]


def test_evaluation_passes_split_a_conv_net_into_small_calls_with_the_same_result():
    """predict / features / accuracy (the training loop's test accuracy too: one function): a conv net on the CPU
    is called with at most CONV_CALL_ROWS images (`models.call_rows`), without autograd, and gives what one call of
    everything gives; an MLP keeps the large calls."""
    from torch import nn

    from repspec_utils.data import ArrayDataset
    from repspec_utils.evaluation.robustness import accuracy, features, predict
    from repspec_utils.models import CONV_CALL_ROWS, RepModel, call_rows

    class Net(RepModel):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
            self.readout = nn.Linear(4 * 6 * 6, 3)
            self.sizes, self.grad = [], []

        def features(self, x):
            self.sizes.append(x.shape[0])
            self.grad.append(torch.is_grad_enabled())
            return self.body(x)

    net = Net()
    x = torch.rand(150, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (150,), generator=torch.Generator().manual_seed(1))
    ds = ArrayDataset(x, y, name="t", source="generated: test", box=(0.0, 1.0), n_classes=3)
    with torch.no_grad():
        whole = net(x)
    net.sizes.clear()
    assert torch.equal(predict(net, x), whole.argmax(1))
    torch.testing.assert_close(features(net, x), net.body(x).detach(), rtol=0, atol=0)
    acc = float((whole.argmax(1) == y).double().mean())
    assert accuracy(net, ds) == acc
    assert max(net.sizes) == CONV_CALL_ROWS and not any(net.grad)
    assert call_rows(nn.Sequential(nn.Linear(3, 3)), "cpu") == 4096 and call_rows(net, "cuda") == 4096
