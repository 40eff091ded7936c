"""The experiments of SPEC §6 as configs: one function per recipe (XOR, sin, MNIST / Fashion-MNIST, CIFAR-10
ResNet18, Barlow Twins, transfer), and `train_all`, which trains a list of configs (cached), the small 2-D MLPs
with the batched engine.

A notebook calls `*_configs(...)` with its parameters, then `train_all(configs)`, then a `tables` function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

from repspec_utils.data.mnist import MNIST_LIKE
from repspec_utils.defences import transfer
from repspec_utils.infra import cache
from repspec_utils.infra.registry import AUGMENTATIONS, DATASETS
from repspec_utils.models.base import INITS
from repspec_utils.training.config import TrainConfig, TrainResult
from repspec_utils.training.ensemble import BATCH_VARYING, train_batched
from repspec_utils.training.loop import (
    load_training_data,  # noqa: F401  (for notebooks)
    train,
)

# the generated 2-D problems (xor, xor_noisy, sin; registered with kind="toy" in data.toy): trained with the
# batched engine, on one thread
SMALL_DATASETS = DATASETS.where(kind="toy")


# The MLP recipes' two variants (SPEC §6). 'reference' (default): the authors' code, whose MLP scales each layer
# after the first *bias included* by 1/√fan_in (MLP bias_scaled=True) and whose scripts train 201 / 202 epochs
# (train.SCHEDULES 'reference'); 'repspec': repspec's earlier MLP (readout bias unscaled) and schedule.
MLP_VARIANTS = ("reference", "repspec")


def mlp_variant(variant: str) -> tuple[dict, str]:
    """(extra model-spec entries, training schedule) of an MLP recipe variant; ValueError for an unknown one."""
    if variant not in MLP_VARIANTS:
        raise ValueError(f"unknown MLP variant {variant!r}; choose one of {MLP_VARIANTS} ('reference': the authors' "
                         f"model and epoch schedule; 'repspec': repspec's earlier one)")
    return ({"bias_scaled": True}, "reference") if variant == "reference" else ({}, "repspec")


def _integer(name: str, v) -> int:
    """v as an int if it is an integer (numpy's too), else ValueError: a seed of 20.5 is not silently 20."""
    whole = v.is_integer() if isinstance(v, float) else hasattr(v, "__index__")
    if isinstance(v, (bool, str)) or not whole:
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return int(v)


def _number(name: str, v) -> float:
    """v as a float if it is a finite number, else ValueError (a '0.1' string or inf fails here, not in training)."""
    if isinstance(v, (bool, str)) or not hasattr(v, "__float__") or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _grid(base: TrainConfig, methods, seeds, weight_decays, lams=None, max_layers=None) -> list[TrainConfig]:
    out = []
    for wd in weight_decays:
        for m in methods:
            for lam in ([0.0] if m == "none" else (lams or [base.lam])):
                for ml in ((max_layers or [None]) if m in ("rep", "rep_ub") else [None]):
                    for s in seeds:
                        out.append(base.replace(method=m, seed=_integer("seed", s), weight_decay=_number("weight_decay", wd),
                                                lam=_number("lam", lam), max_layer=ml))
    return out


def xor_configs(widths: Sequence[int] = (3, 8), noisy: bool = False, methods=("none", "ll", "rep"),
                seeds=(400, 500, 600, 700, 800), weight_decays=(0.0, 1e-4), epochs: int = 15000,
                burn_in: int = 10500, lam: float = 1e-3, lr: float = 1.0, variant: str = "reference") -> list[TrainConfig]:
    """SPEC §6 XOR (clean: full batch of 4; noisy: 80 points, batch 20), lr 1.0, λ 1e-3; `variant`: MLP_VARIANTS."""
    extra, schedule = mlp_variant(variant)
    out = []
    for w in widths:
        base = TrainConfig(dataset="xor_noisy" if noisy else "xor", model={"kind": "mlp", "widths": [int(w)], **extra},
                           lam=lam, lr=lr, batch_size=20 if noisy else 4, epochs=epochs, burn_in=burn_in,
                           schedule=schedule)
        out += _grid(base, methods, seeds, weight_decays)
    return out


def sin_configs(widths: Sequence[Sequence[int]] = ([8], [20], [8, 8, 8], [20, 20, 20]), methods=("none", "ll", "rep"),
                seeds=(0, 1, 2, 3, 4), epochs: int = 15000, burn_in: int = 10500, lam: float = 1e-3,
                lr: float = 0.05, weight_decay: float = 1e-5, deep_ablation=(1, 2),
                deep_inits=("normal",), variant: str = "reference") -> list[TrainConfig]:
    """SPEC §6 sin boundary: shallow and deep MLPs; deep nets also get rep on the first 1 or 2 layers only, once per
    init of `deep_inits` ('normal': N(0, 0.01²), SPEC §6; 'torch': PyTorch's default, a labelled deviation)."""
    bad = [i for i in deep_inits if i not in INITS]
    if bad or not deep_inits:
        raise ValueError(f"deep_inits must be a non-empty list of {INITS}, got {list(deep_inits)}")
    extra, schedule = mlp_variant(variant)
    out = []
    for w in widths:
        w = [int(v) for v in ([w] if isinstance(w, int) else w)]
        for init in (deep_inits if len(w) > 1 else ["normal"]):
            spec = {"kind": "mlp", "widths": w, **({"init": init} if init != "normal" else {}), **extra}
            base = TrainConfig(dataset="sin", model=spec, lam=lam, lr=lr, batch_size=64, epochs=epochs,
                               burn_in=burn_in, schedule=schedule)
            ablation = [None, *deep_ablation] if len(w) > 1 else None
            out += _grid(base, methods, seeds, [weight_decay], max_layers=ablation)
    return out


def mnist_configs(dataset: str = "mnist", methods=("none", "ll", "rep"), seeds=range(10), lams=(1e-3,),
                  weight_decays=(1e-4,), epochs: int = 200, burn_in: int = 160, lr: float = 0.1,
                  batch_size: int = 1024, width: int = 2000, n_train: int | None = None,
                  precision: str = "fp32", variant: str = "reference") -> list[TrainConfig]:
    """SPEC §6 MNIST / Fashion-MNIST: 784→2000→10 GELU MLP, SGD lr 0.1, batch 1024 (precision: fp32 or bf16);
    `variant`: MLP_VARIANTS. The first epoch's test accuracy is always in the history (a check of the model)."""
    extra, schedule = mlp_variant(variant)
    base = TrainConfig(dataset=dataset, model={"kind": "mlp", "widths": [int(width)], **extra}, lr=lr,
                       batch_size=batch_size, epochs=epochs, burn_in=burn_in, n_train=n_train,
                       eval_every=max(1, epochs // 20), precision=precision, schedule=schedule)
    return _grid(base, methods, seeds, weight_decays, lams=list(lams))


def _batch_group(cfg: TrainConfig) -> str:
    shared = dataclasses.replace(cfg, **{k: getattr(TrainConfig("", {}), k) for k in BATCH_VARYING})
    return cache.make_key(kind="batch-group", cfg=shared)


def _train_job(cfg: TrainConfig, recompute: bool | str) -> str:
    """One training job of an executor: train (or load) cfg into the shared cache; returns its key."""
    return train(cfg, progress=False, recompute=recompute).key


def _train_group_job(cfgs: list[TrainConfig], modes: list) -> list[str]:
    """One job for a burn-in and every branch from it, in order (the burn-in trains once, with the first)."""
    return [train(c, progress=False, recompute=m).key for c, m in zip(cfgs, modes)]


def train_all(configs: Iterable[TrainConfig], progress: bool | None = None, device="auto", executor: str | None = None,
              max_workers: int | None = None, recompute: bool = False) -> list[TrainResult]:
    """Train every config (cached): small MLP groups with the batched engine (in this process), the rest one by one,
    or as jobs on an executor (`executor.resolve_executor`: inline, local, slurm, debug). As jobs: by default one
    job per burn-in trains it and then every branch from it (fewest process starts), or, split, the first config's
    job trains the burn-in and its branch and every other branch is a job that needs it; the executor setting
    `split_branches` (profiles/executor.yaml) chooses: true, false, or auto (default: split unless the burn-ins divide
    evenly among the jobs running at once). Configs already
    cached are not submitted; afterwards every model is read from the cache. recompute: train everything anew
    without reading the cache (each burn-in once), overwriting the entries."""
    from repspec_utils.infra.executor import (Job, check_max_workers, load_settings, resolve_executor, run_jobs,
                                              split_branches)
    from repspec_utils.training.loop import data_identity, phase_key

    configs = list(configs)
    name = resolve_executor(executor)
    check_max_workers(max_workers)
    results: list[TrainResult | None] = [None] * len(configs)
    groups: dict[str, list[int]] = {}
    big: list[int] = []
    for i, c in enumerate(configs):
        small = c.model.get("kind") == "mlp" and c.dataset in SMALL_DATASETS
        if small:
            groups.setdefault(_batch_group(c), []).append(i)
        else:
            big.append(i)
    first_of: dict[str, int] = {}
    jobs: list[Job] = []
    root = cache.cache_root() / "train"
    ids: dict[str, str] = {}  # each dataset's content fingerprint, hashed once for this call

    def data_id(c: TrainConfig) -> str:
        k = cache.make_key(d=c.dataset, s=c.data_seed, k=c.data_kwargs)
        if k not in ids:
            ids[k] = data_identity(c)
        return ids[k]

    for i in big:
        c = configs[i]
        base = phase_key(c, "base", data_id(c))
        first = base not in first_of
        mode = (True if first else "branch") if recompute else False
        if name == "inline":
            first_of.setdefault(base, i)
            results[i] = train(c, progress=progress, device=device, recompute=mode)
            continue
        if not recompute and (root / phase_key(c, "final", data_id(c)) / "final.pt").exists():
            continue  # cached: nothing to submit
        needs = () if first else (first_of[base],)
        if first:
            first_of[base] = len(jobs)
        jobs.append(Job(f"train {c.dataset} {c.method} seed {c.seed}", _train_job, (c, mode), needs))
    if jobs and not split_branches(load_settings(), sum(not j.needs for j in jobs), name, max_workers):
        # one job per burn-in with all its branches
        groups_of: dict[int, list[int]] = {}
        for j, job in enumerate(jobs):
            groups_of.setdefault(job.needs[0] if job.needs else j, []).append(j)
        jobs = [Job(f"train {jobs[g[0]].args[0].dataset} seed {jobs[g[0]].args[0].seed} "
                    f"({', '.join(jobs[j].args[0].method for j in g)})", _train_group_job,
                    ([jobs[j].args[0] for j in g], [jobs[j].args[1] for j in g])) for g in groups_of.values()]
    if jobs:
        run_jobs(jobs, name, max_workers, progress=progress, desc="training")
    for i in big:
        if results[i] is None:  # trained by a job: read from the cache
            results[i] = train(configs[i], progress=False, device=device)
    for idx in groups.values():
        for i, r in zip(idx, train_batched([configs[i] for i in idx], progress=progress)):
            results[i] = r
    return results  # type: ignore[return-value]


CIFAR_DATASETS = ("cifar10", "cifar10_synthetic")
# real 28-px grayscale images (md5-verified MNIST / Fashion-MNIST): the conv figures' real-image analogs (issue 27)
IMAGE_ANALOGS = tuple(sorted(MNIST_LIKE))  # ('fashion_mnist', 'mnist')
CONV_DATASETS = CIFAR_DATASETS + IMAGE_ANALOGS
# none by default: under crop (+ flip) BatchNorm's running statistics lag enough to swing eval accuracy (SPEC §6);
# `cifar_configs(augment="crop_flip")` (Fashion-MNIST) or "crop" (digits: mirrored digits are not digits) selects them
ANALOG_AUGMENT = {"fashion_mnist": "none", "mnist": "none"}
ANALOG_LABEL = "REAL-IMAGE ANALOG ({data}, small ResNet) — not the paper's CIFAR-10 / ImageNet"


def analog_label(dataset: str) -> str:
    """The label every title, footer, manifest and claims row of a real-image analog carries ('' for CIFAR)."""
    return ANALOG_LABEL.format(data=MNIST_LIKE[dataset][2]) if dataset in IMAGE_ANALOGS else ""


def cifar_data(dataset: str = "cifar10", image_size: int = 32, n_train: int | None = None,
               n_test: int | None = None) -> dict:
    """TrainConfig fields (dataset, data_kwargs, n_train) that load CIFAR-10 ('cifar10', real), its SYNTHETIC
    STAND-IN ('cifar10_synthetic') or a real-image analog ('fashion_mnist', 'mnist': all 60000 / 10000 images, 28 px,
    one channel) as images (N, C, s, s) in [0, 1]. CIFAR: s = 32 is the data's own size, any other s is a bilinear
    resize (`transfer.get_transfer_data`, dataset name 'transfer_<dataset>'). n_train: a seeded training subset
    (None or 0: all); n_test: a seeded test subset (CIFAR only; for the synthetic data, how many images to generate,
    by default 5000 / 1000). The analogs are evaluated on their whole 10000-image test set."""
    if dataset not in CONV_DATASETS:
        raise ValueError(f"dataset must be one of {CONV_DATASETS}, got {dataset!r}")
    if dataset in IMAGE_ANALOGS:
        if int(image_size) != 28:
            raise ValueError(f"the real-image analog {dataset!r} has 28-px images: image_size must be 28, got "
                             f"{image_size}")
        if n_test:
            raise ValueError(f"n_test must be 0 for {dataset!r}: the analogs are evaluated on all 10000 test images")
        return {"dataset": dataset, "data_kwargs": {"flatten": False}, "n_train": int(n_train) if n_train else None}
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8 (ResNet18 halves it three times), got {image_size}")
    sizes = {k: int(v) for k, v in (("n_train", n_train), ("n_test", n_test)) if v}
    if int(image_size) != 32 or (dataset == "cifar10" and "n_test" in sizes):
        return {"dataset": f"transfer_{dataset}", "data_kwargs": {"image_size": int(image_size), **sizes}, "n_train": None}
    if dataset == "cifar10_synthetic":
        return {"dataset": dataset, "data_kwargs": sizes, "n_train": None}
    return {"dataset": dataset, "data_kwargs": {}, "n_train": sizes.get("n_train")}


def conv_model(dataset: str = "cifar10", width: int = 64, blocks: int = 2) -> dict:
    """The model spec of the conv recipes: the paper's CIFAR ResNet18 ({'kind': 'cifar_resnet18'}) for CIFAR data at
    width 64 with 2 blocks per stage, otherwise `models.small_resnet` at that width / depth (3 channels with CIFAR's
    normalisation, or 1 channel with the analog's own, zero-padded inside the model from 28 to 32 px)."""
    width, blocks = _integer("width", width), _integer("blocks", blocks)
    if dataset not in CONV_DATASETS:
        raise ValueError(f"dataset must be one of {CONV_DATASETS}, got {dataset!r}")
    if dataset in CIFAR_DATASETS and (width, blocks) == (64, 2):
        return {"kind": "cifar_resnet18"}
    channels, stats = (3, "cifar10") if dataset in CIFAR_DATASETS else (1, dataset)
    from repspec_utils.models.resnet import check_small_resnet

    check_small_resnet(width, blocks, channels, stats)  # bad sizes fail here, naming the value; nothing is built
    spec = {"kind": "small_resnet", "width": width, "blocks": blocks, "channels": channels, "stats": stats}
    return spec if dataset in CIFAR_DATASETS else {**spec, "pad": 2}  # 28 px -> 32 inside: even sizes for the FFT σ


def cifar_configs(dataset: str = "cifar10", methods=("none", "ll", "rep"), seeds=range(10), lam_rep: float = 0.01,
                  lam_ll: float = 0.005, max_layers=(None, 2), weight_decays=(0.0, 1e-4), epochs: int = 200,
                  burn_in: int = 160, lr: float = 0.01, batch_size: int = 1024, reg_every: int = 24,
                  image_size: int = 32, n_train: int | None = None, n_test: int | None = None,
                  width: int = 64, blocks: int = 2, augment: str | None = None) -> list[TrainConfig]:
    """SPEC §6 CIFAR-10 ResNet18 (3×3 stem, no max-pool, circular padding, normalisation inside the model):
    RandomCrop(32, pad 4) + flip, SGD lr 0.01 constant, batch 1024; ll-spectral λ = lam_ll, rep-spectral λ = lam_rep
    on the stem and residual stages 1..max_layer for each of max_layers (None: all four; 2: the paper's 2-stage
    variant), the penalty on every reg_every-th step plus one epoch-end step on λ·R alone. Data: `cifar_data`;
    the net: `conv_model(dataset, width, blocks)` (ResNet18 at 64 / 2). On a real-image analog ('fashion_mnist',
    'mnist') the same recipe runs on the small ResNet with `ANALOG_AUGMENT`'s augmentation (SPEC §6 says why).
    augment: an `AUGMENTATIONS` name instead of the dataset's default (None)."""
    if augment is not None:
        AUGMENTATIONS.check(augment)  # a name that does not exist fails here, before any data
    for ml in max_layers:
        if ml is not None and not (isinstance(ml, int) and not isinstance(ml, bool) and 0 <= ml <= 4):
            raise ValueError(f"a stage ablation must name 0..4 residual stages (the net has 4), got {ml!r}")
    base = TrainConfig(model=conv_model(dataset, width, blocks), augment=augment or ANALOG_AUGMENT.get(dataset, "cifar"),
                       lr=lr, batch_size=batch_size, epochs=epochs, burn_in=burn_in, reg_every=reg_every,
                       reg_epoch_end_step=True, eval_every=max(1, epochs // 20),
                       **cifar_data(dataset, image_size, n_train, n_test))
    lams = {"none": 0.0, "ll": lam_ll, "rep": lam_rep}
    return [base.replace(method=m, lam=float(lams[m]), max_layer=None if ml is None else int(ml),
                         weight_decay=float(wd), seed=int(s))
            for wd in weight_decays for m in methods for ml in (max_layers if m == "rep" else [None]) for s in seeds]


BASELINE_METHODS = ("none", "rep", "pgd_at", "rep+pgd_at", "arat", "lsp", "lsp+pgd_at")


def baseline_configs(dataset: str = "mnist", methods=BASELINE_METHODS, seeds=(0, 1, 2), epochs: int = 20,
                     burn_in: int = 10, lr: float = 2.0, batch_size: int = 128, width: int = 2000,
                     n_train: int | None = None, weight_decay: float = 1e-4, lam_rep: float = 1e-3,
                     lam_lsp: float = 1.0, lam_arat: float = 30.0, train_eps: float | None = None,
                     train_steps: int = 10, lsp_k: int = 10, arat_bn: bool = True, precision: str = "fp32",
                     n_test: int | None = None, image_size: int = 32, reg_every: int = 24, base_width: int = 64,
                     blocks: int = 2) -> list[TrainConfig]:
    """rep-spectral beside the field's representation-level defences (issue 13; `adversarial`): every method of
    `methods` per seed, each branching from its architecture's burn-in. MNIST-like data: the 784→width→10 GELU MLP;
    CIFAR ('cifar10', 'cifar10_synthetic'): the ResNet18 recipe of `cifar_configs` (lr, batch, augmentation,
    reg_every as given there when lr/batch_size are left at this function's MNIST defaults). PGD methods train at
    L∞ radius `train_eps` (default: 0.1 MNIST, 8/255 CIFAR with α 2/255) with `train_steps` steps; λ per method:
    rep and rep+pgd_at `lam_rep`, lsp and lsp+pgd_at `lam_lsp` (k = `lsp_k` neighbours), arat `lam_arat` (AR-AT's
    ResNet value, 30). arat_bn: AR-AT on an MLP with a split BatchNorm1d after the hidden layer (an architecture
    change, so its own burn-in), else without split BN (an ablation); ResNet18 always splits its BatchNorms.
    CIFAR only: image_size (32: CIFAR's own; else a bilinear resize, `cifar_data`) and reg_every (rep-spectral's
    penalty on every reg_every-th minibatch plus the epoch-end step, as Fig 6)."""
    cifar = dataset in CIFAR_DATASETS
    if cifar:
        base = cifar_configs(dataset, methods=["none"], seeds=[0], epochs=epochs, burn_in=burn_in,
                             weight_decays=[weight_decay], n_train=n_train, n_test=n_test,
                             image_size=image_size, reg_every=reg_every, width=base_width, blocks=blocks,
                             **({} if (lr, batch_size) == (2.0, 128) else {"lr": lr, "batch_size": batch_size}))[0]
        eps = 8 / 255 if train_eps is None else float(train_eps)
        pgd = {"eps": eps, "steps": int(train_steps), "alpha": 2 / 255 if train_eps is None else 2.5 * eps / train_steps}
    else:
        base = mnist_configs(dataset, methods=["none"], seeds=[0], lams=[0.0], weight_decays=[weight_decay],
                             epochs=epochs, burn_in=burn_in, lr=lr, batch_size=batch_size, width=width,
                             n_train=n_train, precision=precision)[0]
        pgd = {"eps": 0.1 if train_eps is None else float(train_eps), "steps": int(train_steps)}
    settings = {
        "none": (0.0, {}),
        "rep": (lam_rep, {}),
        "pgd_at": (0.0, pgd),
        "rep+pgd_at": (lam_rep, pgd),
        "lsp": (lam_lsp, {"k": int(lsp_k)}),
        "lsp+pgd_at": (lam_lsp, {"k": int(lsp_k), **pgd}),
        "arat": (lam_arat, {**pgd, "split_bn": bool(arat_bn or cifar)}),
    }
    unknown = [m for m in methods if m not in settings]
    if unknown:
        raise ValueError(f"baseline_configs knows the methods {list(settings)}, got {unknown}")
    out = []
    for m in methods:
        lam, kwargs = settings[m]
        model = dict(base.model)
        if m == "arat" and arat_bn and not cifar:
            model["batchnorm"] = True
        for s in seeds:
            out.append(base.replace(method=m, lam=float(lam), method_kwargs=dict(kwargs), model=model, seed=int(s)))
    return out


def barlow_configs(dataset: str = "cifar10", lams=(0.01, 0.001), seeds=range(5), epochs: int = 1000,
                   burn_in: int = 900, lr: float = 0.01, batch_size: int = 1024, reg_every: int = 24,
                   weight_decay: float = 0.0, image_size: int = 32, n_train: int | None = None,
                   n_test: int | None = None, width: int = 64, blocks: int = 2) -> list[TrainConfig]:
    """SPEC §6 Barlow Twins on CIFAR-10: ResNet18 backbone (circular padding) + projector Linear 512→256 (no bias) +
    BatchNorm1d(affine=False), off-diagonal weight 0.005, the two Barlow views at the image size; SGD lr 0.01, batch
    1024. None, and rep-spectral on the backbone's convs for each λ in lams, every reg_every-th step plus the
    epoch-end step. The readout is refit downstream (`robustness_table(readout='refit')`). Data: `cifar_data`.
    Another width / depth, or a real-image analog ('fashion_mnist', 'mnist'), puts `conv_model`'s small ResNet
    under the same projector (model kind 'barlow_twins'; one-channel images get `barlow.GRAY_VIEW1/2`)."""
    spec = conv_model(dataset, width, blocks)
    model = {"kind": "barlow_resnet18"} if spec["kind"] == "cifar_resnet18" else \
        {"kind": "barlow_twins", "backbone": {k: v for k, v in spec.items() if k != "kind"}}
    base = TrainConfig(model=model, objective="barlow", augment="barlow", lr=lr,
                       batch_size=batch_size, epochs=epochs, burn_in=burn_in, reg_every=reg_every,
                       reg_epoch_end_step=True, weight_decay=float(weight_decay), eval_every=0,
                       **cifar_data(dataset, image_size, n_train, n_test))
    return [base.replace(method=m, lam=float(lam), seed=int(s))
            for m, lam in [("none", 0.0), *[("rep", lam) for lam in lams]] for s in seeds]


def transfer_configs(task: str = "standin", methods=("none", "l2sp", "bss", "ll", "rep"), seeds=range(5),
                     spectral_lams=(0.01, 0.001), bss_lams=(0.01, 0.001), l2sp_alphas=(0.1, 0.01),
                     l2sp_beta: float = 0.01, reg_every: int | None = None, standin_weights=None,
                     **overrides) -> list[TrainConfig]:
    """SPEC §6 transfer, one task: None; L2-SP (lam 1, α in l2sp_alphas, β = l2sp_beta); BSS (η in bss_lams); ll- and
    rep-spectral (λ in spectral_lams). task 'standin': `transfer.standin_finetune_config` on the stand-in MLP backbone
    at `standin_weights` (the offline TRANSFER STAND-IN); task 'analog': `transfer.analog_finetune_config` on the
    conv backbone at `standin_weights` (Fig 8's REAL-IMAGE ANALOG, `transfer.pretrain_analog_backbone`); otherwise
    `transfer.transfer_config` (ResNet50, ImageNet weights, the task's recipe). Spectral methods regularise every reg_every-th step (None: the recipe; stand-in: 1)
    plus an epoch-end step, L2-SP and BSS every step. overrides: TrainConfig fields (epochs, burn_in, lr, ...) or
    stand-in arguments (n_per_class, n_test, target, source); a None value keeps the recipe's."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    variants = {"none": [("none", 0.0, {})], "ll": [("ll", lam, {}) for lam in spectral_lams],
                "rep": [("rep", lam, {}) for lam in spectral_lams], "bss": [("bss", lam, {}) for lam in bss_lams],
                "l2sp": [("l2sp", 1.0, {"alpha": float(a), "beta": float(l2sp_beta)}) for a in l2sp_alphas]}
    unknown = set(methods) - set(variants)
    if unknown:
        raise ValueError(f"unknown transfer methods {sorted(unknown)}; choose from {sorted(variants)}")
    if task in ("standin", "analog") and standin_weights is None:
        raise ValueError(f"task {task!r} needs standin_weights: the path from transfer.pretrain_{task}_backbone()")
    out = []
    for m in methods:
        for method, lam, kwargs in variants[m]:
            spectral = method in ("ll", "rep")
            reg = {"reg_epoch_end_step": spectral, "method_kwargs": kwargs}
            if not spectral:
                reg["reg_every"] = 1
            elif reg_every is not None:
                reg["reg_every"] = int(reg_every)
            for s in seeds:
                if task in ("standin", "analog"):
                    make = transfer.standin_finetune_config if task == "standin" else transfer.analog_finetune_config
                    out.append(make(standin_weights, method, float(lam), seed=int(s), **{**overrides, **reg}))
                else:
                    out.append(transfer.transfer_config(task, method, float(lam), seed=int(s), **{**overrides, **reg}))
    return out
