"""Cost of the adversarial-training methods (issue 13), printed as ratios to the unregularised step, one run.

The MNIST MLP (784→2000→10, batch 1024, the paper's width) trains one minibatch step with each method exactly as
`train()` runs it (`train.method_parts` of the method's factory, its wrapped objective, `train.train_step`); the
steps are timed round-robin (benchmarks/bench_train.compare) so background load hits all alike. Targets (issue 13):
a `pgd_at` step with k PGD steps costs at most (k + 1.3)× the unregularised step, an `arat` step at most (k + 2.5)×.
Every step of an epoch is such a step (the per-epoch test-set evaluation is the same for every method), so the
step ratio is the epoch ratio. AR-AT runs on the BatchNorm MLP (`batchnorm=True`, split BN) and on the plain MLP;
the BN one's baseline is the unregularised step of that same BatchNorm MLP. AR-AT's predictor on a 2000-wide Φ
(2000 → 500 → 2000) has as many FLOPs as the MLP itself, so its forward + backward is timed alone too.
With --resnet the CIFAR ResNet18 (batch 32, CPU) times none / pgd_at / arat as well (layer4's four 512-wide
predictors are small next to the convolutions).

Run: python benchmarks/bench_adversarial.py [--threads 1] [--steps 10] [--repeat 7] [--resnet]
"""

from __future__ import annotations

import argparse

import torch
from bench_train import compare  # benchmarks/ is on sys.path when run

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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps k")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--resnet", action="store_true", help="also ResNet18 on 32x32 inputs (batch 32; minutes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    k = args.steps
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
    t = compare(fns, repeat=args.repeat, warmup=1)
    if args.resnet:
        gr = torch.Generator().manual_seed(1)
        xr, yr = torch.rand(32, 3, 32, 32, generator=gr), torch.randint(0, 10, (32,), generator=gr)
        t.update(compare({"none (ResNet18)": step_fn("none", k, False, xr, yr, 0.0, resnet=True),
                          "pgd_at (ResNet18)": step_fn("pgd_at", k, False, xr, yr, 0.0, resnet=True),
                          "arat (ResNet18)": step_fn("arat", k, False, xr, yr, 30.0, resnet=True)},
                         repeat=max(2, args.repeat // 2), warmup=1))
    targets = {"pgd_at (ResNet18)": k + 1.3, "arat (ResNet18)": k + 2.5, "pgd_at": k + 1.3, "rep+pgd_at": None, "arat (BN MLP)": k + 2.5, "arat (no BN)": k + 2.5}
    print(f"MNIST MLP 784→2000→10, batch 1024, {args.threads} thread(s), PGD k = {k}; median of {args.repeat}")
    print(f"{'method':16s} {'s/step':>8s} {'× none':>8s}  target")
    for name, sec in t.items():
        base = t["none (BN MLP)"] if "BN MLP" in name else t["none (ResNet18)"] if "ResNet18" in name else t["none"]
        ratio = sec / base
        tgt = targets.get(name)
        verdict = "" if tgt is None else f"≤ {tgt:.1f}×  {'ok' if ratio <= tgt else 'MISSED'}"
        print(f"{name:16s} {sec:8.3f} {ratio:8.2f}  {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
