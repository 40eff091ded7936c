"""Cost of the adversarial-training methods (issue 13): ratios to the unregularised step from interleaved rounds, CPU
and wall time with their IQR (benchmarks/harness.py), written to benchmarks/results/adversarial_step*.csv.

The MNIST MLP (784→2000→10, batch 1024, the paper's width) trains one minibatch step with each method exactly as
`train()` runs it (`training.method_parts` of the method's factory, its wrapped objective, `training.train_step`);
the steps run in interleaved rounds so background load hits all alike. Targets (issue 13):
a `pgd_at` step with k PGD steps costs at most (k + 1.3)× the unregularised step, an `arat` step at most (k + 2.5)×.
Every step of an epoch is such a step (the per-epoch test-set evaluation is the same for every method), so the
step ratio is the epoch ratio. AR-AT runs on the BatchNorm MLP (`batchnorm=True`, split BN) and on the plain MLP;
the BN one's baseline is the unregularised step of that same BatchNorm MLP. AR-AT's predictor on a 2000-wide Φ
(2000 → 500 → 2000) has as many FLOPs as the MLP itself, so its forward + backward is timed alone too.
With --resnet the CIFAR ResNet18 (batch 32, CPU) times none / pgd_at / arat as well (layer4's four 512-wide
predictors are small next to the convolutions).

Targets of issue 31: an LSP-style step at most 1.5× the unregularised one.

Run: python benchmarks/bench_adversarial.py [--threads 1] [--steps 10] [--repeat 20] [--resnet | --resnet-only]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch
from harness import machine, print_machine, run_rounds, show, summarise, write  # benchmarks/ is on sys.path

from repspec_utils import training
from repspec_utils.defences import adversarial as ADV
from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import penalties
from repspec_utils.models import MLP, cifar_resnet18
from repspec_utils.training import TrainConfig


def step_fn(method: str, k: int, batchnorm: bool, x, y, lam: float, resnet: bool = False):
    if resnet:
        model = cifar_resnet18(seed=0).train()
        spec, dataset = {"kind": "cifar_resnet18"}, "cifar10_synthetic"
    else:
        model = MLP(784, [2000], 10, seed=0, init="torch", batchnorm=batchnorm).train()
        spec, dataset = {"kind": "mlp", "widths": [2000], "batchnorm": batchnorm}, "mnist"
    cfg = TrainConfig(dataset=dataset, model=spec, method=method, lam=lam, lr=0.1, weight_decay=1e-4,
                      method_kwargs={"eps": 0.1, "steps": k} if "pgd" in method or method == "arat" else {})
    training.validate(cfg)
    training.prepare_model(cfg, model)
    parts = training.method_parts(penalties.make_penalty(cfg, model, x[:2]))
    objective = OBJECTIVES["supervised"]
    if parts.wrap is not None:
        objective = parts.wrap(objective)
    if parts.epoch_start is not None:
        parts.epoch_start(model, x, y, 0)
    opt = training.make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(0)

    def step():
        training.train_step(model, opt, objective, x, y, gen, parts.penalty, lam)
    return step


def resnet_rounds(k: int, repeat: int, info: dict) -> None:
    """none / pgd_at / arat on the CIFAR ResNet18, batch 32, in interleaved rounds -> adversarial_step_resnet18.csv."""
    gr = torch.Generator().manual_seed(1)
    xr, yr = torch.rand(32, 3, 32, 32, generator=gr), torch.randint(0, 10, (32,), generator=gr)
    res = summarise(run_rounds({"none (ResNet18)": step_fn("none", k, False, xr, yr, 0.0, resnet=True),
                                "pgd_at (ResNet18)": step_fn("pgd_at", k, False, xr, yr, 0.0, resnet=True),
                                "arat (ResNet18)": step_fn("arat", k, False, xr, yr, 30.0, resnet=True)},
                               rounds=repeat, warmup=1), baseline="none (ResNet18)").assign(baseline="none (ResNet18)")
    print(f"CIFAR ResNet18, batch 32, PGD k = {k}, {repeat} interleaved rounds (median [IQR])")
    show(res)
    write("adversarial_step_resnet18", res.assign(benchmark="adversarial_step_resnet18", pgd_steps=k), info)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps k")
    ap.add_argument("--repeat", type=int, default=20, help="interleaved rounds (≥ 20)")
    ap.add_argument("--resnet", action="store_true", help="also ResNet18 on 32x32 inputs (batch 32; minutes)")
    ap.add_argument("--resnet-only", action="store_true", help="ResNet18 only (keeps the MLP results file)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    k = args.steps
    info = machine()
    if args.resnet_only:
        print_machine(info)
        resnet_rounds(k, args.repeat, info)
        return 0
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(1024, 784, generator=g), torch.randint(0, 10, (1024,), generator=g)
    fns = {
        "none": step_fn("none", k, False, x, y, 0.0),
        "rep": step_fn("rep", k, False, x, y, 1e-3),
        "pgd_at": step_fn("pgd_at", k, False, x, y, 0.0),
        "rep+pgd_at": step_fn("rep+pgd_at", k, False, x, y, 1e-3),
        "lsp": step_fn("lsp", k, False, x, y, 1.0),
        "lsp+pgd_at": step_fn("lsp+pgd_at", k, False, x, y, 1.0),
        "none (BN MLP)": step_fn("none", k, True, x, y, 0.0),
        "arat (BN MLP)": step_fn("arat", k, True, x, y, 1.0),
        "arat (no BN)": step_fn("arat", k, False, x, y, 1.0),
    }
    head = ADV._predictor(2000, 4).train()
    z = torch.randn(1024, 2000)

    def predictor_step():
        head(z).sum().backward()
    fns["AR-AT predictor"] = predictor_step
    print_machine(info)
    rounds = run_rounds(fns, rounds=args.repeat, warmup=1)
    mlp = [v for v in fns if "BN MLP" not in v and v != "AR-AT predictor"]
    bn = [v for v in fns if "BN MLP" in v]
    table = pd.concat([summarise(rounds[rounds.variant.isin(mlp)], baseline="none").assign(baseline="none"),
                       summarise(rounds[rounds.variant.isin(bn)], baseline="none (BN MLP)").assign(baseline="none (BN MLP)"),
                       summarise(rounds[rounds.variant == "AR-AT predictor"]).assign(baseline="")], ignore_index=True)
    print(f"MNIST MLP 784→2000→10, batch 1024, {args.threads} thread(s), PGD k = {k}; {args.repeat} interleaved rounds "
          f"(median [IQR]); targets: pgd_at ≤ {k + 1.3:.1f}×, arat ≤ {k + 2.5:.1f}×, lsp ≤ 1.5×")
    show(table)
    write("adversarial_step", table.assign(benchmark="adversarial_step", pgd_steps=k), info)
    if args.resnet:
        resnet_rounds(k, args.repeat, info)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
