"""The σ_max paths: exact vs one power-iteration step, for the MNIST hidden layer and the CIFAR ResNet18's convs, in
interleaved rounds (benchmarks/harness.py: CPU and wall time, per-round ratios with their IQR), written to
benchmarks/results/spectral_linear.csv and spectral_resnet18.csv with the power path's error against a float64
exact σ on every row.

1. Linear 2000×784 (the MNIST hidden layer): exact σ (`matrix_norm`, no grad) / one power step; exact penalty +
   backward / power penalty + backward (the ratios' baselines are the power variants).
2. CIFAR ResNet18, rep-spectral on its 20 convs (32×32 input, circular padding: FFT blocks): exact (FFT + eigvalsh) /
   power (FFT + 1 iteration), each penalty + backward, and both as a share of a training step at --batch.

Run: python benchmarks/bench_spectral.py [--threads 1] [--rounds 20] [--batch 128] [--skip-resnet]
"""

from __future__ import annotations

import argparse
import copy

import pandas as pd
import torch
from harness import machine, print_machine, run_rounds, show, summarise, write  # benchmarks/ is on sys.path
from torch import nn

from repspec_utils.method.spectral import (SpectralPenalty, conv_input_sizes, linear_sigma_exact, power_iteration,
                                           spectral_layers)
from repspec_utils.models import cifar_resnet18


def penalty_backward(pen: SpectralPenalty, params: list[nn.Parameter]):
    def run():
        for p in params:
            p.grad = None
        pen.penalty().backward()

    return run


def max_rel_error(pen: SpectralPenalty, truth: torch.Tensor) -> float:
    return float(((pen.sigmas() - truth) / truth).abs().max())


def bench_linear(rounds: int, info: dict) -> pd.DataFrame:
    torch.manual_seed(0)
    layer = nn.Linear(784, 2000)  # MNIST hidden layer: W is 2000×784
    params = [layer.weight]
    exact = SpectralPenalty([layer], mode="exact")
    power = SpectralPenalty([layer], mode="power", n_iter=1)
    power.warm_start()
    W, v = layer.weight.detach(), power.state_dict()["v.0"]

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    fns = {"one power step": no_grad(lambda: power_iteration(W, v, 1)),
           "exact sigma": no_grad(lambda: linear_sigma_exact(W)),
           "power penalty + backward": penalty_backward(power, params),
           "exact penalty + backward": penalty_backward(exact, params)}
    rounds_ = run_rounds(fns, rounds=rounds, warmup=1)
    truth = SpectralPenalty([copy.deepcopy(layer).double()], mode="exact").sigmas().float()
    errors = {"power_rel_error": max_rel_error(power, truth), "exact_fp32_rel_error": max_rel_error(exact, truth)}
    table = pd.concat([
        summarise(rounds_[rounds_.variant.isin(["one power step", "exact sigma"])], baseline="one power step")
        .assign(baseline="one power step"),
        summarise(rounds_[rounds_.variant.str.contains("penalty")], baseline="power penalty + backward")
        .assign(baseline="power penalty + backward")], ignore_index=True).assign(**errors)
    print("\nLinear 2000×784 (ratios to the power variant of the same kind)")
    show(table)
    print(f"  max rel. error vs float64 exact: power {errors['power_rel_error']:.1e}, "
          f"float32 exact {errors['exact_fp32_rel_error']:.1e}")
    write("spectral_linear", table.assign(benchmark="spectral_linear"), info)
    return table


def bench_resnet(rounds: int, batch: int, info: dict) -> pd.DataFrame:
    torch.manual_seed(0)
    model = cifar_resnet18(seed=0)
    sizes = conv_input_sizes(model, torch.rand(1, 3, 32, 32))
    layers = spectral_layers(model, "rep")
    params = [layer.weight for layer in layers]
    exact = SpectralPenalty(layers, sizes, mode="exact")
    power = SpectralPenalty(layers, sizes, mode="power", n_iter=1)
    power.warm_start()
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    model.train()

    def step():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    fns = {"training step": step, "power penalty + backward": penalty_backward(power, params),
           "exact penalty + backward": penalty_backward(exact, params)}
    rounds_ = run_rounds(fns, rounds=rounds, warmup=1)
    model64 = copy.deepcopy(model).double()
    sizes64 = conv_input_sizes(model64, torch.rand(1, 3, 32, 32).double())
    truth = SpectralPenalty(spectral_layers(model64, "rep"), sizes64, mode="exact").sigmas().float()
    errors = {"power_rel_error": max_rel_error(power, truth), "exact_fp32_rel_error": max_rel_error(exact, truth)}
    n_conv = sum(isinstance(layer, nn.Conv2d) for layer in layers)
    table = pd.concat([
        summarise(rounds_[rounds_.variant.str.contains("penalty")], baseline="power penalty + backward")
        .assign(baseline="power penalty + backward"),
        summarise(rounds_, baseline="training step").assign(baseline="training step")
        .pipe(lambda t: t[t.variant != "training step"]).assign(variant=lambda t: t.variant + " / step"),
        summarise(rounds_[rounds_.variant == "training step"]).assign(baseline="")],
        ignore_index=True).assign(**errors, batch=batch, convs=n_conv)
    print(f"\nCIFAR ResNet18, rep-spectral on {n_conv} convs, 32×32 input; training step at batch {batch}")
    show(table)
    print(f"  max rel. error over layers vs float64 exact: power {errors['power_rel_error']:.1e}, "
          f"float32 exact {errors['exact_fp32_rel_error']:.1e}")
    write("spectral_resnet18", table.assign(benchmark="spectral_resnet18"), info)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (≥ 20)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine()
    print_machine(info)
    bench_linear(args.rounds, info)
    if not args.skip_resnet:
        bench_resnet(args.rounds, args.batch, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
