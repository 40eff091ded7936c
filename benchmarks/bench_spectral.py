"""Benchmark of the σ_max paths: exact vs one power-iteration step, for an MNIST-size Linear and the CIFAR ResNet18.

Run: python benchmarks/bench_spectral.py [--threads 1] [--repeats 3] [--batch 128]
Prints small tables: time per penalty call (value + backward), the ratios, the power path's error vs exact,
and the penalty's share of a ResNet18 training step. CPU timings; about a minute on 1 thread.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn

from repspec_utils.method.spectral import (
    SpectralPenalty,
    conv_input_sizes,
    linear_sigma_exact,
    power_iteration,
    spectral_layers,
)
from repspec_utils.models import cifar_resnet18

CLOCK = time.process_time  # CPU time of this process: with 1 thread, robust to other jobs sharing the machine


def timed(fn, repeats: int) -> float:
    """Median time of fn() in seconds on CLOCK (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        times.append(CLOCK() - start)
    return sorted(times)[len(times) // 2]


def penalty_backward(pen: SpectralPenalty, params: list[nn.Parameter]):
    def run():
        for p in params:
            p.grad = None
        pen.penalty().backward()

    return run


def bench_linear(repeats: int) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(784, 2000)  # MNIST hidden layer: W is 2000×784
    params = [layer.weight]
    exact = SpectralPenalty([layer], mode="exact")
    power = SpectralPenalty([layer], mode="power", n_iter=1)
    t0 = CLOCK()
    power.warm_start()
    t_warm = CLOCK() - t0
    W, v = layer.weight.detach(), power.state_dict()["v.0"]
    with torch.no_grad():
        t_norm = timed(lambda: linear_sigma_exact(W), repeats)
        t_step = timed(lambda: power_iteration(W, v, 1), repeats)
    t_exact = timed(penalty_backward(exact, params), repeats)
    t_power = timed(penalty_backward(power, params), repeats)
    truth = SpectralPenalty([copy.deepcopy(layer).double()], mode="exact").sigmas().float()
    err_power = float(((power.sigmas() - truth) / truth).abs().max())
    err_exact = float(((exact.sigmas() - truth) / truth).abs().max())
    print("\nLinear 2000×784")
    print(f"  exact σ (matrix_norm)      {1e3 * t_norm:9.2f} ms")
    print(f"  one power step (no grad)   {1e3 * t_step:9.2f} ms   ratio = {t_norm / t_step:6.1f}x")
    print(f"  exact penalty + backward   {1e3 * t_exact:9.2f} ms")
    print(f"  power penalty + backward   {1e3 * t_power:9.2f} ms   ratio = {t_exact / t_power:6.1f}x")
    print(f"  power warm start           {1e3 * t_warm:9.2f} ms")
    print(f"  rel. error vs float64 exact: power {err_power:.1e}, float32 exact {err_exact:.1e}")


def bench_resnet(repeats: int, batch: int) -> None:
    torch.manual_seed(0)
    model = cifar_resnet18(seed=0)
    sizes = conv_input_sizes(model, torch.rand(1, 3, 32, 32))
    layers = spectral_layers(model, "rep")
    params = [layer.weight for layer in layers]
    exact = SpectralPenalty(layers, sizes, mode="exact")
    power = SpectralPenalty(layers, sizes, mode="power", n_iter=1)
    t0 = CLOCK()
    power.warm_start()
    t_warm = CLOCK() - t0
    t_exact = timed(penalty_backward(exact, params), max(1, repeats - 1))
    t_power = timed(penalty_backward(power, params), repeats)
    model64 = copy.deepcopy(model).double()
    sizes64 = conv_input_sizes(model64, torch.rand(1, 3, 32, 32).double())
    truth = SpectralPenalty(spectral_layers(model64, "rep"), sizes64, mode="exact").sigmas().float()
    err_power = float(((power.sigmas() - truth) / truth).abs().max())
    err_exact = float(((exact.sigmas() - truth) / truth).abs().max())

    x = torch.rand(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    t_step = timed(step, max(1, repeats - 1))
    n_conv = sum(isinstance(layer, nn.Conv2d) for layer in layers)
    print(f"\nCIFAR ResNet18, rep-spectral: {n_conv} convs (stem + 4 stages, 1×1 downsamples), 32×32 input")
    print(f"  exact (FFT + eigvalsh)     {1e3 * t_exact:9.1f} ms per penalty + backward")
    print(f"  power (FFT + 1 iteration)  {1e3 * t_power:9.1f} ms per penalty + backward   "
          f"exact/power = {t_exact / t_power:5.1f}x")
    print(f"  power warm start           {1e3 * t_warm:9.1f} ms")
    print(f"  max rel. error over layers vs float64 exact: power {err_power:.1e}, float32 exact {err_exact:.1e}")
    print(f"  training step, batch {batch}   {1e3 * t_step:9.1f} ms (forward + backward)")
    print(f"  power penalty / step       {t_power / t_step:9.3f}")
    print(f"  exact penalty / step       {t_exact / t_step:9.3f}")
    print(f"  (the paper's schedule regularises every 24th step at batch 1024: amortised share ≈ "
          f"{t_power / (24 * t_step * 1024 / batch):.4f} of training time, assuming step time ∝ batch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    global CLOCK
    torch.set_num_threads(args.threads)
    if args.threads > 1:
        CLOCK = time.perf_counter  # CPU time would add up the threads
    clock = "process CPU time" if CLOCK is time.process_time else "wall time"
    print(f"torch {torch.__version__}, {args.threads} thread(s), float32, CPU; times are medians of {clock}")
    bench_linear(args.repeats)
    bench_resnet(args.repeats, args.batch)


if __name__ == "__main__":
    main()
