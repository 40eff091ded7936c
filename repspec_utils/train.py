"""One training function for every recipe: burn-in, method branches, spectral penalty, cache and resume.

Schedule (SPEC §3): the unregularised model is trained to the burn-in epoch B and saved; every method
(none / ll / rep / ...) continues from that same checkpoint to the final epoch E with a fresh optimiser.
Both phases are cached under a hash of everything that determines them, checkpointed atomically at epoch
boundaries, and resume after an interruption to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from . import cache, spectral
from .attacks import PRECISIONS
from .data import get_data
from .models import MODEL_KINDS, RepModel, build_model

METHODS = ("none", "ll", "rep")  # the paper's; the authors' variants (ll_readout, rep_ub) are in PENALTIES
OBJECTIVES: dict[str, Callable] = {}
AUGMENTATIONS: dict[str, Callable] = {}
PENALTIES: dict[str, Callable] = {}


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

    # fields added after results were cached: left out of the cache key while they hold their default, so the
    # keys of every config that does not use them stay what they were
    KEY_OMIT_IF_DEFAULT = ("precision",)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    """A trained model with its per-epoch history (one row per epoch) and provenance."""

    model: nn.Module
    history: pd.DataFrame
    config: TrainConfig
    key: str
    wall_time: float
    data_source: str


# ----------------------------------------------------------------------------------------------- checks
def validate(cfg: TrainConfig) -> None:
    """Raise ValueError for a config that cannot train, before any data is loaded or work is done."""
    from .data import DATASET_NAMES as DATASETS

    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; choose one of {sorted(DATASETS)}")
    methods = set(METHODS) | set(PENALTIES)
    if cfg.method not in methods:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {sorted(methods)}")
    if not isinstance(cfg.model, dict) or "kind" not in cfg.model:
        raise ValueError(f"model must be a dict with a 'kind', got {cfg.model!r}")
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
        (cfg.augment in AUGMENTATIONS, f"unknown augment {cfg.augment!r}; choose one of {sorted(AUGMENTATIONS)}"),
        (cfg.objective in OBJECTIVES, f"unknown objective {cfg.objective!r}; choose one of {sorted(OBJECTIVES)}"),
        (cfg.n_train is None or cfg.n_train > 0, f"n_train must be positive, got {cfg.n_train}"),
        (cfg.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {cfg.precision!r}"),
        (cfg.method != "rep_ub" or cfg.model.get("kind") == "mlp",
         f"method 'rep_ub' needs a model whose Φ has an elementwise nonlinearity (kind 'mlp'), got kind "
         f"{cfg.model.get('kind')!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    build_model_check(cfg.model)
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


def build_model_check(spec: dict) -> None:
    """ValueError unless spec['kind'] is a model of models.MODEL_KINDS or a registered plug-in."""
    kinds = {*MODEL_KINDS, *MODEL_BUILDERS}
    if spec["kind"] not in kinds:
        raise ValueError(f"unknown model kind {spec['kind']!r}; choose one of {sorted(kinds)}")


MODEL_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}


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
    """The initial model of a config (seeded by cfg.seed); MLP sizes default to the data's."""
    spec = dict(cfg.model)
    if spec["kind"] in MODEL_BUILDERS:
        return MODEL_BUILDERS[spec["kind"]]({**spec, "seed": cfg.seed})
    if spec["kind"] == "mlp":
        spec.setdefault("d_in", int(train_ds.x[0].numel()))
        spec.setdefault("n_classes", int(train_ds.n_classes))
    spec.setdefault("seed", cfg.seed)
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
    if cfg.method == "none":
        return None
    if cfg.method in PENALTIES:
        return PENALTIES[cfg.method](cfg, model, example_x)
    layers = spectral.spectral_layers(model, cfg.method, max_layer=cfg.max_layer)
    return spectral.SpectralPenalty(
        layers,
        input_shapes=spectral.conv_input_sizes(model, example_x),
        mode=cfg.spectral_mode,
        n_iter=cfg.n_power_iter,
    )


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


OBJECTIVES["supervised"] = supervised_loss
AUGMENTATIONS["none"] = lambda x, gen: x


def cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(32, padding=4, fill 0) + horizontal flip on a (B, C, H, W) batch, as one tensor op."""
    b, c, h, w = x.shape
    pad = 4
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = ox[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, :]
    out = xp.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols]
    return out.permute(0, 3, 1, 2).contiguous()


AUGMENTATIONS["cifar"] = cifar_augment


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
def _phase_key(cfg: TrainConfig, phase: str) -> str:
    if phase == "base":
        base = cfg.replace(method="none", lam=0.0, reg_every=1, reg_epoch_end_step=False, max_layer=None,
                           spectral_mode="power", n_power_iter=1, method_kwargs={}, epochs=cfg.epochs)
        return cache.make_key(kind="train-base", cfg=base, until=cfg.burn_in)
    return cache.make_key(kind="train", cfg=cfg)


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
) -> list[dict]:
    """Train epochs [start, end) with method_cfg's penalty; checkpoint to folder/resume.pt; resume from it.
    amp: the task loss under bfloat16 autocast (the spectral penalty always runs in full precision)."""
    from tqdm.auto import tqdm

    train_ds, test_ds = data
    example = train_ds.x[:2].to(device)
    penalty = make_penalty(method_cfg, model, example)
    monitor = make_monitor(model, example)
    opt = make_optimizer(cfg, model)
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
    x_all, y_all = train_ds.x.to(device), train_ds.y.to(device)
    n, bs = len(train_ds), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    last_save = time.monotonic()
    bar = tqdm(total=end - start, initial=epoch - start, desc=f"{cfg.method if method_cfg is cfg else 'burn-in'} s{cfg.seed}",
               disable=not progress, leave=False)
    model.train()
    while epoch < end:
        t0 = time.perf_counter()
        set_lr(cfg, opt, epoch)
        gen = epoch_generator(cfg.seed, epoch)
        perm = torch.randperm(n, generator=gen).to(device)
        loss_sum = reg_sum = 0.0
        correct = n_reg = 0
        for i in range(steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs]
            xb = augment(x_all[idx], gen)
            regularise = penalty is not None and ((epoch - start) * steps_per_epoch + i) % cfg.reg_every == 0
            loss, reg, n_correct = train_step(model, opt, objective, xb, y_all[idx], gen,
                                              penalty if regularise else None, method_cfg.lam, amp)
            loss_sum += loss.item() * len(idx)
            correct += n_correct
            if reg is not None:
                reg_sum += reg.item()
                n_reg += 1
        if penalty is not None and cfg.reg_epoch_end_step:
            opt.zero_grad(set_to_none=True)
            (method_cfg.lam * penalty.penalty()).backward()
            opt.step()
        epoch += 1
        with torch.no_grad():
            monitor.penalty()  # advances the monitor's power iteration
            sig = monitor.sigmas().tolist()
        row = {"epoch": epoch, "phase": "burn-in" if method_cfg is not cfg else cfg.method,
               "train_loss": loss_sum / n, "train_acc": correct / n,
               "penalty": reg_sum / max(n_reg, 1), "epoch_time": time.perf_counter() - t0}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == end) and cfg.objective == "supervised":
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
    return history


def _note_training(key: str, base_key: str, wall: float, burn_in_seconds: float | None, history: list) -> None:
    """Ledger entries of one trained model: its branch under `key`, its burn-in once under `base_key`. Entries
    cached before the burn-in time was stored take it from the burn-in rows' epoch times."""
    if burn_in_seconds is None:
        burn_in_seconds = sum(r.get("epoch_time", 0.0) for r in history if r.get("phase") == "burn-in")
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
) -> TrainResult:
    """Train (or load from the cache) the model of `cfg`: burn-in to cfg.burn_in without a penalty, then
    cfg.method to cfg.epochs from that shared checkpoint. Returns the final model and per-epoch history.
    On CUDA, `amp` (default on) runs the task loss in bfloat16 autocast and conv models use channels-last;
    like `device`, these do not enter the cache key. On the CPU both are off unless cfg.precision is 'bf16'
    (part of the key): then the task loss runs under bfloat16 autocast, while master weights, optimiser state
    and the spectral penalty stay fp32."""
    validate(cfg)
    progress = cache.progress_enabled(progress)
    device = resolve_device(device)
    amp = (device.type == "cuda") if amp is None else bool(amp)
    amp = amp or cfg.precision == "bf16"  # cfg.precision is part of the key; the CUDA default is not
    if not use_cache:
        checkpoint_every_s = math.inf
    root = cache.cache_root() / "train"
    key = _phase_key(cfg, "final")
    final_path = root / key / "final.pt"
    done = cache.load(final_path) if use_cache else None
    data = load_training_data(cfg)
    model = make_model(cfg, data[0]).to(device)
    if device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    base_key = _phase_key(cfg, "base")
    if done is not None:
        model.load_state_dict(done["model"])
        _note_training(key, base_key, done["wall_time"], done.get("burn_in_seconds"), done["history"])
        return TrainResult(model, pd.DataFrame(done["history"]), cfg, key, done["wall_time"], done["data_source"])

    t0 = time.perf_counter()
    base_path = root / base_key / "burn_in.pt"
    base = cache.load(base_path) if use_cache else None
    base_cfg = cfg.replace(method="none", lam=0.0)
    if base is None:
        history = _run_phase(cfg, model, data, 0, cfg.burn_in, base_cfg, root / base_key, device, progress, [],
                             checkpoint_every_s, on_epoch_end, amp)
        base = {"model": model.state_dict(), "history": history, "wall_time": time.perf_counter() - t0}
        if use_cache:
            cache.save(base, base_path)
            (root / base_key / "resume.pt").unlink(missing_ok=True)
    model.load_state_dict(base["model"])
    t1 = time.perf_counter()
    history = _run_phase(cfg, model, data, cfg.burn_in, cfg.epochs, cfg, root / key, device, progress,
                         list(base["history"]), checkpoint_every_s, on_epoch_end, amp)
    wall = base["wall_time"] + time.perf_counter() - t1
    result = {"model": model.state_dict(), "history": history, "wall_time": wall, "data_source": data[0].source,
              "config": dataclasses.asdict(cfg), "burn_in_seconds": base["wall_time"]}
    _note_training(key, base_key, wall, base["wall_time"], history)
    if use_cache:
        cache.save(result, final_path)
        (root / key / "resume.pt").unlink(missing_ok=True)
    return TrainResult(model, pd.DataFrame(history), cfg, key, wall, data[0].source)


# ------------------------------------------------------------------ batched engine for the 2-D experiments
# Tiny nets (XOR, sin) are dominated by Python overhead: all seeds x methods x settings of one architecture
# train together as one BatchedMLP, each member with its own seed, data order, weight decay and penalty.
BATCH_VARYING = ("seed", "method", "lam", "weight_decay", "max_layer")
PERM_CHUNK = 500


def _member_activation_mask(cfg: TrainConfig, n_layers: int) -> list[float]:
    """Per-hidden-layer weight of the authors' activation term (rep_ub): λ on the Φ layers rep_ub penalises."""
    if cfg.method != "rep_ub":
        return [0.0] * (n_layers - 1)
    return _member_layer_mask(cfg, n_layers)[:-1]  # rep_ub's spectral mask, without the readout


def _member_layer_mask(cfg: TrainConfig, n_layers: int) -> list[float]:
    """Per-layer penalty weight of one member: λ on the layers its method penalises (readout last)."""
    if cfg.method == "none":
        return [0.0] * n_layers
    if cfg.method == "ll":
        return [cfg.lam] * n_layers
    if cfg.method == "ll_readout":
        return [0.0] * (n_layers - 1) + [cfg.lam]
    k = n_layers - 1 if cfg.max_layer is None else int(cfg.max_layer)
    if not 1 <= k <= n_layers - 1:
        raise ValueError(f"max_layer must be in 1..{n_layers - 1}, got {cfg.max_layer}")
    return [cfg.lam] * k + [0.0] * (n_layers - k)


class _BatchedRun:
    """State of one BatchedMLP run: params, momentum buffers, power-iteration vectors, per-member settings."""

    def __init__(self, cfgs: list[TrainConfig], data, device: torch.device):
        from .models import BatchedMLP

        first = cfgs[0]
        spec = dict(first.model)
        self.train_ds, self.test_ds = data
        self.net = BatchedMLP(
            [c.seed for c in cfgs],
            spec.get("d_in", int(self.train_ds.x[0].numel())),
            spec["widths"],
            spec.get("n_classes", int(self.train_ds.n_classes)),
            spec.get("activation", "gelu"),
            spec.get("init_std", 0.01),
            spec.get("init", "normal"),
        ).to(device)
        self.cfgs, self.device = cfgs, device
        self.params = [*self.net.weights, *self.net.biases]
        n_layers = len(self.net.weights)
        self.coef = torch.tensor([_member_layer_mask(c, n_layers) for c in cfgs], device=device)
        self.act_coef = torch.tensor([_member_activation_mask(c, n_layers) for c in cfgs], device=device)
        self.activation = spec.get("activation", "gelu")
        self.any_activation_term = bool(self.act_coef.any())
        self.wd = torch.tensor([c.weight_decay for c in cfgs], device=device)
        self.warm_start()
        self.reset_optimizer()

    def warm_start(self) -> None:
        """Persistent right singular vectors of every stacked layer from a converged, seeded power iteration."""
        self.vs = [spectral.power_iteration_converged(W.detach(), generator=torch.Generator().manual_seed(l))[1]
                   for l, W in enumerate(self.net.weights)]

    def reset_optimizer(self) -> None:
        self.bufs = [torch.zeros_like(p) for p in self.params]

    def state(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params], "bufs": self.bufs, "vs": self.vs}

    def load(self, state: dict) -> None:
        with torch.no_grad():
            for p, q in zip(self.params, state["params"]):
                p.copy_(q)
        self.bufs, self.vs = state["bufs"], state["vs"]

    def penalty_per_member(self, n_iter: int) -> torch.Tensor:
        """Σ_l coef[m, l]·σ_max(W_l[m])², each σ by persistent power iteration: (M,)."""
        total = 0.0
        for l, W in enumerate(self.net.weights):
            with torch.no_grad():
                _, self.vs[l] = spectral.power_iteration(W.detach(), self.vs[l], n_iter)
            total = total + self.coef[:, l] * (W @ self.vs[l].unsqueeze(-1)).squeeze(-1).pow(2).sum(-1)
        return total

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, momentum: float, regularize: bool, n_iter: int):
        from .authors import activation_term

        with_act = regularize and self.any_activation_term
        logits, preacts = self.net.forward_with_preacts(xb) if with_act else (self.net(xb), None)
        m, b, c = logits.shape
        ce = F.cross_entropy(logits.reshape(m * b, c), yb.reshape(-1), reduction="none").view(m, b).mean(1)
        loss = ce.sum()
        if regularize:
            loss = loss + self.penalty_per_member(n_iter).sum()
        if with_act:  # the authors' rep-spectral term Σ_l λ·mean_b max_j φ′(z_l)², per member
            terms = torch.stack([activation_term([z], self.activation) for z in preacts], dim=-1)  # (M, L-1)
            loss = loss + (self.act_coef * terms).sum()
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for p, g, buf in zip(self.params, grads, self.bufs):
                wd = self.wd.view(-1, *([1] * (p.dim() - 1)))
                buf.mul_(momentum).add_(g + wd * p)
                p.sub_(lr * buf)
        return ce.detach(), (logits.argmax(-1) == yb).float().mean(1)

    @torch.no_grad()
    def log_row(self, epoch: int, phase_of: Callable[[int], str], ce: torch.Tensor, acc: torch.Tensor) -> list[dict]:
        sig = torch.stack([torch.linalg.matrix_norm(W, ord=2) for W in self.net.weights], 1)
        test_acc = (self.net(self.test_ds.x.to(self.device)).argmax(-1) == self.test_ds.y.to(self.device)).float().mean(1)
        return [
            {"member": i, "epoch": epoch, "phase": phase_of(i), "train_loss": ce[i].item(), "train_acc": acc[i].item(),
             "test_acc": test_acc[i].item(), **{f"sigma_{l}": sig[i, l].item() for l in range(sig.shape[1])}}
            for i in range(len(self.cfgs))
        ]


def _check_batchable(cfgs: list[TrainConfig]) -> None:
    for c in cfgs:
        validate(c)
        if c.model.get("kind") != "mlp" or c.objective != "supervised" or c.augment != "none":
            raise ValueError("train_batched handles supervised MLPs without augmentation only; use train()")
        if c.method not in (*METHODS, authors.READOUT_ONLY, authors.WITH_ACTIVATION_TERM) or c.precision != "fp32":
            raise ValueError(f"train_batched handles the spectral methods in fp32 only (got method {c.method!r}, "
                             f"precision {c.precision!r}); use train()")
    shared = lambda c: dataclasses.replace(c, **{k: getattr(cfgs[0], k) for k in BATCH_VARYING})  # noqa: E731
    for c in cfgs[1:]:
        if shared(c) != shared(cfgs[0]):
            raise ValueError(f"train_batched needs configs that differ only in {BATCH_VARYING}; got {c} vs {cfgs[0]}")


def _member_perms(seeds: list[int], block: int, n: int) -> torch.Tensor:
    """Per-member data orders for the PERM_CHUNK epochs of `block`, (M, PERM_CHUNK, n): a function of
    (seed, epoch) only, so a member's batches do not depend on which other members share its run."""
    return torch.stack([
        torch.rand(PERM_CHUNK, n, generator=epoch_generator(s, block, stream=1)).argsort(dim=1) for s in seeds
    ])


def _run_batched_phase(run: _BatchedRun, start: int, end: int, regularize: bool, folder: Path, progress: bool,
                       history: list[dict], phase_of, log_every: int, checkpoint_every_s: float, use_cache: bool,
                       on_epoch_end=None) -> list[dict]:
    from tqdm.auto import tqdm

    cfg0 = run.cfgs[0]
    resume = folder / "resume.pt"
    state = cache.load(resume) if use_cache else None
    epoch = start
    if state is not None:
        run.load(state["run"])
        epoch, history = state["epoch"], state["history"]
    x, y = run.train_ds.x.to(run.device), run.train_ds.y.to(run.device)
    n, bs = len(x), min(cfg0.batch_size, len(x))
    seeds = [c.seed for c in run.cfgs]
    perm_cache: dict[int, torch.Tensor] = {}
    last_save = time.monotonic()
    bar = tqdm(total=end - start, initial=epoch - start, disable=not progress, leave=False,
               desc=f"{'branch' if regularize else 'burn-in'} x{len(run.cfgs)}")
    while epoch < end:
        if bs < n:
            block = epoch // PERM_CHUNK
            if block not in perm_cache:
                perm_cache = {block: _member_perms(seeds, block, n).to(run.device)}
            perm = perm_cache[block][:, epoch % PERM_CHUNK]
        for i in range(math.ceil(n / bs)):
            if bs < n:
                idx = perm[:, i * bs : (i + 1) * bs]
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y.expand(len(run.cfgs), -1)
            ce, acc = run.step(xb, yb, cfg0.lr, cfg0.momentum, regularize and i % cfg0.reg_every == 0, cfg0.n_power_iter)
        epoch += 1
        bar.update(1)
        if epoch % log_every == 0 or epoch == end:
            history = history + run.log_row(epoch, phase_of, ce, acc)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if use_cache and epoch < end and time.monotonic() - last_save >= checkpoint_every_s:
            cache.save({"run": run.state(), "epoch": epoch, "history": history}, resume)
            last_save = time.monotonic()
    bar.close()
    return history


def train_batched(
    configs: list[TrainConfig],
    *,
    device: str | torch.device | None = "cpu",
    progress: bool | None = None,
    use_cache: bool = True,
    log_every: int = 100,
    checkpoint_every_s: float = 30.0,
    on_epoch_end: Callable[[int], None] | None = None,
) -> list[TrainResult]:
    """Train many small MLP configs (differing only in seed, method, λ, weight decay, max_layer) as one
    batched computation, with the same burn-in/branch schedule as `train`. One TrainResult per config."""
    configs = list(configs)
    _check_batchable(configs)
    with torch_threads(1):
        return _train_batched(configs, device, progress, use_cache, log_every, checkpoint_every_s, on_epoch_end)


def _train_batched(configs, device, progress, use_cache, log_every, checkpoint_every_s, on_epoch_end):
    progress = cache.progress_enabled(progress)
    device = resolve_device(device)
    root = cache.cache_root() / "train-batched"
    keys = [cache.make_key(kind="train-batched", cfg=c) for c in configs]
    results: list[TrainResult | None] = [None] * len(configs)
    data = load_training_data(configs[0])
    todo = []
    for i, (c, k) in enumerate(zip(configs, keys)):
        done = cache.load(root / k / "final.pt") if use_cache else None
        if done is None:
            todo.append(i)
        else:
            results[i] = _batched_result(c, k, done, data)
    if not todo:
        return results  # type: ignore[return-value]
    t0 = time.perf_counter()
    todo_cfgs = [configs[i] for i in todo]
    # burn-in: one member per distinct (seed, weight decay); shared by every method branching from it
    base_of = {i: configs[i].replace(method="none", lam=0.0, max_layer=None) for i in todo}
    base_key_of = {i: cache.make_key(kind="train-batched-base", cfg=b, until=b.burn_in) for i, b in base_of.items()}
    base_keys = list(dict.fromkeys(base_key_of.values()))
    base_cfgs = [base_of[next(i for i in todo if base_key_of[i] == k)] for k in base_keys]
    group = cache.make_key(kind="group", keys=sorted(base_keys))
    base_states = [cache.load(root / k / "burn_in.pt") if use_cache else None for k in base_keys]
    missing = [j for j, s in enumerate(base_states) if s is None]
    if missing:
        run = _BatchedRun([base_cfgs[j] for j in missing], data, device)
        hist = _run_batched_phase(run, 0, base_cfgs[0].burn_in, False, root / ("base-" + group), progress, [],
                                  lambda i: "burn-in", log_every, checkpoint_every_s, use_cache, on_epoch_end)
        for pos, j in enumerate(missing):
            base_states[j] = {"params": [p[pos].detach().clone() for p in run.params],
                              "history": [{**r, "member": None} for r in hist if r["member"] == pos]}
            if use_cache:
                cache.save(base_states[j], root / base_keys[j] / "burn_in.pt")
        if use_cache:
            (root / ("base-" + group) / "resume.pt").unlink(missing_ok=True)
    t_base = time.perf_counter() - t0
    run = _BatchedRun(todo_cfgs, data, device)
    start_states = [base_states[base_keys.index(base_key_of[i])] for i in todo]
    with torch.no_grad():
        for l, p in enumerate(run.params):
            p.copy_(torch.stack([s["params"][l] for s in start_states]))
    run.warm_start()
    branch_group = cache.make_key(kind="group", keys=sorted(keys[i] for i in todo))
    hist = _run_batched_phase(run, todo_cfgs[0].burn_in, todo_cfgs[0].epochs, True, root / ("branch-" + branch_group),
                              progress, [], lambda i: todo_cfgs[i].method, log_every, checkpoint_every_s, use_cache,
                              on_epoch_end)
    wall = (time.perf_counter() - t0) / len(todo)  # amortised per model
    for pos, i in enumerate(todo):
        done = {"params": [p[pos].detach().cpu().clone() for p in run.params],
                "history": start_states[pos]["history"] + [{**r, "member": None} for r in hist if r["member"] == pos],
                "wall_time": wall, "data_source": data[0].source, "config": dataclasses.asdict(configs[i]),
                "burn_in_time_total": t_base}
        if use_cache:
            cache.save(done, root / keys[i] / "final.pt")
        results[i] = _batched_result(configs[i], keys[i], done, data)
    if use_cache:
        (root / ("branch-" + branch_group) / "resume.pt").unlink(missing_ok=True)
    return results  # type: ignore[return-value]


def _batched_result(cfg: TrainConfig, key: str, done: dict, data) -> TrainResult:
    from .models import MLP

    spec = dict(cfg.model)
    model = MLP(spec.get("d_in", int(data[0].x[0].numel())), spec["widths"],
                spec.get("n_classes", int(data[0].n_classes)), spec.get("activation", "gelu"))
    with torch.no_grad():
        for layer, l in zip([*model.hidden, model.readout], range(len(model.hidden) + 1)):
            layer.weight.copy_(done["params"][l])
            layer.bias.copy_(done["params"][l + len(model.hidden) + 1])
    hist = pd.DataFrame(done["history"]).drop(columns=["member"], errors="ignore")
    cache.note_compute("train", key, done["wall_time"])  # amortised share of the batch, burn-in included
    return TrainResult(model, hist, cfg, key, done["wall_time"], done["data_source"])


# plug-ins that register objectives, augmentations, penalties and models with the registries above
from . import authors, ssl, transfer  # noqa: E402,F401

PENALTIES[authors.READOUT_ONLY] = authors.make_ll_readout
PENALTIES[authors.WITH_ACTIVATION_TERM] = authors.make_rep_ub
