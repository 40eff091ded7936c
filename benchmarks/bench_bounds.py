"""Benchmark of the certified radius (repspec_utils.evaluation.bounds) on the MNIST-size MLP (784→2000→10).

Run: python benchmarks/bench_bounds.py [--threads 1] [--samples 1000] [--rounds 20]
Times, in interleaved rounds (benchmarks/harness.py: CPU and wall time, per-round ratios with their IQR), one forward
pass of `--samples` test images and their global and local certified radii; writes benchmarks/results/bounds.csv
(ratios to the forward pass, the mean radii, the model) and prints the target (local radius for 1000 samples in under
10 s of CPU time on one thread, issue 15). The model is the cached App. G cpu model (seed 0, rep-spectral) when the
cache holds it, else a trained-looking stand-in (N(0, 0.05²) weights), named in the output and the file.
"""

from __future__ import annotations

import argparse

import torch
from harness import machine, print_machine, run_rounds, show, summarise, write  # benchmarks/ is on sys.path

from repspec_utils.evaluation import bounds
from repspec_utils.models import MLP


def model_and_data(n: int):
    """(model, x, y, description): the cached App. G model if present, else a random stand-in on uniform pixels."""
    from repspec_utils.experiments import recipes
    from repspec_utils.infra import cache
    from repspec_utils.training import train
    from repspec_utils.training.loop import phase_key

    cfg = next(c for c in recipes.mnist_configs("mnist", seeds=[0], lams=[1e-2], weight_decays=[1e-4], epochs=30,
                                                burn_in=24) if c.method == "rep")
    if (cache.cache_root() / "train" / phase_key(cfg, "final") / "final.pt").exists():  # cached: no training
        result = train(cfg, progress=False)
        _, test = recipes.load_training_data(cfg)
        model = result.model.eval()
        with torch.no_grad():
            correct = (model(test.x).argmax(1) == test.y).nonzero()[:, 0][:n]  # the samples an attack would get
        return (model, test.x[correct], test.y[correct],
                "App. G cpu model (rep-spectral, seed 0) from the cache, correctly classified test images")
    model = MLP(784, [2000], 10, init_std=0.05, seed=0).eval()
    x = torch.rand(n, 784, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, "random 784→2000→10 stand-in (N(0, 0.05²) weights, uniform pixels)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds (≥ 20)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, y, what = model_and_data(args.samples)
    info = machine()
    print_machine(info)

    def forward():
        with torch.no_grad():
            model(x)

    rounds = run_rounds({"forward pass (float32)": forward,
                         "global certified radius (float64)": lambda: bounds.certified_radius(model, x, y,
                                                                                               method="global"),
                         "local certified radius (float64)": lambda: bounds.certified_radius(model, x, y,
                                                                                              method="local")},
                        rounds=args.rounds, warmup=1)
    r_local = bounds.certified_radius(model, x, y)
    r_global = bounds.certified_radius(model, x, y, method="global")
    table = summarise(rounds, baseline="forward pass (float32)").assign(
        baseline="forward pass (float32)", samples=len(y), model=what, mean_radius_local=float(r_local.mean()),
        mean_radius_global=float(r_global.mean()), local_over_global_radius=float((r_local / r_global).mean()))
    print(f"model: {what}; {len(y)} samples")
    show(table, unit="s")
    t_local = float(table.loc[table.variant.str.startswith("local"), "cpu_s"].iloc[0])
    t_global = float(table.loc[table.variant.str.startswith("global"), "cpu_s"].iloc[0])
    print(f"local / global time: {t_local / t_global:.1f}x; mean radius local {r_local.mean():.4f}, "
          f"global {r_global.mean():.4f} (local/global {(r_local / r_global).mean():.2f}x)")
    target = 10.0 * len(y) / 1000
    print(f"target: local radius for {len(y)} samples under {target:.1f} s of CPU time on one thread: "
          f"{'met' if t_local < target else 'NOT met'} ({t_local:.2f} s)")
    write("bounds", table.assign(benchmark="bounds"), info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
