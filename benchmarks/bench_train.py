"""Training speed, printed as ratios measured in one run (not a test).

1. MNIST 784→2000→10 at batch 1024: step time with rep-spectral and ll-spectral vs the unregularised step
   (target ≤ 1.05x) with the library's step (`train.train_step`: the penalty's gradient added in place), the
   same penalty through autograd, and a penalty that forms WᵀW and iterates on it every step.
2. MNIST epoch time vs the matrix-multiply bound: the epoch's GEMM FLOPs / GEMM throughput measured here
   (target ≤ 1.3x).
3. XOR at full scale (15000 epochs; widths 3, 8; wd 0, 1e-4; None/ll/rep; 5 seeds = 60 nets) with the
   batched engine (target < 2 minutes on a 2-core machine).

Run: python benchmarks/bench_train.py [--skip-xor]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import torch

from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import spectral
from repspec_utils.models import MLP
from repspec_utils.training import TrainConfig, make_optimizer, train_step
from repspec_utils.training.ensemble import train_batched


def timeit(fn, repeat: int = 20, warmup: int = 3) -> float:
    """Median seconds per call."""
    return compare({"fn": fn}, repeat, warmup)["fn"]


def compare(fns: dict, repeat: int = 20, warmup: int = 3) -> dict:
    """Median seconds per call of each function, timed round-robin (in a shuffled order each round) so background
    load and cache effects hit all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {k: [] for k in fns}
    order, rng = list(fns), random.Random(0)
    for _ in range(repeat):
        rng.shuffle(order)  # a fixed order would always run one function right after the same other one
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def mnist_step_ratios(batch: int = 1024, repeat: int = 20) -> dict:
    torch.manual_seed(0)
    x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))
    model = MLP(784, [2000], 10, seed=0)
    cfg = TrainConfig(dataset="mnist", model={"kind": "mlp", "widths": [2000]}, lr=0.1, weight_decay=1e-4)
    opt = make_optimizer(cfg, model)
    penalties = {m: spectral.SpectralPenalty(spectral.spectral_layers(model, m)) for m in ("rep", "ll")}

    def gram_penalty():  # the slow way: form WᵀW and power-iterate on it every step
        total = 0.0
        for layer in spectral.spectral_layers(model, "rep"):
            W = layer.weight
            G = W.T @ W
            v = torch.ones(G.shape[0])
            for _ in range(3):
                v = G @ v
                v = v / v.norm()
            total = total + v @ G @ v
        return total

    objective = OBJECTIVES["supervised"]

    def step(penalty=None):  # the library's training step (what train() runs)
        train_step(model, opt, objective, x, y, None, penalty, 1e-3)

    def autograd_step(pen):  # the same step with the penalty through autograd: loss + λ·R, one backward
        loss = objective(model, x, y, None)[0] + 1e-3 * pen()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return compare({"none": lambda: step(), "rep": lambda: step(penalties["rep"]),
                    "ll": lambda: step(penalties["ll"]),
                    "rep (autograd)": lambda: autograd_step(penalties["rep"].penalty),
                    "gram": lambda: autograd_step(gram_penalty)}, repeat=repeat)




def mnist_epoch_vs_bound(batch: int = 1024, n: int = 60000) -> tuple[float, float]:
    """(measured epoch seconds, GEMM-bound seconds) for the unregularised MNIST MLP on tensor data."""
    torch.manual_seed(0)
    X, Y = torch.rand(n, 784), torch.randint(0, 10, (n,))
    model = MLP(784, [2000], 10, seed=0)
    cfg = TrainConfig(dataset="mnist", model={"kind": "mlp", "widths": [2000]}, lr=0.1)
    opt = make_optimizer(cfg, model)

    def epoch():
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            train_step(model, opt, OBJECTIVES["supervised"], X[idx], Y[idx])

    a, b = torch.randn(batch, 784), torch.randn(784, 2000)
    n_gemm = 60  # GEMMs of the first layer's size, timed in the same rounds as the epoch
    t = compare({"epoch": epoch, "gemm": lambda: [a @ b for _ in range(n_gemm)]}, repeat=3, warmup=1)
    gemm_rate = n_gemm * 2 * batch * 784 * 2000 / t["gemm"]
    # forward: 2·(784·2000 + 2000·10) per sample; backward: weight grads of both layers + the hidden grad
    # (the input needs no grad): 2·(784·2000) + 2·(2000·10)·2
    flops = n * (2 * (784 * 2000 + 2000 * 10) + 2 * 784 * 2000 + 4 * 2000 * 10)
    return t["epoch"], flops / gemm_rate


def xor_full_scale() -> float:
    cfgs = [
        TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [w]}, method=m, lam=1e-3, lr=1.0, batch_size=4,
                    epochs=15000, burn_in=10500, seed=s, weight_decay=wd)
        for w in (3, 8) for m in ("none", "ll", "rep") for s in (400, 500, 600, 700, 800) for wd in (0.0, 1e-4)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REPSPEC_CACHE"] = tmp
        t0 = time.perf_counter()
        for w in (3, 8):
            train_batched([c for c in cfgs if c.model["widths"] == [w]], progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-xor", action="store_true")
    ap.add_argument("--repeat", type=int, default=20, help="timed rounds of the step comparison (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    t = mnist_step_ratios(repeat=args.repeat)
    print(f"MNIST 784-2000-10 step at batch 1024 (median of {args.repeat}):")
    for m in ("none", "rep", "ll", "rep (autograd)", "gram"):
        print(f"  {m:>14}: {t[m] * 1e3:7.2f} ms   ratio to none {t[m] / t['none']:.3f}")
    measured, bound = mnist_epoch_vs_bound()
    print(f"MNIST epoch (60000 samples, tensor data): {measured:.2f} s; GEMM bound {bound:.2f} s; "
          f"ratio {measured / bound:.2f}")
    if not args.skip_xor:
        print(f"XOR full scale (60 nets x 15000 epochs, batched): {xor_full_scale():.1f} s")


if __name__ == "__main__":
    main()
