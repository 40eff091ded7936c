"""The Performance tables of docs/GUIDE.md (every measured row) and README.md (the headline rows), generated from the
committed results in benchmarks/results/ (never typed by hand: tests/test_benchmarks.py checks that the block in each
file is what this script makes of those files).

Run: python benchmarks/performance.py        (rewrites the blocks between the markers in docs/GUIDE.md and README.md)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GUIDE = ROOT / "docs" / "GUIDE.md"
README = ROOT / "README.md"
START, END = "<!-- performance:start (benchmarks/performance.py) -->", "<!-- performance:end -->"

# (results file, variant, what it measures, target); the ratio is to the row's baseline variant
ROWS = [
    ("train_mnist_step", "rep", "MNIST 784→2000→10 step, batch 1024: rep-spectral / unregularised "
     "(`training.train_step`, the penalty's gradient added in place)", "≤ 1.05×"),
    ("train_mnist_step", "ll", "same, ll-spectral / unregularised", "≤ 1.05×"),
    ("train_mnist_step", "rep (autograd)", "same, rep-spectral's gradient through autograd / unregularised", ""),
    ("train_mnist_step", "gram", "same, a penalty that forms WᵀW every step / unregularised (the slow way)", ""),
    ("train_mnist_epoch_bound", "epoch", "MNIST epoch (60000 images, one tensor) / its exact GEMM bound (the five "
     "products it executes, each at its shape, timed in the same rounds)", "≤ 1.25×"),
    ("adversarial_step", "lsp", "LSP-style step / unregularised step, MNIST MLP, batch 1024, k = 10 neighbours", "≤ 1.5×"),
    ("adversarial_step", "pgd_at", "PGD-AT step (PGD k = 10) / unregularised step, same net", "≤ 11.3×"),
    ("adversarial_step", "rep+pgd_at", "rep-spectral + PGD-AT / unregularised step", ""),
    ("adversarial_step", "lsp+pgd_at", "LSP-style + PGD-AT / unregularised step", ""),
    ("adversarial_step", "arat (BN MLP)", "AR-AT (split-BN MLP) / unregularised step of the BN MLP", "≤ 12.5×"),
    ("adversarial_step", "arat (no BN)", "AR-AT (MLP without BN) / unregularised step", "≤ 12.5×"),
    ("adversarial_step_resnet18", "pgd_at (ResNet18)", "CIFAR ResNet18, batch 32: PGD-AT step (k = 10) / unregularised "
     "step", "≤ 11.3×"),
    ("adversarial_step_resnet18", "arat (ResNet18)", "same, AR-AT (split BN, layer4's predictors) / unregularised step",
     "≤ 12.5×"),
    ("spectral_linear", "exact sigma", "Linear 2000×784: exact σ (`matrix_norm`) / one power step", ""),
    ("spectral_linear", "exact penalty + backward", "Linear 2000×784: exact penalty + backward / power penalty + "
     "backward", ""),
    ("spectral_resnet18", "exact penalty + backward", "ResNet18, 20 convs (FFT): exact (eigvalsh) penalty + backward / "
     "power (1 iteration)", ""),
    ("spectral_resnet18", "power penalty + backward / step", "ResNet18: power penalty + backward / a training step "
     "(batch 128; the paper regularises every 24th step)", ""),
    ("bounds", "local certified radius (float64)", "certified radius of 1000 correctly classified MNIST test images "
     "(App. G's rep-spectral model): local bound / one float32 forward pass of them (issue 15's target: the local "
     "bound in < 10 s of CPU time)", ""),
    ("bounds", "global certified radius (float64)", "same, global bound / one forward pass", ""),
    ("precision_step", "bf16 none", "MNIST step, batch 1024: bf16 autocast / fp32 (on a CPU without AVX-512 BF16 / AMX "
     "bf16 is emulated: see bf16 below)", ""),
    ("precision_step", "bf16 rep", "same with rep-spectral (penalty in fp32 in both)", ""),
    ("conv_query_rows_w16_b1", "tangent attack, rows chosen", "Tangent Attack on the analogs' small ResNet (width 16, "
     "8 images, T = 2): model calls of 64 images (`models.call_rows`, the default on the CPU) / the same attack in "
     "calls of up to 8192", ""),
    ("conv_query_rows_w16_b1", "calls of 64 rows", "same net, no-grad forward of 2048 images in calls of 64 / one call "
     "of 2048", ""),
]

# the README's headline rows: (results file, variant)
README_ROWS = [("train_mnist_step", "rep"), ("train_mnist_step", "ll"), ("train_mnist_epoch_bound", "epoch"),
               ("adversarial_step", "lsp"), ("adversarial_step", "pgd_at")]


def _iqr(r: pd.Series, col: str, fmt: str) -> str:
    return f"{r[col]:{fmt}} [{r[col + '_q1']:{fmt}}–{r[col + '_q3']:{fmt}}]"


def _machine(r: pd.Series) -> str:
    return f"{r['cpu']}, load {r['load1']:.1f}, {int(r['torch_threads'])} thread(s), {int(r['rounds'])} rounds, {r['date']}"


def _row(results: Path, stem: str, variant: str, what: str, target: str) -> str | None:
    path = results / f"{stem}.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    sel = df[df["variant"] == variant]
    if sel.empty:
        return None
    r = sel.iloc[0]
    unit, scale = ("s", 1.0) if r["cpu_s"] >= 1 else ("ms", 1e3)
    base_name = r["baseline"] if "baseline" in df else df.loc[df["cpu_ratio"] == 1.0, "variant"].iloc[0]
    base = df[(df["variant"] == base_name) & (df["variant"] != variant)]["cpu_s"]
    per_call = f"{r['cpu_s'] * scale:.4g} {unit}" + (f" / {base.iloc[0] * scale:.4g} {unit}" if len(base) else "")
    ok = ""
    if target.startswith("≤"):
        ok = " ✓" if r["cpu_ratio"] <= float(target.strip("≤ ×")) else " ✗"
    return (f"| {what} | **{_iqr(r, 'cpu_ratio', '.3f')}** | {_iqr(r, 'wall_ratio', '.3f')} | {per_call} | "
            f"{target}{ok} | {_machine(r)} |")


_HEAD = ["| what | CPU-time ratio, median [IQR] | wall ratio, median [IQR] | CPU time per call | target | measured on |",
         "|---|---|---|---|---|---|"]


def _share_row(results: Path) -> str | None:
    path = results / "attacks_tangent_speed.csv"
    if not path.exists():
        return None
    r = pd.read_csv(path).iloc[0]
    share = f"{100 * r['forward_share']:.1f} % [{100 * r['forward_share_q1']:.1f}–{100 * r['forward_share_q3']:.1f}]"
    ok = " ✓" if r["forward_share"] >= 0.9 else " ✗"
    return (f"| Tangent Attack, T = 40, {int(r['samples'])} MNIST test images at once, MLP 784→2000→10: share of its "
            f"CPU time inside the model's forward (a share, not a ratio; {r['samples_per_cpu_min']:.1f} samples per "
            f"CPU minute) | **{share}** | | {r['cpu_s']:.4g} s per round | ≥ 90 %{ok} | {_machine(r)} |")


def table(results: Path = RESULTS) -> str:
    """The guide's markdown block: one row per measured comparison, CPU-time ratio first (median [IQR] over the
    rounds)."""
    lines = list(_HEAD)
    for stem, variant, what, target in ROWS:
        row = _row(results, stem, variant, what, target)
        if row is not None:
            lines.append(row)
    share = _share_row(results)
    if share is not None:
        lines.append(share)
    xor = results / "train_xor_full_scale.csv"
    if xor.exists():
        r = pd.read_csv(xor).iloc[0]
        lines.append(f"| XOR at full scale: 60 nets (widths 3, 8 × wd 0, 1e-4 × None/ll/rep × 5 seeds) × 15000 epochs, "
                     f"batched (one run: an absolute time, no ratio) | | | {r['cpu_s']:.1f} s (wall {r['wall_s']:.1f} s) "
                     f"| < 2 min{' ✓' if r['cpu_s'] < 120 else ' ✗'} | {_machine(r)} |")
    return "\n".join(lines)


def readme_table(results: Path = RESULTS) -> str:
    """README's block: the headline rows of the guide's table, the same numbers from the same files."""
    rows = {(stem, variant): (what, target) for stem, variant, what, target in ROWS}
    lines = list(_HEAD)
    for key in README_ROWS:
        row = _row(results, *key, *rows[key])
        if row is not None:
            lines.append(row)
    share = _share_row(results)
    if share is not None:
        lines.append(share)
    return "\n".join(lines)


def block(results: Path = RESULTS, readme: bool = False) -> str:
    return f"{START}\n{(readme_table if readme else table)(results)}\n{END}"


def replace_block(text: str, new_block: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"the file lacks the markers {START!r} … {END!r}")
    head, rest = text.split(START, 1)
    return head + new_block + rest.split(END, 1)[1]


def main() -> int:
    GUIDE.write_text(replace_block(GUIDE.read_text(encoding="utf-8"), block()), encoding="utf-8")
    README.write_text(replace_block(README.read_text(encoding="utf-8"), block(readme=True)), encoding="utf-8")
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
