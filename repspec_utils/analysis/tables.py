"""Tables of results, from tables only (pandas; no torch): per model and per seed summaries, paired gains,
readout and strength labels, the defence comparison's per-model table."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

# where the three digits of App. D's metric plane lie in its (a, b) coordinates: the corners of a unit-side
# equilateral triangle centred at 0 (`evaluation.geometry.digit_plane` computes on it, `plotting.plot_metric_plane` draws it)
DIGIT_PLANE_COORDS = (
    (-0.5, 0.5 / math.sqrt(3.0)),
    (0.5, 0.5 / math.sqrt(3.0)),
    (0.0, -1.0 / math.sqrt(3.0)),
)


def square_grid(lim: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The square grid of the 2-D field tables on [−lim, lim]²: xx, yy (n, n) (rows = y) and points (n², 2) with
    points[i] = (xx.flat[i], yy.flat[i]); a field computed on the points is drawn with `values.reshape(xx.shape)`.
    (`evaluation.geometry.grid_2d` hands the points to models as a tensor; `plotting.figure1_tradeoff` draws on it.)"""
    t = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(t, t)
    return xx, yy, np.stack([xx.ravel(), yy.ravel()], axis=1)


SETTING_COLUMNS = ["dataset", "width", "method", "lam", "weight_decay", "seed", "max_layer", "epochs", "burn_in",
                   "method_kwargs"]  # method_kwargs only where a config has some (L2-SP α, β; BSS k)


def format_kwargs(kwargs: dict) -> str:
    """A method's extra strengths as one sorted, readable table cell: {'beta': 0.01, 'alpha': 0.1} -> 'alpha=0.1, beta=0.01'."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(kwargs.items()))


# The readouts every evaluation table can attack: the model's own, and re-fitted ones by convention
# (`evaluation.refit.REFIT_CONVENTIONS`): 'refit' is the authors' convention, 'refit_scaled' repspec's earlier one.
REFIT_READOUTS = {"refit": "reference", "refit_scaled": "scaled"}


READOUTS = ("original", *REFIT_READOUTS)


def check_readout(readout: str, what: str = "readout") -> str:
    """`readout` if it is one of READOUTS, else ValueError naming them (and the argument, `what`)."""
    if readout not in READOUTS:
        raise ValueError(f"{what} must be one of {READOUTS} ('refit': the authors' re-fit convention, "
                         f"'refit_scaled': repspec's earlier one; SPEC §4), got {readout!r}")
    return readout


def defence_models(samples: pd.DataFrame, whitebox: pd.DataFrame) -> pd.DataFrame:
    """One row per model × readout for the defence comparison (issue 13): settings, readout, test accuracy, the
    Tangent-Attack mean / median distance (`ta_…`), FMN's mean distance (`fmn_mean_distance`), the mean certified
    radius where defined, and the white-box columns of `whitebox_table` (pgd_acc_eps=…, autoattack_acc). Every
    model keeps its row: one whose hard-label attack found no adversarial point on any sample (a model near chance
    that predicts one class, say) gets a NaN distance and a success rate of 0, not a missing row."""
    keys = [c for c in [*SETTING_COLUMNS, "readout"] if c in samples.columns]
    by = [*keys, "attack"]
    extra = {"data_source": ("data_source", "first")} if "data_source" in samples.columns else {}
    every = (samples.assign(_ok=samples["success"].astype(bool) & np.isfinite(samples["distance"]))
             .groupby(by, dropna=False).agg(n_attacked=("_ok", "sum"), test_acc=("test_acc", "first"),
                                            success_rate=("_ok", "mean"), **extra).reset_index())
    found = per_model(samples)
    pm = every.merge(found.drop(columns=[c for c in every.columns if c not in by]), on=by, how="left")
    pm = pm[[c for c in found.columns if c in pm.columns]]
    ta = pm[pm["attack"] == "tangent"].drop(columns="attack").rename(columns={
        "mean_distance": "ta_mean_distance", "median_distance": "ta_median_distance", "n_attacked": "n_attacked",
        "mean_queries": "ta_mean_queries", "success_rate": "ta_success_rate"})
    fmn = pm[pm["attack"] == "fmn"][[*keys, "mean_distance", "success_rate"]].rename(columns={
        "mean_distance": "fmn_mean_distance", "success_rate": "fmn_success_rate"})
    out = ta.merge(fmn, on=keys, how="left")
    wb = whitebox.drop(columns=[c for c in ("test_acc", "data_source") if c in whitebox.columns])
    return out.merge(wb, on=[k for k in keys if k in wb.columns], how="left")


class DefenceTables(NamedTuple):
    """The tables of a defence comparison (`defence_comparison`): `samples` one row per attacked sample, attack and
    readout; `models` one row per model × readout; `summary` across seeds; `timing` the epoch times (kept apart:
    wall-clock); `values` the summary's measures; `pgd_columns` the PGD robust-accuracy columns, by ε."""
    samples: pd.DataFrame
    models: pd.DataFrame
    summary: pd.DataFrame
    timing: pd.DataFrame
    values: list
    pgd_columns: list


def pgd_column(eps: float) -> str:
    """The column of PGD robust accuracy at L∞ radius eps in `whitebox_table` / `defence_models`."""
    return f"pgd_acc_eps={float(eps):g}"


def per_model(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model: mean distance over its attacked samples (successful attacks), accuracy, settings, the mean
    certified radius over the same samples where the table has one (one-hidden-layer MLPs; NaN otherwise), and the
    data source where the table has one (so a per-model table still says SYNTHETIC / STAND-IN)."""
    keys = [c for c in [*SETTING_COLUMNS, "readout", "attack"] if c in table.columns]
    ok = table[np.isfinite(table["distance"])]
    source = {"data_source": ("data_source", "first")} if "data_source" in table.columns else {}
    certified = ({"mean_certified_radius": ("certified_radius", "mean")}
                 if "certified_radius" in table.columns else {})
    out = ok.groupby(keys, dropna=False).agg(mean_distance=("distance", "mean"), median_distance=("distance", "median"),
                                             n_attacked=("distance", "size"), test_acc=("test_acc", "first"),
                                             mean_queries=("queries", "mean"),
                                             success_rate=("success", "mean"), **certified, **source).reset_index()
    return out


def attack_summary(table: pd.DataFrame) -> pd.DataFrame:
    """`per_model` keeping every model: one row per model with its settings, test_acc, n_attacked, n_failed (attacks
    that found no adversarial point), n_labels (distinct labels among its attacked samples) and the mean / median
    distance over its successful attacks (NaN where none succeeded, e.g. a model that predicts one class)."""
    keys = [c for c in [*SETTING_COLUMNS, "readout", "attack"] if c in table.columns]
    success = table["success"].astype(bool)
    counts = (table.assign(_failed=~success).groupby(keys, dropna=False)
              .agg(test_acc=("test_acc", "first"), n_attacked=("success", "size"), n_failed=("_failed", "sum"),
                   n_labels=("label", "nunique"), mean_queries=("queries", "mean")).reset_index())
    dist = per_model(table[success])[[*keys, "mean_distance", "median_distance"]]
    return counts.merge(dist, on=keys, how="left")


def across_seeds(models: pd.DataFrame, value: str = "mean_distance", by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and standard error of `value` across seeds, per setting."""
    by = list(by or [c for c in [*SETTING_COLUMNS, "readout"] if c in models.columns and c not in ("seed",)])
    g = models.groupby(by, dropna=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"] / np.sqrt(out["count"])
    return out.rename(columns={"mean": f"{value}_mean", "std": f"{value}_sd", "sem": f"{value}_sem",
                               "count": "n_seeds"})


def seed_summary(models: pd.DataFrame, values: Sequence[str] = ("mean_distance", "test_acc"),
                 by: Sequence[str] | None = None) -> pd.DataFrame:
    """`across_seeds` of every column in `values`, side by side: one row per setting with <value>_mean / _sd /
    _sem for each, and n_seeds (the per-model table of `per_model` in, the figures' summary table out)."""
    out = None
    for value in values:
        part = across_seeds(models, value, by)
        out = part if out is None else out.merge(part)
    return out


def method_variant(table: pd.DataFrame) -> pd.Series:
    """The method of each row with the layer ablation folded in (sin deep nets, SPEC §6): 'rep1' / 'rep2' =
    rep-spectral on the first 1 / 2 hidden layers only (max_layer), 'rep_ub1' / 'rep_ub2' the same for the authors'
    rep-spectral with its activation term, else the method ('none', 'll', 'rep', ...)."""
    max_layer = table["max_layer"].fillna(-1).astype(int)
    method = table["method"].astype(str)
    ablated = method.isin(["rep", "rep_ub"]) & (max_layer >= 1)
    return method.where(~ablated, method + max_layer.astype(str)).rename("variant")


def metric_plane_summary(plane: pd.DataFrame) -> pd.DataFrame:
    """Per method (mean over seeds) the numbers behind claim 3 from a `metric_plane_table`: lambda_max_mean_plane
    (mean λ_max(g) over the grid), lambda_max_peak_edges and log_volume_peak_edges (largest λ_max(g) and
    log √det g along the triangle through the digits, i.e. near the data)."""
    keys = [c for c in SETTING_COLUMNS if c in plane.columns]
    grid, edge = plane[plane.part == "grid"], plane[plane.part == "edge"]
    per_model = pd.concat([
        grid.groupby(keys)["lambda_max"].mean().rename("lambda_max_mean_plane"),
        edge.groupby(keys)["lambda_max"].max().rename("lambda_max_peak_edges"),
        edge.groupby(keys)["log_volume"].max().rename("log_volume_peak_edges"),
    ], axis=1).reset_index()
    cols = ["lambda_max_mean_plane", "lambda_max_peak_edges", "log_volume_peak_edges"]
    out = per_model.groupby("method")[cols].mean()
    out["n_seeds"] = per_model.groupby("method").size()
    return out.reset_index()


_STRENGTH_SYMBOLS = {"alpha": "α", "beta": "β", "lam": "λ"}


def strength_label(table: pd.DataFrame) -> pd.Series:
    """Each row's regularisation strength as text: 'λ=0.01' (BSS: 'η=0.01'), the method's kwargs for L2-SP
    ('α=0.1 β=0.01'), '' for None (or where the table has no lam column)."""
    lam = table["lam"] if "lam" in table.columns else pd.Series(0.0, index=table.index)
    kw = (table["method_kwargs"] if "method_kwargs" in table.columns else pd.Series("", index=table.index))
    kw = kw.astype(object).where(kw.notna(), "").astype(str)
    for name, symbol in _STRENGTH_SYMBOLS.items():
        kw = kw.str.replace(f"{name}=", f"{symbol}=", regex=False)
    out = kw.str.replace(", ", " ", regex=False)
    by_lam = (kw == "") & (table["method"] != "none") & (lam.astype(float) != 0)
    symbol = pd.Series(np.where(table["method"] == "bss", "η=", "λ="), index=table.index)
    out = out.where(~by_lam, symbol + lam.map(lambda v: f"{float(v):g}"))
    return out.rename("strength")


def method_setting(table: pd.DataFrame, strengths: str = "auto", unit: str = "stage") -> pd.Series:
    """Display key of each row's method with its layer ablation and strength (Figs 6–8): 'none', 'll', 'rep', with
    max_layer k ≥ 0 'rep_stages<k>' (rep-spectral on the stem and the first k residual stages, unit='stage') or, with
    unit='layer', 'rep<k>' as `method_variant`; then ' ' + `strength_label` where the method has more than one
    strength in the table (strengths='auto'), always ('always') or never ('never'). `plotting.method_label`,
    `method_color` and `method_order` read these keys ('rep_stages2 λ=0.01' -> 'rep-spectral (2 stages) λ=0.01')."""
    if strengths not in ("auto", "always", "never") or unit not in ("stage", "layer"):
        raise ValueError(f"strengths must be auto/always/never and unit stage/layer, got {strengths!r}, {unit!r}")
    method = table["method"].astype(str)
    max_layer = (table["max_layer"] if "max_layer" in table.columns else pd.Series(-1, index=table.index))
    max_layer = max_layer.fillna(-1).astype(int)
    ablated = (method == "rep") & (max_layer >= (0 if unit == "stage" else 1))
    key = method.where(~ablated, ("rep_stages" if unit == "stage" else "rep") + max_layer.astype(str))
    strength = strength_label(table)
    if strengths == "never":
        return key.rename("variant")
    show = strength != ""
    if strengths == "auto":
        show &= strength.groupby(method).transform("nunique") > 1
    return key.where(~show, key + " " + strength).rename("variant")


def sandwich_models(samples: pd.DataFrame) -> pd.DataFrame:
    """One row per model of a `sandwich_table`: test_acc, n_attacked and the mean over its samples of each bound
    (samples that both attacks broke), with the ratios certified_radius / fmn_distance (how much of the measured
    robustness is certified) and ta_distance / fmn_distance (how close the hard-label attack gets)."""
    keys = [c for c in [*SETTING_COLUMNS, "readout"] if c in samples.columns]
    ok = samples[samples.ta_success.astype(bool) & samples.fmn_success.astype(bool)]
    out = ok.groupby(keys, dropna=False).agg(
        test_acc=("test_acc", "first"), n_attacked=("index", "size"),
        certified_global=("certified_global", "mean"), certified_radius=("certified_radius", "mean"),
        fmn_distance=("fmn_distance", "mean"), ta_distance=("ta_distance", "mean")).reset_index()
    out["certified_over_fmn"] = out.certified_radius / out.fmn_distance
    out["ta_over_fmn"] = out.ta_distance / out.fmn_distance
    return out


BOUND_QUANTITIES = ("certified_global", "certified_radius", "fmn_distance", "ta_distance")


def bound_gains(models: pd.DataFrame, baseline: str = "none") -> pd.DataFrame:
    """Per model of a `sandwich_models` table and per quantity (BOUND_QUANTITIES), the gain over the `baseline`
    method's model of the same seed and setting: value / baseline value (1 = no gain). Long format, one row per
    model × quantity: settings, quantity, value, baseline_value, gain; the baseline's own rows are left out."""
    pair = [c for c in ["dataset", "width", "weight_decay", "readout", "seed"] if c in models.columns]
    if baseline not in set(models.method):
        raise ValueError(f"baseline {baseline!r} is not among the methods {sorted(set(models.method))}")
    long = models.melt(id_vars=[c for c in models.columns if c not in BOUND_QUANTITIES],
                       value_vars=[q for q in BOUND_QUANTITIES if q in models.columns], var_name="quantity")
    base = long[long.method == baseline][[*pair, "quantity", "value"]].rename(columns={"value": "baseline_value"})
    out = long[long.method != baseline].merge(base, on=[*pair, "quantity"], how="inner")
    out["gain"] = out["value"] / out["baseline_value"]
    return out
