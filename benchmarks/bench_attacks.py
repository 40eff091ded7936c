"""Benchmark of the hard-label attacks on an MNIST-shaped MLP (784 → 2000 → 10), CPU or GPU.

Prints and saves (into runs/benchmarks/ unless `--out-dir benchmarks/results`, where the committed copy lives):
  1. Tangent Attack at T = 40 on `--n-speed` samples, `--rounds` times (benchmarks/harness.py: CPU and wall time
     with their IQR): samples per CPU minute, mean queries, and the share of the attack's CPU time spent inside the
     model's forward, per round (the attack's own overhead is the rest; target ≥ 90%) -> attacks_tangent_speed.csv.
  2. Mean L2 distance vs per-sample query budget (1k, 2k, 5k, 10k, 18k) for TA and HopSkipJump, with the
     white-box FMN distance as a reference upper bound on Δx: a table, bench_attacks_budget.csv and
     bench_attacks_budget.png.

The model is `repspec_utils.models.MLP(784, [2000], 10)` trained briefly (SGD, a few hundred steps) on MNIST
when `get_data('mnist')` finds the files (bash scripts/fetch_data.sh), else on random data (said in the output).
Few samples (default 20 for the speed test, 8 for the budget curve): a benchmark of the machinery, not a
result of the paper. Runtime ≈ 3–5 min on 2 CPU cores.

    python benchmarks/bench_attacks.py [--n-speed 10] [--rounds 20] [--n-budget 8] [--threads 1] [--out-dir D]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from harness import cpu_clock, machine, print_machine, run_rounds, summarise, write  # benchmarks/ is on sys.path
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from repspec_utils import attacks
from repspec_utils.evaluation import robustness
from repspec_utils.models import MLP

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (1000, 2000, 5000, 10000, 18000)


class TimedModel(nn.Module):
    """Wraps a model; accumulates the time spent in its forward on `clock` (synchronising CUDA) and the rows seen."""

    def __init__(self, model: nn.Module, clock=time.perf_counter):
        super().__init__()
        self.model, self.clock, self.seconds, self.rows, self.calls = model, clock, 0.0, 0, 0

    def forward(self, x):
        sync = x.is_cuda
        if sync:
            torch.cuda.synchronize()
        t0 = self.clock()
        out = self.model(x)
        if sync:
            torch.cuda.synchronize()
        self.seconds += self.clock() - t0
        self.rows += x.shape[0]
        self.calls += 1
        return out


def load_data():
    """(train_x, train_y, test_x, test_y, description): MNIST if available, else random 784-D data."""
    from repspec_utils import data

    try:
        train, test = data.get_data("mnist")
        return train.x, train.y, test.x, test.y, "MNIST (real)"
    except Exception as exc:  # missing files: fall back, loudly
        print(f"MNIST not available ({type(exc).__name__}: {exc}); using RANDOM data instead")
        g = torch.Generator().manual_seed(0)
        x = torch.rand(12000, 784, generator=g)
        y = torch.randint(0, 10, (12000,), generator=g)
        return x[:10000], y[:10000], x[10000:], y[10000:], "RANDOM uniform data with random labels (MNIST missing)"


def train_briefly(model, x, y, steps: int, lr: float = 0.5, batch: int = 256, seed: int = 0) -> float:
    """SGD (momentum 0.9) on cross-entropy for `steps` minibatches; returns the wall time."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-speed", type=int, default=10, help="samples for the TA speed test")
    ap.add_argument("--rounds", type=int, default=20, help="rounds of the speed test (≥ 20)")
    ap.add_argument("--n-budget", type=int, default=8, help="samples for the distance-vs-budget curve")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: torch's default)")
    ap.add_argument("--max-batch", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out-dir", default="runs/benchmarks",
                    help="where the CSV and PNG go (default runs/benchmarks; the committed copy: benchmarks/results)")
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    os.environ.setdefault("REPSPEC_PROGRESS", "0")
    dev = torch.device(args.device)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()} (default "
          f"{default_threads}), max_batch {args.max_batch}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")

    xtr, ytr, xte, yte, desc = load_data()
    model = MLP(784, [2000], 10, seed=0)
    t_train = train_briefly(model, xtr, ytr, args.train_steps)
    model = model.to(dev).eval()

    class _DS:  # the two fields accuracy() reads
        x, y = xte, yte

    acc = robustness.accuracy(model, _DS)
    print(f"model: MLP 784→2000→10 (GELU), trained {args.train_steps} SGD steps in {t_train:.0f}s on {desc}; "
          f"test accuracy {acc:.3f}")
    correct = (robustness.predict(model, xte).cpu() == yte).nonzero()[:, 0]
    perm = torch.randperm(correct.numel(), generator=torch.Generator().manual_seed(0))
    pick = correct[perm]
    box = (0.0, 1.0)

    # ---- 1. speed of TA at T = 40 ------------------------------------------------------------------------
    n = args.n_speed
    x, y = xte[pick[:n]].to(dev), yte[pick[:n]].to(dev)
    clock_name, clock = cpu_clock() if dev.type == "cpu" else ("wall", time.perf_counter)
    timed = TimedModel(model, clock)
    per_call: list[dict] = []

    def attack():
        timed.seconds, timed.rows, timed.calls = 0.0, 0, 0
        res = attacks.tangent_attack(timed, x, y, box, T=40, max_batch=args.max_batch, progress=False)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        per_call.append({"forward_s": timed.seconds, "rows": timed.rows, "calls": timed.calls,
                         "queries": float(res.queries.double().mean()), "distance": float(res.distance.mean())})

    info = machine()
    print_machine(info)
    rounds = run_rounds({"tangent attack": attack}, rounds=args.rounds, warmup=1)
    calls = pd.DataFrame(per_call[-len(rounds):])
    share = calls["forward_s"].to_numpy() / rounds["cpu_s"].to_numpy()
    speed = summarise(rounds).assign(
        forward_share=float(pd.Series(share).median()), forward_share_q1=float(pd.Series(share).quantile(0.25)),
        forward_share_q3=float(pd.Series(share).quantile(0.75)), samples=n, T=40,
        samples_per_cpu_min=60 * n / float(rounds["cpu_s"].median()), mean_queries=float(calls["queries"].mean()),
        us_per_row=1e6 * float((calls["forward_s"] / calls["rows"]).median()), forward_clock=clock_name,
        mean_distance=float(calls["distance"].mean()), data=desc)
    r = speed.iloc[0]
    print(f"\n[1] Tangent Attack, T=40, {n} samples, {args.rounds} rounds: {r['cpu_s']:.1f} s CPU per round "
          f"[{r['cpu_s_q1']:.1f}–{r['cpu_s_q3']:.1f}] -> {r['samples_per_cpu_min']:.1f} samples per CPU minute; "
          f"mean queries/sample {r['mean_queries']:.0f}; {r['us_per_row']:.1f} us per model row")
    print(f"    share of its CPU time inside the model's forward: {100 * r['forward_share']:.1f}% "
          f"[{100 * r['forward_share_q1']:.1f}–{100 * r['forward_share_q3']:.1f}] (target >= 90%)")
    write("attacks_tangent_speed", speed.assign(benchmark="attacks_tangent_speed"), info)

    # ---- 2. distance vs query budget ---------------------------------------------------------------------
    n = args.n_budget
    x, y = xte[pick[:n]].to(dev), yte[pick[:n]].to(dev)
    t0 = time.perf_counter()
    fmn = attacks.fmn_attack(model, x, y, box, steps=200)
    fmn_mean = fmn.distance.mean().item()
    rows = []
    for name, fn in [("tangent", attacks.tangent_attack), ("hsj", attacks.hop_skip_jump)]:
        for budget in BUDGETS:
            r = fn(model, x, y, box, T=40, max_queries=budget, max_batch=args.max_batch, progress=False)
            d = r.distance.double().cpu()
            rows.append(dict(attack=name, budget=budget, mean_distance=d.mean().item(),
                             sem=(d.std() / math.sqrt(n)).item(), mean_queries=r.queries.double().mean().item(),
                             success_rate=r.success.double().mean().item(),
                             ratio_to_fmn=(d / fmn.distance.double().cpu()).mean().item(), n_samples=n))
    table = pd.DataFrame(rows)
    print(f"\n[2] mean L2 distance vs per-sample query budget, {n} samples (FMN white-box reference "
          f"{fmn_mean:.4f}); {time.perf_counter() - t0:.0f}s")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    results = Path(args.out_dir) if Path(args.out_dir).is_absolute() else ROOT / args.out_dir
    results.mkdir(parents=True, exist_ok=True)
    table.assign(fmn_mean_distance=fmn_mean, data=desc, device=str(dev)).to_csv(
        results / "bench_attacks_budget.csv", index=False)
    _plot(table, fmn_mean, desc, n, results / "bench_attacks_budget.png")
    print(f"\nwrote {results / 'bench_attacks_budget.csv'} and {results / 'bench_attacks_budget.png'}")
    return 0


def _plot(table, fmn_mean: float, desc: str, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for name, label in [("tangent", "Tangent Attack"), ("hsj", "HopSkipJump")]:
        t = table[table.attack == name]
        ax.errorbar(t["budget"], t["mean_distance"], yerr=t["sem"], marker="o", capsize=3, label=label)
        ax2.plot(t["budget"], t["ratio_to_fmn"], marker="o", label=label)
    ax.axhline(fmn_mean, color="k", ls="--", lw=1, label="FMN (white-box)")
    ax2.axhline(1.0, color="k", ls="--", lw=1)
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xlabel("query budget per sample")
    ax.set_ylabel("mean L2 distance (± s.e. over samples)")
    ax2.set_ylabel("mean per-sample distance / FMN distance")
    fig.suptitle(f"MLP 784-2000-10, {n} samples ({desc.split(' (')[0]})", fontsize=9)
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
