"""Fill the cache for the MNIST figures (Fig 4 / Fig 5) with several worker processes, then let the notebooks
redraw from it: `python scripts/warm_mnist_cache.py --profile cpu --workers 2 [--refit]`.

The jobs are exactly what the notebooks would compute (the same configs from the profile's parameters, the same
`robustness_table` calls, hence the same cache keys), scheduled on `--workers` processes of one torch thread
each: per seed, the `none` model first (it trains the shared burn-in), then the other methods' branches, then one
attack table per model, then (with --refit) the re-fitted readouts and their attack tables. Every job is cached
atomically, so an interrupted run resumes where it stopped. `repspec run --profile cpu --only fig4_mnist,fig5_mnist_refit
--executor local --max-workers 2` now does the same through submitit (repspec_utils/infra/executor.py), jobs and all; this
script stays for its --train-only mode.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _params(name: str, profile: str, overrides: list[str]) -> dict:
    from repspec_utils.infra import notebook
    from repspec_utils.infra import runner as reproduce

    return notebook.profile_params(name, profile, reproduce.parse_set(overrides))


def profile_configs(p: dict):
    """The Fig 4 / Fig 5 configs of a notebook's parameters (the same keys the notebooks compute)."""
    from repspec_utils.experiments import recipes

    return recipes.mnist_configs("mnist", methods=p["methods"], seeds=p["seeds"], lams=[p["lam"]],
                                     weight_decays=[p["weight_decay"]], epochs=p["epochs"], burn_in=p["burn_in"],
                                     lr=p["lr"], batch_size=p["batch_size"], width=p["width"],
                                     n_train=p["n_train"] or None, precision=p["precision"])


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _job(kind: str, cfg, p: dict) -> tuple[str, float]:
    from repspec_utils.experiments import run
    from repspec_utils.training import train

    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    if kind != "train":
        run.robustness_table([result], n=p["n_attack"], attack_kwargs={"T": p["attack_T"]},
                                     readout="refit" if kind == "refit" else "original", progress=False,
                                     precision=p["precision"])
    return f"{kind} {cfg.method} seed {cfg.seed}", time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--notebook", default="fig4_mnist")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--refit", action="store_true", help="also the re-fitted readouts of Fig 5 and their attacks")
    ap.add_argument("--train-only", action="store_true", help="only the models (no attack tables, no re-fits)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    p = _params(args.notebook, args.profile, args.set)
    configs = profile_configs(p)
    print(f"{len(configs)} models, {len(p['seeds'])} seeds, {p['epochs']} epochs, precision {p['precision']}, "
          f"{args.workers} workers", flush=True)
    # jobs with dependencies: (priority, kind, index, needs)
    jobs: list[tuple[int, str, int, tuple]] = []
    for i, c in enumerate(configs):
        first = next(j for j, d in enumerate(configs) if d.seed == c.seed and d.method == "none")
        jobs.append((0 if i == first else 1, "train", i, () if i == first else (("train", first),)))
        if args.train_only:
            continue
        jobs.append((2, "attack", i, (("train", i),)))
        if args.refit:
            jobs.append((3, "refit", i, (("attack", i),)))
    done: set = set()
    running: dict = {}
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker) as pool:
        while jobs or running:
            ready = sorted(j for j in jobs if all(d in done for d in j[3]))
            while ready and len(running) < args.workers:
                j = ready.pop(0)
                jobs.remove(j)
                running[pool.submit(_job, j[1], configs[j[2]], p)] = j
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for f in finished:
                j = running.pop(f)
                what, seconds = f.result()  # a failed job stops the run with its traceback
                done.add((j[1], j[2]))
                print(f"[{(time.perf_counter() - t0) / 60:6.1f} min] done {what} ({seconds / 60:.1f} min); "
                      f"{len(jobs) + len(running)} jobs left", flush=True)
    print(f"all jobs done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
