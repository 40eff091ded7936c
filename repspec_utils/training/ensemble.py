"""The batched engine for the 2-D experiments (XOR, sin): many small MLPs trained as one computation.

Tiny nets are dominated by Python overhead, so all seeds × methods × settings of one architecture train together
as one `BatchedMLP`, each member with its own seed, data order, weight decay and penalty, on the same burn-in /
branch schedule as `training.train` (SPEC §3) and with the same cache discipline (atomic entries, resume).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F

from repspec_utils.infra import cache
from repspec_utils.infra.registry import METHODS
from repspec_utils.method import spectral
from repspec_utils.method.penalties import activation_term, activation_weights, layer_weights
from repspec_utils.models.mlp import MLP, BatchedMLP
from repspec_utils.training.config import TrainConfig, TrainResult, diverged, schedule_epochs, validate
from repspec_utils.training.loop import epoch_generator, load_training_data, resolve_device, torch_threads

BATCH_VARYING = ("seed", "method", "lam", "weight_decay", "max_layer")
PERM_CHUNK = 500


class _BatchedRun:
    """State of one BatchedMLP run: params, momentum buffers, power-iteration vectors, per-member settings."""

    def __init__(self, cfgs: list[TrainConfig], data, device: torch.device):
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
            bool(spec.get("bias_scaled", False)),
        ).to(device)
        self.cfgs, self.device = cfgs, device
        self.params = [*self.net.weights, *self.net.biases]
        n_layers = len(self.net.weights)
        self.coef = torch.tensor([layer_weights(c.method, c.lam, n_layers, c.max_layer) for c in cfgs], device=device)
        self.act_coef = torch.tensor([activation_weights(c.method, c.lam, n_layers, c.max_layer) for c in cfgs],
                                     device=device)
        self.activation = spec.get("activation", "gelu")
        self.any_activation_term = bool(self.act_coef.any())
        self.wd = torch.tensor([c.weight_decay for c in cfgs], device=device)
        # one SpectralPenalty over the stacked weights: σ_max² per member and layer, persistent vectors, each
        # warm-started by a converged, seeded power iteration at its first use (the first regularised step)
        self.penalty = spectral.SpectralPenalty(list(self.net.weights), mode="power", n_iter=first.n_power_iter)
        self.reset_optimizer()

    def reset_optimizer(self) -> None:
        self.bufs = [torch.zeros_like(p) for p in self.params]

    def state(self) -> dict:
        return {"params": [p.detach().clone() for p in self.params], "bufs": self.bufs,
                "penalty": self.penalty.state_dict()}

    def load(self, state: dict) -> None:
        with torch.no_grad():
            for p, q in zip(self.params, state["params"]):
                p.copy_(q)
        self.bufs = state["bufs"]
        self.penalty.load_state_dict(state["penalty"])

    def penalty_per_member(self) -> torch.Tensor:
        """Σ_l coef[m, l]·σ_max(W_l[m])², each σ by persistent power iteration: (M,)."""
        return (self.coef * self.penalty.penalty_per_model()).sum(-1)

    def step(self, xb: torch.Tensor, yb: torch.Tensor, lr: float, momentum: float, regularize: bool):
        with_act = regularize and self.any_activation_term
        logits, preacts = self.net.forward_with_preacts(xb) if with_act else (self.net(xb), None)
        m, b, c = logits.shape
        ce = F.cross_entropy(logits.reshape(m * b, c), yb.reshape(-1), reduction="none").view(m, b).mean(1)
        loss = ce.sum()
        if regularize:
            loss = loss + self.penalty_per_member().sum()
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
        if "layers" not in METHODS.meta(c.method) or c.precision != "fp32":
            raise ValueError(f"train_batched runs the σ_max penalties on weight layers (the methods registered with "
                             f"`layers`: {', '.join(METHODS.where_has('layers'))}) in fp32 only (got method "
                             f"{c.method!r}, precision {c.precision!r}); use train()")
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
                       on_epoch_end=None, reg_from: int = 0, snapshot_at: int | None = None,
                       snapshot: dict | None = None) -> list[dict]:
    """Epochs [start, end) of a batched run (the penalty on epochs from `reg_from` on when `regularize`); with
    `snapshot_at`, `snapshot['params']` receives every member's parameters after that many epochs (the reference
    schedule's None members end one epoch before the others); it rides in the resume checkpoint."""
    from tqdm.auto import tqdm

    cfg0 = run.cfgs[0]
    resume = folder / "resume.pt"
    state = cache.load(resume) if use_cache else None
    epoch = start
    snapshot = {} if snapshot is None else snapshot
    if state is not None:
        run.load(state["run"])
        epoch, history = state["epoch"], state["history"]
        if state.get("snapshot") is not None:
            snapshot["params"] = state["snapshot"]
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
            ce, acc = run.step(xb, yb, cfg0.lr, cfg0.momentum,
                               regularize and epoch >= reg_from and i % cfg0.reg_every == 0)
        epoch += 1
        if epoch == snapshot_at:
            snapshot["params"] = [p.detach().clone() for p in run.params]
        bar.update(1)
        if epoch % log_every == 0 or epoch == end or (use_cache and time.monotonic() - last_save >= checkpoint_every_s):
            _check_finite(run, ce, epoch - 1, "branch" if regularize else "burn-in")
        if epoch % log_every == 0 or epoch == end or epoch == snapshot_at:
            history = history + run.log_row(epoch, phase_of, ce, acc)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if use_cache and epoch < end and time.monotonic() - last_save >= checkpoint_every_s:
            cache.save({"run": run.state(), "epoch": epoch, "history": history,
                        "snapshot": snapshot.get("params")}, resume)
            last_save = time.monotonic()
    bar.close()
    return history


def _check_finite(run: "_BatchedRun", ce: torch.Tensor, epoch: int, phase: str) -> None:
    """TrainingDiverged naming the first member whose loss or weights are not finite (checked at log and checkpoint
    times: a per-step check would synchronise every step of the tiny batched nets)."""
    with torch.no_grad():
        bad = ~torch.isfinite(ce)
        for p in run.params:
            bad |= ~torch.isfinite(p.reshape(p.shape[0], -1)).all(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise diverged(run.cfgs[i], phase, epoch, None,
                        f"loss {ce[i].item()} or a non-finite weight; {int(bad.sum())} of {len(bad)} batched models")


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
    data = load_training_data(configs[0])
    data_id = data[0].identity  # the data's content fingerprint: part of every key
    keys = [cache.make_key(kind="train-batched", cfg=c, data=data_id) for c in configs]
    results: list[TrainResult | None] = [None] * len(configs)
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
    reference = todo_cfgs[0].schedule == "reference"
    base_end = schedule_epochs(todo_cfgs[0])[0]
    # burn-in: one member per distinct (seed, weight decay); shared by every method branching from it
    base_of = {i: configs[i].replace(method="none", lam=0.0, max_layer=None) for i in todo}
    base_key_of = {i: cache.make_key(kind="train-batched-base", cfg=b, until=b.burn_in, data=data_id) for i, b in base_of.items()}
    base_keys = list(dict.fromkeys(base_key_of.values()))
    base_cfgs = [base_of[next(i for i in todo if base_key_of[i] == k)] for k in base_keys]
    group = cache.make_key(kind="group", keys=sorted(base_keys))
    base_states = [cache.load(root / k / "burn_in.pt") if use_cache else None for k in base_keys]
    missing = [j for j, s in enumerate(base_states) if s is None]
    if missing:
        run = _BatchedRun([base_cfgs[j] for j in missing], data, device)
        hist = _run_batched_phase(run, 0, base_end, False, root / ("base-" + group), progress, [],
                                  lambda i: "burn-in", log_every, checkpoint_every_s, use_cache, on_epoch_end)
        for pos, j in enumerate(missing):
            base_states[j] = {"params": [p[pos].detach().clone() for p in run.params],
                              "history": [{**r, "member": None} for r in hist if r["member"] == pos]}
            if reference:  # None continues the base run's momentum
                base_states[j]["bufs"] = [b[pos].detach().clone() for b in run.bufs]
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
        if reference:  # the reference schedule: None members keep their momentum, the others start afresh
            for l, b in enumerate(run.bufs):
                for pos, c in enumerate(todo_cfgs):
                    if c.method == "none":
                        b[pos].copy_(start_states[pos]["bufs"][l])
    ends = [schedule_epochs(c)[1] for c in todo_cfgs]
    branch_end, reg_from = max(ends), schedule_epochs(todo_cfgs[0].replace(method="rep"))[2]
    snapshot_at = min(ends) if min(ends) < branch_end else None
    snapshot: dict = {}
    branch_group = cache.make_key(kind="group", keys=sorted(keys[i] for i in todo))
    hist = _run_batched_phase(run, base_end, branch_end, True, root / ("branch-" + branch_group),
                              progress, [], lambda i: todo_cfgs[i].method, log_every, checkpoint_every_s, use_cache,
                              on_epoch_end, reg_from=reg_from, snapshot_at=snapshot_at, snapshot=snapshot)
    wall = (time.perf_counter() - t0) / len(todo)  # amortised per model
    for pos, i in enumerate(todo):
        params = snapshot["params"] if ends[pos] != branch_end else run.params
        done = {"params": [p[pos].detach().cpu().clone() for p in params],
                "history": start_states[pos]["history"] + [{**r, "member": None} for r in hist
                                                           if r["member"] == pos and r["epoch"] <= ends[pos]],
                "wall_time": wall, "data_source": data[0].source, "config": dataclasses.asdict(configs[i]),
                "burn_in_time_total": t_base}
        if use_cache:
            cache.save(done, root / keys[i] / "final.pt")
        results[i] = _batched_result(configs[i], keys[i], done, data)
    if use_cache:
        (root / ("branch-" + branch_group) / "resume.pt").unlink(missing_ok=True)
    return results  # type: ignore[return-value]


def _batched_result(cfg: TrainConfig, key: str, done: dict, data) -> TrainResult:
    spec = dict(cfg.model)
    model = MLP(spec.get("d_in", int(data[0].x[0].numel())), spec["widths"],
                spec.get("n_classes", int(data[0].n_classes)), spec.get("activation", "gelu"),
                bias_scaled=bool(spec.get("bias_scaled", False)))
    n = len(model.hidden) + 1
    model.set_layers(done["params"][:n], done["params"][n:])
    hist = pd.DataFrame(done["history"]).drop(columns=["member"], errors="ignore")
    cache.note_compute("train", key, done["wall_time"])  # amortised share of the batch, burn-in included
    return TrainResult(model, hist, cfg, key, done["wall_time"], done["data_source"])
