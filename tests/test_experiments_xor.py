"""The 2-D experiment tables (XOR, noisy XOR, sin): method variants, closed-form field tables, and their plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from repspec_utils.analysis import plotting as PL
from repspec_utils.analysis import tables
from repspec_utils.evaluation import geometry as G
from repspec_utils.experiments import recipes as R
from repspec_utils.experiments import run
from repspec_utils.models import MLP
from repspec_utils.training import TrainConfig, TrainResult


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _result(method: str, seed: int, width: int = 5) -> TrainResult:
    """An untrained 2→width→2 MLP with O(1) weights (a non-degenerate metric) dressed as a TrainResult."""
    model = MLP(2, [width], 2, init_std=1.0, seed=seed)
    cfg = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [width]}, method=method, seed=seed)
    return TrainResult(model, pd.DataFrame(), cfg, f"key-{method}-{seed}", 0.0, "test")


def test_method_variant():
    table = pd.DataFrame({"method": ["none", "ll", "rep", "rep", "rep"], "max_layer": [-1, -1, -1, 1, 2]})
    assert tables.method_variant(table).tolist() == ["none", "ll", "rep", "rep1", "rep2"]
    assert PL.method_order(["rep", "rep2", "none", "rep1", "ll"]) == ["none", "ll", "rep1", "rep2", "rep"]
    assert PL.method_label("rep1") == "rep-spectral (layer 1)" and PL.method_color("rep2") != PL.method_color("rep")
    ub = pd.DataFrame({"method": ["rep_ub", "rep_ub", "ll_readout"], "max_layer": [-1, 2, -1]})
    assert tables.method_variant(ub).tolist() == ["rep_ub", "rep_ub2", "ll_readout"]  # the authors' rep, ablated too
    assert PL.method_label("rep_ub2").endswith("(layers 1–2)") and PL.method_label("rep_ub") != PL.method_label("rep")


def test_torch_default_init_matches_nn_linear():
    """init='torch' draws nn.Linear's default distribution U(±1/√fan_in) for weights and biases, from the seed;
    the default stays N(0, init_std²) (the committed models' init)."""
    net = MLP(200, [300, 300], 10, seed=3, init="torch")
    for layer in [*net.hidden, net.readout]:
        bound = 1 / np.sqrt(layer.in_features)
        assert layer.bias.abs().max() <= bound and layer.weight.abs().max() <= bound
        assert layer.weight.abs().max() > 0.99 * bound  # thousands of draws reach the edge
        # uniform on (−b, b): standard deviation b/√3 (nn.Linear's own layer as the reference)
        ref = torch.nn.Linear(layer.in_features, layer.out_features)
        assert layer.weight.std().item() == pytest.approx(ref.weight.std().item(), rel=0.05)
        assert layer.weight.std().item() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    again = MLP(200, [300, 300], 10, seed=3, init="torch")
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), again.parameters()))
    normal = MLP(200, [300], 10, seed=3)
    assert normal.hidden[0].weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="unknown init"):
        MLP(2, [3], 2, init="xavier")


def test_sin_deep_inits_are_separate_models():
    cfgs = R.sin_configs(widths=[[8], [8, 8, 8]], seeds=[0], methods=["none", "rep"], deep_ablation=[1],
                         deep_inits=["normal", "torch"], epochs=4, burn_in=2)
    widths = [run.settings(c)["width"] for c in cfgs]
    assert widths.count("8") == 2 and widths.count("8-8-8") == 3 and widths.count("8-8-8 (torch init)") == 3
    from repspec_utils.infra import cache
    torch_cfg = next(c for c in cfgs if c.model.get("init") == "torch")
    normal_cfg = next(c for c in cfgs if c.model["widths"] == [8, 8, 8] and "init" not in c.model
                      and c.method == torch_cfg.method and c.max_layer == torch_cfg.max_layer)
    assert cache.make_key(kind="train", cfg=torch_cfg) != cache.make_key(kind="train", cfg=normal_cfg)
    with pytest.raises(ValueError, match="deep_inits"):
        R.sin_configs(deep_inits=["kaiming"])


def test_batched_members_use_the_init():
    from repspec_utils.models import BatchedMLP

    b = BatchedMLP([4, 5], 2, [8, 8], 2, init="torch")
    for i, s in enumerate([4, 5]):
        single = MLP(2, [8, 8], 2, seed=s, init="torch")
        assert torch.equal(b.weights[0][i], single.hidden[0].weight)


def test_field_table_matches_autograd():
    """Closed-form log √det g and λ_max(g) against autograd on Φ; margin against the logits."""
    r = _result("rep", 3)
    pts = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    t = run.field_table([r], pts)
    model = r.model.double()
    assert list(t.columns[-5:]) == ["x1", "x2", "margin", "log_volume", "lambda_max"]
    assert (t.method == "rep").all() and (t.seed == 3).all() and len(t) == 7
    np.testing.assert_allclose(t.log_volume, G.log_volume_element(model, pts).numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(t.lambda_max, G.metric_lambda_max(model, pts).numpy(), rtol=1e-8)
    logits = model(pts).detach()
    np.testing.assert_allclose(t.margin, (logits[:, 1] - logits[:, 0]).numpy(), rtol=1e-10)
    assert (np.log(t.lambda_max) >= t.log_volume).all()  # λ_max ≥ √(λ_1 λ_2) = √det g
    assert "log_volume" not in run.field_table([r], pts, metric=False).columns


def test_grid_table_order_and_maps():
    results = [_result(m, 1) for m in ("rep", "none", "ll")]
    grid = run.grid_table(results, lim=1.5, n=6)
    xx, yy, _ = G.grid_2d(1.5, 6)
    assert len(grid) == 3 * 36
    one = grid[grid.method == "ll"]
    np.testing.assert_allclose(one.x1.to_numpy().reshape(6, 6), xx)
    np.testing.assert_allclose(one.x2.to_numpy().reshape(6, 6), yy)
    pts, labels = torch.tensor([[-1.0, -1.0], [1.0, 1.0]]), torch.tensor([0, 1])
    fig, axes = PL.plot_geometry_maps(grid, pts, labels)
    assert axes.shape == (3, 3)
    assert [a.get_title() for a in axes[0]] == ["(a) None", "(b) ll-spectral", "(c) rep-spectral"]
    assert [a.get_title() for a in axes[2]] == ["(g) None", "(h) ll-spectral", "(i) rep-spectral"]  # a letter each
    assert len(fig.axes) == 9 + 2  # one shared colour bar per metric row
    with pytest.raises(ValueError, match="one model per method"):
        PL.plot_geometry_maps(pd.concat([grid, grid[grid.method == "rep"]]), pts, labels)


def test_plot_boundaries_legend():
    xx, yy, pts = G.grid_2d(1.0, 30)
    margins = {"rep": pts[:, 0].numpy() - 0.2, "none": pts[:, 1].numpy(), "rep1": np.ones(900)}  # rep1: no boundary
    _, ax = plt.subplots()
    handles = PL.plot_boundaries(ax, xx, yy, margins, reference=pts[:, 0].numpy() + pts[:, 1].numpy())
    assert [h.get_label() for h in handles] == ["true boundary", "None", "rep-spectral (layer 1)", "rep-spectral"]
    assert len(ax.collections) == 3  # reference + the two models whose margin changes sign


def test_attack_summary_keeps_failed_models():
    """A model whose every attack failed keeps its row (NaN distance); failures, labels and distances per model."""
    base = {"dataset": "xor", "width": "3", "lam": 1e-3, "weight_decay": 0.0, "max_layer": -1, "epochs": 10,
            "burn_in": 5, "readout": "original", "attack": "tangent", "queries": 7}
    rows = [dict(base, method="rep", seed=1, label=l, distance=d, success=s, test_acc=1.0)
            for l, d, s in [(0, 0.5, True), (1, 0.7, True)]]
    rows += [dict(base, method="rep", seed=2, label=0, distance=np.inf, success=False, test_acc=0.5)] * 2
    rows += [dict(base, method="ll", seed=1, label=0, distance=d, success=s, test_acc=0.5)
             for d, s in [(0.2, True), (np.inf, False)]]
    out = tables.attack_summary(pd.DataFrame(rows)).set_index(["method", "seed"])
    assert len(out) == 3 and len(tables.per_model(pd.DataFrame(rows))) == 2
    assert out.loc[("rep", 1), ["n_attacked", "n_failed", "n_labels"]].tolist() == [2, 0, 2]
    assert out.loc[("rep", 1), "mean_distance"] == pytest.approx(0.6)
    assert out.loc[("rep", 2), "n_failed"] == 2 and np.isnan(out.loc[("rep", 2), "mean_distance"])
    assert out.loc[("ll", 1), "mean_distance"] == pytest.approx(0.2) and out.loc[("ll", 1), "test_acc"] == 0.5


def test_mean_sd_bars_positions():
    df = pd.DataFrame({"method": ["none", "rep", "rep"] * 2, "weight_decay": [0.0] * 3 + [1e-4] * 3,
                       "mean_distance": [0.7, 0.9, 1.0, 0.7, 0.8, 0.8]})
    _, ax = plt.subplots()
    drawn = PL.plot_mean_sd_bars(df, "mean_distance", by="weight_decay", ax=ax)
    centres = sorted(p.get_x() + p.get_width() / 2 for p in ax.patches)
    np.testing.assert_allclose(sorted(drawn.x), centres)
    assert drawn.n.tolist() == [1, 2, 1, 2]


def test_robustness_table_refuses_more_samples_than_are_correct(tmp_path, monkeypatch):
    """issue 12 item 4: n beyond the correctly classified samples raises, saying how many there are (no clamping);
    n=None attacks every correct one."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    r = _result("none", 3)
    with torch.no_grad():  # a boundary through the data: some XOR points wrong
        r.model.readout.weight.copy_(torch.tensor([[1.0] * 5, [-1.0] * 5]))
    n_correct = int((r.model(torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])).argmax(1)
                     == torch.tensor([0, 0, 1, 1])).sum())
    assert 0 < n_correct < 4
    with pytest.raises(ValueError, match=rf"n={n_correct + 1} .* only {n_correct} of its 4 test samples"):
        run.robustness_table([r], n=n_correct + 1, attack_kwargs={"T": 1}, progress=False)
    assert len(run.robustness_table([r], n=None, attack_kwargs={"T": 1}, progress=False)) == n_correct
