"""Where the cost grows linearly and where it stops scaling (issue 31 item 4): three curves, each point from
interleaved rounds (benchmarks/harness.py), CPU time on one thread with its IQR, written to
benchmarks/results/scaling_*.csv and drawn in benchmarks/results/scaling.png.

1. Training step of the one-hidden-layer MNIST MLP (784→w→10, batch 1024) against the width w, for None / ll / rep
   (`training.train_step`; the penalty every step, the worst case): the GEMMs grow linearly in w, so should the step.
2. Tangent-Attack time per sample against the number of samples attacked together (1 → 512), on the 784→2000→10
   MLP at T = 5 (a short attack: the per-sample cost of a query batch is what changes with the batch).
3. Training step of the small ResNet (28-px images zero-padded to 32, batch 128, one block per stage) against its
   base width, per image: the convolutions grow as width².

Run: python benchmarks/bench_scaling.py [--rounds 20] [--attack-rounds 3]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from harness import RESULTS, machine, print_machine, run_rounds, show, summarise, write

from repspec_utils.attacks import tangent_attack
from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import spectral
from repspec_utils.models import MLP, small_resnet
from repspec_utils.training import TrainConfig, make_optimizer, train_step


def mlp_step_curve(widths, rounds: int) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1024, 784, generator=g), torch.randint(0, 10, (1024,), generator=g)
    fns, setting = {}, {}
    for w in widths:
        model = MLP(784, [w], 10, seed=0)
        opt = make_optimizer(TrainConfig(dataset="mnist", model={"kind": "mlp", "widths": [w]}, lr=0.1), model)
        pens = {m: spectral.SpectralPenalty(spectral.spectral_layers(model, m)) for m in ("rep", "ll")}
        for m in ("none", "rep", "ll"):
            fns[f"{m} w={w}"] = (lambda model=model, opt=opt, pen=pens.get(m):
                                 train_step(model, opt, OBJECTIVES["supervised"], x, y, None, pen, 1e-3))
            setting[f"{m} w={w}"] = (m, w)
    out = summarise(run_rounds(fns, rounds=rounds))
    return out.assign(method=out["variant"].map(lambda v: setting[v][0]),
                      width=out["variant"].map(lambda v: setting[v][1]))


def attack_curve(batches, rounds: int) -> pd.DataFrame:
    g = torch.Generator().manual_seed(1)
    model = MLP(784, [2000], 10, seed=0).eval()
    x = torch.rand(max(batches), 784, generator=g)
    fns = {f"n={n}": (lambda n=n: tangent_attack(model, x[:n], T=5, progress=False)) for n in batches}
    out = summarise(run_rounds(fns, rounds=rounds, warmup=1))
    out["batch"] = out["variant"].map(dict(zip(fns, batches)))
    for col in ("cpu_s", "cpu_s_q1", "cpu_s_q3", "wall_s"):
        out[f"{col}_per_sample"] = out[col] / out["batch"]
    return out


def conv_curve(widths, rounds: int) -> pd.DataFrame:
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    fns, width_of = {}, {}
    for w in widths:
        model = small_resnet(width=w, blocks=1, pad=2, seed=0).train()
        opt = make_optimizer(TrainConfig(dataset="fashion_mnist", model={"kind": "small_resnet", "width": w},
                                         lr=0.01), model)
        fns[f"width={w}"] = (lambda model=model, opt=opt:
                             train_step(model, opt, OBJECTIVES["supervised"], x, y, None, None, 0.0))
        width_of[f"width={w}"] = w
    out = summarise(run_rounds(fns, rounds=rounds, warmup=1))
    out["base_width"] = out["variant"].map(width_of)
    out["epoch_cpu_s"] = out["cpu_s"] * (60000 / 128)  # a 60000-image epoch at this step's cost
    return out


def plot(mlp: pd.DataFrame, att: pd.DataFrame, conv: pd.DataFrame, info: dict):
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from repspec_utils.analysis import plotting

    plotting.set_style()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), constrained_layout=True)
    ax = axes[0]
    for m, d in mlp.groupby("method", sort=False):
        ax.errorbar(d["width"], d["cpu_s"] * 1e3, yerr=[(d["cpu_s"] - d["cpu_s_q1"]) * 1e3,
                    (d["cpu_s_q3"] - d["cpu_s"]) * 1e3], marker="o", capsize=2, color=plotting.method_color(m),
                    label=plotting.method_label(m))
    w0 = mlp[mlp["method"] == "none"].iloc[0]
    ax.plot(mlp["width"].unique(), w0["cpu_s"] * 1e3 * mlp["width"].unique() / w0["width"], "k:", lw=1,
            label="linear in w")
    ax.set(xscale="log", yscale="log", xlabel="hidden width w", ylabel="CPU ms per step",
           title="(a) MNIST MLP step, batch 1024")
    ax.legend(fontsize=6)
    ax = axes[1]
    ax.errorbar(att["batch"], att["cpu_s_per_sample"], yerr=[att["cpu_s_per_sample"] - att["cpu_s_q1_per_sample"],
                att["cpu_s_q3_per_sample"] - att["cpu_s_per_sample"]], marker="o", capsize=2)
    ax.set(xscale="log", yscale="log", xlabel="samples attacked together", ylabel="CPU s per sample",
           title="(b) Tangent Attack, T = 5, MNIST MLP")
    ax = axes[2]
    ax.errorbar(conv["base_width"], conv["epoch_cpu_s"] / 60, yerr=[(conv["cpu_s"] - conv["cpu_s_q1"]) * 468.75 / 60,
                (conv["cpu_s_q3"] - conv["cpu_s"]) * 468.75 / 60], marker="o", capsize=2)
    c0 = conv.iloc[0]
    ax.plot(conv["base_width"], c0["epoch_cpu_s"] / 60 * (conv["base_width"] / c0["base_width"]) ** 2, "k:", lw=1,
            label="∝ width²")
    ax.set(xscale="log", yscale="log", xlabel="base width (1 block per stage)", ylabel="CPU min per 60000-image epoch",
           title="(c) small ResNet step, batch 128, 28 px")
    ax.legend(fontsize=6)
    for ax, values in zip(axes, (mlp["width"].unique(), att["batch"], conv["base_width"])):
        ax.set_xticks(list(values))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.suptitle(f"scaling, 1 thread, median and IQR over interleaved rounds · {info['cpu']}, load {info['load1']} · "
                 f"commit {info['commit']}", fontsize=7)
    fig.savefig(RESULTS / "scaling.png", dpi=150)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--attack-rounds", type=int, default=3, help="rounds of the attack curve (a batch of 512 at T=5 "
                    "takes tens of seconds)")
    ap.add_argument("--widths", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 512])
    ap.add_argument("--conv-widths", type=int, nargs="+", default=[8, 16, 32])
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine()
    print_machine(info)
    mlp = mlp_step_curve(args.widths, args.rounds)
    show(mlp)
    write("scaling_mlp_step", mlp.assign(benchmark="scaling_mlp_step"), info)
    att = attack_curve(args.batches, args.attack_rounds)
    show(att, unit="s")
    write("scaling_attack_batch", att.assign(benchmark="scaling_attack_batch", T=5), info)
    conv = conv_curve(args.conv_widths, args.rounds)
    show(conv)
    write("scaling_conv_width", conv.assign(benchmark="scaling_conv_width"), info)
    plot(mlp, att, conv, info)
    print(f"wrote {RESULTS / 'scaling.png'}")


if __name__ == "__main__":
    main()
