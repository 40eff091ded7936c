"""What every benchmark shares: variants timed in interleaved rounds, wall and CPU time, ratios with their spread, the
machine's state, and a CSV under benchmarks/results/ (the README's Performance table is generated from those files).

A benchmark hands `run_rounds` its variants as zero-argument functions. Each round runs every variant once, in a
fresh shuffled order, so background load and cache effects fall on all of them alike; `summarise` reports per variant
the median and interquartile range (IQR) of its seconds, and of its ratio to the baseline *taken within each round*
(the spread of a ratio, not a ratio of medians). CPU time is the calling thread's (`time.thread_time`) when torch
runs on one thread — the work is all in this thread, and a busy machine does not stretch it — and the process's
(`time.process_time`, every thread) otherwise; the `cpu_clock` column says which.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import torch

RESULTS = Path(__file__).resolve().parent / "results"
MIN_ROUNDS = 20


def cpu_clock() -> tuple[str, Callable[[], float]]:
    """('thread', time.thread_time) on one torch thread, else ('process', time.process_time)."""
    return ("thread", time.thread_time) if torch.get_num_threads() == 1 else ("process", time.process_time)


def run_rounds(variants: Mapping[str, Callable[[], object]], rounds: int = MIN_ROUNDS, warmup: int = 2,
               seed: int = 0) -> pd.DataFrame:
    """One row per (round, variant): wall_s and cpu_s of one call, the variants interleaved in shuffled order."""
    if rounds < 1 or not variants:
        raise ValueError(f"need at least one round and one variant, got rounds={rounds}, {len(variants)} variants")
    clock_name, clock = cpu_clock()
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    rows, order, rng = [], list(variants), random.Random(seed)
    for r in range(rounds):
        rng.shuffle(order)
        for name in order:
            w0, c0 = time.perf_counter(), clock()
            variants[name]()
            c1, w1 = clock(), time.perf_counter()
            rows.append({"round": r, "variant": name, "wall_s": w1 - w0, "cpu_s": c1 - c0, "cpu_clock": clock_name})
    table = pd.DataFrame(rows)
    table.attrs["order"] = list(variants)
    return table


def _quartiles(s: pd.Series) -> tuple[float, float, float]:
    return float(s.quantile(0.25)), float(s.median()), float(s.quantile(0.75))


def summarise(rounds: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Per variant: median / q1 / q3 of wall_s and cpu_s, and (with a baseline) of the per-round ratios to it."""
    out = []
    wide = {m: rounds.pivot(index="round", columns="variant", values=f"{m}_s") for m in ("wall", "cpu")}
    present = list(dict.fromkeys(rounds["variant"]))
    for name in [n for n in rounds.attrs.get("order", ()) if n in present] or present:
        row = {"variant": name, "rounds": int((rounds["variant"] == name).sum()),
               "cpu_clock": rounds["cpu_clock"].iloc[0]}
        for m, w in wide.items():
            q1, med, q3 = _quartiles(w[name])
            row.update({f"{m}_s": med, f"{m}_s_q1": q1, f"{m}_s_q3": q3})
            if baseline is not None:
                q1, med, q3 = _quartiles(w[name] / w[baseline])
                row.update({f"{m}_ratio": med, f"{m}_ratio_q1": q1, f"{m}_ratio_q3": q3})
        out.append(row)
    return pd.DataFrame(out)


def machine() -> dict:
    """The machine's state as the benchmark ran: load averages, CPU model, cores, torch threads and version, commit."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=RESULTS.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"load1": round(load[0], 2), "load5": round(load[1], 2), "load15": round(load[2], 2), "cpu": model,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "commit": commit, "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


def print_machine(info: Mapping) -> None:
    print(f"machine: {info['cpu']}, {info['cores']} cores, load {info['load1']} / {info['load5']} / {info['load15']}; "
          f"torch {info['torch']} on {info['torch_threads']} thread(s); commit {info['commit']}")


def write(name: str, table: pd.DataFrame, info: Mapping, out_dir: Path = RESULTS) -> Path:
    """benchmarks/results/<name>.csv: the table with the machine's state on every row (written atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.csv"
    full = table.assign(**{k: v for k, v in info.items()})
    tmp = path.with_suffix(".csv.tmp")
    full.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def show(table: pd.DataFrame, unit: str = "ms") -> None:
    """Print a summary: each variant's median wall and CPU time with IQR, and its ratios (CPU first)."""
    scale = {"ms": 1e3, "s": 1.0}[unit]
    for _, r in table.iterrows():
        line = (f"  {r['variant']:>22}: cpu {r['cpu_s'] * scale:8.2f} {unit} [{r['cpu_s_q1'] * scale:.2f}, "
                f"{r['cpu_s_q3'] * scale:.2f}]  wall {r['wall_s'] * scale:8.2f} {unit}")
        if "cpu_ratio" in table and pd.notna(r.get("cpu_ratio")):
            line += (f"  ratio cpu {r['cpu_ratio']:.3f} [{r['cpu_ratio_q1']:.3f}, {r['cpu_ratio_q3']:.3f}]"
                     f"  wall {r['wall_ratio']:.3f} [{r['wall_ratio_q1']:.3f}, {r['wall_ratio_q3']:.3f}]")
        print(line)


def compare(fns: Mapping[str, Callable[[], object]], repeat: int = MIN_ROUNDS, warmup: int = 2) -> dict[str, float]:
    """Median CPU seconds per call of each function over interleaved rounds (for the benchmarks not yet writing
    results files; `run_rounds` + `summarise` give the spread)."""
    rounds = run_rounds(fns, rounds=repeat, warmup=warmup)
    return rounds.groupby("variant")["cpu_s"].median().to_dict()
