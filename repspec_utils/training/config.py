"""The training configuration (`TrainConfig`), its result (`TrainResult`), what a method contributes to the loop
(`MethodParts`), and `validate`: every check of a config that runs before any data is loaded or model built."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from repspec_utils.attacks.precision import PRECISIONS
from repspec_utils.infra.registry import AUGMENTATIONS, DATASETS, METHODS, MODELS, OBJECTIVES


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


# ----------------------------------------------------------------------------------------------- checks
class TrainingDiverged(FloatingPointError):
    """The loss or a weight became non-finite (NaN or ±inf): training stopped and nothing was cached for it."""


def diverged(cfg: TrainConfig, phase: str, epoch: int, step: int | None, what: str) -> TrainingDiverged:
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
