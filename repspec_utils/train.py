"""One training function for every recipe: burn-in, method branches, spectral penalty, cache and resume.

Schedule (SPEC §3): the unregularised model is trained to the burn-in epoch B and saved; every method
(any of registry.METHODS) continues from that same checkpoint to the final epoch E with a fresh optimiser.
Both phases are cached under a hash of everything that determines them, checkpointed atomically at epoch
boundaries, and resume after an interruption to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import cache, spectral
from .attacks import PRECISIONS, full_fp32_matmuls
from .data import DataIntegrityError, dataset_fingerprint, get_data
from .models import build_model
from .registry import AUGMENTATIONS, DATASETS, METHODS, MODELS, OBJECTIVES


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model (its cache key is a hash of these fields)."""

    dataset: str
    model: dict
    method: str = "none"
    lam: float = 0.0
    weight_decay: float = 0.0
    lr: float = 0.1
    momentum: float = 0.9
    batch_size: int = 1024
    epochs: int = 200
    burn_in: int = 160
    seed: int = 0
    reg_every: int = 1
    reg_epoch_end_step: bool = False
    max_layer: int | None = None
    spectral_mode: str = "power"
    n_power_iter: int = 1
    augment: str = "none"
    objective: str = "supervised"
    lr_schedule: str = "constant"
    backbone_lr_mult: float = 1.0
    n_train: int | None = None
    data_seed: int = 0
    data_kwargs: dict = field(default_factory=dict)
    method_kwargs: dict = field(default_factory=dict)
    eval_every: int = 1
    precision: str = "fp32"
    schedule: str = "repspec"

    # fields added after results were cached: left out of the cache key while they hold their default, so the
    # keys of every config that does not use them stay what they were
    KEY_OMIT_IF_DEFAULT = ("precision", "schedule")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# The epoch schedules of burn-in and branches (SPEC §3). 'repspec': burn_in epochs, then every method (None too)
# from that checkpoint to `epochs` with a fresh optimiser. 'reference' (the authors' scripts, `range(epochs + 1)`):
# the base run trains burn_in + 1 epochs; None is that run continued, same optimiser, to epochs + 1 epochs in all;
# every other method starts a fresh optimiser at the checkpoint and trains epochs − burn_in + 1 more epochs, the
# first without its penalty (the reference regularises only after epoch index burn_in): epochs + 2 in all.
SCHEDULES = ("repspec", "reference")


def schedule_epochs(cfg: "TrainConfig") -> tuple[int, int, int]:
    """(end of the shared base phase, end of cfg's branch, first regularised epoch index) of cfg's schedule, in
    epochs trained (the history's `epoch` column counts the same way)."""
    if cfg.schedule == "reference":
        base = cfg.burn_in + 1
        return (base, cfg.epochs + 1, base) if cfg.method == "none" else (base, cfg.epochs + 2, base + 1)
    return cfg.burn_in, cfg.epochs, cfg.burn_in


@dataclass
class TrainResult:
    """A trained model with its per-epoch history (one row per epoch) and provenance."""

    model: nn.Module
    history: pd.DataFrame
    config: TrainConfig
    key: str
    wall_time: float
    data_source: str


@dataclass
class MethodParts:
    """What a METHODS factory returns when its method is more than a penalty on the weights (a bare penalty object
    or None is the common case). penalty: an object with penalty()/state_dict()/load_state_dict() as
    `spectral.SpectralPenalty`, or None; wrap: objective -> objective, for methods that change what a step trains
    on (adversarial examples, extra terms on the features), applied on every step; epoch_start(model, x_all,
    y_all, epoch): called before each epoch of the branch (state it computes must be a function of the model
    and the epoch, so that resume stays exact); last_value: the method's own term of the last step (set by the
    wrapped objective), recorded as the history's `penalty`."""

    penalty: Any = None
    wrap: Callable | None = None
    epoch_start: Callable | None = None
    last_value: Any = None


def method_parts(made: Any) -> MethodParts:
    """A factory's return value as MethodParts."""
    return made if isinstance(made, MethodParts) else MethodParts(penalty=made)


def prepare_model(cfg: "TrainConfig", model: nn.Module) -> nn.Module:
    """Apply cfg.method's model change (METHODS meta `prepare(cfg, model)`, e.g. AR-AT's split BatchNorm and
    predictor heads) in place, before a branch trains or its cached weights load; returns the model."""
    prepare = METHODS.meta(cfg.method).get("prepare")
    if prepare is not None:
        prepare(cfg, model)
    return model


# ----------------------------------------------------------------------------------------------- checks
class TrainingDiverged(FloatingPointError):
    """The loss or a weight became non-finite (NaN or ±inf): training stopped and nothing was cached for it."""


def _diverged(cfg: TrainConfig, phase: str, epoch: int, step: int | None, what: str) -> TrainingDiverged:
    at = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else "")
    return TrainingDiverged(f"training diverged ({what}) at {at} of the {phase} of {cfg.dataset} {cfg.method} "
                            f"seed {cfg.seed} (lr={cfg.lr:g}, lam={cfg.lam:g}, batch_size={cfg.batch_size}); nothing "
                            f"was cached for it: lower lr or lam. Config: {cfg}")


SEED_MAX = 2**32 - 1  # seeds combine with epochs into generator seeds (`epoch_generator`); 2³²−1 keeps them exact
_INT_FIELDS = ("batch_size", "epochs", "burn_in", "seed", "reg_every", "n_power_iter", "data_seed", "eval_every")
_FLOAT_FIELDS = ("lam", "weight_decay", "lr", "momentum", "backbone_lr_mult")


def _check_types(cfg: TrainConfig) -> None:
    """Integers are integers (not bools, not 20.5), numbers are finite numbers, seeds fit: ValueError naming the
    field, before anything runs (a str λ, a float batch size or a seed of 2**70 used to fail deep inside, or not)."""
    for name in _INT_FIELDS:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r} ({type(v).__name__})")
    if cfg.n_train is not None and (isinstance(cfg.n_train, bool) or not isinstance(cfg.n_train, int)):
        raise ValueError(f"n_train must be an integer or None, got {cfg.n_train!r} ({type(cfg.n_train).__name__})")
    for name in _FLOAT_FIELDS:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r} ({type(v).__name__})")
    for name in ("seed", "data_seed"):
        if not 0 <= getattr(cfg, name) <= SEED_MAX:
            raise ValueError(f"{name} must lie in 0..{SEED_MAX} (2**32 - 1), got {getattr(cfg, name)}")
    if not isinstance(cfg.method_kwargs, dict) or not isinstance(cfg.data_kwargs, dict):
        raise ValueError("method_kwargs and data_kwargs must be dicts")
    widths = cfg.model.get("widths") if isinstance(cfg.model, dict) else None
    if widths is not None:
        ws = [widths] if not isinstance(widths, (list, tuple)) else list(widths)
        if not ws or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in ws):
            raise ValueError(f"every width must be a positive integer, got widths={widths!r}")


def check_memory(n_params: int, activations: int, what: str) -> None:
    """ValueError when training a model of `n_params` parameters with `activations` floats per step (fp32: weights,
    gradient, momentum and the forward / backward activations) needs more than 3/4 of this machine's memory."""
    need = 4 * (3 * int(n_params) + 3 * int(activations))
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if need > 0.75 * total:
        raise ValueError(f"{what} needs about {need / 2**30:.1f} GiB to train (parameters, gradients, momentum and "
                         f"activations in fp32), more than 3/4 of this machine's {total / 2**30:.1f} GiB: use smaller "
                         f"widths or batch_size")


def validate(cfg: TrainConfig) -> None:
    """Raise ValueError for a config that cannot train, before any data is loaded or work is done."""
    _check_types(cfg)
    DATASETS.check(cfg.dataset)
    METHODS.check(cfg.method)
    if not isinstance(cfg.model, dict) or "kind" not in cfg.model:
        raise ValueError(f"model must be a dict with a 'kind', got {cfg.model!r}")
    MODELS.check(cfg.model["kind"])
    AUGMENTATIONS.check(cfg.augment)
    OBJECTIVES.check(cfg.objective)
    widths = cfg.model.get("widths")
    if widths is not None and min([widths] if isinstance(widths, int) else widths) <= 0:
        raise ValueError(f"every width must be positive, got widths={widths}")
    checks = [
        (cfg.lam >= 0, f"lam (λ) must be >= 0, got {cfg.lam}"),
        (cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.epochs > 0, f"epochs must be > 0, got {cfg.epochs}"),
        (0 <= cfg.burn_in < cfg.epochs, f"burn_in must satisfy 0 <= burn_in < epochs, got burn_in={cfg.burn_in}, epochs={cfg.epochs}"),
        (cfg.batch_size > 0, f"batch_size must be > 0, got {cfg.batch_size}"),
        (cfg.reg_every >= 1, f"reg_every must be >= 1, got {cfg.reg_every}"),
        (cfg.n_power_iter >= 1, f"n_power_iter must be >= 1, got {cfg.n_power_iter}"),
        (cfg.spectral_mode in ("power", "exact"), f"spectral_mode must be 'power' or 'exact', got {cfg.spectral_mode!r}"),
        (cfg.lr_schedule in ("constant", "cosine"), f"lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}"),
        (cfg.n_train is None or cfg.n_train > 0, f"n_train must be positive, got {cfg.n_train}"),
        (cfg.momentum >= 0, f"momentum must be >= 0, got {cfg.momentum}"),
        (cfg.backbone_lr_mult >= 0, f"backbone_lr_mult must be >= 0 (0 freezes Φ; a negative one would climb the "
                                    f"loss on Φ), got {cfg.backbone_lr_mult}"),
        (cfg.eval_every >= 0, f"eval_every must be >= 0 (0: never), got {cfg.eval_every}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {cfg.precision!r}"),
        (cfg.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    kinds = METHODS.meta(cfg.method).get("model_kinds")
    if kinds is not None and cfg.model["kind"] not in kinds:
        raise ValueError(f"method {cfg.method!r} works on model kinds {list(kinds)} only, got kind "
                         f"{cfg.model['kind']!r} ({METHODS.meta(cfg.method).get('doc', '')})")
    check = METHODS.meta(cfg.method).get("check")
    if check is not None:  # the method's own settings (method_kwargs), e.g. PGD's ε, steps and step size
        check(cfg)
    elif cfg.method_kwargs:
        raise ValueError(f"method {cfg.method!r} takes no method_kwargs, got {sorted(cfg.method_kwargs)} (its "
                         f"strength is lam)")
    if cfg.precision == "bf16":
        warn_if_slow_bf16()


def bf16_supported_here() -> bool:
    """Whether this CPU has native bfloat16 matmuls (AVX-512 BF16 / AMX); without them bf16 is emulated."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe and probe()) or (amx and amx()))


def warn_if_slow_bf16() -> None:
    """A warning (not an error) when bf16 is asked for on a CPU without native bf16 matmuls."""
    if not torch.cuda.is_available() and not bf16_supported_here():
        import warnings

        warnings.warn("precision 'bf16' on a CPU without AVX-512 BF16 or AMX: bfloat16 matmuls are emulated "
                      "there and will be slower than fp32, not faster", RuntimeWarning, stacklevel=3)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily run torch on `n` threads (None: unchanged). Tiny nets are 10x faster on one thread."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ------------------------------------------------------------------------------------- building blocks
def make_model(cfg: TrainConfig, train_ds) -> nn.Module:
    """The initial model of a config (seeded by cfg.seed); MLP sizes default to the data's. An MLP too large for
    this machine's memory is refused before it is allocated (`check_memory`)."""
    spec = dict(cfg.model)
    if MODELS.meta(spec["kind"]).get("sized_by_data"):
        spec.setdefault("d_in", int(train_ds.x[0].numel()))
        spec.setdefault("n_classes", int(train_ds.n_classes))
    spec.setdefault("seed", cfg.seed)
    if spec["kind"] == "mlp":
        ws = [spec["widths"]] if isinstance(spec["widths"], int) else list(spec["widths"])
        dims = [int(spec["d_in"]), *map(int, ws), int(spec["n_classes"])]
        check_memory(sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:])), cfg.batch_size * sum(dims),
                     f"an MLP {'→'.join(map(str, dims))} at batch_size {cfg.batch_size}")
    elif spec["kind"] == "small_resnet":
        from .models import small_resnet_cost

        cost = small_resnet_cost(spec.get("width", 16), spec.get("blocks", 1), spec.get("channels", 1),
                                 int(train_ds.x.shape[-1]), spec.get("n_classes", 10), spec.get("pad", 0))
        check_memory(cost["params"], cfg.batch_size * cost["activation_floats"],
                     f"a small ResNet (width {spec.get('width', 16)}, {spec.get('blocks', 1)} block(s) per stage) "
                     f"at batch_size {cfg.batch_size}")
    return build_model(spec)


def load_training_data(cfg: TrainConfig):
    """(train, test) ArrayDatasets of a config, with the seeded n_train subset applied."""
    train_ds, test_ds = get_data(cfg.dataset, seed=cfg.data_seed, **cfg.data_kwargs)
    if cfg.n_train is not None and cfg.n_train < len(train_ds):
        idx = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(cfg.data_seed))
        train_ds = train_ds.subset(idx[: cfg.n_train])
    return train_ds, test_ds


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """The generator for one epoch's shuffle/augmentation: a function of (seed, epoch) only, so resume is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 4 + stream)


def make_penalty(cfg: TrainConfig, model: nn.Module, example_x: torch.Tensor):
    """The regulariser object of cfg.method (None for 'none'): exposes penalty(), state_dict(), load_state_dict()."""
    return METHODS.lookup(cfg.method)(cfg, model, example_x)


@METHODS.register("none", doc="no spectral term")
def make_none(cfg: TrainConfig, model: nn.Module, example_x: torch.Tensor) -> None:
    """METHODS['none']: no penalty (weight decay is a separate axis)."""
    return None


@METHODS.register("rep", doc="rep-spectral: Σ σ_max(W_l)² over the weight layers of Φ (SPEC §2)")
@METHODS.register("ll", doc="ll-spectral: Σ σ_max(W_l)² over every weight layer, readout included (SPEC §2)")
def make_spectral(cfg: TrainConfig, model: nn.Module, example_x: torch.Tensor) -> spectral.SpectralPenalty:
    """METHODS['rep'] and METHODS['ll']: Σ σ_max² over `spectral.spectral_layers(model, cfg.method, cfg.max_layer)`
    (rep: Φ's layers, never the readout; ll: those and the readout)."""
    layers = spectral.spectral_layers(model, cfg.method, max_layer=cfg.max_layer)
    return spectral.SpectralPenalty(layers, input_shapes=spectral.conv_input_sizes(model, example_x),
                                    mode=cfg.spectral_mode, n_iter=cfg.n_power_iter)


def make_monitor(model: nn.Module, example_x: torch.Tensor):
    """A σ_max tracker over every weight layer (Φ and readout), recorded each epoch for every method."""
    layers = spectral.spectral_layers(model, "ll")
    return spectral.SpectralPenalty(
        layers, input_shapes=spectral.conv_input_sizes(model, example_x), mode="power", n_iter=3
    )


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay; the readout at lr, everything else at lr·backbone_lr_mult."""
    head = list(model.readout.parameters()) if hasattr(model, "readout") else []
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids and p.requires_grad]
    groups = [{"params": body, "lr": cfg.lr * cfg.backbone_lr_mult, "base_lr": cfg.lr * cfg.backbone_lr_mult}]
    if head:
        groups.append({"params": head, "lr": cfg.lr, "base_lr": cfg.lr})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(cfg: TrainConfig, opt: torch.optim.Optimizer, epoch: int) -> None:
    """Constant, or cosine annealing over the whole run (epoch 0..epochs)."""
    scale = 1.0 if cfg.lr_schedule == "constant" else 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * scale


def supervised_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
    """Cross-entropy of the logits; returns (loss, features, number correct)."""
    feats = model.features(x)
    logits = model.readout(feats)
    return F.cross_entropy(logits, y), feats, (logits.argmax(1) == y).sum().item()


OBJECTIVES.register("supervised", supervised_loss)


@AUGMENTATIONS.register("none")
def no_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The batch unchanged."""
    return x


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """RandomCrop(size of x, padding=pad, fill 0), then a horizontal flip with probability 1/2 when `flip`, on a
    (B, C, H, W) batch as one tensor op (the offsets are drawn before the flips, from `gen`)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = ox[:, None] + torch.arange(w, device=x.device)
    if flip:
        flips = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = xp.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@AUGMENTATIONS.register("cifar")
def cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(32, padding=4, fill 0) + horizontal flip (SPEC §6's CIFAR-10 augmentation)."""
    return random_crop(x, gen, pad=4, flip=True)


@AUGMENTATIONS.register("crop_flip")
def crop_flip_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding=2) + horizontal flip: the CIFAR augmentation scaled to 28-px Fashion-MNIST (garments
    stay garments when mirrored; 2 px of 28 is CIFAR's 4 of 32 rounded down)."""
    return random_crop(x, gen, pad=2, flip=True)


@AUGMENTATIONS.register("crop")
def crop_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding=2) without flips: for MNIST digits, which a mirror does not preserve."""
    return random_crop(x, gen, pad=2, flip=False)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, ds, batch_size: int = 4096, device=None) -> float:
    """Top-1 accuracy of `model` on a whole ArrayDataset."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(ds), batch_size):
        correct += (model(ds.x[i : i + batch_size].to(device)).argmax(1).cpu() == ds.y[i : i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(ds)


# ------------------------------------------------------------------------------------------- the loop
def data_identity(cfg: TrainConfig) -> str:
    """The content fingerprint of cfg's dataset as it would load now (`data.dataset_fingerprint`: every data file
    hashed, generated sets generated): part of every training key, so that a model trained on other data (a
    changed file, a stand-in) is never served from the cache."""
    return dataset_fingerprint(cfg.dataset, seed=cfg.data_seed, **cfg.data_kwargs)


def _phase_key(cfg: TrainConfig, phase: str, data_id: str | None = None) -> str:
    """The cache key of cfg's shared burn-in ('base') or of its final model ('final'); `data_id`: cfg's
    `data_identity` if already known."""
    data_id = data_identity(cfg) if data_id is None else data_id
    if phase == "base":
        base = cfg.replace(method="none", lam=0.0, reg_every=1, reg_epoch_end_step=False, max_layer=None,
                           spectral_mode="power", n_power_iter=1, method_kwargs={}, epochs=cfg.epochs)
        return cache.make_key(kind="train-base", cfg=base, until=cfg.burn_in, data=data_id)
    return cache.make_key(kind="train", cfg=cfg, data=data_id)


def _run_phase(
    cfg: TrainConfig,
    model: nn.Module,
    data,
    start: int,
    end: int,
    method_cfg: TrainConfig,
    folder: Path,
    device: torch.device,
    progress: bool,
    history: list[dict],
    checkpoint_every_s: float,
    on_epoch_end: Callable[[int], None] | None,
    amp: bool = False,
    reg_from: int = 0,
    opt_state: dict | None = None,
    final: dict | None = None,
) -> list[dict]:
    """Train epochs [start, end) with method_cfg's penalty (on epochs from `reg_from` on); checkpoint to
    folder/resume.pt; resume from it. amp: the task loss under bfloat16 autocast (the spectral penalty always runs
    in full precision). opt_state: the optimiser state to continue from (None: a fresh optimiser); `final`, if
    given, receives the optimiser's state at the end under 'opt'."""
    from tqdm.auto import tqdm

    train_ds, test_ds = data
    example = train_ds.x[:2].to(device)
    prepare_model(method_cfg, model)
    parts = method_parts(make_penalty(method_cfg, model, example))
    penalty = parts.penalty
    monitor = make_monitor(model, example)
    opt = make_optimizer(cfg, model)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    resume_path = folder / "resume.pt"
    state = cache.load(resume_path)
    epoch = start
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if penalty is not None:
            penalty.load_state_dict(state["penalty"])
        monitor.load_state_dict(state["monitor"])
        epoch, history = state["epoch"], state["history"]
    objective, augment = OBJECTIVES[cfg.objective], AUGMENTATIONS[cfg.augment]
    if parts.wrap is not None:
        objective = parts.wrap(objective)
    x_all, y_all = train_ds.x.to(device), train_ds.y.to(device)
    n, bs = len(train_ds), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    last_save = time.monotonic()
    bar = tqdm(total=end - start, initial=epoch - start, desc=f"{cfg.method if method_cfg is cfg else 'burn-in'} s{cfg.seed}",
               disable=not progress, leave=False)
    model.train()
    phase = "burn-in" if method_cfg is not cfg else "branch"
    while epoch < end:
        t0 = time.perf_counter()
        set_lr(cfg, opt, epoch)
        if parts.epoch_start is not None:
            parts.epoch_start(model, x_all, y_all, epoch)
        gen = epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = reg_sum = 0.0
        correct = n_reg = 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb = augment(x_all[idx], gen)
            regularise = (penalty is not None and epoch >= reg_from
                          and ((epoch - start) * steps_per_epoch + i) % cfg.reg_every == 0)
            loss, reg, n_correct = train_step(model, opt, objective, xb, y_all[idx], gen,
                                              penalty if regularise else None, method_cfg.lam, amp)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise _diverged(cfg, phase, epoch, i, f"loss {loss_value}")
            loss_sum += loss_value * len(idx)
            correct += n_correct
            if reg is None and parts.last_value is not None:
                reg, parts.last_value = parts.last_value, None
            if reg is not None:
                reg_sum += float(reg)
                n_reg += 1
        if penalty is not None and cfg.reg_epoch_end_step and epoch >= reg_from:
            opt.zero_grad(set_to_none=True)
            (method_cfg.lam * penalty.penalty()).backward()
            opt.step()
        with torch.no_grad():
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise _diverged(cfg, phase, epoch, None, "a non-finite weight")
        epoch += 1
        with torch.no_grad():
            monitor.penalty()  # advances the monitor's power iteration
            sig = monitor.sigmas().tolist()
        row = {"epoch": epoch, "phase": "burn-in" if method_cfg is not cfg else cfg.method,
               "train_loss": loss_sum / n, "train_acc": correct / n,
               "penalty": reg_sum / max(n_reg, 1), "epoch_time": time.perf_counter() - t0}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch in (1, end)) and cfg.objective == "supervised":
            row["test_acc"] = evaluate_accuracy(model, test_ds, device=device)
        row.update({f"sigma_{j}": s for j, s in enumerate(sig)})
        history = history + [row]
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3g}", acc=f"{row['train_acc']:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if epoch < end and time.monotonic() - last_save >= checkpoint_every_s:
            cache.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history,
                        "penalty": penalty.state_dict() if penalty is not None else None,
                        "monitor": monitor.state_dict()}, resume_path)
            last_save = time.monotonic()
    bar.close()
    if penalty is not None and hasattr(penalty, "close"):
        penalty.close()
    if final is not None:
        final["opt"] = opt.state_dict()
    return history


def _note_training(key: str, base_key: str, wall: float, burn_in_seconds: float) -> None:
    """Ledger entries of one trained model: its branch under `key`, its burn-in once under `base_key`."""
    cache.note_compute("burn-in", base_key, burn_in_seconds)
    cache.note_compute("train", key, max(wall - burn_in_seconds, 0.0))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, objective: Callable, xb: torch.Tensor, yb: torch.Tensor,
               gen: torch.Generator | None = None, penalty=None, lam: float = 0.0, amp: bool = False):
    """One optimiser step on objective(model, xb, yb, gen) + lam·penalty; returns (task loss, penalty value or None,
    number correct), the losses detached. The task loss runs under bfloat16 autocast if `amp`, the penalty in full
    precision. A spectral penalty on matrices (`direct_grad`) adds its exact gradient 2·lam·(W v)vᵀ to the
    weights' .grad after the task backward, in place, instead of through autograd (the same update, cheaper)."""
    device_type = xb.device.type
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp):
        loss, feats, n_correct = objective(model, xb, yb, gen)
    loss, feats = loss.float(), feats.float()
    direct = penalty is not None and getattr(penalty, "direct_grad", False)
    total, reg = loss, None
    if penalty is not None and not direct:
        reg = _penalty_value(penalty, feats)
        total = loss + lam * reg
    opt.zero_grad(set_to_none=True)
    total.backward()
    if direct:
        reg = penalty.accumulate_grad(lam)
    opt.step()
    return loss.detach(), None if reg is None else reg.detach(), n_correct


def _penalty_value(penalty, feats: torch.Tensor) -> torch.Tensor:
    return penalty.penalty(feats) if getattr(penalty, "needs_features", False) else penalty.penalty()


def train(
    cfg: TrainConfig,
    *,
    device: str | torch.device | None = "auto",
    progress: bool | None = None,
    use_cache: bool = True,
    checkpoint_every_s: float = 30.0,
    on_epoch_end: Callable[[int], None] | None = None,
    amp: bool | None = None,
    recompute: bool | str = False,
) -> TrainResult:
    """Train (or load from the cache) the model of `cfg`: burn-in to cfg.burn_in without a penalty, then
    cfg.method to cfg.epochs from that shared checkpoint. Returns the final model and per-epoch history.
    The precision is cfg.precision on every device (part of the key): 'fp32' runs in full fp32 (TF32 off for CUDA
    matmuls and convolutions), 'bf16' runs the task loss under bfloat16 autocast while master weights, optimiser
    state and the spectral penalty stay fp32; `amp`, if given, must agree with it. On CUDA conv models use
    channels-last (the same arithmetic). recompute: True trains both phases anew without reading the cache (and
    overwrites its entries), 'branch' only the method branch (the burn-in is read from the cache). One process
    at a time trains a key (`cache.key_lock`): a second one waits and then loads what the first wrote."""
    if recompute not in (False, True, "branch"):
        raise ValueError(f"recompute must be False, True or 'branch', got {recompute!r}")
    validate(cfg)
    if amp is not None and bool(amp) != (cfg.precision == "bf16"):
        raise ValueError(f"amp={amp!r} contradicts cfg.precision={cfg.precision!r}: the precision is part of the cache "
                         f"key, label and manifest, so set precision='bf16' (autocast) or 'fp32' in the config")
    progress = cache.progress_enabled(progress)
    device = resolve_device(device)
    amp = cfg.precision == "bf16"  # on every device: what the key and the labels say is what runs
    if not use_cache:
        checkpoint_every_s = math.inf
    root = cache.cache_root() / "train"
    data_id = data_identity(cfg)
    key = _phase_key(cfg, "final", data_id)
    lock = cache.key_lock(root / key) if use_cache else contextlib.nullcontext()
    with lock, full_fp32_matmuls():  # fp32 means fp32 on a GPU too (no TF32 rounding in matmuls / convolutions)
        return _train_locked(cfg, root, key, device, progress, use_cache, checkpoint_every_s, on_epoch_end, amp,
                             recompute, data_id)


def _train_locked(cfg, root, key, device, progress, use_cache, checkpoint_every_s, on_epoch_end, amp, recompute,
                  data_id):
    final_path = root / key / "final.pt"
    done = cache.load(final_path) if use_cache and not recompute else None
    data = load_training_data(cfg)
    if data[0].identity != data_id:  # the files changed between the key and the load
        raise DataIntegrityError(f"the {cfg.dataset} data changed while training started (fingerprint "
                                 f"{data_id} when the cache key was made, {data[0].identity} when loaded); load again")
    model = make_model(cfg, data[0]).to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    base_key = _phase_key(cfg, "base", data_id)
    if done is not None:
        prepare_model(cfg, model).load_state_dict(done["model"])
        _note_training(key, base_key, done["wall_time"], done["burn_in_seconds"])
        return TrainResult(model, pd.DataFrame(done["history"]), cfg, key, done["wall_time"], done["data_source"])

    t0 = time.perf_counter()
    base_end, branch_end, reg_from = schedule_epochs(cfg)
    base_path = root / base_key / "burn_in.pt"
    base_cfg = cfg.replace(method="none", lam=0.0)
    with cache.key_lock(root / base_key) if use_cache else contextlib.nullcontext():  # one burn-in per key
        base = cache.load(base_path) if use_cache and recompute is not True else None
        if base is None:
            if recompute is True:
                (root / base_key / "resume.pt").unlink(missing_ok=True)
            end_state: dict = {}
            history = _run_phase(cfg, model, data, 0, base_end, base_cfg, root / base_key, device, progress, [],
                                 checkpoint_every_s, on_epoch_end, amp, final=end_state)
            base = {"model": model.state_dict(), "history": history, "wall_time": time.perf_counter() - t0}
            if cfg.schedule == "reference":  # None continues this run's optimiser
                base["opt"] = end_state["opt"]
            if use_cache:
                cache.save(base, base_path)
                (root / base_key / "resume.pt").unlink(missing_ok=True)
    if recompute:
        (root / key / "resume.pt").unlink(missing_ok=True)
    model.load_state_dict(base["model"])
    t1 = time.perf_counter()
    continued = base.get("opt") if cfg.schedule == "reference" and cfg.method == "none" else None
    history = _run_phase(cfg, model, data, base_end, branch_end, cfg, root / key, device, progress,
                         list(base["history"]), checkpoint_every_s, on_epoch_end, amp, reg_from=reg_from,
                         opt_state=continued)
    wall = base["wall_time"] + time.perf_counter() - t1
    result = {"model": model.state_dict(), "history": history, "wall_time": wall, "data_source": data[0].source,
              "config": dataclasses.asdict(cfg), "burn_in_seconds": base["wall_time"]}
    _note_training(key, base_key, wall, base["wall_time"])
    if use_cache:
        cache.save(result, final_path)
        (root / key / "resume.pt").unlink(missing_ok=True)
    return TrainResult(model, pd.DataFrame(history), cfg, key, wall, data[0].source)
