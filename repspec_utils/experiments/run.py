"""The one place that runs a notebook's work: trains its models (through `recipes.train_all`), attacks, re-fits and
evaluates them (as executor jobs where configured, cached), and returns tidy tables (SPEC §4, §5): one row per
attacked sample, per model, per epoch or per grid point, with every setting of the model as a column."""

from __future__ import annotations

import copy
import math
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from repspec_utils.analysis.tables import (REFIT_READOUTS, SETTING_COLUMNS, DefenceTables, check_readout,
                                           defence_models, format_kwargs, pgd_column, seed_summary)
from repspec_utils.evaluation import bounds, geometry
from repspec_utils.evaluation.refit import REFIT_CONVENTIONS, REFIT_DEFAULT, refit_readout
from repspec_utils.evaluation.robustness import accuracy, evaluate_robustness, predict
from repspec_utils.evaluation.whitebox import whitebox_robustness
from repspec_utils.experiments.recipes import SMALL_DATASETS
from repspec_utils.infra import cache
from repspec_utils.infra.files import portable
from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method.penalties import make_penalty
from repspec_utils.method.spectral import conv_sigma, linear_sigma_exact
from repspec_utils.models.base import RefitModel
from repspec_utils.models.mlp import MLP
from repspec_utils.training.config import TrainConfig, TrainResult
from repspec_utils.training.loop import (epoch_generator, load_training_data, make_model, make_optimizer,
                                         resolve_device, torch_threads, train_step)


def settings(cfg: TrainConfig) -> dict:
    """The setting columns of a config (one row of a tidy table)."""
    widths = cfg.model.get("widths")
    width = "-".join(map(str, widths)) if widths else cfg.model["kind"]
    if cfg.model.get("batchnorm"):  # BatchNorm on the hidden pre-activations: another architecture
        width += " BN"
    if cfg.model.get("init", "normal") != "normal":  # a non-default init is a different model: its own column value
        width += f" ({cfg.model['init']} init)"
    return {"dataset": cfg.dataset, "width": width,
            "method": cfg.method, "lam": cfg.lam, "weight_decay": cfg.weight_decay, "seed": cfg.seed,
            "max_layer": -1 if cfg.max_layer is None else cfg.max_layer, "epochs": cfg.epochs,
            "burn_in": cfg.burn_in,
            **({"method_kwargs": format_kwargs(cfg.method_kwargs)} if cfg.method_kwargs else {})}


def _refit_entry(model_key, convention: str):
    """The cache key and path of a model's re-fitted readout (`refit_cached`)."""
    key = cache.make_key(kind='refit', model=model_key, convention=convention,
                         settings=REFIT_CONVENTIONS[convention])
    return key, cache.cache_root() / "refit" / f"{key}.pt"


def refit_cached(result: TrainResult, train_ds, test_ds, convention: str = REFIT_DEFAULT):
    """`evaluation.refit.refit_readout` of a trained model, its fitted readout cached by the model's key and the convention:
    (model, acc). The fit runs with single-threaded BLAS: on a busy 2-core machine OpenBLAS threads spin (measured:
    a 2000×256 fit 2.3 s instead of 0.05 s; one 60000×2000 gradient 0.62 s instead of 0.43 s)."""
    from threadpoolctl import threadpool_limits

    key, path = _refit_entry(result.key, convention)
    stored = cache.load(path)
    if stored is None:
        t0 = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            refit, acc = refit_readout(result.model, train_ds, test_ds, convention=convention)
        seconds = time.perf_counter() - t0
        cache.save({"readout": refit.readout.state_dict(), "acc": acc, "seconds": seconds}, path)
        cache.note_compute("refit", key, seconds)
        return refit, acc
    cache.note_compute("refit", key, stored["seconds"])
    readout = torch.nn.Linear(stored["readout"]["weight"].shape[1], stored["readout"]["weight"].shape[0])
    readout.load_state_dict(stored["readout"])
    return RefitModel(copy.deepcopy(result.model), readout).eval(), stored["acc"]


def _readout_key(r: TrainResult, readout: str) -> dict:
    """The model part of an evaluation's cache key: the trained model's key, and the re-fit convention if any."""
    return {"train": r.key} if readout == "original" else {"train": r.key, "refit": REFIT_READOUTS[readout]}


def _with_readout(r: TrainResult, readout: str):
    """(test set, model, cache key, test accuracy) of a trained model with its own ('original') or a re-fitted
    ('refit' / 'refit_scaled', cached) readout: what every evaluation table attacks."""
    train_ds, test_ds = load_training_data(r.config)
    if readout != "original":
        model, acc = refit_cached(r, train_ds, test_ds, REFIT_READOUTS[check_readout(readout)])
        return test_ds, model, _readout_key(r, readout), acc
    model = r.model.eval()
    return test_ds, model, _readout_key(r, readout), accuracy(model, test_ds)


def _attack_job(cfg: TrainConfig, kwargs: dict) -> int:
    """One attack job of an executor: the model of cfg from the cache (through `recipes.train_all`, so that the small
    2-D nets come from the batched engine's cache, as in the notebook), its attack table into the cache."""
    from repspec_utils.experiments.recipes import train_all

    return len(robustness_table(train_all([cfg], progress=False, executor="inline"), **{**kwargs, "executor": "inline"}))


def _cached_readout_key(r: TrainResult, readout: str, test_ds, need_acc: bool = True):
    """(cache key, test accuracy) of a model with the given readout without computing anything expensive: None for
    a re-fit not cached yet; the accuracy of the original readout is computed only with need_acc."""
    if readout != "original":
        stored = cache.load(_refit_entry(r.key, REFIT_READOUTS[check_readout(readout)])[1])
        return None if stored is None else (_readout_key(r, readout), stored["acc"])
    return _readout_key(r, readout), accuracy(r.model.eval(), test_ds) if need_acc else None


def _attack_cached(r: TrainResult, n, attack, attack_kwargs, seed, readout, precision) -> bool:
    """Whether the attack table of one model (and readout) is in the cache already (a re-fit not yet cached: no)."""
    from repspec_utils.evaluation.robustness import attack_is_cached

    _, test_ds = load_training_data(r.config)
    found = _cached_readout_key(r, readout, test_ds)
    if found is None:
        return False
    key, acc = found
    n_attack = int(round(acc * len(test_ds))) if n is None else int(n)
    return n_attack > 0 and attack_is_cached(key, test_ds, n_attack, seed, attack, attack_kwargs, precision)


def _submit_uncached(results: Sequence[TrainResult], is_cached, job, kwargs: dict, what: str, readout: str,
                     executor: str | None, max_workers: int | None, progress: bool | None, desc: str) -> None:
    """Check the executor and max_workers; on any executor but inline, `job(cfg, kwargs)` as one job per model whose
    result `is_cached` says is not in the cache yet (the caller then reads every result from the cache)."""
    from repspec_utils.infra.executor import Job, check_max_workers, resolve_executor, run_jobs

    name = resolve_executor(executor)
    check_max_workers(max_workers)
    if name == "inline":
        return
    todo = [r for r in results if not is_cached(r)]
    if todo:
        run_jobs([Job(f"{what} {r.config.method} seed {r.config.seed} ({readout})", job, (r.config, kwargs))
                  for r in todo], name, max_workers, progress=progress, desc=desc)


def robustness_table(results: Sequence[TrainResult], n: int | None = None, attack: str = "tangent",
                     attack_kwargs: dict | None = None, seed: int = 0, readout: str = "original",
                     progress: bool | None = None, precision: str = "fp32", certify: bool = True,
                     executor: str | None = None, max_workers: int | None = None) -> pd.DataFrame:
    """Attack every model (cached): one row per attacked sample with the model's settings, test accuracy,
    data source and the attack's output. n=None attacks every correctly classified test sample (XOR); an n larger
    than a model's number of correctly classified samples is a ValueError saying how many there are;
    readout='refit' first re-trains the readout on frozen Φ (SPEC §4); certify: the certified_radius column
    (`evaluation.robustness.evaluate_robustness`)."""
    check_readout(readout)
    # one job per model not cached yet; the loop below then reads every table from the cache
    _submit_uncached(results, lambda r: _attack_cached(r, n, attack, attack_kwargs, seed, readout, precision),
                     _attack_job, dict(n=n, attack=attack, attack_kwargs=attack_kwargs, seed=seed, readout=readout,
                                       progress=False, precision=precision, certify=False),
                     "attack", readout, executor, max_workers, progress, desc="attacks")
    rows = []
    for r in results:
        test_ds, model, key, acc = _with_readout(r, readout)
        n_correct = int(round(acc * len(test_ds)))
        n_attack = n_correct if n is None else int(n)
        if n_attack > n_correct:  # never fewer than asked without a word (issue 12 item 4)
            raise ValueError(f"asked to attack n={n_attack} samples of the {readout} {r.config.dataset} "
                             f"{r.config.method} seed {r.config.seed} model, but only {n_correct} of its "
                             f"{len(test_ds)} test samples are correctly classified; pass n=None (or a notebook's "
                             f"n_attack 0 where it means all) to attack every correctly classified one")
        with torch_threads(1 if r.config.dataset in SMALL_DATASETS else None):  # tiny nets: one thread is faster
            table = evaluate_robustness(model, test_ds, n_attack, seed=seed, attack=attack,
                                        attack_kwargs=attack_kwargs, cache_key=key,
                                        progress=cache.progress_enabled(progress), precision=precision,
                                        certify=certify)
        # no timing columns: a rerun from a fresh cache writes byte-identical tables; the times of training and
        # attacks go to the manifest and footer through the compute ledger (cache.note_compute)
        info = {**settings(r.config), "readout": readout, "test_acc": acc, "n_attacked": n_attack,
                "data_source": portable(r.data_source)}
        rows.append(table.assign(**info))
    return pd.concat(rows, ignore_index=True)


def _whitebox_cached(r: TrainResult, kwargs: dict) -> bool:
    """Whether the white-box values of one model (and readout) are in the cache already (a re-fit not yet cached:
    no)."""
    from repspec_utils.evaluation.whitebox import whitebox_is_cached

    _, test_ds = load_training_data(r.config)
    found = _cached_readout_key(r, kwargs["readout"], test_ds, need_acc=False)
    if found is None:
        return False
    key = found[0]
    rest = {k: v for k, v in kwargs.items() if k != "readout"}
    return whitebox_is_cached(key, test_ds, **rest)


def _whitebox_job(cfg: TrainConfig, kwargs: dict) -> int:
    """One white-box job of an executor: the model of cfg from the cache, its values into the cache."""
    from repspec_utils.experiments.recipes import train_all

    return len(whitebox_table(train_all([cfg], progress=False, executor="inline"), **kwargs, executor="inline"))


def whitebox_table(results: Sequence[TrainResult], eps: Sequence[float], n: int, readout: str = "original",
                   pgd_steps: int = 40, autoattack_eps: float | None = None, autoattack_n: int | None = None,
                   seed: int = 0, progress: bool | None = None, executor: str | None = None,
                   max_workers: int | None = None) -> pd.DataFrame:
    """White-box robust accuracy of every model (cached, `evaluation.whitebox.whitebox_robustness`): one row per model with
    its settings, readout, test accuracy, `pgd_acc_eps=<ε>` per ε, `autoattack_acc` (with `autoattack_eps`) and
    n_eval. readout='refit': the readout re-trained on frozen Φ first (as `robustness_table`). On an executor
    other than inline, the models whose values are not cached yet are evaluated as one job each (as the attacks
    of `robustness_table`), then every row is read from the cache."""
    check_readout(readout)
    kwargs = dict(eps=list(eps), n=n, readout=readout, pgd_steps=pgd_steps, autoattack_eps=autoattack_eps,
                  autoattack_n=autoattack_n, seed=seed)
    _submit_uncached(results, lambda r: _whitebox_cached(r, kwargs), _whitebox_job, kwargs, "white-box", readout,
                     executor, max_workers, progress, desc="white-box")
    rows = []
    for r in results:
        test_ds, model, key, acc = _with_readout(r, readout)
        out = whitebox_robustness(model, test_ds, list(eps), n, seed=seed, pgd_steps=pgd_steps,
                                  autoattack_eps=autoattack_eps, autoattack_n=autoattack_n, cache_key=key)
        rows.append({**settings(r.config), "readout": readout, "test_acc": acc,
                     **{k: v for k, v in out.items() if k != "seconds"}})
    return pd.DataFrame(rows)


def epoch_times(results: Sequence[TrainResult], baseline: str = "none") -> pd.DataFrame:
    """Training time per epoch of each model's method branch (the mean over its branch epochs, from the
    history), and its ratio to the `baseline` method's model of the same seed: one row per model. A timing
    table, kept apart from the result tables so that those stay byte-identical across reruns."""
    rows = []
    for r in results:
        h = r.history
        branch = h[h["phase"] != "burn-in"] if "phase" in h else h
        rows.append({**settings(r.config), "epoch_seconds": float(branch["epoch_time"].mean())})
    table = pd.DataFrame(rows)
    base = table[table["method"] == baseline].set_index("seed")["epoch_seconds"]
    table["epoch_time_vs_" + baseline] = table["epoch_seconds"] / table["seed"].map(base)
    return table


def defence_comparison(results: Sequence[TrainResult], n_attack: int, eval_eps: Sequence[float], n_eval: int,
                       attack_kwargs: dict | None = None, fmn_steps: int = 200, pgd_steps: int = 40,
                       autoattack_eps: float | None = None, n_autoattack: int = 0, precision: str = "fp32",
                       readouts: Sequence[str] = ("original", "refit")) -> DefenceTables:
    """Every evaluation of the defence comparison (issue 13) for each model and readout (cached): the Tangent
    Attack (`attack_kwargs`) and FMN (`fmn_steps`) on the same `n_attack` correctly classified test images, PGD
    robust accuracy at every ε of `eval_eps` (`pgd_steps` steps) on `n_eval` seeded test images, AutoAttack at
    `autoattack_eps` on the first `n_autoattack` of them (0: none), and the epoch times; the same tables for
    MNIST MLPs and CIFAR ResNets."""
    for readout in readouts:
        check_readout(readout, "readouts")
    if n_autoattack and autoattack_eps is None:
        raise ValueError("n_autoattack > 0 needs autoattack_eps (the training ε)")
    attacked, whitebox = [], []
    for readout in readouts:
        attacked.append(robustness_table(results, n=n_attack, attack_kwargs=attack_kwargs, readout=readout,
                                         precision=precision))
        attacked.append(robustness_table(results, n=n_attack, attack="fmn", attack_kwargs={"steps": int(fmn_steps)},
                                         readout=readout, certify=False))
        whitebox.append(whitebox_table(results, eval_eps, n_eval, readout=readout, pgd_steps=pgd_steps,
                                       autoattack_eps=autoattack_eps if n_autoattack else None,
                                       autoattack_n=n_autoattack or None))
    samples = pd.concat(attacked, ignore_index=True)
    models = defence_models(samples, pd.concat(whitebox, ignore_index=True))
    pgd_cols = [pgd_column(e) for e in eval_eps]
    values = ["test_acc", "ta_mean_distance", "fmn_mean_distance", *pgd_cols,
              *(["autoattack_acc"] if n_autoattack else [])]
    return DefenceTables(samples, models, seed_summary(models, values=values), epoch_times(results), values,
                         pgd_cols)


def field_table(results: Sequence[TrainResult], points, metric: bool = True) -> pd.DataFrame:
    """Fields of 2-D models at points (N, 2), one row per model × point: settings, x1, x2, margin = F_1 − F_0 (its
    zero set is the decision boundary) and, with metric=True (2-D one-hidden-layer nets, closed form of SPEC §5,
    float64), log_volume = ln √det g and lambda_max = λ_max(g), where g is the metric of Φ = φ(Wx + b)/√n, i.e.
    g = (1/n) Σ_j φ′(z_j)² w_j w_jᵀ: det g carries the 1/n² of that width normalisation."""
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
    return field_table(results, geometry.grid_2d(lim, n, dtype=torch.float64)[2], metric=metric)


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
            model = (r.model.eval() if readout == "original"
                     else refit_cached(r, train_ds, test_ds, REFIT_READOUTS[check_readout(readout)])[0])
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
            with torch.no_grad():
                exact = [linear_sigma_exact(layer.weight.detach().flatten(1)).item() for layer in penalty.layers]
            train_step(model, opt, OBJECTIVES["supervised"], x_all[idx], y_all[idx], None, penalty, cfg.lam)
            est = penalty.last_sigmas()  # ‖W v‖ of this step, v advanced by n_power_iter steps at these weights
            for l, layer in enumerate(penalty.layers):
                rows.append({"step": step, "epoch": epoch, "layer": l,
                             "shape": "×".join(map(str, layer.weight.shape)), "sigma_power": est[l].item(),
                             "sigma_exact": exact[l], "rel_error": (exact[l] - est[l].item()) / exact[l]})
            step += 1
        epoch += 1
    cache.note_compute("sigma-trace", f"{cfg}|{n_steps}", time.perf_counter() - start)
    return pd.DataFrame(rows).assign(**settings(cfg), n_power_iter=cfg.n_power_iter)


def conv_sigma_table(shapes: Sequence[Sequence[int]], seed: int = 0, dense_max: int = 2048) -> pd.DataFrame:
    """σ_max of random circular-padded convs (weights N(0, 1/fan_in)) by the exact FFT/polyphase path and by the
    converged power-iteration path (`spectral.conv_sigma`), and, when c_in·h·w ≤ dense_max, by the SVD of the
    conv's explicit matrix. shapes: (c_in, c_out, k, stride, h) each (input h×h, padding k//2). One row per shape
    with both σ, their relative difference and the seconds each took."""
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
            stats = (geometry.mlp_metric_stats if isinstance(model, MLP) and not model.batchnorm
                     else geometry.metric_stats)
            lam, logvol = stats(model, points)
            frames.append(pd.DataFrame({
                **settings(r.config), "part": part, "a": coords[:, 0].numpy(), "b": coords[:, 1].numpy(),
                "position": position, "lambda_max": lam.numpy(), "log_volume": logvol.numpy(),
                "pred": predict(model, points).cpu().numpy(), "digits": "-".join(map(str, digits)),
                "digit_index": "-".join(map(str, idx))}))
        cache.note_compute("metric", f"{r.config}|{digits}|{n}|{n_edge}|{lim}", time.perf_counter() - start)
    return pd.concat(frames, ignore_index=True)


SANDWICH_ATTACKS = {"ta": "tangent", "fmn": "fmn"}


def sandwich_table(results: Sequence[TrainResult], n: int | None = None, attack_kwargs: dict | None = None,
                   fmn_kwargs: dict | None = None, seed: int = 0, readout: str = "original",
                   progress: bool | None = None) -> pd.DataFrame:
    """Per attacked sample of one-hidden-layer MLPs, the certified lower bounds beside the attacks' upper bounds on
    Δx (issue 15): certified_global ≤ certified_radius (local) ≤ Δx ≤ fmn_distance (white box), ta_distance (hard
    label). The Tangent Attack and FMN run through `robustness_table` (cached) on the same samples (the same seeded
    selection; the local certificate is computed once, with the first); one row per model × sample with the
    model's settings, label, test_acc, data_source and the five columns above, plus each attack's success."""
    parts = {}
    for short, attack in SANDWICH_ATTACKS.items():
        kwargs = attack_kwargs if attack == "tangent" else fmn_kwargs
        parts[short] = robustness_table(results, n=n, attack=attack, attack_kwargs=kwargs, seed=seed,
                                        readout=readout, progress=progress, certify=attack == "tangent")
    keys = [c for c in [*SETTING_COLUMNS, "readout", "index"] if c in parts["ta"].columns]
    out = parts["ta"][[*keys, "label", "test_acc", "n_attacked", "data_source", "certified_radius", "distance",
                       "success"]].rename(columns={"distance": "ta_distance", "success": "ta_success"})
    fmn = parts["fmn"][[*keys, "distance", "success"]].rename(columns={"distance": "fmn_distance",
                                                                       "success": "fmn_success"})
    out = out.merge(fmn, on=keys, how="outer", validate="one_to_one")
    out["certified_global"] = np.nan
    for r in results:
        mask = _rows_of(out, r.config) & (out["readout"] == readout).to_numpy()
        if not mask.any() or not bounds.supports(r.model):
            continue
        train_ds, test_ds = load_training_data(r.config)
        model = (r.model if readout == "original"
                 else refit_cached(r, train_ds, test_ds, REFIT_READOUTS[check_readout(readout)])[0])
        idx = torch.as_tensor(out.loc[mask, "index"].to_numpy(dtype=np.int64, copy=True))
        out.loc[mask, "certified_global"] = bounds.certified_radius(model, test_ds.x[idx], test_ds.y[idx],
                                                                    method="global").numpy()
    return out


def first_epoch_accuracy(results: Sequence[TrainResult]) -> dict[str, float]:
    """Test accuracy after the first epoch, per seed (of each seed's None model, which every branch shares): a
    check that the model is the authors' (≈ 0.65 at the paper's MNIST recipe vs ≈ 0.11 for the earlier variant).
    Seeds without a recorded epoch-1 accuracy are left out."""
    out = {}
    for r in results:
        if r.config.method != "none" or "test_acc" not in r.history:
            continue
        row = r.history[(r.history["epoch"] == 1) & r.history["test_acc"].notna()]
        if len(row):
            out[str(r.config.seed)] = float(row["test_acc"].iloc[0])
    return out


def metric_summary(results: Sequence[TrainResult], points, lim: float = 3.5, n: int = 40) -> pd.DataFrame:
    """Claim 3's numbers per model (one row per method × seed × setting): the peak of λ_max(g) and of ln √det g on
    the n×n grid over [−lim, lim]², and their means at `points` (the training points) — the columns `summary.csv`
    of Fig 3 has had, now per seed so that methods can be compared paired by seed."""
    rows = []
    for r in results:
        grid = grid_table([r], lim=lim, n=n)
        at = field_table([r], points)
        rows.append({**settings(r.config), "max_lambda_max": float(grid.lambda_max.max()),
                     "max_log_volume": float(grid.log_volume.max()),
                     "mean_lambda_max_at_data": float(at.lambda_max.mean()),
                     "mean_log_volume_at_data": float(at.log_volume.mean())})
    return pd.DataFrame(rows)
