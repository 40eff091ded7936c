"""Is bf16 a valid substitute for fp32 in the MNIST figures? Two checks (issue 10), in figures/validation_bf16/:

1. **attack**: on the same fp32-trained Fig 4 models and the same test samples, the Tangent Attack with bf16
   queries (`precision='bf16'`: model queries under bfloat16 autocast; final bisection and success check in fp32)
   against the fp32 attack. Passes when every model's mean distance differs by less than 1 %.
2. **training**: the test accuracy of models trained with the task loss under bf16 autocast (the Fig 4 models
   committed at the bf16 profile, whose `models.csv` is kept as `figures/validation_bf16/bf16_trained_models.csv`)
   against fp32-trained models of the same recipe and seeds. Passes when, per method, the difference of the seed
   means is within the seed spread (the smaller of the two groups' standard deviations across seeds). Accuracy
   does not depend on the attack; the bf16-trained models' distances were measured with bf16 attacks, so their
   comparison is shown but is not a test.

    python scripts/validate_bf16.py attack [--seeds 0 1] [--methods none rep] [--n 30] [--workers 2]
    python scripts/validate_bf16.py training [--seeds 0 1 2 3 4] [--methods none ll ll_readout rep]

The fp32 models are the configs of the Fig 4 `cpu` profile with precision fp32 (`--set` overrides the profile, e.g.
a reduced recipe, and the output then says so); they come from the cache (scripts/warm_mnist_cache.py --set
precision=fp32 fills it) or are trained. Each check rewrites its own CSV and the README of the folder.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "figures" / "validation_bf16"
ATTACK_TOLERANCE = 0.01  # relative difference of a model's mean distance, bf16 vs fp32 attack


def _configs(p: dict, seeds, methods):
    """The fp32 Fig 4 configs for `seeds` × `methods` (warm_mnist_cache's, so the same cache keys)."""
    from warm_mnist_cache import profile_configs

    return profile_configs({**p, "seeds": list(seeds), "methods": list(methods), "precision": "fp32"})


def _attack(cfg, n: int, T: int, precision: str):
    import torch

    from repspec_utils.experiments import run
    from repspec_utils.training import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    table = run.robustness_table([train(cfg, progress=False)], n=n, attack_kwargs={"T": T}, progress=False,
                                    precision=precision)
    return table.assign(attack_precision=precision), time.perf_counter() - t0


def _markdown(df) -> str:
    """A DataFrame as a Markdown table (floats to 4 significant digits)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _scale(p: dict, seeds, methods, n) -> str:
    from repspec_utils.infra import notebook

    committed = notebook.profile_params("fig4_mnist", "cpu", {})
    same = all(committed[c] == p[c] for c in ("epochs", "burn_in", "lam", "weight_decay", "width", "n_train", "lr"))
    return (f"seeds {list(seeds)}, methods {list(methods)}, {p['epochs']} epochs (burn-in {p['burn_in']}), "
            f"λ {p['lam']:g}, wd {p['weight_decay']:g}, width {p['width']}"
            + (f", {n} samples per model at T={p['attack_T']}" if n else "")
            + ("" if same else " — REDUCED RECIPE, not the one of the Fig 4 models"))


def check_attack(p: dict, seeds, methods, n: int, workers: int, out: Path) -> dict:
    import pandas as pd

    from repspec_utils.analysis import plotting
    from repspec_utils.infra import provenance

    configs = _configs(p, seeds, methods)
    t0, parts = time.perf_counter(), []
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        jobs = {pool.submit(_attack, c, n, p["attack_T"], prec): (c, prec) for prec in ("fp32", "bf16")
                for c in configs}
        for f in cf.as_completed(jobs):
            c, prec = jobs[f]
            table, seconds = f.result()
            parts.append(table.assign(attack_seconds=seconds))
            print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {c.method} seed {c.seed}: {prec} attack "
                  f"({seconds / 60:.1f} min)", flush=True)
    samples = pd.concat(parts, ignore_index=True)
    samples.to_csv(out / "attack_samples.csv", index=False)
    ok = samples[samples.success.astype(bool)]
    wide = ok.pivot_table(index=["method", "seed", "index"], columns="attack_precision", values="distance").dropna()
    per_model = wide.groupby(["method", "seed"]).mean()
    per_model["rel_diff"] = per_model["bf16"] / per_model["fp32"] - 1
    per_model["n_samples"] = wide.groupby(["method", "seed"]).size()
    secs = samples.groupby(["method", "seed", "attack_precision"]).attack_seconds.first().unstack()
    per_model["seconds_fp32"], per_model["seconds_bf16"] = secs["fp32"], secs["bf16"]
    per_model = per_model.reset_index()
    per_model.to_csv(out / "attack_fp32_vs_bf16.csv", index=False)

    plotting.set_style()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.6, 3.4), constrained_layout=True)
    w = wide.reset_index()
    for m in methods:
        sub = w[w.method == m]
        ax.scatter(sub.fp32, sub.bf16, s=8, alpha=0.7, color=plotting.method_color(m), label=plotting.method_label(m))
    lim = [w[["fp32", "bf16"]].min().min(), w[["fp32", "bf16"]].max().max()]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("TA distance, fp32 queries")
    ax.set_ylabel("TA distance, bf16 queries")
    ax.set_title("same fp32-trained models and samples", fontsize=8)
    ax.legend(fontsize=7)
    scale = _scale(p, seeds, methods, n)
    plotting.save_figure(fig, "attack_fp32_vs_bf16", out, {"profile": scale, "data": "real MNIST",
                                                           "commit": provenance.git_commit()})
    return {"scale": scale, "pass": bool((per_model.rel_diff.abs() < ATTACK_TOLERANCE).all()),
            "max_abs_rel_diff": float(per_model.rel_diff.abs().max()),
            "mean_rel_diff": float(per_model.rel_diff.mean()), "minutes": (time.perf_counter() - t0) / 60}


def check_training(p: dict, seeds, methods, out: Path) -> dict:
    import pandas as pd

    from repspec_utils.evaluation import robustness
    from repspec_utils.experiments import recipes
    from repspec_utils.training import train

    t0 = time.perf_counter()
    rows = []
    for c in _configs(p, seeds, methods):
        r = train(c, progress=False)
        _, test_ds = recipes.load_training_data(c)
        rows.append({"method": c.method, "seed": c.seed, "test_acc": robustness.accuracy(r.model.eval(), test_ds)})
    fp32 = pd.DataFrame(rows)
    bf16 = pd.read_csv(out / "bf16_trained_models.csv")
    bf16 = bf16[bf16.method.isin(methods)]
    fig_dir = ROOT / "figures" / "fig4_mnist"  # fp32-trained, fp32-attacked distances when Fig 4 is the fp32 run
    fig_params = json.loads((fig_dir / "manifest.json").read_text()).get("parameters", {}) \
        if (fig_dir / "manifest.json").exists() else {}
    fig = pd.read_csv(fig_dir / "models.csv") if fig_params.get("precision") == "fp32" else None
    res = []
    for m in methods:
        a, b = fp32[fp32.method == m], bf16[bf16.method == m]
        spread = min(a.test_acc.std(ddof=1), b.test_acc.std(ddof=1))
        diff = a.test_acc.mean() - b.test_acc.mean()
        row = {"method": m, "acc_fp32_trained": a.test_acc.mean(), "sd_fp32": a.test_acc.std(ddof=1), "n_fp32": len(a),
               "acc_bf16_trained": b.test_acc.mean(), "sd_bf16": b.test_acc.std(ddof=1), "n_bf16": len(b),
               "diff_of_means": diff, "seed_spread": spread, "within_spread": bool(abs(diff) <= spread),
               "dist_bf16_trained_bf16_attack": b.mean_distance.mean()}
        if fig is not None:
            row["dist_fp32_trained_fp32_attack"] = fig.loc[fig.method == m, "mean_distance"].mean()
        res.append(row)
    table = pd.DataFrame(res)
    table.to_csv(out / "training_fp32_vs_bf16.csv", index=False)
    return {"scale": _scale(p, seeds, methods, None), "pass": bool(table.within_spread.all()),
            "minutes": (time.perf_counter() - t0) / 60}


def write_readme(out: Path, manifest: dict) -> None:
    import pandas as pd

    md = ["# bf16 vs fp32 for the MNIST figures", "",
          "Written by `scripts/validate_bf16.py` (see its docstring for the two checks). bf16 here means "
          "`torch.autocast('cpu', dtype=torch.bfloat16)`: on a CPU without AVX-512 BF16 / AMX it is emulated and "
          "slower than fp32 (`benchmarks/bench_precision.py`).", ""]
    for name, title in (("attack", "1. The attack: bf16 vs fp32 queries on the same fp32-trained models and samples"
                         f" (pass: every |relative difference| < {ATTACK_TOLERANCE:.0%})"),
                        ("training", "2. Training: test accuracy of bf16- vs fp32-trained models, same recipe and "
                         "seeds (pass: |difference of means| ≤ the smaller seed sd)")):
        info = manifest.get(name)
        md += [f"## {title}", ""]
        if not info:
            md += ["Not run yet.", ""]
            continue
        csv = out / ("attack_fp32_vs_bf16.csv" if name == "attack" else "training_fp32_vs_bf16.csv")
        md += [f"Scale: {info['scale']}. Commit {info['commit']}, {info['date']}, {info['minutes']:.1f} min.", "",
               _markdown(pd.read_csv(csv)), "", f"**{'pass' if info['pass'] else 'FAIL'}**"
               + (f": largest |relative difference| {info['max_abs_rel_diff']:.1%}, mean {info['mean_rel_diff']:+.1%}"
                  if name == "attack" else "") + ".", ""]
    (out / "README.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    from repspec_utils.infra import notebook, provenance
    from repspec_utils.infra import runner as reproduce

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=("attack", "training"))
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--n", type=int, default=None, help="attacked samples per model (attack check; default: "
                                                          "the profile's n_attack)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    p = notebook.profile_params("fig4_mnist", "cpu", reproduce.parse_set(args.set))
    seeds = args.seeds or ([0, 1] if args.check == "attack" else list(p["seeds"]))
    methods = args.methods or (["none", "rep"] if args.check == "attack" else list(p["methods"]))
    if len(set(seeds)) != len(seeds) or (args.check == "training" and len(seeds) < 3):
        ap.error(f"--seeds must be distinct (at least 3 for the training check's seed spread), got {seeds}")
    if args.n is not None and args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.check == "attack":
        info = check_attack(p, seeds, methods, args.n or p["n_attack"], args.workers, args.out)
    else:
        info = check_training(p, seeds, methods, args.out)
    info.update(commit=provenance.git_commit(), date=time.strftime("%Y-%m-%d %H:%M"), argv=sys.argv[1:])
    man_path = args.out / "manifest.json"
    manifest = json.loads(man_path.read_text()) if man_path.exists() else {}
    manifest[args.check] = info
    man_path.write_text(json.dumps(manifest, indent=1) + "\n")
    write_readme(args.out, manifest)
    print((args.out / "README.md").read_text())
    return 0 if info["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
