"""Fan a notebook's training and attacks out as jobs through submitit (issue 14): local processes, SLURM, or in-process.

| executor | what runs the jobs                                                                      |
|----------|------------------------------------------------------------------------------------------|
| `inline` | the notebook's own process, one after another (the default; nbval and the smoke profile) |
| `local`  | submitit's LocalExecutor: one process per job on this machine, at most `max_workers` at once |
| `slurm`  | submitit's SlurmExecutor: one sbatch job per job; settings from `profiles/executor.yaml`     |
| `debug`  | submitit's DebugExecutor: in this process, through submitit's pickling path (for tests)     |

The choice: a notebook's `executor` parameter, else `$REPSPEC_EXECUTOR`, else `inline`; it is never part of a cache
key. Jobs are exactly what the cache keys: per burn-in (seed, shared settings) one job trains the burn-in and all its
branches (fewest process starts), or, with `split_branches: true`, the burn-in and its first branch, each other branch
being a job that needs it and reads the burn-in from the cache (never a second burn-in); the default `auto` groups when
the burn-ins divide evenly among the workers and splits otherwise (5 seeds on 2 workers: grouped, the fifth seed's
320 epochs would run alone at the end; split, its branches share the workers: ≈ 17 % less wall time). Among the jobs
that are ready, those that more jobs wait for (burn-ins) start first. One attack table per model. Jobs write to the shared cache (atomic files; `cache.key_lock` lets one process
compute a key while a second waits for it), the notebook shows a progress bar over the jobs and then reads every
result from the cache; a failed job stops the notebook with its config, job id and log file; a re-run submits only
the trainings that are not cached yet.

`local` with several GPUs pins one job per GPU (CUDA_VISIBLE_DEVICES); `slurm` asks for `gpus_per_node`. The device a
job ran on comes back with its result (`JobReport.device`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from repspec_utils.infra.files import REPO_ROOT

__all__ = ["EXECUTORS", "Job", "JobReport", "resolve_executor", "configure", "load_settings", "check_max_workers", "run_jobs",
           "submit", "split_branches", "make_submitit_executor", "default_max_workers", "PROFILE_KEYS", "job_devices",
           "reset_job_devices"]

EXECUTORS = ("inline", "local", "slurm", "debug")
PROFILE_PATH = REPO_ROOT / "profiles" / "executor.yaml"
# the keys profiles/executor.yaml (or --set) may give, with their meaning
PROFILE_KEYS = {
    "max_workers": "jobs running at once (local: default cores ÷ threads_per_job; slurm: no cap)",
    "threads_per_job": "torch CPU threads in each job (default 1)",
    "timeout_min": "a job's time limit in minutes (local and slurm; default 10080 = a week, submitit's own is 2)",
    "partition": "SLURM partition",
    "time_min": "SLURM time limit in minutes (default: timeout_min)",
    "gpus_per_node": "GPUs per job (SLURM; local pins one visible GPU per job when the machine has several)",
    "cpus_per_task": "CPUs per SLURM job",
    "mem_gb": "memory per SLURM job in GB",
    "sbatch": "extra #SBATCH options, a mapping such as {constraint: a100, account: my_lab}",
    "setup": "shell lines run before each SLURM job (module load …, source .venv/bin/activate)",
    "split_branches": "true: each method branch is its own job, needing its burn-in's job (more parallel jobs); "
                      "false: one job per burn-in trains it and all its branches (fewest process starts); auto "
                      "(default): false when the burn-ins divide evenly among the jobs running at once, else true",
}
POLL_S = 0.5
DEFAULT_MAX_WORKERS: int | None = None  # set by `configure` (a notebook's max_workers parameter)
# what this process's runs submitted: executor -> {device: jobs}; a notebook's manifest records it (`job_devices`)
_JOB_DEVICES: dict[str, dict[str, int]] = {}


def job_devices() -> dict[str, dict[str, int]]:
    """The devices the jobs of this process's `run_jobs` calls ran on, per executor (a copy; for the manifest)."""
    return {k: dict(v) for k, v in _JOB_DEVICES.items()}


def reset_job_devices() -> None:
    _JOB_DEVICES.clear()


@dataclasses.dataclass
class Job:
    """One unit of work: fn(*args) in a worker; `needs`: indices of jobs that must have finished first."""

    name: str
    fn: Callable[..., Any]
    args: tuple = ()
    needs: tuple[int, ...] = ()


@dataclasses.dataclass
class JobReport:
    """What a finished job returns: its value, the device it ran on and its wall time."""

    value: Any
    device: str
    seconds: float
    error: str | None = None  # "Type: message" of the exception the job raised (its traceback is in the job's log)


def resolve_executor(name: str | None = None) -> str:
    """The executor to use: `name`, else $REPSPEC_EXECUTOR, else 'inline'; ValueError for an unknown one."""
    chosen = name if name not in (None, "") else os.environ.get("REPSPEC_EXECUTOR", "") or "inline"
    if chosen not in EXECUTORS:
        source = "executor" if name not in (None, "") else "$REPSPEC_EXECUTOR"
        raise ValueError(f"{source} {chosen!r} is unknown; choose one of {', '.join(EXECUTORS)}")
    return chosen


def configure(executor: str | None, max_workers: int | None = None) -> str:
    """Make `executor` (if given) and `max_workers` this process's defaults, for every later `train_all` /
    `robustness_table` call that does not name its own: a notebook's parameters do this in its first cell (the
    parameter wins over $REPSPEC_EXECUTOR). Returns the executor now in force."""
    global DEFAULT_MAX_WORKERS
    check_max_workers(max_workers)
    if executor not in (None, ""):
        os.environ["REPSPEC_EXECUTOR"] = resolve_executor(executor)
    DEFAULT_MAX_WORKERS = max_workers
    return resolve_executor(None)


def check_max_workers(max_workers: int | None) -> None:
    if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                    or max_workers < 1):
        raise ValueError(f"max_workers must be an integer >= 1 (or None: the executor's default), got "
                         f"{max_workers!r}")


def load_settings(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """The executor settings: profiles/executor.yaml (if present) updated by `overrides`; ValueError naming any key
    that is not one of PROFILE_KEYS."""
    import yaml

    p = Path(path) if path is not None else PROFILE_PATH
    settings = {}
    if p.exists():
        settings = yaml.safe_load(p.read_text()) or {}
        if not isinstance(settings, dict):
            raise ValueError(f"{p} must hold a mapping of executor settings, got {type(settings).__name__}")
    settings.update(overrides or {})
    unknown = sorted(set(settings) - set(PROFILE_KEYS))
    if unknown:
        raise ValueError(f"unknown executor setting(s) {unknown} (in {p} or given); the valid keys: "
                         f"{', '.join(PROFILE_KEYS)}")
    check_max_workers(settings.get("max_workers"))
    return settings


def split_branches(settings: dict, n_groups: int, name: str, max_workers: int | None = None) -> bool:
    """Whether each method branch is its own job (`split_branches` true / false / auto; see PROFILE_KEYS): `auto`
    splits unless the `n_groups` burn-ins divide evenly among the jobs that run at once (slurm without a cap: never
    even); inline and debug run one job at a time, so auto groups there."""
    value = settings.get("split_branches", "auto")
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ValueError(f"split_branches must be true, false or auto, got {value!r}")
    if name in ("inline", "debug"):
        return False  # one job after another in this process: nothing to balance
    cap = _worker_cap(name, max_workers, settings)
    return cap is None or n_groups % cap != 0


def _worker_cap(name: str, max_workers: int | None, settings: dict) -> int | None:
    """How many jobs run at once: the argument, else the process default (`configure`), else the settings, else
    (local) cores ÷ threads per job; None: no cap (slurm, debug)."""
    return (max_workers or DEFAULT_MAX_WORKERS or settings.get("max_workers")
            or (default_max_workers(settings) if name == "local" else None))


def _dependents(jobs: Sequence[Job]) -> list[int]:
    """Per job, how many jobs need it, directly or through others (a burn-in's branches)."""
    below: list[set[int]] = [set() for _ in jobs]
    for i in reversed(range(len(jobs))):
        for k in jobs[i].needs:
            below[k] |= below[i] | {i}
    return [len(b) for b in below]


def default_max_workers(settings: dict) -> int:
    """cores ÷ torch threads per job (at least 1)."""
    return max(1, (os.cpu_count() or 1) // int(settings.get("threads_per_job", 1)))


def make_submitit_executor(name: str, folder: str | Path, settings: dict):
    """The submitit executor for `name` ('local', 'slurm', 'debug') writing its job files to `folder`."""
    import submitit

    folder = Path(folder)
    timeout = int(settings.get("timeout_min", 7 * 24 * 60))
    if name == "debug":
        return submitit.DebugExecutor(folder)
    if name == "local":
        ex = submitit.LocalExecutor(folder)
        ex.update_parameters(timeout_min=timeout)
        return ex
    if name == "slurm":
        ex = submitit.SlurmExecutor(folder)
        params: dict[str, Any] = {"time": int(settings.get("time_min", timeout))}
        for key, target in (("partition", "partition"), ("gpus_per_node", "gpus_per_node"),
                            ("cpus_per_task", "cpus_per_task")):
            if settings.get(key) is not None:
                params[target] = settings[key]
        if settings.get("mem_gb") is not None:
            params["mem"] = f"{int(settings['mem_gb'])}GB"
        if settings.get("sbatch"):
            params["additional_parameters"] = dict(settings["sbatch"])
        if settings.get("setup"):
            params["setup"] = list(settings["setup"])
        ex.update_parameters(**params)
        return ex
    raise ValueError(f"no submitit executor for {name!r}; choose one of local, slurm, debug")


def submit(ex, fn: Callable, args: tuple = (), threads: int = 1):
    """`ex.submit(_run_in_worker, fn, args, threads)` with SIGINT at its default in the processes it starts.

    submitit cancels a local job with SIGINT to its controller process, which kills the job. A process started from
    a shell script with `&` (`nohup repspec run … &`, a backgrounded pytest) has SIGINT ignored, the processes it
    starts inherit that, and the SIGINT does nothing: a failed run's other jobs, and a cancelled job, kept running
    to the end. Python handlers are reset by exec, so a Python handler installed for the submission gives the
    children the default disposition (only here, in the main thread; elsewhere submitted as is)."""
    import signal
    import threading

    # a local job watches the process that submitted it and ends when that one is gone (kill -9, SIGTERM, a closed
    # terminal): it never trains on under init for hours; its resume checkpoint lets the next run continue it
    owner = process_token(os.getpid()) if type(ex).__name__ == "LocalExecutor" else None
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.SIG_IGN):
        return ex.submit(_run_in_worker, fn, args, threads, owner)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return ex.submit(_run_in_worker, fn, args, threads, owner)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


PROGRESS_FILE_ENV = "REPSPEC_PROGRESS_FILE"  # set by the batch runner: where a notebook reports its jobs' progress


def report_progress(desc: str, done: int, total: int, started: float) -> None:
    """Write {desc, done, total, started} to $REPSPEC_PROGRESS_FILE (atomically) if set: the batch runner, whose
    notebooks run in kernels that show no bars, draws the running notebook's job bar from it."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return
    import json

    from repspec_utils.infra.files import atomic_write_text

    try:
        atomic_write_text(json.dumps({"desc": desc, "done": int(done), "total": int(total), "started": started}),
                          path)
    except OSError:  # progress is a courtesy: never stop a run for it
        pass


OWNER_POLL_S = 0.5  # how often a local job checks that its run is still alive


def process_token(pid: int) -> tuple[int, str] | None:
    """(pid, start time) of a live process, which no later process with a reused pid shares; None if it is gone.
    The start time is /proc's (Linux); elsewhere '' (the pid alone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):  # exited, not yet reaped: gone
            return None
        return pid, fields[19]  # field 22 of stat: the start time, in clock ticks since boot
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid, ""


def _watch_owner(owner: tuple[int, str], poll_s: float = OWNER_POLL_S) -> None:
    """A daemon thread that ends this process (exit status 143) once the process `owner` is gone."""
    import threading

    def watch():
        while True:
            time.sleep(poll_s)
            if process_token(owner[0]) != owner:
                sys.stderr.write(f"repspec job {os.getpid()}: the run that submitted it (pid {owner[0]}) is gone; "
                                 f"stopping (the next run resumes from the last checkpoint)\n")
                sys.stderr.flush()
                os._exit(143)

    threading.Thread(target=watch, name="repspec-owner-watch", daemon=True).start()


def _run_in_worker(fn: Callable, args: tuple, threads: int, owner: tuple[int, str] | None = None) -> JobReport:
    """The function a submitit job runs: fn(*args) on `threads` torch threads, timed, with the device it saw; with
    `owner` (a local job: `process_token` of the submitting run) it stops when that process is gone."""
    import torch

    if owner is not None and owner[0] != os.getpid():
        _watch_owner(owner)
    torch.set_num_threads(max(1, int(threads)))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    device = (f"cuda ({torch.cuda.get_device_name(0)}; CUDA_VISIBLE_DEVICES={visible})"
              if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    old = os.environ.get("REPSPEC_EXECUTOR")
    os.environ["REPSPEC_EXECUTOR"] = "inline"  # a job never submits jobs (the debug executor runs in this process)
    try:
        value = fn(*args)
    except Exception as err:  # noqa: BLE001 - returned, not raised: submitit's debug executor would open pdb
        import sys
        import traceback

        sys.stderr.write(traceback.format_exc())  # into the job's log file (local / slurm)
        return JobReport(value=None, device=device, seconds=time.perf_counter() - t0,
                         error=f"{type(err).__name__}: {err}")
    finally:
        if old is None:
            os.environ.pop("REPSPEC_EXECUTOR", None)
        else:
            os.environ["REPSPEC_EXECUTOR"] = old
    return JobReport(value=value, device=device, seconds=time.perf_counter() - t0)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPUs
        return 0


def run_jobs(jobs: Sequence[Job], executor: str | None = None, max_workers: int | None = None,
             settings: dict | None = None, folder: str | Path | None = None, progress: bool | None = None,
             desc: str = "jobs") -> list[JobReport]:
    """Run `jobs` (dependencies respected) on the executor; returns their reports in order. A failed job stops the
    run (the jobs still running are cancelled) with a RuntimeError naming the job, its id and its log file."""
    from repspec_utils.infra.cache import cache_root, progress_enabled

    name = resolve_executor(executor)
    check_max_workers(max_workers)
    settings = load_settings(overrides=settings)
    for i, j in enumerate(jobs):
        if any(not 0 <= k < i for k in j.needs):
            raise ValueError(f"job {i} ({j.name}) needs {list(j.needs)}: a job may only need earlier jobs")
    if name == "slurm" and shutil.which("sbatch") is None:
        raise RuntimeError("executor 'slurm': no `sbatch` on PATH, so nothing was submitted; run on a SLURM login "
                           "node, or use executor 'local'")
    threads = int(settings.get("threads_per_job", 1))
    if name == "inline":  # in this process, exceptions as they are
        return [JobReport(value=j.fn(*j.args), device="this process", seconds=float("nan")) for j in jobs]
    cap = _worker_cap(name, max_workers, settings) or len(jobs)
    folder = Path(folder) if folder is not None else cache_root() / "jobs" / "%j"
    ex = make_submitit_executor(name, folder, settings)
    gpus = _gpu_count() if name == "local" else 0
    reports: list[JobReport | None] = [None] * len(jobs)
    # the ready jobs that more jobs wait for go first (stable otherwise): the burn-ins before the branches
    rank = _dependents(jobs)
    pending = sorted(range(len(jobs)), key=lambda i: -rank[i])
    running: dict[int, Any] = {}
    free_gpus = list(range(gpus))
    gpu_of: dict[int, int] = {}
    bar = None
    if progress_enabled(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"{desc} ({name})", leave=False)
    started = time.time()
    report_progress(desc, 0, len(jobs), started)

    def fail(i: int, job, err: BaseException):
        for other in running.values():
            try:
                other.cancel(check=False)
            except Exception:  # noqa: BLE001 - best effort
                pass
        log = getattr(getattr(job, "paths", None), "stderr", "?")
        raise RuntimeError(f"job {jobs[i].name!r} (id {job.job_id}, executor {name}) failed: {err}; its log: {log}. "
                           f"Re-running submits only what is not cached yet") from err

    try:
        while pending or running:
            ready = [i for i in pending if all(reports[k] is not None for k in jobs[i].needs)]
            for i in ready:
                if len(running) >= cap:
                    break
                if gpus > 1:
                    if not free_gpus:
                        break
                    gpu_of[i] = free_gpus.pop(0)
                    ex.update_parameters(gpus_per_node=1, visible_gpus=[gpu_of[i]])
                running[i] = submit(ex, jobs[i].fn, jobs[i].args, threads)
                pending.remove(i)
            for i, job in list(running.items()):
                if name != "debug" and not job.done():
                    continue
                try:
                    reports[i] = job.result()
                except Exception as err:  # noqa: BLE001 - reported with the job's id and log
                    fail(i, job, err)
                if reports[i].error is not None:
                    fail(i, job, RuntimeError(reports[i].error))
                seen = _JOB_DEVICES.setdefault(name, {})
                seen[reports[i].device] = seen.get(reports[i].device, 0) + 1
                del running[i]
                if i in gpu_of:
                    free_gpus.append(gpu_of.pop(i))
                if bar is not None:
                    bar.update(1)
                report_progress(desc, sum(r is not None for r in reports), len(jobs), started)
            if bar is not None:
                bar.set_postfix(queued=len(pending), running=len(running),
                                done=sum(r is not None for r in reports), failed=0)
            if running and name != "debug":
                time.sleep(POLL_S)
            elif not running and pending and not any(all(reports[k] is not None for k in jobs[i].needs)
                                                      for i in pending):
                raise RuntimeError("internal error: jobs wait for dependencies that can never finish")
    finally:
        if bar is not None:
            bar.close()
    return reports  # type: ignore[return-value]
