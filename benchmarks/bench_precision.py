"""fp32 vs bf16 on this CPU, as ratios measured in one run (not a test).

1. (benchmarks/harness.py: ≥ 20 interleaved rounds, CPU and wall time with per-round ratios and their IQR, written
   to benchmarks/results/precision_step.csv) The MNIST 784→2000→10 GELU MLP's training step at batch 1024 (`train.train_step`, rep-spectral at λ 1e-3, and
   unregularised): fp32 vs the task loss under bfloat16 autocast (`amp=True`, what `TrainConfig.precision='bf16'`
   runs); the penalty, master weights and optimiser state stay fp32 in both.
2. With --more (single runs, indications only: an emulated-bf16 epoch costs minutes): one epoch (60000 samples, 59
   steps of 1024, rep-spectral) in each precision, and Tangent Attack (T = 40) samples per minute on that model,
   `precision='fp32'` vs `'bf16'` (bf16 queries, fp32 final bisection and success check), on the same samples, with
   the two mean distances.

The model is trained for `--warm-steps` steps on MNIST when the files are there (bash scripts/fetch_data.sh), else
on random data (said in the output). bf16 is fast only where the CPU has AVX-512 BF16 or AMX (checked and printed).

Run: python benchmarks/bench_precision.py [--threads 1] [--rounds 20] [--more] [--n-attack 12] [--out FILE]
--out FILE also writes the --more rows to a CSV.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import compare, machine, print_machine, run_rounds, show, summarise, write  # noqa: E402

from repspec_utils import attacks
from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import spectral
from repspec_utils.models import MLP
from repspec_utils.training import TrainConfig, bf16_supported_here, make_optimizer, train_step


def data(n: int = 60000):
    """(X, Y, source): MNIST train images in [0, 1] when present, else uniform noise with random labels."""
    try:
        from repspec_utils.data import get_data

        train, _ = get_data("mnist", flatten=True)
        return train.x[:n], train.y[:n], train.source
    except Exception as exc:  # noqa: BLE001 - a benchmark falls back and says so
        g = torch.Generator().manual_seed(0)
        return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g), f"random data ({exc})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the figure runs use 1 per worker)")
    ap.add_argument("--rounds", type=int, default=20, help="interleaved rounds of the step comparison (≥ 20)")
    ap.add_argument("--more", action="store_true", help="also the epoch and the attack (single runs)")
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per precision (median)")
    ap.add_argument("--n-attack", type=int, default=12, help="samples attacked per precision")
    ap.add_argument("--warm-steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None, help="also write the rows to this CSV")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); bf16 in hardware: {bf16_supported_here()}")
    X, Y, source = data()
    print(f"data: {source}, {len(X)} samples")
    model = MLP(784, [2000], 10, seed=0)
    cfg = TrainConfig(dataset="mnist", model={"kind": "mlp", "widths": [2000]}, lr=0.1, weight_decay=1e-4)
    opt = make_optimizer(cfg, model)
    penalty = spectral.SpectralPenalty(spectral.spectral_layers(model, "rep"))
    objective = OBJECTIVES["supervised"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(args.warm_steps if args.more else 0):  # a briefly trained model: the attack sees a real boundary
        idx = torch.randint(0, len(X), (1024,), generator=gen)
        train_step(model, opt, objective, X[idx], Y[idx], None, penalty, 1e-3, amp=True)
    xb, yb = X[:1024], Y[:1024]
    rows = []

    def step(amp, pen):
        return lambda: train_step(model, opt, objective, xb, yb, None, pen, 1e-3 if pen else 0.0, amp=amp)

    info = machine()
    print_machine(info)
    rounds = run_rounds({"fp32 none": step(False, None), "bf16 none": step(True, None),
                         "fp32 rep": step(False, penalty), "bf16 rep": step(True, penalty)}, args.rounds, warmup=2)
    table = pd.concat([summarise(rounds[rounds.variant.str.endswith(m)], baseline=f"fp32 {m}")
                       .assign(baseline=f"fp32 {m}") for m in ("none", "rep")], ignore_index=True)
    print(f"1. training step, batch 1024, {args.rounds} interleaved rounds (ratios bf16 / fp32):")
    show(table)
    write("precision_step", table.assign(benchmark="precision_step", bf16_in_hardware=bf16_supported_here(),
                                         data=str(source)), info)
    if not args.more:
        return
    t = rounds.groupby("variant")["cpu_s"].median().to_dict()
    for m in ("none", "rep"):
        rows.append({"what": f"step {m}", "fp32": t[f"fp32 {m}"], "bf16": t[f"bf16 {m}"],
                     "ratio": t[f"fp32 {m}"] / t[f"bf16 {m}"]})

    def epoch(amp):
        def run():
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X), 1024):
                idx = perm[i:i + 1024]
                train_step(model, opt, objective, X[idx], Y[idx], None, penalty, 1e-3, amp=amp)
        return run

    e = compare({"fp32": epoch(False), "bf16": epoch(True)}, args.epochs, warmup=0)
    r = e["fp32"] / e["bf16"]
    print(f"2. epoch ({len(X)} samples, rep-spectral): fp32 {e['fp32']:.1f} s   bf16 {e['bf16']:.1f} s   "
          f"fp32/bf16 {r:.2f}x")
    rows.append({"what": "epoch rep", "fp32": e["fp32"], "bf16": e["bf16"], "ratio": r})

    model.eval()
    with torch.no_grad():
        correct = (model(X[-5000:]).argmax(1) == Y[-5000:]).nonzero().flatten()[:args.n_attack]
    xa, ya = X[-5000:][correct], Y[-5000:][correct]
    res, secs = {}, {}
    for prec in ("fp32", "bf16", "fp32 again"):  # fp32 twice: the first run also warms up
        t0 = time.perf_counter()
        res[prec] = attacks.tangent_attack(model, xa, ya, T=40, progress=False, precision=prec.split()[0])
        secs[prec] = time.perf_counter() - t0
    fp32_s = min(secs["fp32"], secs["fp32 again"])
    spm = {p: len(xa) / s * 60 for p, s in (("fp32", fp32_s), ("bf16", secs["bf16"]))}
    d32 = res["fp32"].distance[res["fp32"].success].mean().item()
    d16 = res["bf16"].distance[res["bf16"].success].mean().item()
    ok16 = bool(res["bf16"].success.all())
    print(f"3. Tangent Attack T=40, {len(xa)} samples: fp32 {spm['fp32']:.1f} samples/min   bf16 {spm['bf16']:.1f} "
          f"samples/min   bf16/fp32 {spm['bf16'] / spm['fp32']:.2f}x; mean distance fp32 {d32:.4f} bf16 {d16:.4f} "
          f"({(d16 / d32 - 1) * 100:+.2f} %), every bf16 point adversarial for the fp32 model: {ok16}")
    rows.append({"what": "TA samples/min", "fp32": spm["fp32"], "bf16": spm["bf16"], "ratio": spm["bf16"] / spm["fp32"]})
    if args.out:
        pd.DataFrame(rows).to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
