"""Figure helpers: house style, fixed method colours, the provenance footer, atomic saving, and the panels the
figures share (per-method distributions, mean ± sd bars, 2-D fields with boundaries, the Figure 1 illustration).

Every saved figure carries a footer naming the profile, seeds, epochs, attacked samples, data source and the
code commit (`footer_text`), so a reader can tell a CPU-scale rerun from a paper-scale one."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd

from repspec_utils.analysis.tables import DIGIT_PLANE_COORDS, square_grid
from repspec_utils.infra.files import atomic_path
from repspec_utils.infra.provenance import git_commit
from repspec_utils.infra.registry import METHODS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# seaborn "colorblind" palette entries, fixed per method so that every figure agrees
# seaborn's "colorblind" palette (tests/test_plotting.py checks it against seaborn): named here so that importing this
# module does not import seaborn (≈ 1 s: it loads scipy.stats); seaborn and pyplot are imported when a figure is
# drawn (`_seaborn()`, `_pyplot()`), so the claims notebook's imports stay light.
_CB = ("#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc", "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9")


MAIN_METHODS = ("none", "ll", "rep")  # the paper's three (Figs 2–6): None, ll-spectral, rep-spectral


# Every method's label, colour (an index into _CB) and place in the house order come from the method catalogue
# (METHODS.catalogue(), repspec_utils/method/catalogue.yaml), read without importing torch. A key may carry a strength
# suffix: 'rep λ=0.01' is drawn as rep, labelled 'rep-spectral λ=0.01'.


CLASS_COLORS = (_CB[3], _CB[9])  # class 0 vermillion, class 1 sky blue


CLASS_MARKERS = ("o", "s")


FOOTER_FIELDS = (  # in this order; a footer cut to its two lines loses the end first (the manifest has it all)
    ("profile", "profile"),
    ("seeds", "seeds"),
    ("epochs", "epochs"),
    ("attacked", "attacked samples"),
    ("commit", "commit"),
    ("compute", "compute"),
    ("data", "data"),
)


_FOOTER_GID = "repspec-footer"


def _pyplot():
    import matplotlib.pyplot

    return matplotlib.pyplot


def _seaborn():
    import seaborn

    return seaborn


def set_style() -> None:
    """The house style: seaborn whitegrid, paper context, colour-blind palette, 150 dpi figures."""
    _seaborn().set_theme(context="paper", style="whitegrid", palette="colorblind")
    _pyplot().rcParams.update({"figure.dpi": 150, "savefig.dpi": 150, "axes.titlesize": 9, "legend.fontsize": 7})


def _labels() -> dict[str, str]:
    return {name: entry["label"] for name, entry in METHODS.catalogue().items()}


def _split_method(m) -> tuple[str, str]:
    """(method key, suffix) of a key or display label with an optional ' …' strength suffix:
    'rep λ=0.01' and 'rep-spectral λ=0.01' -> ('rep', ' λ=0.01'); unknown names -> (name, '')."""
    m = str(m)
    labels = _labels()
    inverse = {v: k for k, v in labels.items()}
    for table in (labels, inverse):  # keys first, then labels; the longest match wins
        for name in sorted(table, key=len, reverse=True):
            if m == name or m.startswith(name + " "):
                return (name if table is labels else table[name]), m[len(name):]
    return m, ""


def _method_key(m) -> str:
    """'none' / 'll' / 'rep' / 'rep λ=0.01' / ... for a method key or its display label."""
    key, suffix = _split_method(m)
    return key + suffix


def method_label(m) -> str:
    """Display name of a method (its catalogue label): 'none' -> 'None', 'll' -> 'll-spectral', 'rep' ->
    'rep-spectral', 'rep λ=0.01' -> 'rep-spectral λ=0.01' (labels pass through; unknown names are shown as is)."""
    key, suffix = _split_method(m)
    return METHODS.display(key).get("label", key) + suffix


def method_color(m) -> str:
    """The fixed colour of a method (key or label, any strength suffix): its catalogue colour; other names get a
    neutral brown."""
    colour = METHODS.display(_split_method(m)[0]).get("colour")
    return _CB[colour] if isinstance(colour, int) and 0 <= colour < len(_CB) else _CB[5]


def method_order(methods: Iterable) -> list[str]:
    """The method keys present in `methods`, in the catalogue's house order (None, L2-SP, BSS, …, ll, rep, then others);
    keys with a strength suffix sit with their method, in the order given."""
    keys = list(dict.fromkeys(_method_key(m) for m in methods))
    rank = {k: i for i, k in enumerate(METHODS.catalogue())}
    return sorted(keys, key=lambda k: rank.get(_split_method(k)[0], len(rank)))


def _format_value(key: str, value) -> str:
    if value is None:
        return "n/a"
    if key == "seeds" and isinstance(value, (list, tuple, range, np.ndarray)):
        seeds = [int(s) for s in value]
        if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
            return f"{seeds[0]}–{seeds[-1]} (n={len(seeds)})"
        shown = ", ".join(map(str, seeds[:8])) + (", …" if len(seeds) > 8 else "")
        return f"{shown} (n={len(seeds)})"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def footer_text(info: Mapping) -> str:
    """The provenance line: profile, seeds, epochs, attacked samples, data, commit (git_commit() if not given), then
    any other keys of `info`; a missing field reads 'n/a'."""
    info = dict(info)
    if info.get("commit") is None:
        info["commit"] = git_commit()
    parts = [f"{label}: {_format_value(key, info.pop(key, None))}" for key, label in FOOTER_FIELDS]
    parts += [f"{k}: {_format_value(k, v)}" for k, v in info.items()]
    return "  ·  ".join(parts)


FOOTER_MAX_LINES = 2


def _footer_lines(text: str, fig_width_in: float, fontsize: float) -> list[str]:
    width_chars = max(40, int(fig_width_in * 72 / (0.55 * fontsize)))
    return textwrap.wrap(text, width_chars) or [text]


def add_footer(fig: Figure, text: str, fontsize: float = 6.0, max_lines: int = FOOTER_MAX_LINES):
    """Small grey `text` just below the figure (kept by bbox_inches='tight'); replaces an earlier footer. At most
    `max_lines` lines: a longer text is set smaller (down to 4.5 pt), then cut with '…' (the full record is in the
    figure's manifest.json)."""
    for t in [t for t in fig.texts if t.get_gid() == _FOOTER_GID]:
        t.remove()
    size = fontsize
    lines = _footer_lines(text, fig.get_figwidth(), size)
    while len(lines) > max_lines and size > 4.5:
        size = max(4.5, size - 0.5)
        lines = _footer_lines(text, fig.get_figwidth(), size)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(" ·") + " … (full record: manifest.json)"
    return fig.text(0.5, -0.01, "\n".join(lines), ha="center", va="top", fontsize=size, color="0.45",
                    gid=_FOOTER_GID)


SMOKE_BANNER = "SMOKE — not a result (seconds-scale settings that only exercise the code; see profiles/ for cpu / paper)"


def add_smoke_banner(fig: Figure):
    """A red line above the figure that says it is a smoke run, not a result (profile 'smoke')."""
    for t in [t for t in fig.texts if t.get_gid() == "repspec-smoke"]:
        t.remove()
    top = fig.get_tightbbox(fig.canvas.get_renderer()).y1 / fig.get_figheight()  # above titles and legends
    return fig.text(0.5, max(top, 1.0) + 0.01, SMOKE_BANNER, ha="center", va="bottom", fontsize=9, color="#c0392b",
                    fontweight="bold", gid="repspec-smoke")


def save_figure(fig: Figure, name: str, out_dir: str | Path, info: Mapping | None = None, dpi: int = 150) -> tuple[Path, Path]:
    """Write `<out_dir>/<name>.png` (dpi 150) and `.pdf` atomically (`files.atomic_path`), with the footer of
    `info` if given; returns (png_path, pdf_path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if info is not None:
        add_footer(fig, footer_text(info))
        if str(info.get("profile", "")).split()[0:1] == ["smoke"]:
            add_smoke_banner(fig)
    paths = []
    for ext in ("png", "pdf"):
        final = out_dir / f"{name}.{ext}"
        metadata = {"CreationDate": None} if ext == "pdf" else {"Software": None}  # byte-stable reruns
        with atomic_path(final, fsync=False) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=metadata)
        paths.append(final)
    return paths[0], paths[1]


def _with_labels(df: pd.DataFrame, x: str, order: Sequence | None) -> tuple[pd.DataFrame, list[str], dict]:
    keys = method_order(order if order is not None else df[x].unique())
    labels = [method_label(k) for k in keys]
    data = df.assign(_label=df[x].map(method_label))
    return data, labels, {method_label(k): method_color(k) for k in keys}


def _boxplot(**kwargs):
    """`sns.boxplot` without the DeprecationWarning seaborn 0.13 triggers by passing matplotlib 3.11's `vert`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*vert: bool.*", category=DeprecationWarning)
        return _seaborn().boxplot(**kwargs)


BOX_MIN_SEEDS = 5  # fewer seeds per method: mean ± sd with the seeds as dots instead of a box


def plot_method_distribution(
    df: pd.DataFrame, x: str = "method", y: str = "test_accuracy", ax=None, order: Sequence | None = None,
    ylabel: str | None = None, dots: bool = True,
):
    """`y` per method (one row per seed) with the seeds as dots, methods in house order (Figs 4–8): a box plot when
    every method has at least BOX_MIN_SEEDS seeds, else the mean ± 1 sd (a box of 3 seeds would pretend to show
    quartiles)."""
    ax = ax if ax is not None else _pyplot().gca()
    data, labels, palette = _with_labels(df, x, order)
    counts = data.groupby("_label")[y].count()
    if len(counts) and counts.min() >= BOX_MIN_SEEDS:
        _boxplot(data=data, x="_label", y=y, hue="_label", order=labels, hue_order=labels, palette=palette,
                 width=0.55, showfliers=False, boxprops={"alpha": 0.55}, legend=False, ax=ax)
    else:
        _seaborn().pointplot(data=data, x="_label", y=y, hue="_label", order=labels, hue_order=labels, palette=palette,
                      errorbar="sd", capsize=0.25, markers="_", markersize=14, linestyle="none", legend=False,
                      ax=ax)
    if dots:
        _seaborn().stripplot(data=data, x="_label", y=y, order=labels, color="0.15", size=3.5, jitter=0.12, alpha=0.85, ax=ax)
    ax.set_xticks(range(len(labels)), [textwrap.fill(label, 16) for label in labels])  # long labels on lines
    ax.set_xlabel("")
    ax.set_ylabel(ylabel if ylabel is not None else y.replace("_", " "))
    return ax


def eps_label(eps) -> str:
    """An L∞ radius as people write it: in units of 1/255 where it is one (0.0313725… -> '8/255'), else as given."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        return str(eps)
    k = value * 255
    if value > 0 and abs(k - round(k)) < 1e-4 and abs(value * 100 - round(value * 100)) > 1e-9:
        return f"{round(k)}/255"
    return f"{value:g}"


def plot_defences(models: pd.DataFrame, pgd_column: str, suptitle: str = "", suptitle_color: str = "black") -> Figure:
    """The defence comparison (issue 13): per method, clean test accuracy, the mean Tangent-Attack distance and the
    PGD robust accuracy in `pgd_column` (seeds as dots, `plot_method_distribution`); one row per readout of
    `models` (`tables.defence_models`): the model's own readout, then the one re-fitted on frozen Φ."""
    missing = [c for c in ("method", "readout", "test_acc", "ta_mean_distance", pgd_column) if c not in models]
    if missing:
        raise ValueError(f"plot_defences needs the columns {missing} (tables.defence_models gives them)")
    eps = pgd_column.split("=", 1)[1] if "=" in pgd_column else pgd_column
    panels = [("test_acc", "test accuracy"), ("ta_mean_distance", r"mean TA distance $\Delta x$"),
              (pgd_column, f"PGD robust accuracy (ε = {eps_label(eps)})")]
    readouts = [r for r in ("original", "refit") if (models["readout"] == r).any()]
    fig, axes = _pyplot().subplots(len(readouts), 3, figsize=(11, 3.2 * len(readouts)), constrained_layout=True,
                             squeeze=False)
    for row, readout in enumerate(readouts):
        part = models[models["readout"] == readout]
        for col, (y, label) in enumerate(panels):
            ax = axes[row, col]
            plot_method_distribution(part, y=y, ax=ax, ylabel=label)
            ax.set_title(("own readout" if readout == "original" else "re-fitted readout") + f": {label}", fontsize=9)
            ticks = [t.get_text().replace("-\n", "-").replace("\n", " ") for t in ax.get_xticklabels()]  # whole names
            ax.set_xticks(ax.get_xticks(), ticks)
            _pyplot().setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor", fontsize=7)
    fig.text(0.5, -0.01, "dots: one seed each; boxes: median and quartiles across seeds", ha="center", fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=8, color=suptitle_color)  # darkred: a SYNTHETIC STAND-IN says so
    return fig


def plot_mean_sd_bars(
    df: pd.DataFrame, y: str, *, x: str = "method", by: str | None = None, ax=None, order: Sequence | None = None,
    ylabel: str | None = None, by_label: str | None = None, dots: bool = True, upper: float | None = None,
):
    """Bars of the mean of `y` across seeds ± 1 sd (ddof 1) per method in its colour; with `by` (e.g. 'weight_decay')
    one group of method bars per value of `by` (Fig 2). `upper`: the largest value `y` can take (Fig 2: a mean Δx
    of 1); a whisker is cut there and drawn without its cap. Returns the table of (by,) method, mean, sd, n, x (the
    bar's position) that was drawn."""
    ax = ax if ax is not None else _pyplot().gca()
    keys = method_order(order if order is not None else df[x].unique())
    groups = sorted(df[by].unique()) if by is not None else [None]
    width = 0.8 / len(keys) if by is not None else 0.6
    rng = np.random.default_rng(0)
    rows = []
    for gi, g in enumerate(groups):
        sub = df if by is None else df[df[by] == g]
        for mi, k in enumerate(keys):
            vals = sub.loc[sub[x].map(_method_key) == k, y].astype(float).to_numpy()
            if len(vals) == 0:
                continue
            pos = gi + (mi - (len(keys) - 1) / 2) * width if by is not None else mi
            mean, sd = vals.mean(), (vals.std(ddof=1) if len(vals) > 1 else np.nan)
            ax.bar(pos, mean, width * 0.9, color=method_color(k), alpha=0.8,
                   label=method_label(k) if gi == 0 else None, zorder=2)
            if np.isfinite(sd):
                top = mean + sd if upper is None else min(mean + sd, upper)
                ax.errorbar(pos, mean, yerr=[[sd], [top - mean]], color="0.1", capsize=3, lw=1, zorder=3)
                if upper is not None and mean + sd > upper:  # cut at the bound: no cap there
                    ax.plot([pos - width * 0.15, pos + width * 0.15], [top, top], color="white", lw=2.2, zorder=3.5)
            if dots:
                ax.scatter(pos + rng.uniform(-0.15, 0.15, len(vals)) * width, vals, s=8, color="0.15", zorder=4, lw=0)
            rows.append({**({by: g} if by is not None else {}), "method": k, "mean": mean, "sd": sd, "n": len(vals),
                         "x": pos})
    if by is not None:
        ax.set_xticks(range(len(groups)), [f"{by_label or by.replace('_', ' ')} = {g:g}" if isinstance(g, (int, float))
                                            else f"{by_label or by} = {g}" for g in groups])
        ax.legend(frameon=False, ncol=len(keys), loc="lower center", bbox_to_anchor=(0.5, 1.0))
    else:
        ax.set_xticks(range(len(keys)), [method_label(k) for k in keys])
    ax.set_ylabel(ylabel if ylabel is not None else y.replace("_", " "))
    return pd.DataFrame(rows)


VERDICT_COLORS = {"holds": _CB[2], "fails": _CB[3], "inconclusive": _CB[7]}


PAIRED_BASELINES = (("none", "o", "vs None"), ("ll", "s", "vs ll (every layer)"),
                    ("ll_readout", "^", "vs ll (readout only)"), ("other", "D", "vs another method"))


def plot_paired_intervals(rows: pd.DataFrame, level: float = 0.95, acc_tolerance: float | None = 0.005,
                          axes=None) -> Figure:
    """The claims figure from a claims table (`repspec_utils.analysis.claims.claims_table`): one row per test × setting ×
    rep-spectral variant (its profile and seeds in the label), one marker per baseline (shape) coloured by that
    comparison's verdict; left panel the paired Δ mean distance rep − baseline in % of the baseline's mean distance,
    right panel the paired Δ test accuracy in points, each with its `level` t interval. Symmetric-log axes: no interval
    is cut, small ones stay readable. The dashed line on the right is −`acc_tolerance`."""
    rows = rows.reset_index(drop=True).copy()
    rows["family"] = rows["baseline"].astype(str).str.split().str[0]
    rows.loc[~rows.family.isin([b for b, _, _ in PAIRED_BASELINES[:3]]), "family"] = "other"
    keys = list(dict.fromkeys(zip(rows["test"], rows["setting"], rows["rep"])))
    n = max(len(keys), 1)
    if axes is None:
        fig, axes = _pyplot().subplots(1, 2, figsize=(9.0, 1.3 + 0.19 * n), sharey=True, constrained_layout=True,
                                 gridspec_kw={"width_ratios": [1.25, 1.0]})
    fig = axes[0].figure
    ypos = {k: n - 1 - i for i, k in enumerate(keys)}
    offsets = {b: (i - 1.5) * 0.17 for i, (b, _, _) in enumerate(PAIRED_BASELINES)}
    markers = {b: m for b, m, _ in PAIRED_BASELINES}
    for _, r in rows.iterrows():
        yi = ypos[(r["test"], r["setting"], r["rep"])] + offsets[r["family"]]
        color = VERDICT_COLORS.get(r["verdict"], "black")
        base = r.get("distance_baseline_mean", np.nan)
        scale = 100.0 / base if np.isfinite(base) and base else np.nan
        for ax, cols, factor in ((axes[0], ("distance_diff", "distance_diff_ci_low", "distance_diff_ci_high"), scale),
                                 (axes[1], ("acc_diff", "acc_diff_ci_low", "acc_diff_ci_high"), 100.0)):
            mid, lo, hi = (float(r.get(c, np.nan)) * factor for c in cols)
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [yi, yi], color=color, lw=1.4, solid_capstyle="butt")
            if np.isfinite(mid):
                ax.plot([mid], [yi], markers[r["family"]], color=color, ms=3.5, mec="0.15", mew=0.3)
    def label(k):  # noqa: E306
        sub = rows[(rows.test == k[0]) & (rows.setting == k[1]) & (rows.rep == k[2])]
        seeds = sub["n_seeds"].dropna() if "n_seeds" in sub else pd.Series(dtype=float)
        scale_txt = f"{sub['profile'].iloc[0]}" + (f", {int(seeds.max())} seeds" if len(seeds) else "")
        return f"{k[0]} · {k[1]} · {k[2]} ({scale_txt})".replace(" · all", "")
    axes[0].set_yticks([ypos[k] for k in keys], [label(k) for k in keys], fontsize=6)
    axes[0].set_ylim(-0.7, n - 0.3)
    for ax, thresh, xlabel, marks in (
            (axes[0], 5.0, "Δ mean distance, rep − baseline\n(% of the baseline's, symlog)", (10, 30, 100)),
            (axes[1], 0.5, "Δ test accuracy, rep − baseline\n(points, symlog)", (1, 3, 10))):
        ax.set_xscale("symlog", linthresh=thresh)
        lo, hi = ax.get_xlim()
        ticks = [t for t in (*(-m for m in marks[::-1]), 0, *marks) if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:+g}" if t else "0" for t in ticks])
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
        ax.grid(True, axis="x", lw=0.3, alpha=0.5)
    if acc_tolerance:
        axes[1].axvline(-acc_tolerance * 100, color="0.3", lw=0.8, ls="--")
    handles = [_pyplot().Line2D([], [], color=c, lw=1.4, label=v) for v, c in VERDICT_COLORS.items()]
    handles += [_pyplot().Line2D([], [], color="0.3", ls="", marker=m, ms=4, label=t)
                for b, m, t in PAIRED_BASELINES if (rows.family == b).any()]
    fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=6, frameon=False,
               title=f"rep-spectral against each baseline, paired by seed ({level:.0%} t intervals); colour: that "
                     f"comparison's verdict", title_fontsize=8)  # the title on top; save_figure's footer at the bottom
    return fig


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def scatter_classes(ax, points, labels, correct=None, size: float = 18) -> None:
    """Training points coloured and shaped by label (class 0 vermillion circles, class 1 blue squares);
    with `correct` given, misclassified points are crossed out."""
    P, y = _np(points).reshape(-1, 2), _np(labels).astype(int).ravel()
    for c in np.unique(y):
        sel = y == c
        ax.scatter(P[sel, 0], P[sel, 1], s=size, c=CLASS_COLORS[c % 2], marker=CLASS_MARKERS[c % 2],
                   edgecolors="k", linewidths=0.6, zorder=5, label=f"class {c}")
    if correct is not None:
        wrong = ~_np(correct).astype(bool).ravel()
        ax.scatter(P[wrong, 0], P[wrong, 1], s=size * 2.2, c="k", marker="x", linewidths=1.2, zorder=6)


def log_colorbar(cb) -> None:
    """Ticks at 1, 2 and 5 × each power of ten on a log colour bar (matplotlib's default leaves a bar spanning less
    than two decades with one labelled tick), labelled plainly."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    cb.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=30))
    cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    cb.ax.yaxis.set_minor_locator(LogLocator(subs="auto"))
    cb.ax.yaxis.set_minor_formatter(NullFormatter())


def plot_field_2d(
    ax, xx, yy, values, *, log: bool = True, points=None, labels=None, boundary=None, title: str | None = None,
    cmap: str = "viridis", cbar: bool = True, cbar_label: str | None = None, vmin: float | None = None,
    vmax: float | None = None, boundary_color: str = "white",
):
    """A scalar field (√det g, λ_max(g), ...) on a grid (xx, yy (n, n); values n² or (n, n)), log colour scale by
    default (values ≤ 0 or non-finite left blank), points coloured by label, and the zero level of `boundary`
    (F_1 − F_0 on the same grid) as the decision boundary. Returns the QuadMesh."""
    xx, yy = _np(xx), _np(yy)
    V = np.ma.masked_invalid(_np(values).astype(float).reshape(xx.shape))
    if log:
        V = np.ma.masked_less_equal(V, 0)
        lo = vmin if vmin is not None else (V.min() if V.count() else 1e-12)
        hi = vmax if vmax is not None else (V.max() if V.count() else 1.0)
        norm = mcolors.LogNorm(vmin=lo, vmax=max(hi, lo * (1 + 1e-9)))
    else:
        norm = mcolors.Normalize(vmin=vmin, vmax=vmax)
    mesh = ax.pcolormesh(xx, yy, V, norm=norm, cmap=cmap, shading="nearest", rasterized=True)
    if boundary is not None:
        B = _np(boundary).astype(float).reshape(xx.shape)
        if B.min() < 0 < B.max():
            ax.contour(xx, yy, B, levels=[0.0], colors=boundary_color, linewidths=1.4)
    if points is not None:
        scatter_classes(ax, points, labels if labels is not None else np.zeros(len(_np(points))))
    if cbar:
        ax.figure.colorbar(mesh, ax=ax, label=cbar_label, fraction=0.046, pad=0.04)
    _square_axes(ax, xx, yy, title)
    return mesh


def _square_axes(ax, xx, yy, title: str | None) -> None:
    """Limits to the grid, equal aspect, optional title."""
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)


def plot_decision_boundary(ax, xx, yy, margin_values, points, labels, title: str | None = None):
    """Decision regions (light class colours) and boundary (black) of F_1 − F_0 on a grid, with the points (Fig 3a)."""
    xx, yy = _np(xx), _np(yy)
    M = _np(margin_values).astype(float).reshape(xx.shape)
    light = [mcolors.to_rgba(c, 0.25) for c in CLASS_COLORS]
    ax.contourf(xx, yy, M, levels=[-np.inf, 0.0, np.inf], colors=light)
    if M.min() < 0 < M.max():
        ax.contour(xx, yy, M, levels=[0.0], colors="k", linewidths=1.4)
    scatter_classes(ax, points, labels)
    _square_axes(ax, xx, yy, title)
    return ax


def plot_boundaries(ax, xx, yy, margins: Mapping, *, reference=None, reference_label: str = "true boundary",
                    title: str | None = None, legend: bool = True):
    """Decision boundaries of several models on one axis: the zero set of each F_1 − F_0 in `margins`
    ({method key: values on the grid xx, yy}) in its method's colour, and the zero set of `reference` (a signed field
    on the same grid, e.g. the true boundary) dashed black. Returns the legend handles drawn."""
    from matplotlib.lines import Line2D

    xx, yy = _np(xx), _np(yy)
    handles = []
    if reference is not None:
        R = _np(reference).astype(float).reshape(xx.shape)
        ax.contour(xx, yy, R, levels=[0.0], colors="k", linewidths=1.2, linestyles="--", zorder=2)
        handles.append(Line2D([], [], color="k", lw=1.2, ls="--", label=reference_label))
    for k in method_order(margins):
        M = _np(margins[k]).astype(float).reshape(xx.shape)
        if M.min() < 0 < M.max():
            ax.contour(xx, yy, M, levels=[0.0], colors=[method_color(k)], linewidths=1.5, zorder=3)
        handles.append(Line2D([], [], color=method_color(k), lw=1.5, label=method_label(k)))
    ax.set_xlim(xx.min(), xx.max())
    ax.set_ylim(yy.min(), yy.max())
    ax.set_aspect("equal")
    if legend:
        ax.legend(handles=handles, frameon=True, framealpha=0.85, loc="lower left", fontsize=6)
    if title:
        ax.set_title(title)
    return handles


def plot_geometry_maps(grid: pd.DataFrame, points, labels, *, methods: Sequence | None = None, col: str = "method",
                       panel_size: float = 2.3):
    """Figure 3 from an `run.grid_table` holding one model per method: row (a) decision regions and boundary,
    row (b) √det g, row (c) λ_max(g), both log colour scales shared along the row (one colour bar per row), with the
    training points and (white) the decision boundary. Returns (fig, axes (3, k))."""
    keys = method_order(methods if methods is not None else grid[col].unique())
    sub = {k: grid[grid[col].map(_method_key) == k] for k in keys}
    n = int(round(np.sqrt(len(sub[keys[0]]))))
    if any(len(s) != n * n for s in sub.values()):
        raise ValueError(f"plot_geometry_maps needs one model per {col} on one n×n grid, got "
                         f"{ {k: len(s) for k, s in sub.items()} } rows")
    first = sub[keys[0]]
    xx, yy = first["x1"].to_numpy().reshape(n, n), first["x2"].to_numpy().reshape(n, n)
    fig, axes = _pyplot().subplots(3, len(keys), figsize=(panel_size * len(keys) + 1.0, 3 * panel_size + 0.4),
                             squeeze=False, constrained_layout=True)
    tag = lambda i, j: f"({chr(ord('a') + i * len(keys) + j)})"  # noqa: E731  every panel its own letter
    for j, k in enumerate(keys):
        plot_decision_boundary(axes[0, j], xx, yy, sub[k]["margin"], points, labels,
                               title=textwrap.fill(f"{tag(0, j)} {method_label(k)}", 30))
    fields = [(np.exp(grid["log_volume"].to_numpy()), r"volume element $\sqrt{\det g}$"),
              (grid["lambda_max"].to_numpy(), r"$\lambda_{\max}(g) = \Vert J_\Phi\Vert_2^2$")]
    for i, (values, cbar_label) in enumerate(fields, start=1):
        values = pd.Series(values, index=grid.index)
        ok = values[np.isfinite(values) & (values > 0)]
        lo, hi = (ok.min(), ok.max()) if len(ok) else (None, None)
        for j, k in enumerate(keys):
            mesh = plot_field_2d(axes[i, j], xx, yy, values.loc[sub[k].index], log=True, points=points,
                                 labels=labels, boundary=sub[k]["margin"], cbar=False, vmin=lo, vmax=hi,
                                 title=textwrap.fill(f"{tag(i, j)} {method_label(k)}", 30))
        log_colorbar(fig.colorbar(mesh, ax=axes[i, :], label=cbar_label, shrink=0.9, pad=0.02))
    for i, row_label in enumerate(("decision regions", "volume element", r"$\lambda_{\max}(g)$")):
        axes[i, 0].set_ylabel(f"{row_label}\n$x_2$")
    for ax in axes[-1, :]:
        ax.set_xlabel("$x_1$")
    for ax in axes.ravel():
        ax.grid(False)
    axes[0, 0].legend(loc="lower right", fontsize=6, framealpha=0.85, handletextpad=0.2)  # the classes
    fig.suptitle(r"pull-back metric $g = J_\Phi^\top J_\Phi = \frac{1}{n}\sum_j \varphi'(z_j)^2\, w_j w_j^\top$ of "
                 r"$\Phi(x) = \varphi(Wx + b)/\sqrt{n}$ (n = width: the 1/n is the model's normalisation)"
                 "\nlog colour scales shared along each row; white line: decision boundary", fontsize=7)
    return fig, axes


def figure1_tradeoff(ax_row, examples: Sequence, lim: float = 3.25) -> Sequence:
    """Figure 1 on three axes: (a) 50% accurate, correct points far from the boundary; (b) 100% accurate, small
    margins; (c) 100% accurate, large margin. Regions, boundary, an arrow from every correct point to its nearest
    boundary point, and the computed accuracy and mean distance. `examples`: `evaluation.geometry.tradeoff_examples(eps)`
    (computed there; drawn here); returned as given."""
    if ax_row is None:
        _, ax_row = _pyplot().subplots(1, 3, figsize=(7.5, 2.8))
    xx, yy, grid = square_grid(lim, 301)
    grid = grid.astype(np.float32)  # the float32 points `geometry.grid_2d` gives the models
    for ax, ex in zip(ax_row, examples):
        D = ex.decision(grid.astype(float)).reshape(xx.shape)
        ax.contourf(xx, yy, D, levels=[-np.inf, 0.0, np.inf], colors=[mcolors.to_rgba(c, 0.18) for c in CLASS_COLORS])
        line = ex.polyline()
        ax.plot(line[:, 0], line[:, 1], color="k", lw=1.5, zorder=3)
        dist, near = ex.nearest_boundary(ex.points)
        for p, q in zip(ex.points[ex.correct], near[ex.correct]):
            ax.annotate("", xy=q, xytext=p, zorder=4,
                        arrowprops={"arrowstyle": "->", "color": "0.3", "lw": 0.8, "shrinkA": 3, "shrinkB": 0})
        scatter_classes(ax, ex.points, ex.labels, correct=ex.correct, size=22)
        ax.set_title(f"({ex.key}) {ex.description}")
        ax.set_xlabel(f"accuracy {ex.accuracy:.0%}\nmean Δx {ex.mean_distance:.2f}", fontsize=8)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    return examples


def plot_method_lines(
    df: pd.DataFrame, x: str, y: str, *, ax=None, hue: str = "method", order: Sequence | None = None,
    band: str | None = "sd", logx: bool = False, logy: bool = False, vlines: Sequence[float] = (),
    vline_label: str | None = None, xlabel: str | None = None, ylabel: str | None = None, marker: str | None = "o",
    legend: bool = True,
):
    """Mean of `y` across seeds vs `x`, one line per method in its colour (house order), with a ± sd band
    (band='sd'; 'sem': standard error; None: no band). A method with a single x value while others have several
    (None in a λ sweep, at λ = 0) is drawn as a horizontal dashed line with its band. `vlines`: dotted vertical lines
    (e.g. the burn-in epoch). Rows with missing `y` are skipped. Returns the table drawn: method, x, mean, sd, n."""
    ax = ax if ax is not None else _pyplot().gca()
    data = df[[hue, x, y]].dropna(subset=[y])
    keys = method_order(order if order is not None else data[hue].unique())
    rows = []
    for k in keys:
        sub = data[data[hue].map(_method_key) == k]
        if sub.empty:
            continue
        g = sub.groupby(x)[y].agg(["mean", "std", "count"]).reset_index().sort_values(x)
        spread = {"sd": g["std"], "sem": g["std"] / np.sqrt(g["count"])}.get(band) if band else None
        spread = spread.fillna(0.0) if spread is not None else None
        color, label = method_color(k), method_label(k)
        if len(g) == 1 and data[x].nunique() > 1:
            mean = float(g["mean"].iloc[0])
            ax.axhline(mean, color=color, ls="--", lw=1.2, label=label, zorder=2)
            if spread is not None and spread.iloc[0] > 0:
                ax.axhspan(mean - spread.iloc[0], mean + spread.iloc[0], color=color, alpha=0.15, lw=0, zorder=1)
        else:
            ax.plot(g[x], g["mean"], color=color, marker=marker, ms=3, lw=1.3, label=label, zorder=3)
            if spread is not None:
                ax.fill_between(g[x], g["mean"] - spread, g["mean"] + spread, color=color, alpha=0.2, lw=0, zorder=1)
        rows += [{"method": k, x: xv, "mean": mv, "sd": sv, "n": int(nv)}
                 for xv, mv, sv, nv in zip(g[x], g["mean"], g["std"], g["count"])]
    for i, v in enumerate(vlines):
        ax.axvline(v, color="0.3", ls=":", lw=1.0, label=vline_label if i == 0 else None, zorder=0)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel if xlabel is not None else x.replace("_", " "))
    ax.set_ylabel(ylabel if ylabel is not None else y.replace("_", " "))
    if legend:
        ax.legend(frameon=False, fontsize=6)
    return pd.DataFrame(rows)


def plot_metric_plane(plane: pd.DataFrame, *, methods: Sequence | None = None, digits: Sequence[int] = (7, 6, 1),
                      panel_size: float = 2.3):
    """The MNIST metric-plane figure from an `run.metric_plane_table`: row (a) log √det g and row (b) λ_max(g)
    (log colour) on the plane grid per method (the smallest seed), colour scales shared along each row, the three digits
    marked, the digit triangle dashed and the predicted-class boundaries in white; row (c) both along the triangle's
    edges (mean over seeds) for all methods. Returns (fig, map axes (2, k), edge axes (2,))."""
    keys = method_order(methods if methods is not None else plane["method"].unique())
    grid = plane[plane["part"] == "grid"]
    grid = grid[grid["seed"] == grid["seed"].min()]
    first = {k: grid[grid["method"].map(_method_key) == k] for k in keys}
    n = int(round(np.sqrt(len(first[keys[0]]))))
    if any(len(s) != n * n for s in first.values()):
        raise ValueError(f"plot_metric_plane needs one n×n grid per method, got { {k: len(s) for k, s in first.items()} } rows")
    a, b = first[keys[0]]["a"].to_numpy().reshape(n, n), first[keys[0]]["b"].to_numpy().reshape(n, n)
    corners = np.array(DIGIT_PLANE_COORDS)
    fig = _pyplot().figure(figsize=(panel_size * len(keys) + 1.2, 3 * panel_size + 0.6), constrained_layout=True)
    top, bottom = fig.subfigures(2, 1, height_ratios=[2.0, 1.0])
    axes = top.subplots(2, len(keys), squeeze=False)
    fields = [("a", "log_volume", False, r"$\log\sqrt{\det g}$"), ("b", "lambda_max", True, r"$\lambda_{\max}(g)$")]
    for i, (_, col, log, label) in enumerate(fields):
        vals = pd.concat([s[col] for s in first.values()])
        ok = vals[np.isfinite(vals) & ((vals > 0) if log else True)]
        lo, hi = (float(ok.min()), float(ok.max())) if len(ok) else (None, None)
        for j, k in enumerate(keys):
            ax = axes[i, j]
            letter = f"({chr(ord('a') + i * len(keys) + j)})"  # every panel its own letter
            mesh = plot_field_2d(ax, a, b, first[k][col].to_numpy(), log=log, cbar=False, vmin=lo, vmax=hi,
                                 title=textwrap.fill(f"{letter} {method_label(k)}", 30))
            pred = first[k]["pred"].to_numpy().reshape(n, n)
            for c in np.unique(pred) if len(np.unique(pred)) > 1 else []:  # each class region's outline, once
                ax.contour(a, b, (pred == c).astype(float), levels=[0.5], colors="white", linewidths=0.7)
            ax.plot(*np.vstack([corners, corners[:1]]).T, color="0.9", ls="--", lw=0.8)
            ax.scatter(corners[:, 0], corners[:, 1], s=22, c="red", edgecolors="white", linewidths=0.8, zorder=5)
            for (ca, cb), dg in zip(corners, digits):
                ax.annotate(str(dg), (ca, cb), xytext=(4, 4), textcoords="offset points", color="white",
                            fontsize=8, fontweight="bold")
            ax.grid(False)
            ax.set_xlabel(f"a (digit {digits[0]} → {digits[1]})" if i == 1 else "")
            ax.set_ylabel(f"b (towards digit {digits[2]})" if j == 0 else "")
        cb = top.colorbar(mesh, ax=axes[i, :], label=label, shrink=0.9, pad=0.02)
        if log:
            log_colorbar(cb)
    edge_axes = bottom.subplots(1, 2)
    edge = plane[plane["part"] == "edge"]
    ticks = [0, 1, 2, 3]
    tick_labels = [str(digits[0]), str(digits[1]), str(digits[2]), str(digits[0])]
    n_maps = 2 * len(keys)
    edges = [(f"({chr(ord('a') + n_maps)})", "log_volume", False, fields[0][3]),
             (f"({chr(ord('a') + n_maps + 1)})", "lambda_max", True, fields[1][3])]
    for ax, (tag, col, log, label) in zip(edge_axes, edges):
        plot_method_lines(edge, "position", col, ax=ax, order=keys, logy=log, marker=None, xlabel="", ylabel=label)
        ax.set_xticks(ticks, [f"digit {t}" for t in tick_labels])
        ax.set_title(f"{tag} {label} along the triangle through the digits")
    return fig, axes, edge_axes


BOUND_LABELS = {"certified_global": "certified (global)", "certified_radius": "certified (local)",
                "fmn_distance": "FMN (white box)", "ta_distance": "Tangent Attack"}


def plot_sandwich_scatter(samples: pd.DataFrame, ax=None, x: str = "fmn_distance", y: str = "certified_radius",
                          order: Sequence | None = None, max_points: int = 600, seed: int = 0):
    """Per sample of a `run.sandwich_table`: the certified radius against an attack's distance, one colour per
    method, with the diagonal (a certificate can never lie above it). At most `max_points` samples per method are
    drawn (a seeded subset, so dense panels stay readable)."""
    ax = ax if ax is not None else _pyplot().gca()
    keys = method_order(order if order is not None else samples.method.unique())
    ok = samples[np.isfinite(samples[x].astype(float)) & np.isfinite(samples[y].astype(float))]
    for k in keys:
        sub = ok[ok.method.map(_method_key) == k]
        if len(sub) > max_points:
            sub = sub.sample(max_points, random_state=seed)
        ax.scatter(sub[x], sub[y], s=6, alpha=0.5, lw=0, color=method_color(k), label=method_label(k))
    top = float(np.nanmax(ok[[x, y]].to_numpy(dtype=float))) if len(ok) else 1.0
    ax.plot([0, top], [0, top], color="0.3", lw=0.8, ls=":", label="y = x")
    ax.set_xlim(0, top * 1.03)
    ax.set_ylim(0, top * 1.03)
    ax.set_xlabel(BOUND_LABELS.get(x, x) + " distance")
    ax.set_ylabel(BOUND_LABELS.get(y, y) + " radius")
    return ax


def plot_bound_distributions(samples: pd.DataFrame, ax=None, order: Sequence | None = None):
    """Box plots per method of the four per-sample bounds on Δx (certified global ≤ certified local ≤ Δx ≤ FMN,
    Tangent Attack), hue = the bound, in `BOUND_LABELS` order."""
    ax = ax if ax is not None else _pyplot().gca()
    keys = method_order(order if order is not None else samples.method.unique())
    long = samples.melt(id_vars=["method"], value_vars=list(BOUND_LABELS), var_name="bound", value_name="value")
    long = long[np.isfinite(long.value.astype(float))].assign(_label=lambda d: d.method.map(method_label),
                                                              _bound=lambda d: d.bound.map(BOUND_LABELS))
    labels = [method_label(k) for k in keys]
    _boxplot(data=long, x="_label", y="value", hue="_bound", order=labels, hue_order=list(BOUND_LABELS.values()),
             palette="mako", showfliers=False, width=0.7, linewidth=0.7, ax=ax)
    ax.set_xticks(range(len(labels)), [textwrap.fill(label, 16) for label in labels])
    ax.set_xlabel("")
    ax.set_ylabel("per-sample radius / distance")
    ax.legend(frameon=False, fontsize=6, title=None)
    return ax


def plot_bound_gains(gains: pd.DataFrame, ax=None, order: Sequence | None = None):
    """The gain of each method over the baseline (`tables.bound_gains`: mean value / baseline's, per seed) for each
    bound, as mean ± sd bars with the seeds as dots; the dotted line at 1 is no gain."""
    ax = ax if ax is not None else _pyplot().gca()
    keys = method_order(order if order is not None else gains.method.unique())
    quantities = [q for q in BOUND_LABELS if q in set(gains.quantity)]
    width = 0.8 / max(1, len(quantities))
    colors = _seaborn().color_palette("mako", len(quantities))
    rng = np.random.default_rng(0)
    for mi, k in enumerate(keys):
        for qi, q in enumerate(quantities):
            vals = gains.loc[(gains.method.map(_method_key) == k) & (gains.quantity == q), "gain"].astype(float)
            vals = vals[np.isfinite(vals)].to_numpy()
            if not len(vals):
                continue
            pos = mi + (qi - (len(quantities) - 1) / 2) * width
            ax.bar(pos, vals.mean(), width * 0.9, color=colors[qi], label=BOUND_LABELS[q] if mi == 0 else None,
                   zorder=2)
            if len(vals) > 1:
                ax.errorbar(pos, vals.mean(), yerr=vals.std(ddof=1), color="0.1", capsize=2, lw=0.8, zorder=3)
            ax.scatter(pos + rng.uniform(-0.2, 0.2, len(vals)) * width, vals, s=5, color="0.15", lw=0, zorder=4)
    ax.axhline(1.0, color="0.3", ls=":", lw=0.8)
    finite = gains.gain[np.isfinite(gains.gain.astype(float))]
    if len(finite):  # gains sit near 1: zoom onto them (bars start at the axis edge)
        low, high = min(finite.min(), 1.0), max(finite.max(), 1.0)
        pad = 0.15 * (high - low) + 0.02
        ax.set_ylim(low - pad, high + 2.5 * pad)  # head room for the legend
    ax.set_xticks(range(len(keys)), [textwrap.fill(method_label(k), 16) for k in keys])
    ax.set_ylabel("gain over the baseline (ratio of means)")
    ax.legend(frameon=False, fontsize=6, ncol=2, loc="upper center")
    return ax
