"""The MNIST-family library pieces (Figs 4, 5, App. C–G): the closed-form MLP metric against autograd, Lanczos,
σ traces, conv σ tables, the digit-plane tables, attacked-sample predictions, histories and their plots."""

import copy
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from repspec_utils.analysis import plotting as PL
from repspec_utils.analysis import tables as analysis_tables
from repspec_utils.evaluation import geometry as G
from repspec_utils.experiments import run
from repspec_utils.infra import cache
from repspec_utils.models import MLP
from repspec_utils.training import TrainConfig, TrainResult, load_training_data


@pytest.fixture(autouse=True)
def _setup(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPSPEC_PROGRESS", "0")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    plt.close("all")


def _mlp(d: int, widths, seed: int = 0, scale: float = 1.0, activation: str = "gelu") -> MLP:
    """A float64 repspec MLP with O(1) weights (the N(0, 0.01²) init is too flat to test a metric)."""
    m = MLP(d, widths, 3, activation=activation, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale / math.sqrt(p.shape[-1]))
    return m


# ----------------------------------------------------------------------------------------- closed-form MLP metric
@pytest.mark.parametrize("widths", [[30], [25, 40], [12, 20, 16]])
@pytest.mark.parametrize("activation", ["gelu", "tanh"])
def test_mlp_jacobian_matches_autograd(widths, activation):
    m = _mlp(10, widths, activation=activation)
    x = torch.rand(7, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(G.mlp_feature_jacobian(m, x), G.feature_jacobian(m, x), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("widths", [[30], [25, 40], [6], [16, 5]])  # p ≥ d and p < d (det g = 0)
def test_mlp_metric_stats_matches_autograd(widths):
    m = _mlp(10, widths, seed=3)
    x = torch.rand(9, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lam, logvol = G.mlp_metric_stats(m, x)
    lam_ref, logvol_ref = G.metric_stats(m, x)
    assert lam.dtype == logvol.dtype == torch.float64 and lam.shape == logvol.shape == (9,)
    torch.testing.assert_close(lam, lam_ref, rtol=1e-9, atol=0)
    if widths[-1] < 10:
        assert torch.isneginf(logvol).all() and torch.isneginf(logvol_ref).all()
    else:
        torch.testing.assert_close(logvol, logvol_ref, rtol=1e-9, atol=1e-9)


def test_mlp_metric_stats_lanczos_branch(monkeypatch):
    """Above _EIG_MAX the top eigenvalue comes from Lanczos; same answer as eigvalsh; chunking changes nothing."""
    m = _mlp(12, [40], seed=5)
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lam_eig, logvol = G.mlp_metric_stats(m, x)
    monkeypatch.setattr(G, "_EIG_MAX", 4)
    lam_lanczos, logvol2 = G.mlp_metric_stats(m, x, chunk=4)
    torch.testing.assert_close(lam_lanczos, lam_eig, rtol=1e-8, atol=0)
    torch.testing.assert_close(logvol2, logvol, rtol=1e-14, atol=0)


def test_mlp_log_volume_survives_extreme_condition_numbers():
    """log √det g from QR of J stays accurate where g = JᵀJ is numerically singular (σ_min/σ_max = 1e-10)."""
    m = MLP(6, [8], 2, activation="tanh").double()
    U, _ = torch.linalg.qr(torch.randn(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    s = torch.logspace(0, -10, 6, dtype=torch.float64)
    with torch.no_grad():
        m.hidden[0].weight.copy_(U @ torch.diag(s) @ V.T)
        m.hidden[0].bias.zero_()
    x = torch.zeros(1, 6, dtype=torch.float64)  # z = 0: tanh′ = 1, so J = W/√8 exactly
    lam, logvol = G.mlp_metric_stats(m, x)
    expected = torch.log(s / math.sqrt(8)).sum()  # W's own float64 rounding moves σ_min = 1e-10 by ~1e-6 relative
    torch.testing.assert_close(logvol[0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(lam[0], torch.tensor(1 / 8, dtype=torch.float64), rtol=1e-12, atol=0)
    assert torch.linalg.cholesky_ex((m.hidden[0].weight.T @ m.hidden[0].weight) / 8)[1] != 0  # Cholesky fails here


def test_mlp_metric_rejects_other_models():
    with pytest.raises(TypeError, match="repspec MLP"):
        G.mlp_feature_jacobian(torch.nn.Linear(3, 3), torch.zeros(1, 3))


@pytest.mark.parametrize("gap", [1.0, 1e-3])
def test_lanczos_lambda_max_matches_eigvalsh(gap):
    gen = torch.Generator().manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(3, 300, 300, generator=gen, dtype=torch.float64))
    ev = torch.rand(3, 300, generator=gen, dtype=torch.float64)
    ev[:, 0] = 2.0
    ev[:, 1] = 2.0 - gap  # a clustered top when gap is small
    A = Q @ torch.diag_embed(ev) @ Q.mT
    torch.testing.assert_close(G.lanczos_lambda_max(A), torch.linalg.eigvalsh(A)[:, -1], rtol=1e-8, atol=0)
    small = A[0, :5, :5]
    torch.testing.assert_close(G.lanczos_lambda_max(small), torch.linalg.eigvalsh(small)[-1], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------- tables, XOR model
def _xor_result(method: str = "none", seed: int = 0) -> TrainResult:
    """A hand-set 2→4→2 GELU net that classifies the four XOR points correctly, dressed as a TrainResult."""
    m = MLP(2, [4], 2)
    with torch.no_grad():
        m.hidden[0].weight.copy_(torch.tensor([[5.0, 5.0], [-5.0, -5.0], [5.0, -5.0], [-5.0, 5.0]]))
        m.hidden[0].bias.zero_()
        m.readout.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]) * 2.0)
        m.readout.bias.zero_()
    cfg = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [4]}, method=method, seed=seed, epochs=2, burn_in=1)
    history = pd.DataFrame({"epoch": [1, 2], "phase": ["burn-in", method], "train_loss": [0.5, 0.4],
                            "penalty": [0.0, 0.0 if method == "none" else 1.0], "sigma_0": [1.0, 0.9],
                            "sigma_1": [2.0, 2.1]})
    return TrainResult(m, history, cfg, f"xor-{method}-{seed}", 0.0, "test")


def test_attacked_predictions_original_and_refit():
    results = [_xor_result("none"), _xor_result("rep")]
    tables = [run.robustness_table(results, n=None, attack_kwargs={"T": 2}, readout=ro) for ro in ("original", "refit")]
    table = pd.concat(tables, ignore_index=True)
    pred = run.attacked_predictions(results, table)
    assert pred.shape == (len(table),) and (pred >= 0).all()
    assert (pred == table["label"].to_numpy()).all()
    assert (table[table.readout == "original"].groupby("method").size() == 4).all()
    # a wrong label is seen: the predictions come from the models, not from the table
    bad = table.assign(label=1 - table["label"])
    assert (run.attacked_predictions(results, bad) != bad["label"].to_numpy()).all()


def test_history_table():
    results = [_xor_result(m, s) for m in ("none", "rep") for s in (0, 1)]
    h = run.history_table(results)
    assert len(h) == 8 and {"method", "seed", "epoch", "phase", "sigma_0", "sigma_1", "lam", "burn_in"} <= set(h.columns)
    assert (h.groupby(["method", "seed"]).size() == 2).all()


def test_plot_method_lines_draws_means_and_flat_baselines():
    df = pd.DataFrame({"method": ["none"] * 2 + ["rep"] * 4, "lam": [0.0, 0.0, 1e-3, 1e-3, 1e-2, 1e-2],
                       "y": [1.0, 3.0, 2.0, 4.0, 5.0, np.nan], "seed": [0, 1, 0, 1, 0, 1]})
    fig, ax = plt.subplots()
    drawn = PL.plot_method_lines(df, "lam", "y", ax=ax, logx=True, vlines=[1e-3], vline_label="mark")
    assert drawn.set_index(["method", "lam"])["mean"].to_dict() == {("none", 0.0): 2.0, ("rep", 1e-3): 3.0,
                                                                    ("rep", 1e-2): 5.0}
    assert any(line.get_linestyle() == "--" for line in ax.lines)  # None: a horizontal dashed line
    assert ax.get_xscale() == "log"


# ------------------------------------------------------------------------------------------- σ traces, conv σ
def test_sigma_trace_tracks_the_exact_norm():
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [32]}, method="ll", lam=1e-3, lr=0.1,
                      batch_size=128, seed=0, n_power_iter=1)
    cache.reset_compute()
    trace = run.sigma_trace(cfg, 12)
    assert cache.compute_summary()["sigma-trace"]["entries"] == 1  # timed for the footer
    assert len(trace) == 12 * 2 and sorted(trace.layer.unique()) == [0, 1] and (trace.method == "ll").all()
    assert (trace.sigma_power <= trace.sigma_exact * (1 + 1e-5)).all()
    assert (trace[trace.step == 0].rel_error.abs() < 1e-5).all()  # warm start from a converged power iteration
    many = run.sigma_trace(cfg.replace(n_power_iter=200, method="rep"), 5)
    assert len(many) == 5 and (many.rel_error.abs() < 1e-5).all()
    with pytest.raises(ValueError, match="spectral method"):
        run.sigma_trace(cfg.replace(method="none"), 2)


def test_sigma_trace_from_a_given_model_leaves_it_untouched():
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [16]}, method="rep", lam=1e-3, lr=0.5,
                      batch_size=64, seed=1)
    model = MLP(64, [16], 10, seed=3)
    before = [p.detach().clone() for p in model.parameters()]
    trace = run.sigma_trace(cfg, 3, model=model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert trace.sigma_exact.iloc[0] == pytest.approx(torch.linalg.matrix_norm(model.hidden[0].weight, 2).item(), rel=1e-6)


def test_conv_sigma_table_against_explicit_matrix():
    conv = run.conv_sigma_table([[2, 3, 3, 1, 6], [3, 4, 3, 2, 8], [16, 16, 3, 1, 16]])
    assert list(conv.stride) == [1, 2, 1] and conv.sigma_dense.isna().tolist() == [False, False, True]
    assert (conv.rel_error.abs() < 1e-4).all()
    dense = conv.dropna(subset=["sigma_dense"])
    np.testing.assert_allclose(dense.sigma_dense, dense.sigma_exact, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- digit plane
def _digits_results(width: int = 80):
    out = []
    for i, method in enumerate(("none", "ll", "rep")):
        cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [width]}, method=method, seed=0)
        model = MLP(64, [width], 10, seed=i)
        with torch.no_grad():
            model.hidden[0].weight.mul_(100.0 / (i + 1))  # O(1) weights, different per "method"
        out.append(TrainResult(model, pd.DataFrame(), cfg, f"digits-{method}", 0.0, "test"))
    return out


def test_digit_indices():
    _, test = load_training_data(TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [8]}))
    idx = run.digit_indices(test, (7, 6, 1))
    assert [int(test.y[i]) for i in idx] == [7, 6, 1]
    assert all((test.y[:i] != c).all() for i, c in zip(idx, (7, 6, 1)))  # the first of each class
    with pytest.raises(ValueError, match="class 11"):
        run.digit_indices(test, (11,))


def test_metric_plane_table_and_summary():
    results = _digits_results()
    cache.reset_compute()
    plane = run.metric_plane_table(results, n=4, n_edge=3)
    timed = cache.compute_summary()["metric"]  # the footer's 'metric … (3 models)'
    assert timed["entries"] == 3 and timed["unrecorded"] == 0 and timed["seconds"] > 0
    assert len(plane) == 3 * (16 + 9) and set(plane.part) == {"grid", "edge"}
    assert np.isfinite(plane[["lambda_max", "log_volume"]].to_numpy()).all() and (plane.lambda_max > 0).all()
    edge = plane[(plane.part == "edge") & (plane.method == "none")]
    np.testing.assert_allclose(edge[["a", "b"]].to_numpy()[[0, 3, 6]], G.DIGIT_PLANE_COORDS, atol=1e-6)
    assert edge.position.tolist() == pytest.approx([0, 0.5, 1, 1, 1.5, 2, 2, 2.5, 3])
    # the same numbers as the singular values of the autograd Jacobian at those points (float64)
    _, test = load_training_data(results[0].config)
    x1, x2, x3 = (test.x[i] for i in run.digit_indices(test))
    pts = G.digit_plane(x1, x2, x3, n=4).points
    sv = torch.linalg.svdvals(G.feature_jacobian(copy.deepcopy(results[0].model).double(), pts.double()))
    grid = plane[(plane.part == "grid") & (plane.method == "none")]
    np.testing.assert_allclose(grid.lambda_max, (sv[:, 0] ** 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(grid.log_volume, sv.log().sum(-1).numpy(), rtol=1e-6)
    summary = analysis_tables.metric_plane_summary(plane)
    assert sorted(summary.method) == ["ll", "none", "rep"] and (summary.n_seeds == 1).all()
    row = summary.set_index("method").loc["none"]
    assert row.lambda_max_mean_plane == pytest.approx(grid.lambda_max.mean())
    assert row.log_volume_peak_edges == pytest.approx(edge.log_volume.max())
    fig, maps, edges = PL.plot_metric_plane(plane)
    assert maps.shape == (2, 3) and len(edges) == 2


def test_metric_plane_narrow_features_give_minus_inf_volume():
    plane = run.metric_plane_table(_digits_results(width=20)[:1], n=3, n_edge=2)
    assert np.isneginf(plane.log_volume).all() and np.isfinite(plane.lambda_max).all()
