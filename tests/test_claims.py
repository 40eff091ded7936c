"""The claims table: paired intervals computed exactly, the three-way verdict by its stated rule, every claim reported
and no failure hidden."""

import json

import numpy as np
import pandas as pd
import pytest

from repspec_utils.analysis import claims, results
from repspec_utils.analysis.claims import claims_table

# Student t 0.975 quantiles: 2 degrees of freedom in closed form, t = (2p − 1) / sqrt(2p(1 − p)); 3 from tables
T975_DF2 = 0.95 / np.sqrt(2 * 0.975 * 0.025)  # 4.3027
T975_DF3 = 3.182446305284


def _models(distances, accs, **extra):
    """models.csv rows: distances[method] per seed; accs[method] one value or one per seed."""
    rows = []
    for method, ds in distances.items():
        acc = accs[method]
        for seed, d in enumerate(ds):
            rows.append({"method": method, "lam": 0.0 if method == "none" else 0.001, "seed": seed, "width": "8",
                         "weight_decay": 0.0, "mean_distance": d,
                         "test_acc": acc[seed] if isinstance(acc, list) else acc, **extra})
    return pd.DataFrame(rows)


def _write(root, fig, models, manifest=None, samples=None):
    folder = root / fig
    folder.mkdir(exist_ok=True)
    models.to_csv(folder / "models.csv", index=False)
    if samples is not None:
        samples.to_csv(folder / "samples.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps(manifest or {"profile": "paper", "data_sources": ["xor"],
                                                                  "status": "ok"}))


def _row(table, fig, baseline):
    sub = table[(table.figure == fig) & table.baseline.astype(str).str.startswith(baseline)]
    assert len(sub) == 1, sub
    return sub.iloc[0]


def test_t_interval_matches_the_t_table():
    mean, lo, hi, n = claims.t_interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3)
    assert lo == pytest.approx(2.0 - T975_DF2 / np.sqrt(3), rel=1e-12)
    assert hi == pytest.approx(2.0 + T975_DF2 / np.sqrt(3), rel=1e-12)
    assert claims.t_interval([1.0, np.nan, 1.0, 1.0])[1:] == (1.0, 1.0, 3)  # NaN dropped, zero width
    m, lo, hi, n = claims.t_interval([5.0])
    assert m == 5.0 and np.isnan(lo) and np.isnan(hi) and n == 1
    lo90 = claims.t_interval([1.0, 2.0, 3.0], level=0.9)[1]
    assert 2.0 - T975_DF2 / np.sqrt(3) < lo90 < 2.0  # a lower level gives a narrower interval


@pytest.mark.parametrize("dist_ci, acc_ci, expected", [
    ((0.1, 0.3), (-0.001, 0.002), "holds"),
    ((0.1, 0.3), (-0.004, 0.01), "holds"),          # accuracy may be up to 0.5 points worse
    ((0.1, 0.3), (-0.006, 0.01), "inconclusive"),   # ... and its interval reaches below that
    ((0.1, 0.3), (-0.02, -0.006), "fails"),         # clearly worse accuracy
    ((-0.1, 0.3), (0.0, 0.0), "inconclusive"),      # distance interval straddles 0
    ((-0.3, -0.1), (0.0, 0.01), "fails"),           # rep is less robust
    ((np.nan, np.nan), (np.nan, np.nan), "inconclusive"),  # one seed: no interval
    (None, (0.1, 0.2), "holds"),                    # baseline without a boundary: accuracy decides
])
def test_verdict_rule(dist_ci, acc_ci, expected):
    assert claims.verdict(dist_ci, acc_ci, 0.005) == expected


def test_pairing_by_seed_and_the_interval_values(tmp_path):
    """Seeds differ a lot, but within each seed rep is 0.1 above None: the paired interval lies above 0 (an unpaired
    comparison of means would not see it), and its bounds are the t interval of the per-seed differences."""
    none = [1.0, 2.0, 3.0, 4.0]
    rep = [1.1, 2.12, 3.08, 4.1]
    _write(tmp_path, "fig2_xor_distance", _models({"none": none, "rep": rep}, {"none": 1.0, "rep": 1.0}))
    row = _row(claims_table(tmp_path), "fig2_xor_distance", "none")
    d = np.array(rep) - np.array(none)
    half = T975_DF3 * d.std(ddof=1) / 2.0
    assert row.distance_diff == pytest.approx(d.mean())
    assert row.distance_diff_ci_low == pytest.approx(d.mean() - half)
    assert row.distance_diff_ci_high == pytest.approx(d.mean() + half)
    assert row.n_seeds == 4 and row.verdict == "holds"
    assert (row.acc_diff, row.acc_diff_ci_low, row.acc_diff_ci_high) == (0.0, 0.0, 0.0)
    # shuffle None's seeds: the per-seed differences are no longer consistent, the verdict is not "holds"
    _write(tmp_path, "fig2_xor_distance", _models({"none": [4.0, 1.0, 3.0, 2.0], "rep": rep},
                                                  {"none": 1.0, "rep": 1.0}))
    assert _row(claims_table(tmp_path), "fig2_xor_distance", "none").verdict == "inconclusive"


def test_three_verdicts_and_accuracy_tolerance(tmp_path):
    _write(tmp_path, "fig4_mnist", _models(  # rep more robust but 8 points less accurate: fails against both
        {"none": [1.0, 1.0, 1.1], "ll": [1.3, 1.1, 1.2], "rep": [1.5, 1.5, 1.6]},
        {"none": 0.98, "ll": 0.98, "rep": [0.90, 0.91, 0.90]}))
    _write(tmp_path, "appE_fashion_mnist", _models(  # rep worse than ll in every seed: fails against ll
        {"none": [1.0, 1.0, 1.1], "ll": [1.3, 1.4, 1.5], "rep": [1.2, 1.3, 1.35]},
        {"none": 0.9, "ll": 0.9, "rep": 0.9}))
    table = claims_table(tmp_path)
    assert set(table.verdict) <= set(claims.VERDICTS)
    assert _row(table, "fig4_mnist", "none").verdict == "fails"
    assert _row(table, "fig4_mnist", "ll").verdict == "fails"
    assert _row(table, "appE_fashion_mnist", "ll").verdict == "fails"
    assert _row(table, "appE_fashion_mnist", "none").verdict == "holds"
    # a 10-point tolerance forgives fig4's accuracy loss; the rule reads the tolerance that was passed
    loose = claims_table(tmp_path, acc_tolerance=0.1)
    assert _row(loose, "fig4_mnist", "none").verdict == "holds"
    summary = claims.claims_summary(table)
    fashion = summary[summary.test == "Fashion-MNIST"].iloc[0]
    assert fashion.verdict == "fails" and fashion["fails vs"].startswith("ll") and fashion["holds vs"] == "none"
    missing = table[table.figure == "fig6_cifar_resnet"].iloc[0]
    assert missing.setting == "not produced" and missing.verdict == "inconclusive" and "not produced" in missing.note
    assert set(table.claim) == set(claims.CLAIMS)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), "0.1"])
def test_bad_tolerance_is_rejected_before_reading(tmp_path, bad):
    with pytest.raises(ValueError, match="acc_tolerance"):
        claims_table(tmp_path / "does-not-exist", acc_tolerance=bad)
    with pytest.raises(ValueError, match="level"):
        claims_table(tmp_path, level=1.5)


def test_per_sample_difference_on_jointly_broken_samples(tmp_path):
    """Per-sample Δ pairs the same test sample of the same seed; a sample that one attack did not break, or that only
    one model attacked, is left out."""
    models = _models({"none": [1.0, 2.0], "rep": [1.5, 2.5]}, {"none": 1.0, "rep": 1.0})
    rows = []
    for method, seed, index, dist, ok in [("none", 0, 7, 1.0, True), ("rep", 0, 7, 1.4, True),
                                          ("none", 0, 8, 2.0, True), ("rep", 0, 8, 2.6, True),
                                          ("none", 0, 9, 3.0, False), ("rep", 0, 9, 9.0, True),   # none failed
                                          ("rep", 0, 10, 5.0, True),                               # only rep
                                          ("none", 1, 7, 1.0, True), ("rep", 1, 7, 1.5, True)]:
        rows.append({"index": index, "distance": dist, "success": ok, "method": method, "seed": seed,
                     "lam": 0.0 if method == "none" else 0.001, "width": "8", "weight_decay": 0.0})
    _write(tmp_path, "fig2_xor_distance", models, samples=pd.DataFrame(rows))
    row = _row(claims_table(tmp_path), "fig2_xor_distance", "none")
    assert row.n_pairs == 3
    assert row.sample_diff == pytest.approx(np.mean([0.4, 0.6, 0.5]))
    assert row.sample_diff_ci_low == pytest.approx(0.5 - T975_DF2 * 0.1 / np.sqrt(3))


def test_a_baseline_without_distance_competes_on_accuracy_only(tmp_path):
    """ll collapsed to one class (no adversarial point, NaN Δx): judged on accuracy, and the table says so instead of
    printing nan."""
    nan = float("nan")
    models = _models({"none": [1.0, 1.1, 1.05], "ll": [nan, nan, nan], "rep": [1.5, 1.6, 1.55]},
                     {"none": 0.9, "ll": 0.11, "rep": 0.9})
    _write(tmp_path, "appC_mnist_sweeps", models)
    row = _row(claims_table(tmp_path), "appC_mnist_sweeps", "ll")
    assert row.verdict == "holds" and row["distance baseline"] == "none (one class)" and "accuracy only" in row.note
    models.loc[models.method == "none", "mean_distance"] = 2.0  # None farther: fails, the NaN does not hide it
    _write(tmp_path, "appC_mnist_sweeps", models)
    assert _row(claims_table(tmp_path), "appC_mnist_sweeps", "none").verdict == "fails"


def test_profile_names_its_deviations(tmp_path):
    """A run with overrides (e.g. fewer attacked samples) is labelled with them, as its footer is."""
    _write(tmp_path, "fig4_mnist", _models({"none": [1.0, 1.1, 1.2], "rep": [1.5, 1.6, 1.7]}, {"none": 1.0, "rep": 1.0}),
           manifest={"profile": "cpu", "status": "ok",
                     "deviations": {"executor": "local", "n_attack": 50, "max_workers": 2}})
    # where the jobs ran is not a deviation of the results: left out of the label
    assert set(claims_table(tmp_path).query("figure == 'fig4_mnist'").profile) == {"cpu n_attack=50"}


def test_tables_without_a_manifest_are_not_used(tmp_path):
    _write(tmp_path, "fig2_xor_distance", _models({"none": [1.0, 1.0], "rep": [2.0, 2.1]}, {"none": 1.0, "rep": 1.0}))
    (tmp_path / "fig2_xor_distance" / "manifest.json").unlink()
    row = claims_table(tmp_path).query("figure == 'fig2_xor_distance'").iloc[0]
    assert row.verdict == "inconclusive" and "no manifest" in row.note and row.setting == "not produced"


def test_failed_run_tables_are_not_used(tmp_path):
    _write(tmp_path, "fig2_xor_distance", _models({"none": [1.0, 1.0], "rep": [2.0, 2.1]}, {"none": 1.0, "rep": 1.0}),
           manifest={"profile": "smoke", "status": "failed"})
    row = claims_table(tmp_path).query("figure == 'fig2_xor_distance'").iloc[0]
    assert row.verdict == "inconclusive" and "failed" in row.note and row.setting == "not produced"


def test_both_rep_definitions_are_judged(tmp_path):
    """rep and rep_ub (the authors' definition) each get their rows against every baseline, ll and ll_readout at
    rep's λ."""
    m = _models({"none": [1.0, 1.1, 1.2], "ll": [1.2, 1.3, 1.4], "ll_readout": [1.1, 1.2, 1.3],
                 "rep": [1.5, 1.6, 1.7], "rep_ub": [1.4, 1.5, 1.6]},
                {"none": 1.0, "ll": 1.0, "ll_readout": 1.0, "rep": 1.0, "rep_ub": 1.0})
    _write(tmp_path, "fig2_xor_distance", m)
    t = claims_table(tmp_path).query("figure == 'fig2_xor_distance'")
    assert sorted(zip(t.rep.str.split().str[0], t.baseline.str.split().str[0])) == sorted(
        (r, b) for r in ("rep", "rep_ub") for b in ("none", "ll", "ll_readout"))
    assert (t.verdict == "holds").all()


def test_metric_claim_is_a_point_comparison(tmp_path):
    fig = tmp_path / "fig3_xor_geometry"
    fig.mkdir()
    pd.DataFrame({"method": ["none", "ll", "rep"], "max_lambda_max": [3.0, 2.0, 1.0],
                  "max_log_volume": [1.0, 0.5, 0.7]}).to_csv(fig / "summary.csv", index=False)
    (fig / "manifest.json").write_text(json.dumps({"profile": "paper", "status": "ok"}))
    t = claims_table(tmp_path)
    t = t[t.figure == "fig3_xor_geometry"].set_index(["test", "baseline"])
    assert t.loc[("XOR metric: max_lambda_max", "ll"), "verdict"] == "holds"
    assert t.loc[("XOR metric: max_log_volume", "none"), "verdict"] == "holds"
    assert t.loc[("XOR metric: max_log_volume", "ll"), "verdict"] == "fails"
    assert "point comparison" in t.loc[("XOR metric: max_log_volume", "ll"), "note"]


def test_markdown_states_the_rule_and_every_row(tmp_path):
    _write(tmp_path, "fig2_xor_distance", _models({"none": [1.0, 1.1, 1.2], "rep": [1.5, 1.6, 1.7]},
                                                  {"none": 1.0, "rep": 1.0}))
    table = claims_table(tmp_path, acc_tolerance=0.01)
    md = claims.claims_markdown(table, acc_tolerance=0.01)
    assert md.startswith("Verdict rule") and "tolerance 1 points" in md and "95%" in md
    assert md.count("**holds**") + md.count("**fails**") + md.count("**inconclusive**") >= 2 * 1 + len(table)
    assert "+0.5 [" in md  # the paired Δ distance with its interval


def test_results_page_lists_each_produced_figure_with_its_claim_verdict_and_scale(tmp_path):
    """issue 16 item 2: RESULTS.md — per figure: the image, what it shows, 'paper: … Here: …' with the verdicts,
    and the scale from its manifest; then every paired comparison."""
    m = _models({"none": [1.0, 1.1, 1.2], "rep": [1.5, 1.6, 1.7]}, {"none": 1.0, "rep": 1.0})
    _write(tmp_path, "fig2_xor_distance", m, manifest={"profile": "paper", "status": "ok", "outputs":
                                                       ["fig2_xor_distance.png", "models.csv"],
                                                       "parameters": {"seeds": [400, 500, 600], "epochs": 15000},
                                                       "data_sources": ["generated: XOR"], "commit": "abc1234",
                                                       "date": "2026-12-04T14:00:00+00:00"})
    table = claims_table(tmp_path)
    page = results.results_markdown(tmp_path, table, link_root="figures")
    assert page.startswith("# Results") and "## Verdicts at a glance" in page
    section = page.split("### Fig 2 — XOR: mean adversarial distance", 1)[1].split("###", 1)[0]
    assert "![fig2_xor_distance](figures/fig2_xor_distance/fig2_xor_distance.png)" in section
    assert f"paper: {claims.CLAIMS[1]}. Here: **holds**" in section
    assert "profile paper" in section and "seeds [400, 500, 600]" in section and "commit abc1234" in section
    assert "### Fig 4" not in page  # a figure that was not produced gets no section
    assert "## Every paired comparison" in page


def test_only_a_run_into_the_committed_figures_publishes_repo_pages(tmp_path, monkeypatch):
    from repspec_utils.infra import notebook as nbk

    monkeypatch.setattr(nbk, "REPO_ROOT", tmp_path)
    defaults = {**nbk.notebook_defaults("claims"), "profile": "cpu"}
    for out_dir, expected in ((str(tmp_path / "figures" / ".staging" / "claims.1.2"), True),
                              (str(tmp_path / "runs" / "cpu"), False), ("", False)):
        run = nbk.notebook_params({**defaults, "out_dir": out_dir}, "claims")
        assert run.writes_committed_results == expected, out_dir
    with pytest.raises(nbk.ParameterError, match="committed results folder"):  # only through the runner's staging
        nbk.notebook_params({**defaults, "out_dir": str(tmp_path / "figures")}, "claims")


def test_field_comparison_is_paired_by_seed_and_measured_only(tmp_path):
    """rep − other method per seed, per readout and measure, with a t interval; no verdicts; an unfinished run
    (manifest not ok) is not read."""
    rows = []
    for seed in (0, 1, 2):
        for method, acc, ta, pgd in (("rep", 0.95, 2.0, 0.30), ("pgd_at", 0.93, 2.5, 0.80), ("none", 0.95, 1.8, 0.2),
                                     ("rep+pgd_at", 0.92, 2.6, 0.82)):
            for readout in ("original", "refit"):
                rows.append({"method": method, "seed": seed, "readout": readout, "test_acc": acc + 0.01 * seed,
                             "ta_mean_distance": ta + 0.1 * seed * (method == "rep"), "pgd_acc_eps=0.1": pgd})
    _write(tmp_path, "baselines_mnist", pd.DataFrame(rows), manifest={"profile": "cpu", "status": "ok"})
    t = claims.field_table(tmp_path)
    assert "verdict" not in t.columns and set(t.readout) == {"original", "refit"}
    row = t[(t.readout == "refit") & (t.method == "rep") & (t.versus == "pgd_at") & (t.measure == "ta_mean_distance")]
    assert len(row) == 1 and row.n_seeds.item() == 3
    assert row["diff"].item() == pytest.approx(np.mean([2.0 - 2.5, 2.1 - 2.5, 2.2 - 2.5]))
    lo, hi = row.diff_ci_low.item(), row.diff_ci_high.item()
    assert lo < row["diff"].item() < hi
    acc = t[(t.method == "rep") & (t.versus == "none") & (t.measure == "test_acc")]
    assert (acc["diff"].abs() < 1e-12).all()  # identical accuracy per seed: Δ 0
    assert {("rep", "arat")} & set(zip(t.method, t.versus)) == set()  # a method not run gives no row
    text = claims.field_markdown(t)
    assert "rep − pgd_at" in text and "No verdicts" in text
    _write(tmp_path, "baselines_mnist", pd.DataFrame(rows), manifest={"profile": "cpu", "status": "failed"})
    assert claims.field_table(tmp_path).empty


def test_metric_claims_are_paired_by_seed_when_the_figure_has_seeds(tmp_path):
    """issue 26 / 28: Fig 3 at 10 seeds gives claim 3 intervals (a ratio of λ_max peaks per seed) instead of one
    model's point comparison."""
    rows = []
    for seed in range(6):
        for method, lam in (("rep", 0.5), ("none", 2.0), ("ll", 0.52)):
            rows.append({"method": method, "seed": seed, "max_lambda_max": lam * (1 + 0.1 * (seed % 3)),
                         "max_log_volume": -1.0 if method == "rep" else 0.0})
    out = claims._paired_metric_claims(pd.DataFrame(rows), {"claim": 3, "test": "XOR metric"})
    by = {(r["test"].split(": ")[1], r["baseline"]): r for r in out}
    lam_none = by[("max_lambda_max", "none")]
    assert lam_none["verdict"] == "holds" and abs(lam_none["distance_diff"] - np.log(0.25)) < 1e-12
    assert lam_none["n_seeds"] == 6 and lam_none["distance_diff_ci_high"] < 0
    assert by[("max_lambda_max", "ll")]["verdict"] == "holds"  # ln(0.5 / 0.52) every seed: an exact, tiny gain
    assert by[("max_log_volume", "none")]["verdict"] == "holds"


def test_a_real_image_analog_names_itself_in_every_row(tmp_path):
    """issue 27: a figure run on a real-image analog says so in each of its claims rows; a CIFAR run does not."""
    label = "REAL-IMAGE ANALOG (Fashion-MNIST, small ResNet) — not the paper's CIFAR-10 / ImageNet"
    m = _models({"none": [1.0, 1.1, 1.2], "ll": [1.1, 1.2, 1.3], "rep": [1.5, 1.6, 1.7]},
                {"none": 0.9, "ll": 0.9, "rep": 0.9})
    _write(tmp_path, "fig6_cifar_resnet", m, manifest={"profile": "cpu", "status": "ok", "analog": label,
                                                       "data_sources": ["Fashion-MNIST"]})
    rows = claims_table(tmp_path).query("figure == 'fig6_cifar_resnet'")
    assert len(rows) and rows.test.str.endswith(label).all() and (rows.setting != "not produced").all()
    _write(tmp_path, "fig6_cifar_resnet", m, manifest={"profile": "paper", "status": "ok", "data_sources": ["cifar"]})
    assert not claims_table(tmp_path).query("figure == 'fig6_cifar_resnet'").test.str.contains("ANALOG").any()
