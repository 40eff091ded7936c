"""Training speed: ratios from interleaved rounds in one run, CPU and wall time with their IQR (benchmarks/harness.py),
written to benchmarks/results/train_*.csv (not a test).

1. MNIST 784→2000→10 at batch 1024: step time with rep-spectral and ll-spectral vs the unregularised step
   (target ≤ 1.05x) with the library's step (`training.train_step`: the penalty's gradient added in place), the
   same penalty through autograd, and a penalty that forms WᵀW and iterates on it every step.
2. MNIST epoch vs its exact GEMM bound: the five matrix products an epoch executes (forward of both layers, the
   weight gradients of both, the hidden layer's input gradient — never the input's), each at its own shape and
   layout, timed in the same rounds as the epoch (target ≤ 1.25x).
3. XOR at full scale (15000 epochs; widths 3, 8; wd 0, 1e-4; None/ll/rep; 5 seeds = 60 nets) with the
   batched engine.

Run: python benchmarks/bench_train.py [--skip-xor] [--rounds 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import pandas as pd
import torch
from harness import cpu_clock, machine, print_machine, run_rounds, show, summarise, write

from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import spectral
from repspec_utils.models import MLP
from repspec_utils.training import TrainConfig, make_optimizer, train_step
from repspec_utils.training.ensemble import train_batched


def mnist_step_rounds(batch: int = 1024, rounds: int = 20) -> pd.DataFrame:
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

    return run_rounds({"none": lambda: step(), "rep": lambda: step(penalties["rep"]),
                       "ll": lambda: step(penalties["ll"]),
                       "rep (autograd)": lambda: autograd_step(penalties["rep"].penalty),
                       "gram": lambda: autograd_step(gram_penalty)}, rounds=rounds)




EPOCH_GEMMS = ("x·W1ᵀ", "h·W2ᵀ", "dW2 = dyᵀ·h", "dh = dy·W2", "dW1 = dzᵀ·x")


def epoch_gemm_flops(n: int = 60000, d: int = 784, width: int = 2000, classes: int = 10) -> int:
    """The FLOPs of the matrix products one epoch executes (2·m·k·n each): per sample 2·d·w + 2·w·c forward, then
    2·w·c (dW2) + 2·c·w (dh) + 2·w·d (dW1) backward; the input's gradient is never computed."""
    return n * (2 * d * width + 2 * width * classes + 2 * width * classes + 2 * classes * width + 2 * width * d)


def mnist_epoch_rounds(batch: int = 1024, n: int = 60000, rounds: int = 20) -> pd.DataFrame:
    """Rounds of (one unregularised MNIST epoch on tensor data, the same epoch's five GEMMs alone)."""
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

    W1, W2 = torch.randn(2000, 784), torch.randn(10, 2000)
    sizes = [min(batch, n - i) for i in range(0, n, batch)]
    operands = {b: (torch.randn(b, 784), torch.randn(b, 2000), torch.randn(b, 10), torch.randn(b, 2000))
                for b in set(sizes)}

    def gemms():  # each product at the shape and layout nn.Linear's forward and backward use
        for b in sizes:
            x, h, dy, dz = operands[b]
            torch.mm(x, W1.t())
            torch.mm(h, W2.t())
            torch.mm(dy.t(), h)
            torch.mm(dy, W2)
            torch.mm(dz.t(), x)

    return run_rounds({"gemms": gemms, "epoch": epoch}, rounds=rounds, warmup=1)


def xor_full_scale() -> tuple[float, float]:
    cfgs = [
        TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [w]}, method=m, lam=1e-3, lr=1.0, batch_size=4,
                    epochs=15000, burn_in=10500, seed=s, weight_decay=wd)
        for w in (3, 8) for m in ("none", "ll", "rep") for s in (400, 500, 600, 700, 800) for wd in (0.0, 1e-4)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REPSPEC_CACHE"] = tmp
        clock = cpu_clock()[1]
        t0, c0 = time.perf_counter(), clock()
        for w in (3, 8):
            train_batched([c for c in cfgs if c.model["widths"] == [w]], progress=False)
        return time.perf_counter() - t0, clock() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-xor", action="store_true")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds of each comparison (≥ 20)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the thread's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    print_machine(info)
    steps = summarise(mnist_step_rounds(rounds=args.rounds), baseline="none")
    print(f"MNIST 784-2000-10 step at batch 1024 ({args.rounds} interleaved rounds; median [IQR]):")
    show(steps)
    write("train_mnist_step", steps.assign(benchmark="mnist_step"), info)
    epoch = summarise(mnist_epoch_rounds(rounds=args.rounds), baseline="gemms")
    flops = epoch_gemm_flops()
    print(f"MNIST epoch (60000 samples, tensor data) vs its exact GEMM bound ({flops / 1e9:.1f} GFLOP in "
          f"{len(EPOCH_GEMMS)} products):")
    show(epoch, unit="s")
    write("train_mnist_epoch_bound", epoch.assign(benchmark="mnist_epoch_bound", gemm_gflop=flops / 1e9), info)
    if not args.skip_xor:
        wall, cpu = xor_full_scale()
        print(f"XOR full scale (60 nets x 15000 epochs, batched): cpu {cpu:.1f} s, wall {wall:.1f} s (one run)")
        write("train_xor_full_scale", pd.DataFrame([{"benchmark": "xor_full_scale", "variant": "batched", "rounds": 1,
                                                      "wall_s": wall, "cpu_s": cpu, "cpu_clock": cpu_clock()[0]}]), info)


if __name__ == "__main__":
    main()
