"""The batch runner: every figure notebook executed with papermill at a profile, per-figure manifests, and the
command line `repspec` (the in-notebook side, parameters and profiles, is `notebook`).

    repspec run --profile cpu --only fig1_tradeoff --set eps=0.1     # or: python -m repspec_utils.infra.runner run
    repspec run --profile paper --list                               # the parameters each would get; runs nothing
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from repspec_utils.infra import notebook as nbapi
from repspec_utils.infra.cache import cache_root, progress_enabled
from repspec_utils.infra.files import REPO_ROOT, portable
from repspec_utils.infra.notebook import (PROFILES, RECORD_FILE, RUNNER_PARAMS, ParameterError, default_out_dir,
                                          ensure_dir, notebook_defaults, notebook_path, notebooks, parameter_help,
                                          profile_params, read_json, resolve_path, write_json)

MANIFEST_FILE = "manifest.json"  # written by the runner
KERNEL_NAME = "repspec"          # kernelspec registered for sys.executable when 'python3' runs another python


class RunFailed(RuntimeError):
    """One or more notebooks raised while executing; `.manifests` holds every notebook's manifest."""

    def __init__(self, message: str, manifests: list[dict]):
        super().__init__(message)
        self.manifests = manifests


# ----------------------------------------------------------------------------------------------------
# Host, kernel
# ----------------------------------------------------------------------------------------------------
def host_info() -> dict[str, Any]:
    """Host name, OS, Python, CPU model and count, torch version and GPUs (names), for manifests."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu": cpu, "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
    except Exception as exc:  # noqa: BLE001 - host info must never stop a run
        info["torch"] = f"unavailable ({exc})"
    return info


def _runs_this_python(argv0: str) -> bool:
    # jupyter_client replaces a bare 'python' / 'python3' / 'python3.X' with sys.executable
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    return argv0 in bare or os.path.abspath(argv0) == os.path.abspath(sys.executable)


def ensure_kernel(kernel_name: str | None = None) -> str:
    """A Jupyter kernel name that runs this interpreter: `kernel_name` if given and known, else 'python3'
    when it runs sys.executable, else a 'repspec' kernelspec (registered under sys.prefix if absent)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    if kernel_name:
        try:
            ksm.get_kernel_spec(kernel_name)
        except NoSuchKernel:
            raise ValueError(f"unknown Jupyter kernel {kernel_name!r}; installed: "
                             f"{', '.join(sorted(ksm.find_kernel_specs()))}") from None
        return kernel_name
    for name in ("python3", KERNEL_NAME):
        with contextlib.suppress(NoSuchKernel):
            if _runs_this_python(ksm.get_kernel_spec(name).argv[0]):
                return name
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL_NAME, display_name=f"repspec ({sys.executable})", prefix=sys.prefix)
    return KERNEL_NAME


def kernel_manager_class():
    """The kernel manager papermill starts kernels with: jupyter_client's async manager over IPC sockets (files in
    Jupyter's runtime folder) where the platform has them, so no kernel listens on TCP and ipykernel has nothing
    to warn about ('Kernel is running over TCP without encryption'); TCP on Windows."""
    import uuid

    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import CaselessStrEnum, default

    if os.name == "nt":
        return AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

        @default("ip")
        def _unique_ipc_path(self) -> str:  # jupyter_client's default, 'kernel-ipc' in the cwd, is shared by
            # every kernel started from one folder: concurrent runs would connect to each other's sockets
            folder = Path(jupyter_runtime_dir())
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"repspec-{os.getpid()}-{uuid.uuid4().hex[:12]}-ipc")

    return IPCKernelManager


@contextlib.contextmanager
def _kernel_env():
    """Environment for kernels started inside: this checkout's repspec_utils importable (PYTHONPATH)."""
    saved = dict(os.environ)
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    os.environ.setdefault("REPSPEC_PROGRESS", "0")  # the runner shows its own progress; none inside notebooks
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ----------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------
def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings -> {key: value}; values parsed by ast.literal_eval, else kept as strings."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[key.strip()] = value
    return out


def _select(names: str | Iterable[str] | None) -> list[str]:
    """The selected notebooks in run order (`notebook.notebooks()`: claims last, whatever order they were named in)."""
    if names is None:
        return notebooks()
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n) for n in names]
    chosen = {notebook_path(n).stem for n in names if n}
    return [n for n in notebooks() if n in chosen]


def committed_redirect(root: Path, profile: str, overrides: Mapping[str, Any]) -> str | None:
    """Why a run aimed at the committed figures/ must write elsewhere (None if it may write there): only a run at a
    committed profile (cpu or paper) without overrides that change results replaces committed results."""
    if not nbapi.is_committed_root(root):
        return None
    if profile == "smoke":
        return "the smoke profile never replaces committed results"
    changed = sorted(k for k in overrides if k not in nbapi.RESULT_NEUTRAL)
    if changed:
        return (f"overrides of {', '.join(changed)} make this run differ from the committed {profile!r} profile, "
                f"whose results figures/ holds")
    return None


def plan(names: str | Iterable[str] | None = None, profile: str = "cpu",
         overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{notebook: effective parameters} for a run, everything validated; runs nothing.

    An override applies to every selected notebook that has that parameter; one that none has is an error.
    """
    selected = _select(names)
    if not selected:
        raise ValueError(f"no notebooks to run in {nbapi.NOTEBOOK_DIR}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    overrides = dict(overrides or {})
    bad = [k for k in overrides if k in RUNNER_PARAMS]
    if bad:
        raise ParameterError(f"set {', '.join(bad)} with the runner's own options, not as overrides")
    out = {}
    for nb in selected:
        defaults = notebook_defaults(nb)
        out[nb] = profile_params(nb, profile, {k: v for k, v in overrides.items() if k in defaults})
    unused = [k for k in overrides if not any(k in notebook_defaults(nb) for nb in selected)]
    if unused:
        raise ParameterError(f"no selected notebook has parameter(s) {', '.join(unused)}; selected: "
                             f"{', '.join(selected)}")
    return out


STAGING = nbapi.STAGING_DIR  # <out_dir>/.staging/<notebook>.<pid>.<ms>/<notebook>/: where a run writes until it ended ok


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_staging(root: Path) -> list[str]:
    """Remove the staging folders of runs whose process is gone (a run killed with kill -9) and put back a figure
    folder that such a run had moved aside but not yet replaced; returns what was done, one line each."""
    import shutil

    done = []
    stage_root = root / STAGING
    if not stage_root.is_dir():
        return done
    for entry in sorted(stage_root.iterdir()):
        parts = entry.name.split(".")
        if len(parts) < 3 or not parts[-2].isdigit() or _pid_alive(int(parts[-2])):
            continue
        nb = ".".join(parts[:-2])
        for old in sorted(entry.glob("previous*")):
            if old.is_dir() and not (root / nb).exists():
                old.rename(root / nb)
                done.append(f"restored {root / nb} (a killed run had moved it aside)")
        shutil.rmtree(entry, ignore_errors=True)
        done.append(f"removed the staging folder {entry} of a run that no longer exists")
    return done


def _replace_folder(stage: Path, target: Path, holder: Path) -> None:
    """Put the finished `stage` folder in place of `target`: the old folder is moved into `holder` first (same
    file system, so both moves are renames), then removed; `clean_staging` restores it if a kill falls between."""
    import shutil

    for attempt in range(20):  # a concurrent run of the same notebook may land its folder between our two renames
        previous = holder / f"previous{attempt or ''}"
        with contextlib.suppress(FileNotFoundError):
            target.rename(previous)
        try:
            stage.rename(target)
            break
        except OSError:  # the other run's folder arrived first: move it aside too (the last run wins)
            time.sleep(0.05)
    else:
        raise OSError(f"could not put the finished run in place of {target} (another run keeps replacing it)")
    for old in holder.glob("previous*"):
        shutil.rmtree(old, ignore_errors=True)


class _JobBar:
    """While a notebook runs, a second bar for its jobs (training, attacks), drawn from the progress file its
    executor writes (`executor.report_progress`): one per stage, with tqdm's rate and ETA."""

    def __init__(self, path: Path, enabled: bool):
        import threading

        self.path, self.enabled, self.stop = path, enabled, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True) if enabled else None

    def __enter__(self):
        os.environ["REPSPEC_PROGRESS_FILE"] = str(self.path)
        if self.thread is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.environ.pop("REPSPEC_PROGRESS_FILE", None)
        return False

    def _poll(self) -> None:
        from tqdm.auto import tqdm

        bar, stage = None, None
        while not self.stop.wait(1.0):
            state = read_json(self.path) if self.path.exists() else {}
            if not state:
                continue
            if (state.get("desc"), state.get("started")) != stage:
                if bar is not None:
                    bar.close()
                stage = (state.get("desc"), state.get("started"))
                bar = tqdm(total=state.get("total", 0), desc=f"  {state.get('desc', 'jobs')}", unit="job",
                           position=1, leave=False, file=sys.stderr)
            bar.n = int(state.get("done", 0))
            bar.refresh()
        if bar is not None:
            bar.close()


def _run_one(nb: str, params: dict[str, Any], overrides: dict[str, Any], root: Path, executed: Path,
             kernel: str, log_output: bool, progress: bool, failed_root: Path) -> dict:
    """Execute one notebook into a staging folder; on success it replaces <root>/<nb> (outputs and manifest
    together), on failure <root>/<nb> is left as it was and the partial outputs, the executed notebook and the
    manifest go to <failed_root>/<nb>.<date>/."""
    import shutil

    import papermill as pm

    from repspec_utils.infra import provenance

    holder = ensure_dir(root / STAGING / f"{nb}.{os.getpid()}.{time.time_ns() // 1_000_000}",
                        f"staging folder of {nb!r}")
    stage = ensure_dir(holder / nb, f"staging folder of {nb!r}")
    started = _dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        with _JobBar(holder / "progress.json", progress):
            pm.execute_notebook(str(notebook_path(nb)), str(executed), parameters={**params, "out_dir": str(holder)},
                                kernel_name=kernel, cwd=str(nbapi.NOTEBOOK_DIR), log_output=log_output,
                                progress_bar=progress, kernel_manager_class=kernel_manager_class())
    except Exception as exc:  # noqa: BLE001 - recorded, then reported by run_notebooks
        status = "failed"
        error = f"{getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"
    wall = time.perf_counter() - t0
    outputs = sorted(p.name for p in stage.iterdir() if p.is_file() and p.name not in (RECORD_FILE, MANIFEST_FILE))
    manifest = {
        "notebook": nb, "status": status, "error": error, "profile": params["profile"],
        "parameters": {**params, "out_dir": portable(params["out_dir"])}, "overrides": overrides, "commit": provenance.git_commit(),
        "date": started.isoformat(timespec="seconds"), "wall_time_s": round(wall, 2),
        "data_sources": [], "host": host_info(), "kernel": kernel,
        "executed_notebook": portable(str(executed)), "outputs": outputs,
    }
    rec = read_json(stage / RECORD_FILE)
    manifest.update({k: v for k, v in rec.items() if k not in ("notebook", "profile")})
    (stage / RECORD_FILE).unlink(missing_ok=True)  # merged into the manifest
    if status == "ok":
        write_json(manifest, stage / MANIFEST_FILE)
        _replace_folder(stage, root / nb, holder)
    else:
        kept = failed_root / f"{nb}.{started.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}"
        shutil.move(str(stage), str(kept))
        if executed.exists():
            shutil.copy2(executed, kept / executed.name)
        manifest["folder"] = str(kept)
        write_json(manifest, kept / MANIFEST_FILE)
    shutil.rmtree(holder, ignore_errors=True)
    return manifest


def run_notebooks(names: str | Iterable[str] | None = None, profile: str = "cpu", *,
                  overrides: Mapping[str, Any] | None = None, out_dir: str | os.PathLike | None = None,
                  executed_dir: str | os.PathLike = "runs/executed", kernel_name: str | None = None,
                  log_output: bool = False, progress: bool | None = None,
                  failed_dir: str | os.PathLike = "runs/failed") -> list[dict]:
    """Run the selected notebooks (all if None) at `profile` with papermill; returns their manifests.

    Everything (names, profile, overrides and their types, folders, kernel) is checked before the first
    notebook starts. Each notebook gets its profile's parameters plus `profile` and the absolute `out_dir`
    (default $REPSPEC_FIGURES, else <repo>/runs/<profile>; the committed results change only with an explicit
    out_dir='figures'); it writes its figures and CSVs into a staging folder
    (<out_dir>/.staging/…) and, only when it ran to the end, that folder with the runner's manifest.json replaces
    <out_dir>/<stem>/ as a whole. A failed (or killed) run leaves <out_dir>/<stem>/ untouched: its partial outputs,
    executed notebook and manifest (status 'failed', the error) go to <failed_dir>/<stem>.<date>.<pid>/ (a killed
    run's staging folder is removed by the next run). The executed notebook also goes to
    <executed_dir>/<stem>.<profile>.ipynb. Relative paths are taken from the repository root. A notebook that
    fails does not stop the others; RunFailed is raised at the end.
    """
    todo = plan(names, profile, overrides)
    root = resolve_path(out_dir) if out_dir not in (None, "") else default_out_dir(profile)
    why = committed_redirect(root, profile, overrides or {})
    if why:
        root = default_out_dir(profile if profile == "smoke" else f"{profile}-custom")
        print(f"repspec: {why}: writing to {portable(str(root))} instead (figures/ is unchanged)", file=sys.stderr)
    ensure_dir(root, "figure output folder")
    for line in clean_staging(root):
        print(f"repspec: {line}", file=sys.stderr)
    ensure_dir(root / STAGING, "staging folder")
    failed_root = ensure_dir(failed_dir, "folder for failed runs")
    executed_root = ensure_dir(executed_dir, "executed-notebook folder")
    ensure_dir(cache_root(), "cache folder ($REPSPEC_CACHE)")
    kernel = ensure_kernel(kernel_name)
    progress = progress_enabled(progress)

    manifests = []
    print(f"repspec: plan: {len(todo)} notebook(s) at profile {profile!r} into {portable(str(root))}, in this order:",
          file=sys.stderr)
    for line in plan_lines(todo, profile):
        print(f"repspec: {line}", file=sys.stderr)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="notebooks", unit="nb", disable=not progress, file=sys.stderr)
    with _kernel_env():
        for nb, params in todo.items():
            params = {**params, "out_dir": str(root)}
            used = {k: v for k, v in (overrides or {}).items() if k in params}
            bar.set_postfix_str(nb)
            print(f"repspec: running {nb} at profile {profile!r}" + (f" with {used}" if used else ""),
                  file=sys.stderr)
            m = _run_one(nb, params, used, root, executed_root / f"{nb}.{profile}.ipynb",
                         kernel, log_output, progress, failed_root)
            where = root / nb if m["status"] == "ok" else f"{m['folder']} (the previous {root / nb} is unchanged)"
            print(f"repspec: {nb} {m['status']} in {m['wall_time_s']:.1f} s -> {where}", file=sys.stderr)
            manifests.append(m)
            bar.update(1)
    bar.close()
    for line in summary_lines(manifests, root):
        print(f"repspec: {line}", file=sys.stderr)
    with contextlib.suppress(OSError):
        (root / STAGING).rmdir()  # only when empty: a concurrent run may still be staging
    failed = [m for m in manifests if m["status"] != "ok"]
    if failed:
        lines = "; ".join(f"{m['notebook']}: {m['error']} (kept in {m['folder']})" for m in failed)
        raise RunFailed(f"{len(failed)} of {len(manifests)} notebook(s) failed: {lines}", manifests)
    return manifests


# ----------------------------------------------------------------------------------------------------
# Plan, estimates, summary
# ----------------------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    """`notebook.format_duration`, '?' when unknown."""
    return "?" if seconds is None else nbapi.format_duration(seconds)


# parameters that choose where and how a run executes, not what it computes: a committed run that differs only in
# these still estimates the cost (a run's cost at another worker count is the same compute)
_MACHINE_PARAMS = ("profile", "out_dir", "executor", "max_workers", "torch_threads")


def estimate(nb: str, profile: str, committed: str | os.PathLike | None = None,
             params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a notebook's run at `profile` costs, from its last committed run at that profile (figures/<nb>/
    manifest.json): {'compute_s': its models', attacks' and re-fits' compute from a cold cache, 'wall_s': that run's
    wall time (a cached redraw's is short), 'seeds': …}; empty when figures/ holds no run of it at this profile.
    With `params` (the run's effective parameters): {'differs': [names]} when the committed run computed with other
    values of those parameters (its cost says nothing about this run's)."""
    man = read_json(resolve_path(committed or nbapi.COMMITTED_DIR) / nb / MANIFEST_FILE)
    if man.get("profile") != profile or man.get("status") != "ok":
        return {}
    if params is not None:
        then = man.get("parameters") or {}
        differs = sorted(k for k, v in params.items()
                         if k not in _MACHINE_PARAMS and k in then and nbapi.to_jsonable(v) != then[k])
        differs += sorted(k for k in set(params) ^ set(then) if k not in _MACHINE_PARAMS)
        if differs:
            return {"differs": differs}
    compute = sum(float(v.get("seconds") or 0.0) for v in (man.get("compute") or {}).values())
    return {"compute_s": compute or None, "wall_s": man.get("wall_time_s"), "commit": man.get("commit")}


def plan_lines(todo: Mapping[str, Mapping[str, Any]], profile: str) -> list[str]:
    """One line per notebook of a run, in run order, with the cost of its last committed run at this profile (none
    when that run computed with other parameters than this one)."""
    lines = []
    for i, nb in enumerate(todo, 1):
        est = estimate(nb, profile, params=todo[nb])
        if not est:
            cost = "no committed run at this profile to estimate from"
        elif est.get("differs"):
            shown = ", ".join(est["differs"][:4]) + (", …" if len(est["differs"]) > 4 else "")
            cost = f"no estimate: its committed run at this profile used other parameters ({shown})"
        elif est.get("compute_s") is None:
            cost = f"≈ {_duration(est.get('wall_s'))} (its committed run; no models or attacks to compute)"
        else:
            cost = (f"≈ {_duration(est['compute_s'])} of compute from a cold cache (its committed run; "
                    f"{_duration(est.get('wall_s'))} wall then)")
        lines.append(f"{i:>3}. {nb:<28} {cost}")
    return lines


def summary_lines(manifests: list[dict], root: Path) -> list[str]:
    """The end-of-run table: notebook, status, wall time, where its outputs went (a failed one: where it was kept)."""
    out = [f"{'notebook':<28} {'status':<8} {'wall':>8}  outputs"]
    for m in manifests:
        where = m.get("folder") or portable(str(root / m["notebook"]))
        out.append(f"{m['notebook']:<28} {m['status']:<8} {_duration(m.get('wall_time_s')):>8}  {where}")
    return out


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def _describe(todo: dict[str, dict[str, Any]], profile: str) -> str:
    lines = []
    for nb, params in todo.items():
        defaults, helps = notebook_defaults(nb), parameter_help(nb)
        lines.append(f"{nb}  (profile {profile})")
        for k, v in params.items():
            if k in RUNNER_PARAMS:
                continue
            mark = "*" if v != defaults[k] else " "
            lines.append(f"  {mark} {k} = {v!r}" + (f"    # {helps[k]}" if helps.get(k) else ""))
    lines.append("(* differs from the notebook's smoke default)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line `repspec run ...`; returns the exit status."""
    ap = argparse.ArgumentParser(prog="repspec", description="Reproduce the paper's figures from the notebooks.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run figure notebooks with papermill at a profile")
    run.add_argument("--profile", default="cpu", help=f"one of {', '.join(PROFILES)} (default cpu)")
    run.add_argument("--only", default=None, help="comma-separated notebook names (default: all)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                     help="override a parameter (Python literal, type-checked against the notebook default)")
    run.add_argument("--list", action="store_true", help="one line per notebook with the compute of its committed run "
                                                         "at this profile; run nothing")
    run.add_argument("--verbose", action="store_true", help="with --list: every parameter each notebook would get")
    run.add_argument("--out-dir", default=None, help="figure root (default $REPSPEC_FIGURES, else <repo>/runs/<profile>;"
                                                     " `--out-dir figures` replaces the committed results)")
    run.add_argument("--executed-dir", default="runs/executed", help="where executed notebooks go")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: one running this python)")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    run.add_argument("--executor", default=None, help="where training / attack jobs run: inline, local, slurm, debug "
                                                      "(default $REPSPEC_EXECUTOR, else inline; settings in "
                                                      "profiles/executor.yaml); = --set executor=NAME")
    run.add_argument("--max-workers", type=int, default=None, help="jobs at once (local default: cores ÷ threads)")
    args = ap.parse_args(argv)
    try:
        overrides = parse_set(args.sets)
        from repspec_utils.infra.executor import check_max_workers, load_settings, resolve_executor

        if args.executor is not None:  # checked here, before any notebook starts
            overrides["executor"] = resolve_executor(args.executor)
            load_settings()  # a settings file with unknown keys fails now, not in the first job
        if args.max_workers is not None:
            check_max_workers(args.max_workers)
            overrides["max_workers"] = args.max_workers
        if args.list:
            todo = plan(args.only, args.profile, overrides)
            print(_describe(todo, args.profile) if args.verbose else "\n".join(plan_lines(todo, args.profile)))
            return 0
        run_notebooks(args.only, args.profile, overrides=overrides, out_dir=args.out_dir,
                      executed_dir=args.executed_dir, kernel_name=args.kernel, log_output=args.log_output)
    except KeyboardInterrupt:
        again = " ".join(["repspec", *(argv if argv is not None else sys.argv[1:])])
        print(f"repspec: interrupted; finished figures are in place, the interrupted one is unchanged, and trained "
              f"models and attack pieces are cached. Resume with: {again}", file=sys.stderr)
        return 130
    except RunFailed as exc:
        print(f"repspec: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"repspec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
