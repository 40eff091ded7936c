"""The experiments of SPEC §6 as functions: configs for each recipe, training them all, and tidy result tables.

A notebook calls `*_configs(...)` with its parameters, `train_all(configs)`, then `robustness_table(...)`;
the returned tables have one row per attacked sample (or per model) with every setting as a column.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from . import cache
from .evaluate import accuracy, evaluate_robustness, refit_readout
from .train import BATCH_VARYING, torch_threads, TrainConfig, TrainResult, load_training_data, train, train_batched

SMALL_DATASETS = ("xor", "xor_noisy", "sin")  # 2-D recipes: trained with the batched engine, on one thread
SETTING_COLUMNS = ["dataset", "width", "method", "lam", "weight_decay", "seed", "max_layer", "epochs", "burn_in",
                   "method_kwargs"]  # method_kwargs only where a config has some (L2-SP α, β; BSS k)


def _grid(base: TrainConfig, methods, seeds, weight_decays, lams=None, max_layers=None) -> list[TrainConfig]:
    out = []
    for wd in weight_decays:
        for m in methods:
            for lam in ([0.0] if m == "none" else (lams or [base.lam])):
                for ml in ((max_layers or [None]) if m in ("rep", "rep_ub") else [None]):
                    for s in seeds:
                        out.append(base.replace(method=m, seed=int(s), weight_decay=float(wd), lam=float(lam),
                                                max_layer=ml))
    return out


def xor_configs(widths: Sequence[int] = (3, 8), noisy: bool = False, methods=("none", "ll", "rep"),
                seeds=(400, 500, 600, 700, 800), weight_decays=(0.0, 1e-4), epochs: int = 15000,
                burn_in: int = 10500, lam: float = 1e-3, lr: float = 1.0) -> list[TrainConfig]:
    """SPEC §6 XOR (clean: full batch of 4; noisy: 80 points, batch 20), lr 1.0, λ 1e-3."""
    out = []
    for w in widths:
        base = TrainConfig(dataset="xor_noisy" if noisy else "xor", model={"kind": "mlp", "widths": [int(w)]},
                           lam=lam, lr=lr, batch_size=20 if noisy else 4, epochs=epochs, burn_in=burn_in)
        out += _grid(base, methods, seeds, weight_decays)
    return out


def sin_configs(widths: Sequence[Sequence[int]] = ([8], [20], [8, 8, 8], [20, 20, 20]), methods=("none", "ll", "rep"),
                seeds=(0, 1, 2, 3, 4), epochs: int = 15000, burn_in: int = 10500, lam: float = 1e-3,
                lr: float = 0.05, weight_decay: float = 1e-5, deep_ablation=(1, 2),
                deep_inits=("normal",)) -> list[TrainConfig]:
    """SPEC §6 sin boundary: shallow and deep MLPs; deep nets also get rep on the first 1 or 2 layers only, once per
    init of `deep_inits` ('normal': N(0, 0.01²), SPEC §6; 'torch': PyTorch's default, a labelled deviation)."""
    from .models import INITS

    bad = [i for i in deep_inits if i not in INITS]
    if bad or not deep_inits:
        raise ValueError(f"deep_inits must be a non-empty list of {INITS}, got {list(deep_inits)}")
    out = []
    for w in widths:
        w = [int(v) for v in ([w] if isinstance(w, int) else w)]
        for init in (deep_inits if len(w) > 1 else ["normal"]):
            spec = {"kind": "mlp", "widths": w, **({"init": init} if init != "normal" else {})}
            base = TrainConfig(dataset="sin", model=spec, lam=lam, lr=lr, batch_size=64, epochs=epochs,
                               burn_in=burn_in)
            ablation = [None, *deep_ablation] if len(w) > 1 else None
            out += _grid(base, methods, seeds, [weight_decay], max_layers=ablation)
    return out


def mnist_configs(dataset: str = "mnist", methods=("none", "ll", "rep"), seeds=range(10), lams=(1e-3,),
                  weight_decays=(1e-4,), epochs: int = 200, burn_in: int = 160, lr: float = 0.1,
                  batch_size: int = 1024, width: int = 2000, n_train: int | None = None,
                  precision: str = "fp32") -> list[TrainConfig]:
    """SPEC §6 MNIST / Fashion-MNIST: 784→2000→10 GELU MLP, SGD lr 0.1, batch 1024 (precision: fp32 or bf16)."""
    base = TrainConfig(dataset=dataset, model={"kind": "mlp", "widths": [int(width)]}, lr=lr, batch_size=batch_size,
                       epochs=epochs, burn_in=burn_in, n_train=n_train, eval_every=max(1, epochs // 20),
                       precision=precision)
    return _grid(base, methods, seeds, weight_decays, lams=list(lams))


def _batch_group(cfg: TrainConfig) -> str:
    shared = dataclasses.replace(cfg, **{k: getattr(TrainConfig("", {}), k) for k in BATCH_VARYING})
    return cache.make_key(kind="batch-group", cfg=shared)


def train_all(configs: Iterable[TrainConfig], progress: bool | None = None, device="auto") -> list[TrainResult]:
    """Train every config (cached): small MLP groups with the batched engine, the rest one by one."""
    configs = list(configs)
    results: list[TrainResult | None] = [None] * len(configs)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        small = c.model.get("kind") == "mlp" and c.dataset in SMALL_DATASETS
        if small:
            groups.setdefault(_batch_group(c), []).append(i)
        else:
            results[i] = train(c, progress=progress, device=device)
    for idx in groups.values():
        for i, r in zip(idx, train_batched([configs[i] for i in idx], progress=progress)):
            results[i] = r
    return results  # type: ignore[return-value]


def settings(cfg: TrainConfig) -> dict:
    """The setting columns of a config (one row of a tidy table)."""
    widths = cfg.model.get("widths")
    width = "-".join(map(str, widths)) if widths else cfg.model["kind"]
    if cfg.model.get("init", "normal") != "normal":  # a non-default init is a different model: its own column value
        width += f" ({cfg.model['init']} init)"
    return {"dataset": cfg.dataset, "width": width,
            "method": cfg.method, "lam": cfg.lam, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "max_layer": -1 if cfg.max_layer is None else cfg.max_layer, "epochs": cfg.epochs,
            "burn_in": cfg.burn_in,
            **({"method_kwargs": format_kwargs(cfg.method_kwargs)} if cfg.method_kwargs else {})}


def format_kwargs(kwargs: dict) -> str:
    """A method's extra strengths as one sorted, readable table cell: {'beta': 0.01, 'alpha': 0.1} -> 'alpha=0.1, beta=0.01'."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(kwargs.items()))


def refit_cached(result: TrainResult, train_ds, test_ds, C: float = 1.0):
    """`evaluate.refit_readout` of a trained model, its fitted readout cached by the model's key: (model, acc).
    The fit runs with single-threaded BLAS: on a busy 2-core machine OpenBLAS threads spin (measured: a 2000×256 fit
    2.3 s instead of 0.05 s; one 60000×2000 gradient 0.62 s instead of 0.43 s)."""
    from threadpoolctl import threadpool_limits

    key = cache.make_key(kind='refit', model=result.key, C=C)
    path = cache.cache_root() / "refit" / f"{key}.pt"
    stored = cache.load(path)
    if stored is None:
        t0 = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            refit, acc = refit_readout(result.model, train_ds, test_ds, C=C)
        seconds = time.perf_counter() - t0
        cache.save({"readout": refit.readout.state_dict(), "acc": acc, "seconds": seconds}, path)
        cache.note_compute("refit", key, seconds)
        return refit, acc
    cache.note_compute("refit", key, stored.get("seconds"))
    from copy import deepcopy

    from .models import RefitModel

    readout = torch.nn.Linear(stored["readout"]["weight"].shape[1], stored["readout"]["weight"].shape[0])
    readout.load_state_dict(stored["readout"])
    return RefitModel(deepcopy(result.model), readout).eval(), stored["acc"]


def robustness_table(results: Sequence[TrainResult], n: int | None = None, attack: str = "tangent",
                     attack_kwargs: dict | None = None, seed: int = 0, readout: str = "original",
                     progress: bool | None = None, precision: str = "fp32") -> pd.DataFrame:
    """Attack every model (cached): one row per attacked sample with the model's settings, test accuracy,
    data source and the attack's output. n=None attacks every correctly classified test sample (XOR);
    readout='refit' first re-trains the readout on frozen Φ (SPEC §4)."""
    if readout not in ("original", "refit"):
        raise ValueError(f"readout must be 'original' or 'refit', got {readout!r}")
    rows = []
    for r in results:
        train_ds, test_ds = load_training_data(r.config)
        model, key = r.model.eval(), {"train": r.key}
        if readout == "refit":
            model, acc = refit_cached(r, train_ds, test_ds)
            key = {"train": r.key, "refit": 1.0}
        else:
            acc = accuracy(model, test_ds)
        n_correct = int(round(acc * len(test_ds)))
        n_attack = n_correct if n is None else min(int(n), n_correct)
        with torch_threads(1 if r.config.dataset in SMALL_DATASETS else None):  # tiny nets: one thread is faster
            table = evaluate_robustness(model, test_ds, n_attack, seed=seed, attack=attack,
                                        attack_kwargs=attack_kwargs, cache_key=key,
                                        progress=cache.progress_enabled(progress), precision=precision)
        seconds = table.attrs.get("seconds")
        info = {**settings(r.config), "readout": readout, "test_acc": acc, "n_attacked": n_attack,
                "data_source": r.data_source, "train_seconds": r.wall_time,
                "attack_seconds": np.nan if seconds is None else seconds}
        rows.append(table.assign(**info))
    return pd.concat(rows, ignore_index=True)


def per_model(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model: mean distance over its attacked samples (successful attacks), accuracy, settings, and the
    data source where the table has one (so a per-model table still says SYNTHETIC / STAND-IN)."""
    keys = [c for c in [*SETTING_COLUMNS, "readout", "attack"] if c in table.columns]
    ok = table[np.isfinite(table["distance"])]
    source = {"data_source": ("data_source", "first")} if "data_source" in table.columns else {}
    out = ok.groupby(keys, dropna=False).agg(mean_distance=("distance", "mean"), median_distance=("distance", "median"),
                                             n_attacked=("distance", "size"), test_acc=("test_acc", "first"),
                                             mean_queries=("queries", "mean"),
                                             success_rate=("success", "mean"), **source).reset_index()
    return out


def attack_summary(table: pd.DataFrame) -> pd.DataFrame:
    """`per_model` keeping every model: one row per model with its settings, test_acc, n_attacked, n_failed (attacks
    that found no adversarial point), n_labels (distinct labels among its attacked samples) and the mean / median
    distance over its successful attacks (NaN where none succeeded, e.g. a model that predicts one class)."""
    keys = [c for c in [*SETTING_COLUMNS, "readout", "attack"] if c in table.columns]
    success = table["success"].astype(bool)
    counts = (table.assign(_failed=~success).groupby(keys, dropna=False)
              .agg(test_acc=("test_acc", "first"), n_attacked=("success", "size"), n_failed=("_failed", "sum"),
                   n_labels=("label", "nunique"), mean_queries=("queries", "mean")).reset_index())
    dist = per_model(table[success])[[*keys, "mean_distance", "median_distance"]]
    return counts.merge(dist, on=keys, how="left")


def across_seeds(models: pd.DataFrame, value: str = "mean_distance", by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation and standard error of `value` across seeds, per setting."""
    by = list(by or [c for c in [*SETTING_COLUMNS, "readout"] if c in models.columns and c not in ("seed",)])
    g = models.groupby(by, dropna=False)[value]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"] / np.sqrt(out["count"])
    return out.rename(columns={"mean": f"{value}_mean", "std": f"{value}_sd", "sem": f"{value}_sem",
                               "count": "n_seeds"})


def method_variant(table: pd.DataFrame) -> pd.Series:
    """The method of each row with the layer ablation folded in (sin deep nets, SPEC §6): 'rep1' / 'rep2' =
    rep-spectral on the first 1 / 2 hidden layers only (max_layer), 'rep_ub1' / 'rep_ub2' the same for the authors'
    rep-spectral with its activation term, else the method ('none', 'll', 'rep', ...)."""
    max_layer = table["max_layer"].fillna(-1).astype(int)
    method = table["method"].astype(str)
    ablated = method.isin(["rep", "rep_ub"]) & (max_layer >= 1)
    return method.where(~ablated, method + max_layer.astype(str)).rename("variant")


def field_table(results: Sequence[TrainResult], points, metric: bool = True) -> pd.DataFrame:
    """Fields of 2-D models at points (N, 2), one row per model × point: settings, x1, x2, margin = F_1 − F_0 (its
    zero set is the decision boundary) and, with metric=True (2-D one-hidden-layer nets, closed form of SPEC §5,
    float64), log_volume = ln √det g and lambda_max = λ_max(g), where g is the metric of Φ = φ(Wx + b)/√n, i.e.
    g = (1/n) Σ_j φ′(z_j)² w_j w_jᵀ: det g carries the 1/n² of that width normalisation."""
    import copy

    from . import geometry

    points = torch.as_tensor(points).to(torch.float64).reshape(-1, 2)
    frames = []
    for r in results:
        model = copy.deepcopy(r.model).double().eval()
        cols = {"x1": points[:, 0].numpy(), "x2": points[:, 1].numpy(),
                "margin": geometry.decision_function_grid(model, points).numpy()}
        if metric:
            with np.errstate(divide="ignore"):
                cols["log_volume"] = np.log(geometry.volume_element_2d(model, points).numpy())
            cols["lambda_max"] = geometry.lambda_max_2d(model, points).numpy()
        frames.append(pd.DataFrame({**settings(r.config), **cols}))
    return pd.concat(frames, ignore_index=True)


def grid_table(results: Sequence[TrainResult], lim: float = 3.5, n: int = 40, metric: bool = True) -> pd.DataFrame:
    """`field_table` on the n×n grid over [−lim, lim]², in `geometry.grid_2d` order (a column reshapes to (n, n) per
    model): the data of the decision-boundary and metric maps (Fig 3)."""
    from . import geometry

    return field_table(results, geometry.grid_2d(lim, n, dtype=torch.float64)[2], metric=metric)


# The claims table (paired statistics, verdicts) lives in `repspec_utils.claims`.


# ------------------------------------------------------------------- MNIST-family figures (Figs 4, 5; App. C–G)
def _rows_of(table: pd.DataFrame, cfg: TrainConfig) -> np.ndarray:
    """Boolean mask of the rows of a tidy table that belong to the model of `cfg` (its setting columns)."""
    mask = np.ones(len(table), dtype=bool)
    for col, value in settings(cfg).items():
        if col in table.columns:
            mask &= (table[col] == value).to_numpy()
    return mask


def attacked_predictions(results: Sequence[TrainResult], table: pd.DataFrame) -> np.ndarray:
    """The class each attacked model (original or re-fitted readout, per the table's `readout`) predicts for each
    row's clean test sample, aligned with the rows of a `robustness_table`: (rows,) int. Equal to `label` where
    only correctly classified samples were attacked."""
    from .evaluate import predict

    pred = np.full(len(table), -1, dtype=np.int64)
    data: dict[str, tuple] = {}
    for r in results:
        data_key = cache.make_key(d=r.config.dataset, n=r.config.n_train, s=r.config.data_seed, k=r.config.data_kwargs)
        if data_key not in data:
            data[data_key] = load_training_data(r.config)
        train_ds, test_ds = data[data_key]
        for readout in table["readout"].unique():
            mask = _rows_of(table, r.config) & (table["readout"] == readout).to_numpy()
            if not mask.any():
                continue
            model = refit_cached(r, train_ds, test_ds)[0] if readout == "refit" else r.model.eval()
            idx = torch.as_tensor(table.loc[mask, "index"].to_numpy(dtype=np.int64, copy=True))
            pred[mask] = predict(model, test_ds.x[idx]).cpu().numpy()
    return pred


def history_table(results: Sequence[TrainResult]) -> pd.DataFrame:
    """The per-epoch training histories of `results` (phase, train_loss, train_acc, test_acc where evaluated,
    penalty, sigma_<l> = σ_max of weight layer l with the readout last, epoch_time), one row per model × epoch with
    the model's settings: the data of the training curves."""
    return pd.concat([r.history.assign(**settings(r.config)) for r in results], ignore_index=True)


def sigma_trace(cfg: TrainConfig, n_steps: int, model: torch.nn.Module | None = None,
                device: str | torch.device = "cpu") -> pd.DataFrame:
    """σ_max of the penalised Linear layers (MLPs) along `n_steps` minibatch steps of cfg's spectral training (SPEC §2): the
    persistent power-iteration estimate ‖W v‖ that enters the loss (cfg.n_power_iter steps per minibatch, v warm-
    started by a converged run) next to the exact ‖W‖₂ = torch.linalg.matrix_norm(W, 2), both at the weights the
    step sees. Starts from a copy of `model` (e.g. a trained None model, as at the burn-in branch point) or cfg's
    initial model, with a fresh SGD (cfg.lr, momentum, weight decay) and λ·Σσ² on every step. One row per step ×
    layer: step, epoch, layer (index among the penalised layers), shape, sigma_power, sigma_exact, rel_error."""
    import copy
    import math

    from .spectral import linear_sigma_exact
    from .train import epoch_generator, make_model, make_optimizer, make_penalty, resolve_device, supervised_loss

    if cfg.method not in ("ll", "rep"):
        raise ValueError(f"sigma_trace needs a spectral method ('ll' or 'rep'), got {cfg.method!r}")
    device = resolve_device(device)
    train_ds, _ = load_training_data(cfg)
    model = (copy.deepcopy(model) if model is not None else make_model(cfg, train_ds)).to(device).train()
    x_all, y_all = train_ds.x.to(device), train_ds.y.to(device)
    penalty = make_penalty(cfg, model, x_all[:2])
    opt = make_optimizer(cfg, model)
    n, bs = len(train_ds), cfg.batch_size
    rows, step, epoch = [], 0, 0
    start = time.perf_counter()
    while step < n_steps:
        perm = torch.randperm(n, generator=epoch_generator(cfg.seed, epoch)).to(device)
        for i in range(math.ceil(n / bs)):
            if step >= n_steps:
                break
            idx = perm[i * bs : (i + 1) * bs]
            loss, _, _ = supervised_loss(model, x_all[idx], y_all[idx], None)
            reg = penalty.penalty()  # advances the persistent vectors by n_power_iter steps
            with torch.no_grad():
                est = penalty.sigmas()
                for l, layer in enumerate(penalty.layers):
                    W = layer.weight.detach()
                    exact = linear_sigma_exact(W.flatten(1)).item()
                    rows.append({"step": step, "epoch": epoch, "layer": l, "shape": "×".join(map(str, W.shape)),
                                 "sigma_power": est[l].item(), "sigma_exact": exact,
                                 "rel_error": (exact - est[l].item()) / exact})
            opt.zero_grad(set_to_none=True)
            (loss + cfg.lam * reg).backward()
            opt.step()
            step += 1
        epoch += 1
    cache.note_compute("sigma-trace", f"{cfg}|{n_steps}", time.perf_counter() - start)
    return pd.DataFrame(rows).assign(**settings(cfg), n_power_iter=cfg.n_power_iter)


def conv_sigma_table(shapes: Sequence[Sequence[int]], seed: int = 0, dense_max: int = 2048) -> pd.DataFrame:
    """σ_max of random circular-padded convs (weights N(0, 1/fan_in)) by the exact FFT/polyphase path and by the
    converged power-iteration path (`spectral.conv_sigma`), and, when c_in·h·w ≤ dense_max, by the SVD of the
    conv's explicit matrix. shapes: (c_in, c_out, k, stride, h) each (input h×h, padding k//2). One row per shape
    with both σ, their relative difference and the seconds each took."""
    import math

    from .spectral import conv_sigma

    rows = []
    gen = torch.Generator().manual_seed(seed)
    for c_in, c_out, k, stride, h in shapes:
        conv = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False, padding_mode="circular")
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / math.sqrt(c_in * k * k))
        t0 = time.perf_counter()
        exact = conv_sigma(conv, (h, h), exact=True).item()
        t1 = time.perf_counter()
        power = conv_sigma(conv, (h, h), exact=False).item()
        t2 = time.perf_counter()
        dense = float("nan")
        if c_in * h * h <= dense_max:
            with torch.no_grad():
                basis = torch.eye(c_in * h * h).reshape(-1, c_in, h, h)
                dense = torch.linalg.matrix_norm(conv(basis).flatten(1).T.double(), ord=2).item()
        rows.append({"c_in": c_in, "c_out": c_out, "kernel": k, "stride": stride, "input": f"{h}×{h}",
                     "sigma_exact": exact, "sigma_power": power, "rel_error": (exact - power) / exact,
                     "sigma_dense": dense, "seconds_exact": t1 - t0, "seconds_power": t2 - t1})
    return pd.DataFrame(rows)


def digit_indices(test_ds, digits: Sequence[int] = (7, 6, 1)) -> list[int]:
    """Index of the first test sample of each class in `digits` (the three digits of the metric plane, SPEC §5)."""
    out = []
    for c in digits:
        hits = (test_ds.y == int(c)).nonzero()
        if hits.numel() == 0:
            raise ValueError(f"no test sample of class {c}")
        out.append(int(hits[0, 0]))
    return out


def metric_plane_table(results: Sequence[TrainResult], digits: Sequence[int] = (7, 6, 1), n: int = 40,
                       n_edge: int = 40, lim: float = 1.0) -> pd.DataFrame:
    """The pull-back metric of Φ on the plane through three test digits (SPEC §5) for every model: λ_max(g) and
    log √det g (float64; `geometry.mlp_metric_stats` for MLPs, autograd otherwise) at the n×n grid on [−lim, lim]²
    (part 'grid', in `geometry.grid_2d` order) and at n_edge points along each edge x1→x2→x3→x1 of the digit
    triangle (part 'edge', position ∈ [0, 3] along the perimeter), with the predicted class of each point.
    One row per model × point: settings, part, a, b, position, lambda_max, log_volume, pred."""
    from . import geometry
    from .evaluate import predict
    from .models import MLP

    frames = []
    for r in results:
        _, test_ds = load_training_data(r.config)
        idx = digit_indices(test_ds, digits)
        x1, x2, x3 = (test_ds.x[i] for i in idx)
        plane = geometry.digit_plane(x1, x2, x3, n=n, lim=lim)
        edges = geometry.triangle_edges(x1, x2, x3, n=n_edge)
        model = r.model.eval()
        start = time.perf_counter()
        for part, coords, points, position in (("grid", plane.coords, plane.points, np.full(n * n, np.nan)),
                                               ("edge", edges.coords, edges.points, edges.position.numpy())):
            stats = geometry.mlp_metric_stats if isinstance(model, MLP) else geometry.metric_stats
            lam, logvol = stats(model, points)
            frames.append(pd.DataFrame({
                **settings(r.config), "part": part, "a": coords[:, 0].numpy(), "b": coords[:, 1].numpy(),
                "position": position, "lambda_max": lam.numpy(), "log_volume": logvol.numpy(),
                "pred": predict(model, points).cpu().numpy(), "digits": "-".join(map(str, digits)),
                "digit_index": "-".join(map(str, idx))}))
        cache.note_compute("metric", f"{r.config}|{digits}|{n}|{n_edge}|{lim}", time.perf_counter() - start)
    return pd.concat(frames, ignore_index=True)


def metric_plane_summary(plane: pd.DataFrame) -> pd.DataFrame:
    """Per method (mean over seeds) the numbers behind claim 3 from a `metric_plane_table`: lambda_max_mean_plane
    (mean λ_max(g) over the grid), lambda_max_peak_edges and log_volume_peak_edges (largest λ_max(g) and
    log √det g along the triangle through the digits, i.e. near the data)."""
    keys = [c for c in SETTING_COLUMNS if c in plane.columns]
    grid, edge = plane[plane.part == "grid"], plane[plane.part == "edge"]
    per_model = pd.concat([
        grid.groupby(keys)["lambda_max"].mean().rename("lambda_max_mean_plane"),
        edge.groupby(keys)["lambda_max"].max().rename("lambda_max_peak_edges"),
        edge.groupby(keys)["log_volume"].max().rename("log_volume_peak_edges"),
    ], axis=1).reset_index()
    cols = ["lambda_max_mean_plane", "lambda_max_peak_edges", "log_volume_peak_edges"]
    out = per_model.groupby("method")[cols].mean()
    out["n_seeds"] = per_model.groupby("method").size()
    return out.reset_index()


# ------------------------------------------------------------------ ResNet18, Barlow Twins, transfer (Figs 6–8)
CIFAR_DATASETS = ("cifar10", "cifar10_synthetic")
_STRENGTH_SYMBOLS = {"alpha": "α", "beta": "β", "lam": "λ"}


def cifar_data(dataset: str = "cifar10", image_size: int = 32, n_train: int | None = None,
               n_test: int | None = None) -> dict:
    """TrainConfig fields (dataset, data_kwargs, n_train) that load CIFAR-10 ('cifar10', real) or its SYNTHETIC
    STAND-IN ('cifar10_synthetic') as images (N, 3, s, s) in [0, 1]: s = 32 is the data's own size, any other s is a
    bilinear resize (`transfer.get_transfer_data`, dataset name 'transfer_<dataset>'). n_train / n_test: seeded
    subsets (None or 0: all; for the synthetic data, how many images to generate, by default 5000 / 1000)."""
    if dataset not in CIFAR_DATASETS:
        raise ValueError(f"dataset must be one of {CIFAR_DATASETS}, got {dataset!r}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8 (ResNet18 halves it three times), got {image_size}")
    sizes = {k: int(v) for k, v in (("n_train", n_train), ("n_test", n_test)) if v}
    if int(image_size) != 32 or (dataset == "cifar10" and "n_test" in sizes):
        return {"dataset": f"transfer_{dataset}", "data_kwargs": {"image_size": int(image_size), **sizes}, "n_train": None}
    if dataset == "cifar10_synthetic":
        return {"dataset": dataset, "data_kwargs": sizes, "n_train": None}
    return {"dataset": dataset, "data_kwargs": {}, "n_train": sizes.get("n_train")}


def cifar_configs(dataset: str = "cifar10", methods=("none", "ll", "rep"), seeds=range(10), lam_rep: float = 0.01,
                  lam_ll: float = 0.005, max_layers=(None, 2), weight_decays=(0.0, 1e-4), epochs: int = 200,
                  burn_in: int = 160, lr: float = 0.01, batch_size: int = 1024, reg_every: int = 24,
                  image_size: int = 32, n_train: int | None = None, n_test: int | None = None) -> list[TrainConfig]:
    """SPEC §6 CIFAR-10 ResNet18 (3×3 stem, no max-pool, circular padding, normalisation inside the model):
    RandomCrop(32, pad 4) + flip, SGD lr 0.01 constant, batch 1024; ll-spectral λ = lam_ll, rep-spectral λ = lam_rep
    on the stem and residual stages 1..max_layer for each of max_layers (None: all four; 2: the paper's 2-stage
    variant), the penalty on every reg_every-th step plus one epoch-end step on λ·R alone. Data: `cifar_data`."""
    base = TrainConfig(model={"kind": "cifar_resnet18"}, augment="cifar", lr=lr, batch_size=batch_size, epochs=epochs,
                       burn_in=burn_in, reg_every=reg_every, reg_epoch_end_step=True, eval_every=max(1, epochs // 20),
                       **cifar_data(dataset, image_size, n_train, n_test))
    lams = {"none": 0.0, "ll": lam_ll, "rep": lam_rep}
    return [base.replace(method=m, lam=float(lams[m]), max_layer=None if ml is None else int(ml),
                         weight_decay=float(wd), seed=int(s))
            for wd in weight_decays for m in methods for ml in (max_layers if m == "rep" else [None]) for s in seeds]


def barlow_configs(dataset: str = "cifar10", lams=(0.01, 0.001), seeds=range(5), epochs: int = 1000,
                   burn_in: int = 900, lr: float = 0.01, batch_size: int = 1024, reg_every: int = 24,
                   weight_decay: float = 0.0, image_size: int = 32, n_train: int | None = None,
                   n_test: int | None = None) -> list[TrainConfig]:
    """SPEC §6 Barlow Twins on CIFAR-10: ResNet18 backbone (circular padding) + projector Linear 512→256 (no bias) +
    BatchNorm1d(affine=False), off-diagonal weight 0.005, the two Barlow views at the image size; SGD lr 0.01, batch
    1024. None, and rep-spectral on the backbone's convs for each λ in lams, every reg_every-th step plus the
    epoch-end step. The readout is refit downstream (`robustness_table(readout='refit')`). Data: `cifar_data`."""
    base = TrainConfig(model={"kind": "barlow_resnet18"}, objective="barlow", augment="barlow", lr=lr,
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
    at `standin_weights` (the offline TRANSFER STAND-IN); otherwise `transfer.transfer_config` (ResNet50, ImageNet
    weights, the task's recipe). Spectral methods regularise every reg_every-th step (None: the recipe; stand-in: 1)
    plus an epoch-end step, L2-SP and BSS every step. overrides: TrainConfig fields (epochs, burn_in, lr, ...) or
    stand-in arguments (n_per_class, n_test, target, source); a None value keeps the recipe's."""
    from . import transfer

    overrides = {k: v for k, v in overrides.items() if v is not None}
    variants = {"none": [("none", 0.0, {})], "ll": [("ll", lam, {}) for lam in spectral_lams],
                "rep": [("rep", lam, {}) for lam in spectral_lams], "bss": [("bss", lam, {}) for lam in bss_lams],
                "l2sp": [("l2sp", 1.0, {"alpha": float(a), "beta": float(l2sp_beta)}) for a in l2sp_alphas]}
    unknown = set(methods) - set(variants)
    if unknown:
        raise ValueError(f"unknown transfer methods {sorted(unknown)}; choose from {sorted(variants)}")
    if task == "standin" and standin_weights is None:
        raise ValueError("task 'standin' needs standin_weights: the path from transfer.pretrain_standin_backbone()")
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
                if task == "standin":
                    out.append(transfer.standin_finetune_config(standin_weights, method, float(lam), seed=int(s),
                                                                **{**overrides, **reg}))
                else:
                    out.append(transfer.transfer_config(task, method, float(lam), seed=int(s), **{**overrides, **reg}))
    return out


def strength_label(table: pd.DataFrame) -> pd.Series:
    """Each row's regularisation strength as text: 'λ=0.01' (BSS: 'η=0.01'), the method's kwargs for L2-SP
    ('α=0.1 β=0.01'), '' for None (or where the table has no lam column)."""
    lam = table["lam"] if "lam" in table.columns else pd.Series(0.0, index=table.index)
    kw = (table["method_kwargs"] if "method_kwargs" in table.columns else pd.Series("", index=table.index))
    kw = kw.astype(object).where(kw.notna(), "").astype(str)
    for name, symbol in _STRENGTH_SYMBOLS.items():
        kw = kw.str.replace(f"{name}=", f"{symbol}=", regex=False)
    out = kw.str.replace(", ", " ", regex=False)
    by_lam = (kw == "") & (table["method"] != "none") & (lam.astype(float) != 0)
    symbol = pd.Series(np.where(table["method"] == "bss", "η=", "λ="), index=table.index)
    out = out.where(~by_lam, symbol + lam.map(lambda v: f"{float(v):g}"))
    return out.rename("strength")


def method_setting(table: pd.DataFrame, strengths: str = "auto", unit: str = "stage") -> pd.Series:
    """Display key of each row's method with its layer ablation and strength (Figs 6–8): 'none', 'll', 'rep', with
    max_layer k ≥ 0 'rep_stages<k>' (rep-spectral on the stem and the first k residual stages, unit='stage') or, with
    unit='layer', 'rep<k>' as `method_variant`; then ' ' + `strength_label` where the method has more than one
    strength in the table (strengths='auto'), always ('always') or never ('never'). `plotting.method_label`,
    `method_color` and `method_order` read these keys ('rep_stages2 λ=0.01' -> 'rep-spectral (2 stages) λ=0.01')."""
    if strengths not in ("auto", "always", "never") or unit not in ("stage", "layer"):
        raise ValueError(f"strengths must be auto/always/never and unit stage/layer, got {strengths!r}, {unit!r}")
    method = table["method"].astype(str)
    max_layer = (table["max_layer"] if "max_layer" in table.columns else pd.Series(-1, index=table.index))
    max_layer = max_layer.fillna(-1).astype(int)
    ablated = (method == "rep") & (max_layer >= (0 if unit == "stage" else 1))
    key = method.where(~ablated, ("rep_stages" if unit == "stage" else "rep") + max_layer.astype(str))
    strength = strength_label(table)
    if strengths == "never":
        return key.rename("variant")
    show = strength != ""
    if strengths == "auto":
        show &= strength.groupby(method).transform("nunique") > 1
    return key.where(~show, key + " " + strength).rename("variant")
