"""The results page RESULTS.md: every committed figure with its scale, data and compute, the claims table and
the measured comparison with the field's methods."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from repspec_utils.analysis.claims import (
    ACC_TOLERANCE,
    CLAIM_SOURCES,
    CLAIMS,
    FIELD_FIGURE,
    FIELD_TITLE,
    LEVEL,
    VERDICTS,
    _manifest,
    claims_markdown,
    claims_summary,
    field_markdown,
    field_table,
    glance_markdown,
)
from repspec_utils.infra.notebook import profile_label

# ------------------------------------------------------------------------------------------------ results page
FIGURES = {  # folder: (title, what it shows); the order of the results page
    "fig1_tradeoff": ("Fig 1 — the accuracy / robustness trade-off",
                      "three classifiers of one 2-D task: 50 % accurate with far points, 100 % accurate with small "
                      "margins, and a large-margin one (exact distances)"),
    "fig2_xor_distance": ("Fig 2 — XOR: mean adversarial distance",
                          "mean Tangent-Attack distance per method, without and with weight decay, widths 3 and 8 "
                          "(mean ± sd over seeds)"),
    "fig3_xor_geometry": ("Fig 3 — XOR: decision boundaries and volume element",
                          "decision boundaries and log √det g of Φ per method, with the training points"),
    "fig4_mnist": ("Fig 4 — MNIST: accuracy and distance",
                   "784→2000→10 GELU MLP: test accuracy and mean Tangent-Attack distance per method across seeds"),
    "fig5_mnist_refit": ("Fig 5 — MNIST after re-fitting the readout",
                         "the Fig 4 models with a logistic-regression readout re-fitted on frozen Φ"),
    "fig6_cifar_resnet": ("Fig 6 — CIFAR-10 ResNet18", "accuracy and distance per method (circular padding)"),
    "fig7_barlow": ("Fig 7 — Barlow Twins", "a logistic-regression readout on frozen self-supervised features"),
    "fig8_transfer": ("Fig 8 — transfer learning", "finetuned backbones: None, L2-SP, BSS, ll- and rep-spectral"),
    "appA_xor_noisy": ("App. A — noisy XOR", "80 noisy points: distances per method and the geometry maps"),
    "appB_sin": ("App. B — the sin boundary", "shallow and deep nets, with rep-spectral on the first layers only"),
    "appC_mnist_sweeps": ("App. C — MNIST λ and weight-decay sweeps", "distance and accuracy per λ and weight decay"),
    "appD_mnist_metric_plane": ("App. D — MNIST metric on a plane of digits",
                                "log √det g and λ_max(g) on the plane through three test digits and along its edges"),
    "appE_fashion_mnist": ("App. E — Fashion-MNIST", "Figs 4 and 5 on clothing images"),
    "appF_sigma_exact_vs_power": ("App. F — exact vs power-iteration σ_max",
                                  "the estimate the loss uses along training, and circular convolutions"),
    "appG_training_curves": ("App. G — MNIST training curves", "loss, accuracy and σ_max per epoch and method"),
    "bounds_sandwich": ("Certified radius vs attacks (ours)",
                        "per sample, the certified lower bound on Δx beside the FMN and Tangent-Attack upper bounds"),
    "baselines_mnist": ("rep-spectral beside PGD-AT, AR-AT and LSP-style (ours)",
                        "clean accuracy, Tangent-Attack distance and PGD robust accuracy per method, with the own and "
                        "a re-fitted readout; LSP-style is reconstructed from its abstract"),
    "baselines_cifar": ("The same seven methods through the CIFAR ResNet18 pipeline (ours)",
                        "the comparison of `baselines_mnist` on ResNet18 (split BatchNorm for AR-AT); at the committed "
                        "scale on the synthetic stand-in: it shows that every method runs, not how robust it is "
                        "(nor, with 2 branch epochs of 8 steps, what each costs: that is the benchmark's)"),
}


def _here(table: pd.DataFrame, fig: str) -> str:
    rows = table[table.figure == fig]
    if rows.empty:
        return ""
    if (rows.setting == "not produced").all():
        return rows.note.iloc[0]
    parts = []
    for v in VERDICTS:
        sub = rows[rows.verdict == v]
        if sub.empty:
            continue
        pairs = list(dict.fromkeys(f"{r.rep} vs {r.baseline}".split(" (its")[0] for r in sub.itertuples()))
        shown = ", ".join(pairs[:6]) + (f", … ({len(sub)} comparisons)" if len(pairs) > 6 else "")
        parts.append(f"**{v}** ({len(sub)} of {len(rows)}: {shown})")
    return "; ".join(parts)


def _scale(man: dict) -> str:
    params = man.get("parameters", {})
    bits = [f"profile {profile_label(man.get('profile', '?'), man.get('deviations'))}"]
    for key in ("seeds", "xor_seeds", "epochs", "xor_epochs", "n_attack", "attack_T", "T"):
        if key in params:
            bits.append(f"{key} {params[key]}")
    from repspec_utils.infra.notebook import format_compute, merge_splits

    if man.get("compute"):
        bits.append(f"compute: {format_compute(man['compute'])}")
    if man.get("data_sources"):
        bits.append("data: " + "; ".join(merge_splits(list(map(str, man["data_sources"])))))
    bits.append(f"commit {man.get('commit', '?')}, {man.get('date', '?')[:10]}")
    return " · ".join(bits)


def results_markdown(fig_root, table: pd.DataFrame, acc_tolerance: float = ACC_TOLERANCE, level: float = LEVEL,
                     link_root: str = "figures") -> str:
    """The results page (RESULTS.md): the verdicts at a glance, then every produced figure with what it shows, the
    claim it tests ('paper: … / here: …' with the verdicts), its scale (profile, seeds, epochs, samples, data,
    compute, commit), then every paired comparison. Images are linked as <link_root>/<figure>/<name>.png."""
    root = Path(fig_root)
    claim_of = {src[1]: src[0] for src in CLAIM_SOURCES}
    summary = claims_summary(table)
    out = ["# Results", "",
           "Every figure of the paper regenerated by this package, with the claim it tests, the verdict and the scale "
           "it ran at. Generated by `notebooks/claims.ipynb` from the committed tables (`figures/*/models.csv`, "
           "`samples.csv`, `manifest.json`); regenerate with `repspec run --only claims --out-dir figures`.", "",
           "## Verdicts at a glance", "", glance_markdown(table, acc_tolerance, level),
           "Rows marked *earlier MLP (before issue 26)* come from tables made with this package's earlier MLP and "
           "re-fit (SPEC §6); they are replaced as their figures are regenerated.", "",
           "## One verdict per setting (all baselines together)", "",
           "| claim | test | setting | rep-spectral | profile | verdict |", "|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        out.append(f"| {r.claim} | {r.test} | {r.setting} | {r.rep if isinstance(r.rep, str) else ''} | {r.profile} "
                   f"| **{r.verdict}** |")
    out += ["", "## Figure by figure", ""]
    for fig, (title, what) in FIGURES.items():
        man = _manifest(root / fig)
        if not man:
            continue
        pngs = [o for o in man.get("outputs", []) if o.endswith(".png")]
        out += [f"### {title}", ""]
        out += [f"![{fig}]({link_root}/{fig}/{png})" for png in pngs]
        out += ["", f"*What it shows:* {what}.", ""]
        if fig in claim_of:
            out.append(f"*Claim {claim_of[fig]}:* paper: {CLAIMS[claim_of[fig]]}. Here: {_here(table, fig)}.")
        elif fig == FIELD_FIGURE:
            out.append(f"*Claim:* none of the paper's; measured in the section “{FIELD_TITLE}” below.")
        else:
            out.append("*Claim:* none (an illustration or a check of a component).")
        status = man.get("status", "?")
        out += ["", f"*Scale:* {_scale(man)}" + ("" if status == "ok" else f" · **last run {status}**"), ""]
    out += [f"## {FIELD_TITLE}", "", field_markdown(field_table(root, level), level)]
    out += ["## Every paired comparison", "", claims_markdown(table, acc_tolerance, level)]
    return "\n".join(out)
