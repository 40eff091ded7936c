"""Wall time of `recipes.train_all` inline vs on submitit's local executor (issue 14), one run, as a ratio.

The models are Fig 4's (784→2000→10 MLP, all 60000 MNIST images, lr 0.1, batch 1024, methods none / ll / rep) with
fewer seeds and epochs so that the benchmark takes minutes, not hours (the job structure is the same: per seed one
job for the burn-in and its first branch, then the other branches as jobs that need it). Inline: one process, 1 torch
thread (the cpu profile's setting); local: `--workers` processes × 1 thread. Each mode trains into its own empty
cache. Target (issue 14): local with 2 workers ≤ 0.6× the inline wall time on this 2-core machine.

Run: python benchmarks/bench_executor.py [--seeds 4] [--epochs 3] [--burn-in 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from repspec_utils.experiments import recipes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--burn-in", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=0, help="0: all 60000 images")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    configs = recipes.mnist_configs("mnist", methods=["none", "ll", "rep"], seeds=range(args.seeds),
                                    epochs=args.epochs, burn_in=args.burn_in, n_train=args.n_train or None)
    times = {}
    for mode in ("inline", "local"):
        with tempfile.TemporaryDirectory() as root:
            os.environ["REPSPEC_CACHE"] = root
            t0 = time.perf_counter()
            recipes.train_all(configs, progress=False, executor=mode, max_workers=args.workers)
            times[mode] = time.perf_counter() - t0
    ratio = times["local"] / times["inline"]
    print(f"{len(configs)} models ({args.seeds} seeds × none / ll / rep), {args.epochs} epochs (burn-in {args.burn_in}), "
          f"{args.n_train or 60000} images; inline 1 thread vs local {args.workers} workers × 1 thread")
    print(f"inline {times['inline']:.1f} s, local {times['local']:.1f} s: local / inline = {ratio:.2f}× "
          f"(target ≤ 0.6×: {'ok' if ratio <= 0.6 else 'MISSED'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
