"""Wall time of `recipes.train_all` inline vs on submitit's local executor (issue 14), in interleaved rounds.

The models are Fig 4's (784→2000→10 MLP, all 60000 images, lr 0.1, batch 1024, methods none / ll / rep) with fewer
seeds and epochs, so that a round takes about two minutes on an idle 2-core machine (≈ 45 min for 20 rounds; with
much less work per job the jobs' start-up — a fresh process importing torch and loading MNIST — dominates: 2000
images gave local / inline = 2.6× on the loaded machine) (the job structure is the same: per seed one job for the burn-in and its first
branch, then the other branches as jobs that need it). Inline: one process, 1 torch thread (the cpu profile's
setting); local: `--workers` processes × 1 thread. Every call trains into its own empty cache. The two modes
alternate in ≥ 20 rounds (benchmarks/harness.py); the **wall** ratio is the measure here (the work runs in job
processes, so this process's CPU time says nothing) and it needs an otherwise idle machine: with other jobs on the
cores the workers compete with them. Target (issue 14): local with 2 workers ≤ 0.6× the inline wall time on a
2-core machine. Writes benchmarks/results/executor.csv.

Run: python benchmarks/bench_executor.py [--seeds 2] [--epochs 2] [--burn-in 1] [--n-train 0] [--workers 2]
     [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from harness import machine, print_machine, run_rounds, show, summarise, write  # benchmarks/ is on sys.path

from repspec_utils.experiments import recipes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--burn-in", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=0, help="0: all 60000 images")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (≥ 20)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = recipes.mnist_configs("mnist", methods=["none", "ll", "rep"], seeds=range(args.seeds),
                                    epochs=args.epochs, burn_in=args.burn_in, n_train=args.n_train or None)
    before = os.environ.get("REPSPEC_CACHE")

    def train(mode: str):
        def run():
            with tempfile.TemporaryDirectory() as root:
                os.environ["REPSPEC_CACHE"] = root
                try:
                    recipes.train_all(configs, progress=False, executor=mode, max_workers=args.workers)
                finally:
                    if before is None:
                        os.environ.pop("REPSPEC_CACHE", None)
                    else:
                        os.environ["REPSPEC_CACHE"] = before
        return run

    info = machine()
    print_machine(info)
    rounds = run_rounds({"inline": train("inline"), "local": train("local")}, rounds=args.rounds, warmup=1)
    table = summarise(rounds, baseline="inline").assign(
        baseline="inline", models=len(configs), seeds=args.seeds, epochs=args.epochs, burn_in=args.burn_in,
        n_train=args.n_train or 60000, workers=args.workers, measure="wall (jobs run in other processes)")
    print(f"{len(configs)} models ({args.seeds} seeds × none / ll / rep), {args.epochs} epochs (burn-in {args.burn_in}), "
          f"{args.n_train or 60000} images; inline 1 thread vs local {args.workers} workers × 1 thread")
    show(table, unit="s")
    ratio = float(table.loc[table.variant == "local", "wall_ratio"].iloc[0])
    print(f"local / inline wall = {ratio:.2f}× (target ≤ 0.6×: {'ok' if ratio <= 0.6 else 'MISSED'}; "
          f"load {info['load1']}: {'an idle machine' if info['load1'] < 0.5 else 'NOT an idle machine'})")
    write("executor", table.assign(benchmark="executor"), info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
