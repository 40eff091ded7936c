"""The claims table: for every claim of the paper (docs/SPEC.md §8) that the committed figure tables can test, the
paired comparison of rep-spectral with each baseline and a three-way verdict.

Every figure trains a seed's branches (None, ll-spectral, rep-spectral, ...) from one shared burn-in checkpoint and
attacks the same test samples, so the comparison is made within a seed: per seed, Δ = rep − baseline for the mean
adversarial distance and for the test accuracy, then the mean of Δ over seeds with a Student-t interval
(`level`, default 95 %). The per-sample difference, on the samples that both models classify correctly and that
both attacks broke, is reported beside it (pairs pooled over seeds; an interval over samples, which ignores that
samples of one seed share a model, so the verdict does not use it).

Verdict of a row (rep-spectral against one baseline, in one setting):

* **holds** — the distance interval lies above 0 and the accuracy interval does not reach below −`acc_tolerance`;
* **fails** — the distance interval lies below 0, or the whole accuracy interval lies below −`acc_tolerance`;
* **inconclusive** — anything else (intervals that straddle 0, or fewer than 2 paired seeds).

A baseline whose models all predict one class (no decision boundary, so no adversarial point) is judged on accuracy
alone. Metric claims (claim 3: λ_max(g), volume element) come from one model per method; they are point comparisons,
marked as such, with holds / fails only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from repspec_utils.analysis.tables import bound_gains, strength_label
from repspec_utils.infra import figures
from repspec_utils.infra.notebook import profile_label
from repspec_utils.infra.registry import METHODS

ACC_TOLERANCE = 0.005  # accuracy may be at most 0.5 points worse (the interval's lower end) for "holds"


LEVEL = 0.95


VERDICTS = ("holds", "fails", "inconclusive")


# From the method catalogue (METHODS.catalogue(), read without torch): the rep-spectral methods, each compared with
# every other method of a table (rep as the paper states it, rep_ub as the authors' code runs it on XOR / sin / F-MNIST)
REP_METHODS = tuple(sorted(name for name, entry in METHODS.catalogue().items() if entry.get("rep")))  # rep first


# the baselines compared at rep's λ where they were run at it (ll, ll_readout)
SAME_LAMBDA = tuple(name for name, entry in METHODS.catalogue().items() if entry.get("same_lambda"))


CLAIMS = {
    1: "rep-spectral gives a larger mean adversarial distance than ll-spectral and None, with equal or better accuracy",
    2: "the gain survives re-training the readout (it lives in Φ)",
    3: "rep-spectral lowers λ_max(g) and the volume-element peaks near the data",
    4: "ResNet18 on CIFAR-10: same ordering without an accuracy loss",
    5: "Barlow Twins: modest robustness gain downstream at comparable accuracy",
    6: "Transfer: rep-spectral improves distance over None, L2-SP, BSS and ll",
    7: "(a question of ours, not a claim of the paper) rep-spectral raises the certified radius more than it raises "
       "the attack distance",
}


# Which figure tests which claim is in each figure's profile file (`figure.claims`, infra/figures.py): the per-model
# tables are <figure>/models.csv (or <figure>/models_<table>.csv), per sample samples.csv.


BOUND_ATTACKS = {"ta_distance": "Tangent Attack", "fmn_distance": "FMN"}


SETTING_COLUMNS = ("width", "weight_decay", "max_layer", "readout", "dataset")


def check_tolerance(acc_tolerance: float, level: float = LEVEL) -> None:
    """Reject a negative (or non-finite) accuracy tolerance and a confidence level outside (0, 1)."""
    if not (isinstance(acc_tolerance, (int, float)) and np.isfinite(acc_tolerance) and acc_tolerance >= 0):
        raise ValueError(f"acc_tolerance must be a finite number >= 0 (accuracy points as a fraction, e.g. 0.005), "
                         f"got {acc_tolerance!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must lie in (0, 1), e.g. 0.95, got {level!r}")


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite `values`: the two-sided Student-t interval for their mean at `level`.
    Fewer than 2 values give NaN bounds; identical values give a zero-width interval."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    from scipy import stats  # ≈ 1 s to import: loaded when an interval is computed, not by `import claims`

    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def verdict(dist_ci: tuple[float, float] | None, acc_ci: tuple[float, float], acc_tolerance: float) -> str:
    """The three-way rule of the module docstring (one of VERDICTS). `dist_ci` None: the distance is not compared
    (the baseline has no decision boundary), the accuracy decides alone."""
    a_lo, a_hi = acc_ci
    if np.isfinite(a_hi) and a_hi < -acc_tolerance:
        return "fails"
    if dist_ci is not None:
        d_lo, d_hi = dist_ci
        if np.isfinite(d_hi) and d_hi < 0:
            return "fails"
        dist_ok = bool(np.isfinite(d_lo) and d_lo > 0)
    else:
        dist_ok = True
    acc_ok = bool(np.isfinite(a_lo) and a_lo >= -acc_tolerance)
    return "holds" if dist_ok and acc_ok else "inconclusive"


def _mean_sem(values: pd.Series) -> str:
    v = values.astype(float)
    v = v[np.isfinite(v)]
    if v.empty:  # every model predicts one class: no adversarial point, no Δx
        return "none (one class)"
    sem = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.4g} ± {sem:.2g}" if np.isfinite(sem) else f"{v.mean():.4g}"


# The commit that made the authors' MLP, schedule and re-fit the default (issue 26): a table of an MLP figure
# (`figure.mlp` in its profile file) from a run at an earlier commit used this package's earlier MLP and re-fit, and
# its rows say so.
REFERENCE_MODEL_COMMIT = "a18bc30"


REFERENCE_MODEL = "authors' MLP"


EARLIER_MODEL = "earlier MLP (before issue 26)"


def _descends_from(commit: str, ancestor: str) -> bool | None:
    """Whether `commit` (a manifest's, '-dirty' allowed) has `ancestor` in its history; None when git cannot say."""
    import subprocess

    from repspec_utils.infra.files import REPO_ROOT

    commit = str(commit).removesuffix("-dirty")
    try:
        out = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=REPO_ROOT,
                             capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(out.returncode)


def model_label(fig: str, man: dict) -> str:
    """Which MLP a figure's tables come from: the manifest's own `model` record, else by its commit (the authors'
    MLP from REFERENCE_MODEL_COMMIT on); '' for figures without an MLP."""
    if not figures.figure(fig).mlp or not man:
        return ""
    if man.get("model"):
        return REFERENCE_MODEL if "reference" in str(man["model"]) else str(man["model"])
    newer = _descends_from(man.get("commit", ""), REFERENCE_MODEL_COMMIT)
    return {True: REFERENCE_MODEL, False: EARLIER_MODEL}.get(newer, "MLP (commit unknown)")


def _manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _name(method: str, strength: str) -> str:
    return f"{method} {strength}".strip()


def _per_sample(samples: pd.DataFrame | None, keys: dict, rep: tuple[str, str], base: tuple[str, str],
                level: float) -> tuple[float, float, float, int]:
    """Per-sample Δ distance between the rep and baseline models of the same seed, on the samples both attacked
    successfully (pairs pooled over seeds)."""
    if samples is None or samples.empty:
        return float("nan"), float("nan"), float("nan"), 0
    s = samples
    for col, value in keys.items():
        if col in s.columns:
            s = s[s[col].astype(str) == str(value)]
    if "success" in s.columns:
        s = s[s["success"].astype(str).isin(["True", "true", "1"])]

    def side(method_strength):
        m, st = method_strength
        sub = s[(s["method"] == m) & (s["_strength"] == st)]
        return sub.set_index(["seed", "index"])["distance"]

    pairs = pd.concat({"rep": side(rep), "base": side(base)}, axis=1, join="inner").dropna()
    return t_interval(pairs["rep"] - pairs["base"], level) if len(pairs) else (float("nan"),) * 3 + (0,)


def _distance_claims(models: pd.DataFrame, samples: pd.DataFrame | None, base_row: dict, acc_tolerance: float,
                     level: float) -> list[dict]:
    """One row per (setting, rep-spectral variant and strength, baseline). A setting is every column of
    SETTING_COLUMNS that varies in the table; ll-spectral (either definition) is taken at rep's λ where it was run
    at it, every other baseline at its strength with the largest mean distance (the strongest competitor)."""
    setting_cols = [c for c in SETTING_COLUMNS if c in models.columns and models[c].nunique() > 1]
    models = models.assign(_strength=strength_label(models))
    if samples is not None:
        samples = samples.assign(_strength=strength_label(samples))
    rows = []
    groups = models.groupby(setting_cols, dropna=False) if setting_cols else [((), models)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        keys = dict(zip(setting_cols, key))
        baselines = [m for m in g.method.unique() if m not in REP_METHODS]
        if not baselines:
            continue
        for rep_method in [m for m in REP_METHODS if m in set(g.method)]:
            for s_rep in g.loc[g.method == rep_method, "_strength"].unique():
                g_rep = g[(g.method == rep_method) & (g._strength == s_rep)]
                for base in baselines:
                    gb = g[g.method == base]
                    if base in SAME_LAMBDA and "lam" in g.columns and (gb.lam == g_rep.lam.iloc[0]).any():
                        gb = gb[gb.lam == g_rep.lam.iloc[0]]
                    s_base = max(gb._strength.unique(),
                                 key=lambda s: np.nan_to_num(gb.loc[gb._strength == s, "mean_distance"].mean(),
                                                             nan=-np.inf))
                    gb = gb[gb._strength == s_base]
                    rows.append(_compare(g_rep, gb, (rep_method, s_rep), (base, s_base), keys, samples, base_row,
                                         acc_tolerance, level, several=g.loc[g.method == base, "_strength"].nunique()
                                         > 1))
    return rows


def _compare(g_rep: pd.DataFrame, g_base: pd.DataFrame, rep: tuple[str, str], base: tuple[str, str], keys: dict,
             samples, base_row: dict, acc_tolerance: float, level: float, several: bool) -> dict:
    paired = pd.merge(g_rep[["seed", "mean_distance", "test_acc"]], g_base[["seed", "mean_distance", "test_acc"]],
                      on="seed", suffixes=("_rep", "_base"))
    acc = t_interval(paired.test_acc_rep - paired.test_acc_base, level)
    rep_has = np.isfinite(g_rep.mean_distance.astype(float)).any()
    base_has = np.isfinite(g_base.mean_distance.astype(float)).any()
    notes = []
    if rep_has and base_has:
        dist = t_interval(paired.mean_distance_rep - paired.mean_distance_base, level)
        v = verdict((dist[1], dist[2]), (acc[1], acc[2]), acc_tolerance)
    else:
        dist = (float("nan"),) * 3 + (0,)
        if not rep_has and base_has:
            v = "fails"
            notes.append("rep-spectral predicts one class (no decision boundary)")
        else:
            v = verdict(None, (acc[1], acc[2]), acc_tolerance)
            notes.append("baseline predicts one class: judged on accuracy only")
    if acc[3] < 2:
        notes.append(f"{acc[3]} paired seed(s): no interval")
    per = _per_sample(samples, keys, rep, base, level)
    setting = [f"{c}={val}" for c, val in keys.items()]
    return {**base_row, "setting": ", ".join(setting) or "all", "rep": _name(*rep),
            "baseline": _name(*base) + (" (its most robust strength)" if several and base[0] not in SAME_LAMBDA
                                        else ""),
            "n_seeds": int(acc[3]),
            "distance rep": _mean_sem(g_rep.mean_distance), "distance baseline": _mean_sem(g_base.mean_distance),
            "distance_baseline_mean": float(paired.mean_distance_base.mean()) if len(paired) else float("nan"),
            "accuracy rep": _mean_sem(g_rep.test_acc), "accuracy baseline": _mean_sem(g_base.test_acc),
            "distance_diff": dist[0], "distance_diff_ci_low": dist[1], "distance_diff_ci_high": dist[2],
            "acc_diff": acc[0], "acc_diff_ci_low": acc[1], "acc_diff_ci_high": acc[2],
            "sample_diff": per[0], "sample_diff_ci_low": per[1], "sample_diff_ci_high": per[2], "n_pairs": per[3],
            "verdict": v, "note": "; ".join(notes)}


def _metric_claims(summary: pd.DataFrame, base_row: dict) -> list[dict]:
    s = summary.set_index("method")
    rows = []
    for col in [c for c in s.columns if "lambda_max" in c or "log_volume" in c]:
        for rep_method in [m for m in REP_METHODS if m in s.index]:
            for base in [m for m in s.index if m not in REP_METHODS]:
                lower = bool(s.loc[rep_method, col] < s.loc[base, col])
                rows.append({**base_row, "test": f"{base_row['test']}: {col}", "setting": "all", "rep": rep_method,
                             "baseline": base, "n_seeds": int(s.loc[rep_method].get("n_seeds", 1)),
                             "value rep": f"{s.loc[rep_method, col]:.4g}", "value baseline": f"{s.loc[base, col]:.4g}",
                             "verdict": "holds" if lower else "fails",
                             "note": "one model per method: point comparison, no interval"})
    return rows


METRIC_COLUMNS = {"max_lambda_max": True, "mean_lambda_max_at_data": True,  # compared as ln(rep / baseline)
                  "max_log_volume": False, "mean_log_volume_at_data": False}  # already logarithms: rep − baseline


def _paired_metric_claims(metrics: pd.DataFrame, base_row: dict, level: float = LEVEL) -> list[dict]:
    """Claim 3 from a per-seed metric table (Fig 3's `metrics.csv`): per metric, rep-spectral variant and baseline,
    Δ = ln(rep / baseline) of a λ_max peak or rep − baseline of a log-volume peak, per seed, with its t interval; the
    claim (rep-spectral lowers them) **holds** when the interval lies below 0, **fails** when above, else
    inconclusive."""
    rows = []
    methods = set(metrics.method)
    for col, ratio in METRIC_COLUMNS.items():
        if col not in metrics:
            continue
        wide = metrics.pivot_table(index="seed", columns="method", values=col)
        for rep in [m for m in REP_METHODS if m in methods]:
            for base in sorted(m for m in methods if m not in REP_METHODS):
                pair = wide[[rep, base]].dropna()
                d = np.log(pair[rep] / pair[base]) if ratio else pair[rep] - pair[base]
                mean, lo, hi, n = t_interval(d.to_numpy(), level)
                verdict = ("holds" if n >= 2 and hi < 0 else "fails" if n >= 2 and lo > 0 else "inconclusive")
                rows.append({**base_row, "test": f"{base_row['test']}: {col}", "setting": "all", "rep": rep,
                             "baseline": base, "n_seeds": n, "value rep": f"{pair[rep].mean():.4g}",
                             "value baseline": f"{pair[base].mean():.4g}", "distance_diff": mean,
                             "distance_diff_ci_low": lo, "distance_diff_ci_high": hi, "verdict": verdict,
                             "note": ("Δ = ln(rep / baseline)" if ratio else "Δ = rep − baseline (logs)")
                                     + f", paired by seed over {n} seeds; lower is the claim"})
    return rows


def bound_claims(models: pd.DataFrame, base_row: dict, level: float = LEVEL) -> list[dict]:
    """Claim 7 from a `tables.sandwich_models` table: per data set, rep-spectral variant, baseline and attack, the
    paired (same seed and setting) difference Δ = ln(certified-radius gain) − ln(attack-distance gain) over the
    baseline, with a Student-t interval: **holds** (the certificate gains more) when the interval lies above 0,
    **fails** (the attack distance gains more) when below, else inconclusive."""
    rows = []
    for dataset, g in models.groupby("dataset", sort=False):
        for base in [m for m in g.method.unique() if m not in REP_METHODS]:
            gains = bound_gains(g, baseline=base)
            for rep_method in [m for m in REP_METHODS if m in set(g.method)]:
                gr = gains[gains.method == rep_method]
                keys = [c for c in ["width", "weight_decay", "readout", "seed"] if c in gr.columns]
                cert = gr[gr.quantity == "certified_radius"].set_index(keys)["gain"]
                for attack, label in BOUND_ATTACKS.items():
                    att = gr[gr.quantity == attack].set_index(keys)["gain"]
                    both = pd.concat({"cert": cert, "att": att}, axis=1, join="inner").dropna()
                    diff = t_interval(np.log(both.cert) - np.log(both.att), level)
                    lo, hi = diff[1], diff[2]
                    v = "holds" if np.isfinite(lo) and lo > 0 else "fails" if np.isfinite(hi) and hi < 0 \
                        else "inconclusive"
                    rows.append({**base_row, "test": f"{base_row['test']} ({label})", "setting": f"dataset={dataset}",
                                 "rep": rep_method, "baseline": base, "n_seeds": diff[3],
                                 "value rep": f"certified ×{np.exp(np.log(both.cert).mean()):.3g}",
                                 "value baseline": f"{label} ×{np.exp(np.log(both.att).mean()):.3g}",
                                 "distance_diff": diff[0], "distance_diff_ci_low": lo, "distance_diff_ci_high": hi,
                                 "verdict": v,
                                 "note": "Δ = ln(gain of the mean certified radius) − ln(gain of the mean attack "
                                         "distance), paired by seed and setting"})
    return rows


def claims_table(fig_root, acc_tolerance: float = ACC_TOLERANCE, level: float = LEVEL) -> pd.DataFrame:
    """Every claim that the figure tables under `fig_root` can test, one row per (setting, rep-spectral variant,
    baseline), with the paired intervals and the verdict of the module docstring. A claim whose figure has not
    been produced, that has no manifest or whose manifest does not say status 'ok' gets one row saying so (its
    tables are not read); nothing is hidden."""
    check_tolerance(acc_tolerance, level)
    root = Path(fig_root)
    rows: list[dict] = []
    for source in figures.claim_sources():
        claim, fig, what, extra = source.claim, source.figure, source.tests, source.table
        if claim not in CLAIMS:
            raise ValueError(f"{figures.profile_file(fig)}: figure.claims names claim {claim}, which is not one of "
                             f"{', '.join(map(str, CLAIMS))}")
        folder = root / fig
        if extra is not None and not (folder / f"models_{extra}.csv").exists():
            continue  # an optional table (e.g. fig2's many-seed comparison) that this run did not produce
        man = _manifest(folder)
        analog = str(man.get("analog") or "")  # a real-image analog (issue 27) names itself in every row
        base_row = {"claim": claim, "figure": fig, "test": f"{what} — {analog}" if analog else what,
                    "model": model_label(fig, man),
                    "profile": profile_label(man.get("profile", "?"), man.get("deviations")),  # as in the footers
                    "data": "; ".join(sorted(set(map(str, man.get("data_sources", []) or ["?"]))))[:160]}
        missing = {**base_row, "setting": "not produced", "profile": "-", "data": "-", "verdict": "inconclusive",
                   "rep": "-", "baseline": "-", "note": "figure not produced: nothing to test"}
        if not man and folder.is_dir() and any(folder.glob("*.csv")):
            rows.append({**missing, "note": "no manifest.json (not written by `repspec run`): its tables are not "
                                            "used"})
            continue
        if man and man.get("status") != "ok":
            rows.append({**missing, "note": f"the figure's manifest says status {man.get('status')!r}, not 'ok': "
                                            f"its tables are not used"})
            continue
        try:
            if claim == 3 and (folder / "metrics.csv").exists():  # per seed: paired intervals
                new = _paired_metric_claims(pd.read_csv(folder / "metrics.csv"), base_row, level)
            elif claim == 3:  # one model per method: point comparisons
                new = _metric_claims(pd.read_csv(folder / "summary.csv"), base_row)
            elif claim == 7:
                new = bound_claims(pd.read_csv(folder / "models.csv"), base_row, level)
            else:
                samples_path = folder / "samples.csv"
                samples = pd.read_csv(samples_path) if samples_path.exists() and extra is None else None
                table = folder / ("models.csv" if extra is None else f"models_{extra}.csv")
                new = _distance_claims(pd.read_csv(table), samples, base_row, acc_tolerance, level)
        except FileNotFoundError:
            new = [missing]
        rows += new or [{**missing, "note": "no rep-spectral / baseline pair in the table"}]
    out = pd.DataFrame(rows)
    out.insert(1, "statement", out["claim"].map(CLAIMS))
    return out


def claims_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per claim, test and setting: the verdict against all baselines together (fails if any comparison fails, holds
    if all hold, else inconclusive) and which baselines each verdict came from."""
    rows = []
    for (claim, test, setting, rep), g in table.groupby(["claim", "test", "setting", "rep"], sort=False, dropna=False):
        vs = list(g.verdict)
        overall = ("fails" if "fails" in vs else "holds" if all(v == "holds" for v in vs) else "inconclusive")
        by = {v: ", ".join(g.loc[g.verdict == v, "baseline"].astype(str)) for v in VERDICTS}
        rows.append({"claim": claim, "test": test, "setting": setting, "rep": rep, "profile": g.profile.iloc[0],
                     "verdict": overall, **{f"{v} vs": by[v] for v in VERDICTS}})
    return pd.DataFrame(rows)


# The baselines of the verdicts table's columns: family -> heading (claims 1 and 2; the transfer claim's L2-SP / BSS
# go in "other")
GLANCE_BASELINES = {"none": "vs None", "ll": "vs ll (paper: every layer)",
                    "ll_readout": "vs ll (authors' code: readout only)"}


def glance_table(table: pd.DataFrame) -> pd.DataFrame:
    """The verdicts at a glance: one row per claim × setting × rep-spectral variant (the statistical claims 1, 2, 4,
    5, 6), a column per baseline with Δ distance [CI] · Δ accuracy [CI] → that comparison's verdict, then the
    scale (profile, seeds) and the model. Claim 3 (one model per method) and claim 7 (ours) are not in it."""
    rows = []
    stat = table[table.claim.isin([1, 2, 4, 5, 6]) & (table.setting != "not produced")]
    for (claim, test, setting, rep), g in stat.groupby(["claim", "test", "setting", "rep"], sort=False, dropna=False):
        row = {"claim": claim, "test": test, "setting": setting, "rep": rep}
        other = []
        for r in g.itertuples():
            family = str(r.baseline).split()[0]
            dd = _fixed(r.distance_diff, r.distance_diff_ci_low, r.distance_diff_ci_high, 1.0, 3)
            da = _fixed(r.acc_diff, r.acc_diff_ci_low, r.acc_diff_ci_high, 100.0, 2)
            cell = f"Δx {dd} · Δacc {da}{' pts' if da != 'n/a' else ''} → **{r.verdict}**"
            if family in GLANCE_BASELINES:
                row[GLANCE_BASELINES[family]] = cell
            else:
                other.append(f"{str(r.baseline).split(' (its')[0]}: {cell}")
        row["vs others"] = "; ".join(other)
        seeds = g.n_seeds.dropna()
        data = str(g["data"].iloc[0]).upper() if "data" in g else ""
        row["scale"] = (f"{g.profile.iloc[0]}" + (f", {int(seeds.max())} seeds" if len(seeds) else "")
                        + (", SYNTHETIC data" if "SYNTHETIC" in data else ", stand-in data" if "STAND-IN" in data
                           else ""))
        row["model"] = g["model"].iloc[0] if "model" in g else ""
        rows.append(row)
    cols = ["claim", "test", "setting", "rep", *GLANCE_BASELINES.values(), "vs others", "scale", "model"]
    out = pd.DataFrame(rows).reindex(columns=cols).fillna("")
    return out.loc[:, [c for c in cols if c not in ("vs others",) or out[c].astype(bool).any()]]


def _fixed(mean, lo, hi, scale: float, decimals: int) -> str:
    """'+0.110 [+0.100, +0.120]' (values × scale, fixed decimals); 'n/a' without a mean, no interval without bounds."""
    vals = [float(v) * scale if v is not None and np.isfinite(float(v)) else np.nan for v in (mean, lo, hi)]
    if not np.isfinite(vals[0]):
        return "n/a"
    f = lambda v: f"{v:+.{decimals}f}".replace("-0." + "0" * decimals, "+0." + "0" * decimals)  # noqa: E731
    return f(vals[0]) + (f" [{f(vals[1])}, {f(vals[2])}]" if np.isfinite(vals[1]) and np.isfinite(vals[2]) else "")


RULE_SHORT = ("Each cell compares rep-spectral with one baseline, paired by seed: the mean difference rep − baseline "
              "in mean adversarial distance (Δx) and in test accuracy (Δacc) with its {level:.0%} Student-t interval "
              "over seeds. It **holds** when the Δx interval lies above 0 and the Δacc interval does not reach below "
              "−{tol:g} points; it **fails** when the Δx interval lies below 0 or the whole Δacc interval lies below "
              "−{tol:g} points; otherwise it is **inconclusive**.")


def glance_markdown(table: pd.DataFrame, acc_tolerance: float = ACC_TOLERANCE, level: float = LEVEL) -> str:
    """The verdicts table (`glance_table`) as Markdown, the rule in two sentences above it, claim 3's point
    comparisons in their own table marked 'one model per method'. The README's verdicts block is this text."""
    g = glance_table(table)
    out = [RULE_SHORT.format(level=level, tol=acc_tolerance * 100), ""]
    out.append("| " + " | ".join(g.columns) + " |")
    out.append("|" + "---|" * len(g.columns))
    for r in g.itertuples(index=False):
        out.append("| " + " | ".join(str(v) for v in r) + " |")
    metric = table[table.claim == 3]
    if not metric.empty:
        out += ["", "Claim 3 (rep-spectral lowers λ_max(g) and the volume-element peaks; lower is the claim): where a "
                "figure has several seeds, Δ of the logarithms paired by seed with its interval; where it has **one "
                "model per method**, a point comparison without interval (Δ blank):", "",
                "| test | rep | baseline | mean rep | mean baseline | Δ [CI] | seeds | verdict | scale | model |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in metric.iterrows():
            v = lambda c: "" if pd.isna(r.get(c)) else r.get(c)  # noqa: E731
            d = _fixed(r.get("distance_diff"), r.get("distance_diff_ci_low"), r.get("distance_diff_ci_high"), 1.0, 3)
            seeds = "" if pd.isna(r.get("n_seeds")) else int(r["n_seeds"])
            out.append(f"| {r['test']} | {r['rep']} | {r['baseline']} | {v('value rep')} | {v('value baseline')} "
                       f"| {'' if d == 'n/a' else d} | {seeds} | **{r['verdict']}** | {r['profile']} | {r['model']} |")
    return "\n".join(out) + "\n"


README_START, README_END = "<!-- verdicts:start (generated by notebooks/claims.ipynb) -->", "<!-- verdicts:end -->"


def readme_verdicts(table: pd.DataFrame) -> str:
    """The README's verdicts block, from the same comparisons as RESULTS.md's table (`glance_table`): one row per
    claim × test × rep-spectral variant, per baseline how many of its settings hold / fail / are inconclusive."""
    g = glance_table(table)
    cols = [c for c in GLANCE_BASELINES.values() if c in g.columns and g[c].astype(bool).any()]
    out = ["| claim | test | rep | " + " | ".join(cols) + " | scale | model |", "|" + "---|" * (len(cols) + 5)]
    for (claim, test, rep), rows in g.groupby(["claim", "test", "rep"], sort=False):
        cells = []
        for c in cols:
            vs = [v for cell in rows[c] if cell for v in VERDICTS if f"**{v}**" in cell]
            if not vs:
                cells.append("–")
            elif len(vs) == 1:
                cells.append(vs[0])
            else:
                cells.append(", ".join(f"{vs.count(v)} {v}" for v in VERDICTS if vs.count(v)) + f" (of {len(vs)})")
        out.append(f"| {claim} | {test} | {rep} | " + " | ".join(cells) + f" | {rows.scale.iloc[0]} | "
                   f"{rows.model.iloc[0]} |")
    return "\n".join(out) + "\n"


def replace_readme_block(readme: str, block: str) -> str:
    """`readme` with the text between README_START and README_END replaced by `block` (ValueError without them)."""
    if README_START not in readme or README_END not in readme:
        raise ValueError(f"the README has no {README_START!r} … {README_END!r} block")
    head, rest = readme.split(README_START, 1)
    return head + README_START + "\n" + block + rest[rest.index(README_END):]


def _interval(mean, lo, hi, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return ""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{mean:+.{digits}g} (no interval)"
    return f"{mean:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def rule_text(acc_tolerance: float = ACC_TOLERANCE, level: float = LEVEL) -> str:
    """The verdict rule in words, with the tolerance and level, for the top of the tables."""
    return (f"Verdict rule (paired by seed; {level:.0%} Student-t intervals of the mean difference rep − baseline "
            f"over seeds; accuracy tolerance {acc_tolerance * 100:g} points): **holds** when the distance interval "
            f"lies above 0 and the accuracy interval does not reach below −{acc_tolerance * 100:g} points; **fails** "
            f"when the distance interval lies below 0 or the whole accuracy interval lies below "
            f"−{acc_tolerance * 100:g} points; **inconclusive** otherwise. The per-sample Δ (samples both models "
            f"classify correctly and both attacks broke, pooled over seeds) is shown, not used. Metric rows (claim 3) "
            f"are point comparisons of one model per method.")


def claims_markdown(table: pd.DataFrame, acc_tolerance: float = ACC_TOLERANCE, level: float = LEVEL) -> str:
    """The rule, the summary per setting, and the full table of paired comparisons, as Markdown."""
    summary = claims_summary(table)
    out = [rule_text(acc_tolerance, level), "",
           "| claim | test | setting | rep-spectral | profile | verdict | holds vs | fails vs | inconclusive vs |",
           "|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        out.append(f"| {r.claim} | {r.test} | {r.setting} | {r.rep if isinstance(r.rep, str) else ''} | {r.profile} "
                   f"| **{r.verdict}** | {r['holds vs']} | {r['fails vs']} | {r['inconclusive vs']} |")
    out += ["", "Paired comparisons (Δ = rep − baseline; mean [interval]):", "",
            "| claim | test | setting | rep | baseline | seeds | distance rep | distance baseline | Δ distance "
            "| accuracy rep | accuracy baseline | Δ accuracy | per-sample Δ (pairs) | verdict | note |",
            "|" + "---|" * 15]
    for _, r in table.iterrows():
        def get(c):
            v = r.get(c)
            return "" if v is None or (isinstance(v, float) and np.isnan(v)) else v
        if r.claim == 3:  # metric rows: values, no distance
            d_rep, d_base, dd = get("value rep"), get("value baseline"), ""
        elif r.claim == 7:  # bound rows: the two gains and Δ of their logarithms
            d_rep, d_base = get("value rep"), get("value baseline")
            dd = _interval(*(float(r.get(c, np.nan)) for c in ("distance_diff", "distance_diff_ci_low",
                                                                 "distance_diff_ci_high")))
        else:
            d_rep, d_base = get("distance rep"), get("distance baseline")
            dd = _interval(*(float(r.get(c, np.nan)) for c in ("distance_diff", "distance_diff_ci_low",
                                                                 "distance_diff_ci_high")))
        da = _interval(*(float(r.get(c, np.nan)) for c in ("acc_diff", "acc_diff_ci_low", "acc_diff_ci_high")))
        ps = _interval(*(float(r.get(c, np.nan)) for c in ("sample_diff", "sample_diff_ci_low",
                                                             "sample_diff_ci_high")))
        if ps and get("n_pairs") != "":
            ps += f" ({int(r['n_pairs'])})"
        seeds = get("n_seeds")
        seeds = int(seeds) if seeds != "" else ""
        out.append(f"| {r.claim} | {r.test} | {r.setting} | {get('rep')} | {get('baseline')} | {seeds} | {d_rep} "
                   f"| {d_base} | {dd} | {get('accuracy rep')} | {get('accuracy baseline')} | {da} | {ps} "
                   f"| **{r.verdict}** | {get('note')} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- the field's methods (measured)
def field_figure() -> str:
    """The figure whose tables are the comparison with the field's methods (`figure.field` in its profile file)."""
    flagged = figures.flagged("field")
    if len(flagged) != 1:
        raise ValueError(f"exactly one profile file must set figure.field: true, found {list(flagged) or 'none'}")
    return flagged[0]


FIELD_PAIRS = (("rep", "none"), ("rep", "pgd_at"), ("rep", "arat"), ("rep", "lsp"), ("rep+pgd_at", "pgd_at"),
               ("rep+pgd_at", "arat"), ("rep+pgd_at", "lsp+pgd_at"))


FIELD_TITLE = "rep-spectral vs the field's methods (measured, not a claim of the paper)"


def field_values(models: pd.DataFrame) -> list[str]:
    """The measured columns of the comparison, in display order: accuracy, the Tangent-Attack and FMN distances,
    PGD robust accuracy per ε, AutoAttack."""
    pgd = sorted((c for c in models.columns if c.startswith("pgd_acc_eps=")), key=lambda c: float(c.split("=")[1]))
    return [c for c in ("test_acc", "ta_mean_distance", "fmn_mean_distance", *pgd, "autoattack_acc")
            if c in models.columns]


def field_table(fig_root, level: float = LEVEL) -> pd.DataFrame:
    """rep-spectral (alone and on top of PGD-AT) against the field's methods of `baselines_mnist`, per readout and
    measured column: the paired-by-seed mean difference (rep-variant − other) with its Student-t interval, and both
    means. Reported as measured: no verdict, no claim. Empty when the figure was not produced or its manifest does
    not say status 'ok'."""
    folder = Path(fig_root) / field_figure()
    man = _manifest(folder)
    if man.get("status") != "ok" or not (folder / "models.csv").exists():
        return pd.DataFrame()
    models = pd.read_csv(folder / "models.csv")
    rows = []
    for readout, g in models.groupby("readout", sort=False):
        for a, b in FIELD_PAIRS:
            A, B = g[g.method == a].set_index("seed"), g[g.method == b].set_index("seed")
            seeds = A.index.intersection(B.index)
            if seeds.empty:
                continue
            for col in field_values(models):
                diff = A.loc[seeds, col] - B.loc[seeds, col]
                mean, lo, hi, n = t_interval(diff, level)
                rows.append({"readout": readout, "method": a, "versus": b, "measure": col, "n_seeds": n,
                             "mean_method": float(A.loc[seeds, col].mean()),
                             "mean_versus": float(B.loc[seeds, col].mean()), "diff": mean, "diff_ci_low": lo,
                             "diff_ci_high": hi,
                             "profile": profile_label(man.get("profile", "?"), man.get("deviations"))})
    return pd.DataFrame(rows)


def field_markdown(table: pd.DataFrame, level: float = LEVEL) -> str:
    """The field comparison as Markdown: per readout, one row per pair, one column per measure (Δ [interval])."""
    if table.empty:
        return f"`{field_figure()}` not produced (or its last run did not end ok): nothing measured.\n"
    measures = list(dict.fromkeys(table.measure))
    names = {"test_acc": "accuracy", "ta_mean_distance": "TA distance", "fmn_mean_distance": "FMN distance",
             "autoattack_acc": "AutoAttack acc."}
    head = [names.get(m, m.replace("pgd_acc_eps=", "PGD acc. ε=")) for m in measures]
    out = [f"Paired by seed: Δ = method − versus, mean [{level:.0%} Student-t interval], at profile "
           f"{table.profile.iloc[0]}. No verdicts: these methods are not part of the paper's claims.", ""]
    for readout, g in table.groupby("readout", sort=False):
        out += [f"*{'own readout' if readout == 'original' else 'readout re-fitted on frozen Φ'}:*", "",
                "| method − versus | seeds | " + " | ".join(f"Δ {h}" for h in head) + " |",
                "|---|---|" + "---|" * len(head)]
        for (a, b), pair in g.groupby(["method", "versus"], sort=False):
            cells = pair.set_index("measure")
            out.append(f"| {a} − {b} | {int(cells.n_seeds.iloc[0])} | " + " | ".join(
                _interval(cells.at[m, "diff"], cells.at[m, "diff_ci_low"], cells.at[m, "diff_ci_high"])
                if m in cells.index else "" for m in measures) + " |")
        out.append("")
    return "\n".join(out)
