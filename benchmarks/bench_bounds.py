"""Benchmark of the certified radius (repspec_utils.evaluation.bounds) on the MNIST-size MLP (784→2000→10).

Run: python benchmarks/bench_bounds.py [--threads 1] [--samples 1000] [--repeats 3]
Prints the CPU time of the global and the local certified radius for `--samples` test images, their ratio, the
ratio of the local radius to one forward pass of the same images, and the target (local radius for 1000 samples
in under 10 s on one thread, issue 15). The model is the cached App. G cpu model (seed 0, rep-spectral) when the
cache holds it, else a trained-looking stand-in (N(0, 0.05²) weights), named in the output.
"""

from __future__ import annotations

import argparse

import torch
from bench_spectral import timed  # the median-of-repeats CPU timer (benchmarks/ is on sys.path when run)

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
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, x, y, what = model_and_data(args.samples)
    with torch.no_grad():
        t_forward = timed(lambda: model(x), args.repeats)
    t_global = timed(lambda: bounds.certified_radius(model, x, y, method="global"), args.repeats)
    t_local = timed(lambda: bounds.certified_radius(model, x, y, method="local"), args.repeats)
    r_local = bounds.certified_radius(model, x, y)
    r_global = bounds.certified_radius(model, x, y, method="global")
    print(f"model: {what}; {len(y)} samples, {args.threads} thread(s), median of {args.repeats} (CPU time)")
    print(f"{'what':<42}{'seconds':>10}{'ratio':>10}")
    print(f"{'forward pass (float32)':<42}{t_forward:>10.3f}{1.0:>10.1f}")
    print(f"{'global certified radius (float64)':<42}{t_global:>10.3f}{t_global / t_forward:>10.1f}")
    print(f"{'local certified radius (float64)':<42}{t_local:>10.3f}{t_local / t_forward:>10.1f}")
    print(f"local / global time: {t_local / t_global:.1f}x; mean radius local {r_local.mean():.4f}, "
          f"global {r_global.mean():.4f} (local/global {(r_local / r_global).mean():.2f}x)")
    target = 10.0 * len(y) / 1000
    print(f"target: local radius for {len(y)} samples under {target:.1f} s on one thread: "
          f"{'met' if t_local < target else 'NOT met'} ({t_local:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
