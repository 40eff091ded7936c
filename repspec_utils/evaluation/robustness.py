"""Evaluation: test accuracy and adversarial distance tables (SPEC §4).

- `accuracy` / `predict` / `features` (from `models.base`): on the full set, batched, no grad, model in eval mode.
- `evaluate_robustness`: the first n correctly classified test samples after a seeded shuffle are attacked
  (box from the dataset); one row per sample: index, label, distance, queries, success, attack. Cached
  under a content key when the caller describes the model (`cache_key`).
(Re-fitted readouts: `evaluation.refit`; white-box robust accuracy: `evaluation.whitebox`.)"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from repspec_utils import attacks as _attacks
from repspec_utils.attacks import resolve_attack
from repspec_utils.attacks.base import check_box, check_budget, check_inputs, eval_mode
from repspec_utils.evaluation import bounds
from repspec_utils.infra import cache
from repspec_utils.models.base import (accuracy, features, model_device, model_float_dtype,  # noqa: F401 (re-exported)
                                       predict)

# Bump when a change to the attacks alters the tables they produce (it is part of every cache key).
ATTACK_TABLE_VERSION = 2  # 2: per-sample start draws, several fallback candidates (issue 12 item 11)


COLUMNS = ["index", "label", "distance", "queries", "success", "attack"]


# added after the attack, never cached: the certified radius of one-hidden-layer MLPs (bounds.certified_radius)
CERTIFIED = "certified_radius"


def check_model_output(model: nn.Module, x: Tensor) -> int:
    """One call on the first (up to) 2 rows of x; ValueError unless the output is logits (batch, classes ≥ 2).
    Returns the number of classes. (A shape check, not a query of any attack.)"""
    probe = x[:2]
    with torch.no_grad(), eval_mode(model):
        out = model(probe.to(model_device(model), model_float_dtype(model)))
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != probe.shape[0] or out.shape[1] < 2:
        raise ValueError(f"the model must map a batch {tuple(probe.shape)} to logits (batch, classes >= 2); "
                         f"it returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
    return int(out.shape[1])


def select_correct(model: nn.Module, ds, n: int, seed: int = 0, batch_size: int | None = None,
                   correct: Tensor | None = None) -> Tensor:
    """Indices (n,) of the first n correctly classified samples of ds after a seeded shuffle (torch.Generator);
    ValueError if fewer than n are correctly classified. `correct` (N,) bool skips the predictions."""
    if correct is None:
        correct = predict(model, ds.x, batch_size).cpu() == ds.y.cpu()
    perm = torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(int(seed)))
    chosen = perm[correct[perm]]
    if n > chosen.numel():
        raise ValueError(f"asked to attack n={n} samples but only {chosen.numel()} of {len(ds.y)} test samples "
                         f"are correctly classified")
    return chosen[:n]


ATTACK_CHUNK = 200  # samples per resumable piece of a cached attack (n ≤ this: one piece, as before chunking)


def _chunk_seed(seed: int, chunk: int) -> int:
    """The attack seed of piece `chunk` (piece 0 keeps the table's seed, so n ≤ ATTACK_CHUNK is unchanged)."""
    return int(seed) + 1_000_003 * int(chunk)


def dataset_identity(ds) -> str | None:
    """The content fingerprint of an ArrayDataset (`ArrayDataset.identity`), None for other dataset types."""
    return getattr(ds, "identity", None)


def _attack_key(cache_key: dict, name: str, kwargs: dict, n: int, seed: int, test_ds, chunk: int):
    pieces = {"chunk": chunk} if n > chunk else {}  # one piece: the key (and the result) as before chunking
    key = cache.make_key(kind="attack", model=cache_key, attack=name, kwargs=kwargs, n=n, seed=seed,
                         data=[getattr(test_ds, "name", None), len(test_ds.y), dataset_identity(test_ds)],
                         version=ATTACK_TABLE_VERSION, **pieces)
    return key, cache.cache_root() / "attacks" / f"{key}.pt"


def _cached_prefix(cache_key: dict, name: str, kwargs: dict, n: int, seed: int, test_ds, chunk: int) -> list[dict]:
    """The pieces of the largest cached table of the same attack on the same model with fewer samples, a whole
    number of pieces (n' = k·chunk < n): its first k pieces are the first k pieces of this one (the first n correct
    samples after the seeded shuffle begin with the first n'; piece c has seed `_chunk_seed(seed, c)` at any n), so
    raising n (200 → 1000 samples per model) attacks only the new samples. Each piece's seconds are its share of the
    stored table's."""
    for k in range((n - 1) // chunk, 0, -1):
        stored = cache.load(_attack_key(cache_key, name, kwargs, k * chunk, seed, test_ds, chunk)[1])
        if stored is not None:
            share = float(stored["seconds"]) / k
            return [{**{col: list(stored[col][c * chunk:(c + 1) * chunk])
                        for col in ("index", "label", "distance", "queries", "success")}, "seconds": share}
                    for c in range(k)]
    return []


def attack_is_cached(cache_key: dict, test_ds, n: int, seed: int = 0, attack: str = "tangent",
                     attack_kwargs: dict | None = None, precision: str = "fp32", chunk: int = ATTACK_CHUNK) -> bool:
    """Whether `evaluate_robustness` with these arguments would load its table from the cache (the executor submits
    only the attacks that are not)."""
    kwargs = dict(attack_kwargs or {})
    if precision != "fp32":
        kwargs["precision"] = precision
    kwargs.setdefault("seed", seed)
    return _attack_key(cache_key, resolve_attack(attack), kwargs, int(n), seed, test_ds, int(chunk))[1].exists()


def evaluate_robustness(model: nn.Module, test_ds, n: int, seed: int = 0, attack: str = "tangent",
                        attack_kwargs: dict | None = None, cache_key: dict | None = None,
                        progress: bool = True, batch_size: int | None = None, precision: str = "fp32",
                        chunk: int = ATTACK_CHUNK, certify: bool = True) -> pd.DataFrame:
    """Attack the first n correctly classified test samples (seeded shuffle) inside test_ds.box; one row per
    sample: index (in test_ds), label, distance ‖x_adv − x‖₂ (inf if no adversarial point), queries, success,
    attack, certified_radius (the local certified radius for one-hidden-layer MLPs, else NaN; `certify=False`
    skips computing it and leaves the column NaN, for a second attack on the same samples). With `cache_key` (a
    dict describing the model) the table is cached and reloaded. The samples are attacked in pieces of `chunk`
    (piece c with seed `_chunk_seed(seed, c)`); with a cache key each finished piece is cached at once, so an
    interrupted attack resumes at its first unfinished piece with results identical to an uninterrupted run, and a
    larger n starts from the pieces of the largest cached smaller table (`_cached_prefix`): only new samples run.
    precision 'bf16': the attack's model queries under bfloat16 autocast, its final bisection and success check in
    fp32. Bad input (box, inputs outside it, budget ≤ 0, unknown attack, output not (batch, classes), n too large)
    raises ValueError before the attack makes any query."""
    name = resolve_attack(attack)
    kwargs = dict(attack_kwargs or {})
    if precision != "fp32":  # fp32 is the default: left out of kwargs (and the key) so existing keys are unchanged
        _attacks.check_precision(precision)
        if name == "fmn":
            raise ValueError("precision 'bf16' applies to the hard-label attacks (tangent, hsj), not to fmn")
        kwargs["precision"] = precision
    check_budget(kwargs.get("max_queries"))
    box = check_box(test_ds.box)
    check_inputs(test_ds.x, box)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    n, chunk = int(n), int(chunk)
    check_model_output(model, test_ds.x)
    kwargs.setdefault("seed", seed)
    key_kwargs = dict(kwargs)  # what the key holds (the pool and progress below are not part of it)
    path = key = None
    if cache_key is not None:
        key, path = _attack_key(cache_key, name, kwargs, n, seed, test_ds, chunk)
    with cache.key_lock(path) if path is not None else contextlib.nullcontext():  # one process per key
        if path is not None:
            stored = cache.load(path)
            if stored is not None:
                seconds = stored.pop("seconds")
                cache.note_compute("attack", key, seconds)
                table = _with_certified(pd.DataFrame(stored)[COLUMNS], model, test_ds, certify)
                table.attrs["seconds"] = seconds
                return table
        correct = predict(model, test_ds.x, batch_size).cpu() == test_ds.y.cpu()
        idx = select_correct(model, test_ds, n, seed, batch_size, correct=correct)
        dev = model_device(model)
        if name != "fmn":  # start points of last resort: other correctly classified test samples
            kwargs.setdefault("pool", (test_ds.x[correct].to(dev), test_ds.y[correct].to(dev)))
        kwargs.setdefault("progress", progress)
        parts = []
        starts = range(0, n, chunk)
        prefix = _cached_prefix(cache_key, name, key_kwargs, n, seed, test_ds, chunk) if path is not None else []
        for c, s in enumerate(starts):
            part_path = path.with_name(f"{key}.part{c}.pt") if path is not None and len(starts) > 1 else None
            part = cache.load(part_path) if part_path is not None else None
            if part is None and c < len(prefix) and prefix[c]["index"] == idx[s:s + chunk].tolist():
                part = prefix[c]  # the same samples, seed and piece as a smaller cached table's: its rows
            if part is None:
                t_part = time.perf_counter()
                rows = idx[s:s + chunk]
                res = _attacks.ATTACKS[name](model, test_ds.x[rows].to(dev), test_ds.y[rows].to(dev), box,
                                             **{**kwargs, "seed": _chunk_seed(kwargs["seed"], c)})
                part = {
                    "index": rows.numpy().astype(np.int64).tolist(),
                    "label": test_ds.y[rows].numpy().astype(np.int64).tolist(),
                    "distance": res.distance.detach().double().cpu().numpy().tolist(),
                    "queries": res.queries.cpu().numpy().astype(np.int64).tolist(),
                    "success": res.success.cpu().numpy().astype(bool).tolist(),
                    "seconds": time.perf_counter() - t_part,
                }
                if part_path is not None:
                    cache.save(part, part_path)
            parts.append(part)
        table = {k: [v for p in parts for v in p[k]] for k in ("index", "label", "distance", "queries", "success")}
        table["attack"] = [name] * n
        seconds = sum(p["seconds"] for p in parts)  # the attack's compute time, resumed pieces at their original time
        if path is not None:
            cache.save({**table, "seconds": seconds}, path)
            for c in range(len(starts)):
                path.with_name(f"{key}.part{c}.pt").unlink(missing_ok=True)
        cache.note_compute("attack", key, seconds)  # uncached attacks count too (key None: a new entry per call)
        out = _with_certified(pd.DataFrame(table)[COLUMNS], model, test_ds, certify)  # as from the cache
        out.attrs["seconds"] = seconds  # the attack's compute time (the original one when loaded from the cache)
        return out


def _with_certified(table: pd.DataFrame, model: nn.Module, test_ds, certify: bool = True) -> pd.DataFrame:
    """The attack table with a `certified_radius` column: the local certified L2 radius of each attacked sample for
    one-hidden-layer MLPs (a lower bound on Δx: every attack distance must lie above it), NaN for other models.
    Computed from the model on every call (≈ 5 ms per MNIST sample), so cached attack tables gain it too."""
    if not (certify and bounds.supports(model)):
        return table.assign(**{CERTIFIED: np.nan})
    idx = torch.as_tensor(table["index"].to_numpy(dtype=np.int64, copy=True))
    radius = bounds.certified_radius(model, test_ds.x[idx], test_ds.y[idx])
    return table.assign(**{CERTIFIED: radius.numpy()})
