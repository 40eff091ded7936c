"""Figs 6–8 recipes (CIFAR ResNet18, Barlow Twins, transfer): configs, method/strength keys, tables and claims."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from repspec_utils import training
from repspec_utils.analysis import plotting as PL
from repspec_utils.analysis import tables
from repspec_utils.experiments import recipes as R
from repspec_utils.experiments import run
from repspec_utils.training import TrainConfig, loop


# ------------------------------------------------------------------------------------------------ data
def test_cifar_data_routes_sizes_and_subsets():
    assert R.cifar_data("cifar10") == {"dataset": "cifar10", "data_kwargs": {}, "n_train": None}
    assert R.cifar_data("cifar10", n_train=1000) == {"dataset": "cifar10", "data_kwargs": {}, "n_train": 1000}
    assert R.cifar_data("cifar10_synthetic", n_train=300, n_test=0) == \
        {"dataset": "cifar10_synthetic", "data_kwargs": {"n_train": 300}, "n_train": None}
    small = R.cifar_data("cifar10_synthetic", image_size=16, n_train=64, n_test=32)
    assert small == {"dataset": "transfer_cifar10_synthetic",
                     "data_kwargs": {"image_size": 16, "n_train": 64, "n_test": 32}, "n_train": None}
    # a test subset of real CIFAR-10 needs the subsetting loader, even at 32 px
    assert R.cifar_data("cifar10", n_test=500)["dataset"] == "transfer_cifar10"
    with pytest.raises(ValueError, match="dataset must be one of"):
        R.cifar_data("svhn")
    with pytest.raises(ValueError, match="image_size"):
        R.cifar_data("cifar10", image_size=4)


def test_synthetic_cifar_through_the_configs_is_labelled(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path / "data"))
    cfg = R.cifar_configs("cifar10_synthetic", seeds=[0], image_size=16, n_train=20, n_test=10)[0]
    train_ds, test_ds = training.load_training_data(cfg)
    assert train_ds.x.shape == (20, 3, 16, 16) and test_ds.x.shape == (10, 3, 16, 16)
    assert train_ds.synthetic and test_ds.synthetic and train_ds.source.startswith("SYNTHETIC STAND-IN")


# --------------------------------------------------------------------------------------------- configs
def test_cifar_configs_follow_the_recipe():
    cfgs = R.cifar_configs(seeds=[0, 1], weight_decays=[0.0, 1e-4])
    assert len(cfgs) == 2 * 2 * 4  # weight decays x seeds x (None, ll, rep, rep on 2 stages)
    for c in cfgs:
        training.validate(c)
        assert c.model == {"kind": "cifar_resnet18"} and c.augment == "cifar" and c.dataset == "cifar10"
        assert (c.lr, c.batch_size, c.epochs, c.burn_in, c.reg_every) == (0.01, 1024, 200, 160, 24)
        assert c.reg_epoch_end_step and c.lr_schedule == "constant"
    lam = {(c.method, c.max_layer): c.lam for c in cfgs}
    assert lam == {("none", None): 0.0, ("ll", None): 0.005, ("rep", None): 0.01, ("rep", 2): 0.01}
    # every method of one seed and weight decay branches from the same burn-in checkpoint
    same = [c for c in cfgs if c.seed == 1 and c.weight_decay == 1e-4]
    assert len({loop.phase_key(c, "base", "data") for c in same}) == 1 and len({loop.phase_key(c, "final", "data") for c in same}) == 4


def test_barlow_configs():
    cfgs = R.barlow_configs(seeds=[3], lams=[0.01, 0.001])
    assert [(c.method, c.lam) for c in cfgs] == [("none", 0.0), ("rep", 0.01), ("rep", 0.001)]
    for c in cfgs:
        training.validate(c)
        assert c.objective == "barlow" and c.model["kind"] == "barlow_resnet18" and c.seed == 3
        assert (c.epochs, c.burn_in, c.batch_size, c.reg_every, c.reg_epoch_end_step) == (1000, 900, 1024, 24, True)


def test_transfer_configs_paper_recipe():
    cfgs = R.transfer_configs("stanford_dogs", seeds=[0])
    got = [(c.method, c.lam, c.method_kwargs, c.reg_every, c.reg_epoch_end_step) for c in cfgs]
    assert got == [("none", 0.0, {}, 1, False),
                   ("l2sp", 1.0, {"alpha": 0.1, "beta": 0.01}, 1, False),
                   ("l2sp", 1.0, {"alpha": 0.01, "beta": 0.01}, 1, False),
                   ("bss", 0.01, {}, 1, False), ("bss", 0.001, {}, 1, False),
                   ("ll", 0.01, {}, 160, True), ("ll", 0.001, {}, 160, True),
                   ("rep", 0.01, {}, 160, True), ("rep", 0.001, {}, 160, True)]
    assert {(c.epochs, c.lr, c.burn_in, c.batch_size, c.backbone_lr_mult) for c in cfgs} == {(50, 0.005, 30, 64, 0.2)}
    # overrides apply; None keeps the recipe; reg_every only changes the spectral methods
    cf = R.transfer_configs("cifar10", seeds=[0], epochs=None, lr=None, reg_every=7, burn_in=5)
    assert {(c.epochs, c.lr, c.burn_in) for c in cf} == {(50, 0.01, 5)}
    assert {c.method: c.reg_every for c in cf} == {"none": 1, "l2sp": 1, "bss": 1, "ll": 7, "rep": 7}
    with pytest.raises(ValueError, match="unknown transfer methods"):
        R.transfer_configs("cifar10", methods=("none", "dropout"))
    with pytest.raises(ValueError, match="standin_weights"):
        R.transfer_configs("standin")


def test_transfer_configs_standin(tmp_path):
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"not a real checkpoint; configs only hash it")
    cfgs = R.transfer_configs("standin", seeds=[0, 1], spectral_lams=[0.01], bss_lams=[0.001], l2sp_alphas=[0.1],
                              standin_weights=weights, epochs=4, burn_in=2, lr=0.1, reg_every=None, n_per_class=7)
    assert len(cfgs) == 2 * 5 and {c.dataset for c in cfgs} == {"transfer_standin"}
    assert {(c.epochs, c.burn_in, c.lr, c.data_kwargs["n_per_class"]) for c in cfgs} == {(4, 2, 0.1, 7)}
    assert {c.method: (c.reg_every, c.reg_epoch_end_step) for c in cfgs} == \
        {"none": (1, False), "l2sp": (1, False), "bss": (1, False), "ll": (1, True), "rep": (1, True)}
    assert all(c.model["weights_md5"] == cfgs[0].model["weights_md5"] for c in cfgs)


# ------------------------------------------------------------------------------------ keys and labels
def _table(rows):
    return pd.DataFrame(rows, columns=["method", "lam", "max_layer", "method_kwargs"])


def test_settings_carry_method_kwargs_only_when_given():
    plain = run.settings(TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [4]}, method="rep", lam=0.1))
    assert "method_kwargs" not in plain
    l2sp = run.settings(TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [4]}, method="l2sp", lam=1.0,
                                  method_kwargs={"beta": 0.01, "alpha": 0.1}))
    assert l2sp["method_kwargs"] == "alpha=0.1, beta=0.01"


def test_method_setting_keys():
    t = _table([("none", 0.0, -1, None), ("ll", 0.005, -1, None), ("rep", 0.01, -1, None), ("rep", 0.01, 2, None),
                ("rep", 0.01, 0, None)])
    assert tables.method_setting(t).tolist() == ["none", "ll", "rep", "rep_stages2", "rep_stages0"]
    assert tables.method_setting(t, unit="layer").tolist() == ["none", "ll", "rep", "rep2", "rep"]
    assert tables.method_setting(t, strengths="always").tolist() == \
        ["none", "ll λ=0.005", "rep λ=0.01", "rep_stages2 λ=0.01", "rep_stages0 λ=0.01"]
    t = _table([("none", 0.0, -1, None), ("rep", 0.01, -1, None), ("rep", 0.001, -1, None),
                ("l2sp", 1.0, -1, "alpha=0.1, beta=0.01"), ("l2sp", 1.0, -1, "alpha=0.01, beta=0.01"),
                ("bss", 0.01, -1, None), ("ll", 0.01, -1, None)])
    assert tables.method_setting(t).tolist() == ["none", "rep λ=0.01", "rep λ=0.001", "l2sp α=0.1 β=0.01",
                                            "l2sp α=0.01 β=0.01", "bss", "ll"]
    assert tables.method_setting(t, strengths="always")[5] == "bss η=0.01"
    assert tables.method_setting(t, strengths="never").tolist() == ["none", "rep", "rep", "l2sp", "l2sp", "bss", "ll"]
    with pytest.raises(ValueError):
        tables.method_setting(t, strengths="some")


def test_plotting_reads_variant_keys():
    assert PL.method_label("rep_stages2") == "rep-spectral (2 stages)"
    assert PL.method_label("rep λ=0.01") == "rep-spectral λ=0.01"
    assert PL.method_label("l2sp α=0.1 β=0.01") == "L2-SP α=0.1 β=0.01"
    for key in ("rep λ=0.01", "rep_stages2 λ=0.01", "bss η=0.01", "rep1", "none"):
        label = PL.method_label(key)
        assert PL.method_label(label) == label and PL._method_key(label) == key  # labels round-trip to keys
    assert PL.method_color("rep λ=0.001") == PL.method_color("rep-spectral λ=0.01") == PL.method_color("rep")
    assert PL.method_color("rep_stages2") not in (PL.method_color("rep"), PL.method_color("ll"))
    order = PL.method_order(["rep λ=0.01", "rep_stages2", "ll", "rep λ=0.001", "l2sp α=0.1 β=0.01", "none", "bss"])
    assert order == ["none", "l2sp α=0.1 β=0.01", "bss", "ll", "rep_stages2", "rep λ=0.01", "rep λ=0.001"]
    assert PL.method_order(["rep", "rep2", "none", "rep1", "ll"]) == ["none", "ll", "rep1", "rep2", "rep"]


def test_method_distribution_with_variant_keys():
    import matplotlib.pyplot as plt

    models = pd.DataFrame({"variant": ["none", "rep λ=0.01", "rep λ=0.001", "rep_stages2"] * 2,
                           "test_acc": np.linspace(0.5, 0.9, 8)})
    ax = PL.plot_method_distribution(models, x="variant", y="test_acc")
    # long labels are wrapped onto lines; the order and the words are what this checks
    assert [t.get_text().replace("\n", " ") for t in ax.get_xticklabels()] == \
        ["None", "rep-spectral (2 stages)", "rep-spectral λ=0.01", "rep-spectral λ=0.001"]
    plt.close("all")


# ------------------------------------------------------------------------------------ tables, claims
def test_l2sp_strengths_stay_separate_models(tmp_path, monkeypatch):
    """Two L2-SP α on the same seed are two models in per_model (method_kwargs is a setting column), which keeps
    the data source; a short real run on sklearn's digits."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    base = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [16], "init_std": 0.3}, lr=0.5,
                       batch_size=64, epochs=2, burn_in=1)
    cfgs = [base, *[base.replace(method="l2sp", lam=1.0, method_kwargs={"alpha": a, "beta": 0.01}) for a in (1.0, 0.1)]]
    results = R.train_all(cfgs, progress=False, device="cpu")
    samples = run.robustness_table(results, n=2, attack_kwargs={"T": 2, "init_probes": 10}, progress=False)
    models = tables.per_model(samples)
    assert len(models) == 3 and sorted(models.method_kwargs.fillna("")) == ["", "alpha=0.1, beta=0.01",
                                                                            "alpha=1, beta=0.01"]
    assert models.data_source.notna().all() and models.data_source.nunique() == 1
    variants = tables.method_setting(models)
    assert sorted(variants) == ["l2sp α=0.1 β=0.01", "l2sp α=1 β=0.01", "none"]
    assert (run.attacked_predictions(results, samples) == samples.label.to_numpy()).all()


def _fig_models(spec):
    """models.csv rows: spec {(method, lam, kwargs): (distances per seed, accuracy)}."""
    rows = []
    for (method, lam, kw), (ds, acc) in spec.items():
        for seed, d in enumerate(ds):
            rows.append({"method": method, "lam": lam, "method_kwargs": kw, "seed": seed, "max_layer": -1,
                         "weight_decay": 1e-4, "mean_distance": d, "test_acc": acc})
    return pd.DataFrame(rows)


def test_claims_compare_rep_with_none_and_every_baseline(tmp_path):
    from repspec_utils.analysis.claims import claims_table

    fig6 = tmp_path / "fig6_cifar_resnet"  # ll and rep at different λ, None at 0: ll's only λ is used
    fig6.mkdir()
    m = _fig_models({("none", 0.0, None): ([2.0, 2.2, 2.1], 0.9), ("ll", 0.005, None): ([1.0, 1.1, 1.2], 0.9),
                     ("rep", 0.01, None): ([1.5, 1.6, 1.7], 0.9)})
    m = pd.concat([m, m[m.method == "rep"].assign(max_layer=2, mean_distance=[3.0, 3.0, 3.0])])  # 2-stage variant
    m.to_csv(fig6 / "models.csv", index=False)
    fig8 = tmp_path / "fig8_transfer"  # several strengths per method
    fig8.mkdir()
    _fig_models({("none", 0.0, None): ([1.0, 1.0, 1.05], 0.8),
                 ("l2sp", 1.0, "alpha=0.1, beta=0.01"): ([1.2, 1.2, 1.25], 0.8),
                 ("l2sp", 1.0, "alpha=0.01, beta=0.01"): ([1.4, 1.4, 1.45], 0.8),
                 ("bss", 0.01, None): ([1.1, 1.1, 1.15], 0.8), ("ll", 0.01, None): ([1.3, 1.3, 1.35], 0.8),
                 ("ll", 0.001, None): ([1.6, 1.6, 1.66], 0.8),
                 ("rep", 0.01, None): ([1.5, 1.5, 1.56], 0.8), ("rep", 0.001, None): ([1.7, 1.7, 1.75], 0.8)}
                ).to_csv(fig8 / "models.csv", index=False)
    for folder in (fig6, fig8):  # the claims table reads only what a run that ended ok wrote
        (folder / "manifest.json").write_text('{"profile": "cpu", "status": "ok"}')
    table = claims_table(tmp_path)
    six = table[table.figure == "fig6_cifar_resnet"].set_index("baseline")
    assert sorted(six.index) == ["ll λ=0.005", "none"]  # the 2-stage group has no baseline to compare with
    assert six.loc["none", "verdict"] == "fails" and six.loc["none", "distance baseline"].startswith("2.1")
    assert six.loc["ll λ=0.005", "verdict"] == "holds"
    eight = table[table.figure == "fig8_transfer"]
    strong = eight[eight.rep == "rep λ=0.01"].set_index("baseline")
    weak = eight[eight.rep == "rep λ=0.001"].set_index("baseline")
    assert len(strong) == len(weak) == 4  # none, l2sp, bss, ll
    # rep λ=0.01 (1.5) against ll at the same λ (1.3) and L2-SP at its most robust α (1.4): holds
    assert strong.loc["ll λ=0.01", "verdict"] == "holds"
    l2sp = strong.loc[[b for b in strong.index if b.startswith("l2sp")][0]]
    assert l2sp.name.startswith("l2sp α=0.01 β=0.01") and l2sp.verdict == "holds"  # the strength used is named
    # rep λ=0.001 (1.7) against ll at λ=0.001 (1.6): holds
    ll = weak.loc["ll λ=0.001"]
    assert ll.verdict == "holds" and ll["distance baseline"].startswith("1.6")
