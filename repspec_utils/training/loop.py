"""One training function for every recipe: burn-in, method branches, spectral penalty, cache and resume.

Schedule (SPEC §3): the unregularised model is trained to the burn-in epoch B and saved; every method
(any of registry.METHODS) continues from that same checkpoint to the final epoch E with a fresh optimiser.
Both phases are cached under a hash of everything that determines them, checkpointed atomically at epoch
boundaries, and resume after an interruption to the same weights as an uninterrupted run."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils.attacks.precision import full_fp32_matmuls
from repspec_utils.data import DataIntegrityError, dataset_fingerprint, get_data
from repspec_utils.infra import cache
from repspec_utils.infra.registry import AUGMENTATIONS, METHODS, MODELS, OBJECTIVES
from repspec_utils.method.penalties import make_monitor, make_penalty
from repspec_utils.models.base import accuracy, build_model
from repspec_utils.training.config import (TrainConfig, TrainResult, check_memory, diverged, method_parts,
                                           schedule_epochs, validate)


def prepare_model(cfg: "TrainConfig", model: nn.Module) -> nn.Module:
    """Apply cfg.method's model change (METHODS meta `prepare(cfg, model)`, e.g. AR-AT's split BatchNorm and
    predictor heads) in place, before a branch trains or its cached weights load; returns the model."""
    prepare = METHODS.meta(cfg.method).get("prepare")
    if prepare is not None:
        prepare(cfg, model)
    return model


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
        from repspec_utils.models.resnet import small_resnet_cost

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


@torch.no_grad()
# ------------------------------------------------------------------------------------------- the loop
def data_identity(cfg: TrainConfig) -> str:
    """The content fingerprint of cfg's dataset as it would load now (`data.dataset_fingerprint`: every data file
    hashed, generated sets generated): part of every training key, so that a model trained on other data (a
    changed file, a stand-in) is never served from the cache."""
    return dataset_fingerprint(cfg.dataset, seed=cfg.data_seed, **cfg.data_kwargs)


def phase_key(cfg: TrainConfig, phase: str, data_id: str | None = None) -> str:
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
                raise diverged(cfg, phase, epoch, i, f"loss {loss_value}")
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
                raise diverged(cfg, phase, epoch, None, "a non-finite weight")
        epoch += 1
        with torch.no_grad():
            monitor.penalty()  # advances the monitor's power iteration
            sig = monitor.sigmas().tolist()
        row = {"epoch": epoch, "phase": "burn-in" if method_cfg is not cfg else cfg.method,
               "train_loss": loss_sum / n, "train_acc": correct / n,
               "penalty": reg_sum / max(n_reg, 1), "epoch_time": time.perf_counter() - t0}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch in (1, end)) and cfg.objective == "supervised":
            row["test_acc"] = accuracy(model, test_ds)
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
    key = phase_key(cfg, "final", data_id)
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
    base_key = phase_key(cfg, "base", data_id)
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
