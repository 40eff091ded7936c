"""Batch reproduction: one profile file per figure notebook, typed parameter checks, the papermill runner,
per-figure manifests, and the command line `repspec`.

A figure notebook `notebooks/<stem>.ipynb` has exactly one cell tagged `parameters` holding `name = literal`
lines: its fast defaults (profile 'smoke', what `pytest --nbval-lax notebooks/` runs), plus
`profile = "smoke"` and `out_dir = ""`. `profiles/<stem>.yaml` maps each of smoke / cpu / paper to overrides of
those parameters. Every value is type-checked against its default before anything runs (int is accepted for
a float; a None default accepts anything). Relative paths are taken from the repository root.

    repspec run --profile cpu --only fig1_tradeoff --set eps=0.1     # or: python -m repspec_utils.reproduce run
    repspec run --profile paper --list                               # the parameters each would get; runs nothing

Writing a figure notebook (copy notebooks/fig1_tradeoff.ipynb):
 1. markdown: title, what the figure shows and why, the batch command and expected runtime;
 2. the `parameters` cell: literals only, smoke-fast values, then `profile = "smoke"` and `out_dir = ""`;
 3. `P = reproduce.notebook_params(globals(), "<stem>")`: checks types, gives P.fig_dir, P.info(), P.record();
 4. derived values, then library calls; `P.record(data_sources=[train_set, ...], seeds=...)`;
 5. `plotting.save_figure(fig, "<stem>", P.fig_dir, P.info())` and `P.save_table(df, "<name>")` (tidy CSV);
 6. a final cell of `assert`s that must hold at any profile;
 7. `profiles/<stem>.yaml` with smoke: {} (or the defaults), cpu: {...}, paper: {...}; clear outputs, save.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import socket
import sys
import time
import tokenize
from pathlib import Path
from typing import Any, Iterable, Mapping

from repspec_utils import cache
from repspec_utils.cache import atomic_write_bytes, cache_root, progress_enabled

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = REPO_ROOT / "profiles"
PROFILES = ("smoke", "cpu", "paper")
RUNNER_PARAMS = ("profile", "out_dir")  # every notebook has them; the runner sets them itself
RECORD_FILE = "record.json"      # written by the notebook (NotebookRun.record), merged into the manifest
MANIFEST_FILE = "manifest.json"  # written by the runner
KERNEL_NAME = "repspec"          # kernelspec registered for sys.executable when 'python3' runs another python


class ParameterError(ValueError, TypeError):
    """A parameter is unknown to its notebook, or its value has the wrong type for the notebook's default."""


class OutputDirError(OSError):
    """An output, executed-notebook or cache folder is missing and cannot be created (or is not writable)."""


class RunFailed(RuntimeError):
    """One or more notebooks raised while executing; `.manifests` holds every notebook's manifest."""

    def __init__(self, message: str, manifests: list[dict]):
        super().__init__(message)
        self.manifests = manifests


# ----------------------------------------------------------------------------------------------------
# Notebooks, their parameters cells, and profiles
# ----------------------------------------------------------------------------------------------------
def notebooks() -> list[str]:
    """Stems of the figure notebooks in notebooks/, sorted."""
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def notebook_path(notebook: str) -> Path:
    """Path of notebooks/<notebook>.ipynb; ValueError listing the valid names if there is none."""
    stem = Path(str(notebook)).stem if str(notebook).endswith(".ipynb") else str(notebook)
    path = NOTEBOOK_DIR / f"{stem}.ipynb"
    if not path.is_file():
        raise ValueError(f"unknown notebook {notebook!r}; valid notebooks: {', '.join(notebooks()) or '(none)'}")
    return path


def _cell_source(cell: Mapping) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def parameters_cell(notebook: str) -> str:
    """Source of the notebook's one code cell tagged `parameters` (ValueError unless there is exactly one)."""
    nb = json.loads(notebook_path(notebook).read_text(encoding="utf-8"))
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1 or cells[0].get("cell_type") != "code":
        raise ValueError(f"notebook {notebook!r} must have exactly one code cell tagged 'parameters', "
                         f"found {len(cells)} tagged cell(s)")
    return _cell_source(cells[0])


def _parse_parameters(source: str, notebook: str) -> tuple[dict[str, Any], dict[str, str]]:
    """(defaults, help) from `name = literal  # help` lines; ValueError on anything else."""
    tree = ast.parse(source)
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    defaults, helps = {}, {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        try:
            if not isinstance(target, ast.Name):
                raise ValueError
            defaults[target.id] = ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"parameters cell of {notebook!r}, line {node.lineno}: only `name = literal` "
                             f"lines are allowed (compute derived values in a later cell): "
                             f"{ast.get_source_segment(source, node)!r}") from None
        helps[target.id] = comments.get(node.end_lineno, "")
    missing = [k for k in RUNNER_PARAMS if k not in defaults]
    if missing:
        raise ValueError(f"parameters cell of {notebook!r} must define {', '.join(missing)}")
    return defaults, helps


def notebook_defaults(notebook: str) -> dict[str, Any]:
    """The notebook's parameters-cell defaults {name: value}, in cell order."""
    return _parse_parameters(parameters_cell(notebook), notebook)[0]


def parameter_help(notebook: str) -> dict[str, str]:
    """The trailing `# comment` of each parameter in the notebook's parameters cell ('' if none)."""
    return _parse_parameters(parameters_cell(notebook), notebook)[1]


def _profile_file(notebook: str) -> Path:
    stem = notebook_path(notebook).stem
    return PROFILE_DIR / f"{stem}.yaml"


def load_profiles(notebook: str) -> dict[str, dict[str, Any]]:
    """All profiles of a notebook {profile: overrides} from profiles/<notebook>.yaml (not type-checked)."""
    import yaml

    path = _profile_file(notebook)
    if not path.is_file():
        raise ValueError(f"notebook {notebook!r} has no profile file {path}")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or sorted(data) != sorted(PROFILES):
        raise ValueError(f"{path} must map exactly the profiles {', '.join(PROFILES)} to parameter overrides, "
                         f"found {', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__}")
    out = {}
    for name in PROFILES:
        overrides = data[name] or {}
        if not isinstance(overrides, dict):
            raise ValueError(f"{path}: profile {name!r} must be a mapping of parameter: value")
        bad = [k for k in overrides if k in RUNNER_PARAMS]
        if bad:
            raise ValueError(f"{path}: profile {name!r} may not set {', '.join(bad)} (the runner sets them)")
        out[name] = dict(overrides)
    return out


def load_profile(notebook: str, profile: str) -> dict[str, Any]:
    """The parameter overrides of `profile` for `notebook`, type-checked; ValueError lists the valid names."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    overrides = load_profiles(notebook)[profile]
    try:
        return check_params(overrides, notebook)
    except ParameterError as exc:
        raise ParameterError(f"{_profile_file(notebook)}, profile {profile!r}: {exc}") from None


# ----------------------------------------------------------------------------------------------------
# Type checks
# ----------------------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _conform(name: str, value: Any, default: Any) -> Any:
    """`value` made to fit `default`'s type (int -> float, tuple -> list), or ParameterError naming `name`."""
    if default is None:
        return value
    kind = _kind(default)
    if kind == "float" and _kind(value) == "int":
        return float(value)
    if _kind(value) != kind:
        hint = ""
        if kind == "float" and isinstance(value, str):
            with contextlib.suppress(ValueError):
                float(value)
                hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        raise ParameterError(f"parameter {name!r} must be {kind} like its default {default!r}, "
                             f"got {_kind(value)} {value!r}{hint}")
    if kind == "list":
        value = list(value)
        element_kinds = {_kind(d) for d in default}
        if len(element_kinds) == 1:  # a homogeneous default list also types its elements
            value = [_conform(f"{name}[{i}]", v, default[0]) for i, v in enumerate(value)]
    return value


def check_params(params: Mapping[str, Any], notebook: str) -> dict[str, Any]:
    """`params` checked against the notebook's parameters cell: unknown name or wrong type -> ParameterError.

    Returns the values conformed to the defaults' types (int -> float where the default is a float,
    tuples -> lists). `profile` must be one of PROFILES.
    """
    defaults = notebook_defaults(notebook)
    out = {}
    for name, value in params.items():
        if name not in defaults:
            raise ParameterError(f"{notebook!r} has no parameter {name!r}; its parameters: {', '.join(defaults)}")
        out[name] = _conform(name, value, defaults[name])
    if "profile" in out and out["profile"] not in PROFILES:
        raise ParameterError(f"parameter 'profile' must be one of {', '.join(PROFILES)}, got {out['profile']!r}")
    return out


def profile_params(notebook: str, profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Effective parameters: defaults, then the profile, then `overrides`, all checked; `profile` set."""
    params = notebook_defaults(notebook)
    params.update(load_profile(notebook, profile))
    params.update(check_params(dict(overrides or {}), notebook))
    params["profile"] = profile
    return params


# ----------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------
def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path: `~` expanded, relative paths taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def default_out_dir() -> Path:
    """Where figures go by default: $REPSPEC_FIGURES, else <repo>/figures."""
    return resolve_path(os.environ.get("REPSPEC_FIGURES") or "figures")


def ensure_dir(path: str | os.PathLike, what: str) -> Path:
    """Create the folder `path` (resolved) if needed; OutputDirError naming `what` and the path if impossible."""
    p = resolve_path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(f"cannot create the {what} {p}: {exc.strerror or exc}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputDirError(f"the {what} {p} is not writable")
    return p


def figure_dir(out_dir: str | os.PathLike, notebook: str) -> Path:
    """The figure's own folder <out_dir>/<notebook> (created); out_dir '' means default_out_dir()."""
    root = resolve_path(out_dir) if str(out_dir) else default_out_dir()
    return ensure_dir(root / Path(notebook).stem, f"figure folder of {notebook!r}")


# ----------------------------------------------------------------------------------------------------
# Inside a notebook
# ----------------------------------------------------------------------------------------------------
def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        with contextlib.suppress(Exception):
            return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _write_json(obj: Any, path: Path) -> None:
    atomic_write_bytes((json.dumps(_to_jsonable(obj), indent=2) + "\n").encode(), path)
    os.chmod(path, 0o644)  # atomic_write_bytes's temp file is private (0600); manifests are for reading


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, list) and isinstance(new, list):
        return old + [v for v in new if v not in old]
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    return new


def record(fig_dir: str | os.PathLike, **fields: Any) -> dict:
    """Merge `fields` into <fig_dir>/record.json (lists are unioned, dicts updated); the runner copies it
    into the manifest. `data_sources` may hold strings or datasets (their `.source` is stored)."""
    path = Path(fig_dir) / RECORD_FILE
    if "data_sources" in fields:
        srcs = fields["data_sources"]
        srcs = [srcs] if isinstance(srcs, str) or not isinstance(srcs, (list, tuple)) else srcs
        fields["data_sources"] = [str(getattr(s, "source", s)) for s in srcs]
    rec = _read_json(path)
    for key, value in _to_jsonable(fields).items():
        rec[key] = _merge(rec[key], value) if key in rec else value
    _write_json(rec, path)
    return rec


def profile_label(profile: str, deviations: Mapping[str, Any] | None) -> str:
    """'cpu' plus the parameters a run changed from its profile ('cpu n_attack=50'): the footers' and the claims
    table's name for what produced a figure."""
    return profile + "".join(f" {k}={v!r}" for k, v in (deviations or {}).items())


class NotebookRun:
    """A notebook's run: checked `params`, `profile`, `label` (profile + any deviations from it), `fig_dir`,
    `info()` for figure footers, `record()` for the manifest, `save_table()` for tidy CSVs."""

    def __init__(self, notebook: str, params: dict[str, Any]):
        self.notebook = notebook
        self.params = params
        self.profile = params["profile"]
        expected = {**notebook_defaults(notebook), **load_profile(notebook, self.profile)}
        self.deviations = {k: v for k, v in params.items()
                           if k not in RUNNER_PARAMS and v != expected.get(k)}
        self.label = profile_label(self.profile, self.deviations)
        self.fig_dir = figure_dir(params["out_dir"], notebook)

    def info(self, **extra: Any) -> dict[str, Any]:
        """Footer info for `plotting.save_figure`: profile (with any deviations), seeds / epochs when they are
        parameters, data = the recorded data_sources, commit, compute = what the models, attacks and re-fits used
        so far took to compute (their original times, also when loaded from the cache; also written to the
        manifest); `extra` (e.g. attacked=1000) adds or overrides."""
        from repspec_utils import plotting

        info = {"profile": self.label}
        info.update({k: self.params[k] for k in ("seeds", "epochs") if k in self.params})
        sources = _read_json(self.fig_dir / RECORD_FILE).get("data_sources")
        if sources:
            info["data"] = "; ".join(sources)
        info["commit"] = plotting.git_commit()
        summary = cache.compute_summary()
        if summary:
            info["compute"] = format_compute(summary)
            self.record(compute=summary)
        info.update(extra)
        return info

    def compute(self) -> str:
        """What this run's models, attacks and re-fits took to compute so far (`format_compute`)."""
        return format_compute(cache.compute_summary())

    def record(self, **fields: Any) -> dict:
        """`record(self.fig_dir, **fields)`: e.g. data_sources=[train_set], seeds=[...]."""
        return record(self.fig_dir, **fields)

    def save_table(self, df, name: str) -> Path:
        """Write a tidy pandas DataFrame to <fig_dir>/<name>.csv (no index) and record it; returns the path."""
        path = self.fig_dir / f"{name}.csv"
        df.to_csv(path, index=False)
        self.record(tables=[path.name])
        return path

    def __repr__(self) -> str:
        return f"NotebookRun({self.notebook!r}, profile={self.label!r}, fig_dir='{self.fig_dir}')"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_compute(summary: dict) -> str:
    """`cache.compute_summary()` as one footer phrase, e.g. 'training 42.0 min (12 models + 3 burn-ins), attacks
    18.5 min (12 runs)'; uncached analyses add 'metric …' (pull-back metric on a plane, per model) and 'σ traces …'
    (timed now, every run); entries cached without a time are counted and said to be missing (the total then is a
    lower bound, marked ≥, or 'time not recorded' when no entry of that kind has one)."""
    order = [("train", "training", "models"), ("attack", "attacks", "runs"), ("refit", "re-fits", "re-fits"),
             ("metric", "metric", "models"), ("sigma-trace", "σ traces", "runs")]
    parts = []
    for kind, label, noun in order:
        row = summary.get(kind)
        if not row:
            continue
        seconds = row["seconds"]
        count = f"{row['entries']} {noun}"
        if kind == "train" and summary.get("burn-in", {}).get("entries"):
            seconds += summary["burn-in"]["seconds"]
            count += f" + {summary['burn-in']['entries']} burn-ins"
        missing = row["unrecorded"]
        if missing == row["entries"]:  # all cached before times were stored: no number at all
            parts.append(f"{label}: time not recorded ({count})")
        elif missing:  # the recorded part is a lower bound
            parts.append(f"{label} ≥ {_duration(seconds)} ({count}, {missing} without a recorded time)")
        else:
            parts.append(f"{label} {_duration(seconds)} ({count})")
    return ", ".join(parts) if parts else "n/a"


def notebook_params(namespace: dict[str, Any], notebook: str) -> NotebookRun:
    """Check the parameters-cell variables in `namespace` (a notebook's globals()); start its record.

    Call right after the parameters cell: `P = reproduce.notebook_params(globals(), "fig1_tradeoff")`.
    A wrong type raises ParameterError naming the parameter; int -> float fixes are written back.
    """
    defaults = notebook_defaults(notebook)
    missing = [k for k in defaults if k not in namespace]
    if missing:
        raise ParameterError(f"parameters {', '.join(missing)} of {notebook!r} are undefined: run the "
                             f"parameters cell first")
    params = check_params({k: namespace[k] for k in defaults}, notebook)
    namespace.update(params)
    run = NotebookRun(notebook, params)
    cache.reset_compute()
    (run.fig_dir / RECORD_FILE).unlink(missing_ok=True)
    run.record(notebook=notebook, profile=run.profile, deviations=run.deviations)
    return run


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
    if names is None:
        return notebooks()
    names = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n) for n in names]
    return [notebook_path(n).stem for n in names if n]


def plan(names: str | Iterable[str] | None = None, profile: str = "cpu",
         overrides: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{notebook: effective parameters} for a run, everything validated; runs nothing.

    An override applies to every selected notebook that has that parameter; one that none has is an error.
    """
    selected = _select(names)
    if not selected:
        raise ValueError(f"no notebooks to run in {NOTEBOOK_DIR}")
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


def _run_one(nb: str, params: dict[str, Any], overrides: dict[str, Any], fig_dir: Path, executed: Path,
             kernel: str, log_output: bool, progress: bool) -> dict:
    import papermill as pm

    from repspec_utils import plotting

    for stale in (RECORD_FILE, MANIFEST_FILE):
        (fig_dir / stale).unlink(missing_ok=True)
    started = _dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    status, error = "ok", None
    try:
        pm.execute_notebook(str(notebook_path(nb)), str(executed), parameters=params, kernel_name=kernel,
                            cwd=str(NOTEBOOK_DIR), log_output=log_output, progress_bar=progress)
    except Exception as exc:  # noqa: BLE001 - recorded, then reported by run_notebooks
        status = "failed"
        error = f"{getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"
    wall = time.perf_counter() - t0
    outputs = sorted(p.name for p in fig_dir.iterdir() if p.is_file() and p.name not in (RECORD_FILE, MANIFEST_FILE)
                     and p.stat().st_mtime >= started.timestamp() - 1)
    manifest = {
        "notebook": nb, "status": status, "error": error, "profile": params["profile"],
        "parameters": params, "overrides": overrides, "commit": plotting.git_commit(),
        "date": started.isoformat(timespec="seconds"), "wall_time_s": round(wall, 2),
        "data_sources": [], "host": host_info(), "kernel": kernel,
        "executed_notebook": str(executed), "outputs": outputs,
    }
    rec = _read_json(fig_dir / RECORD_FILE)
    manifest.update({k: v for k, v in rec.items() if k not in ("notebook", "profile")})
    _write_json(manifest, fig_dir / MANIFEST_FILE)
    (fig_dir / RECORD_FILE).unlink(missing_ok=True)  # merged into the manifest
    return manifest


def run_notebooks(names: str | Iterable[str] | None = None, profile: str = "cpu", *,
                  overrides: Mapping[str, Any] | None = None, out_dir: str | os.PathLike | None = None,
                  executed_dir: str | os.PathLike = "runs/executed", kernel_name: str | None = None,
                  log_output: bool = False, progress: bool | None = None) -> list[dict]:
    """Run the selected notebooks (all if None) at `profile` with papermill; returns their manifests.

    Everything (names, profile, overrides and their types, folders, kernel) is checked before the first
    notebook starts. Each notebook gets its profile's parameters plus `profile` and the absolute `out_dir`
    (default $REPSPEC_FIGURES or <repo>/figures); it writes figures and CSVs to <out_dir>/<stem>/, the
    runner adds <out_dir>/<stem>/manifest.json, and the executed notebook goes to
    <executed_dir>/<stem>.<profile>.ipynb. Relative paths are taken from the repository root. A notebook
    that fails does not stop the others; RunFailed is raised at the end.
    """
    todo = plan(names, profile, overrides)
    root = resolve_path(out_dir) if out_dir not in (None, "") else default_out_dir()
    ensure_dir(root, "figure output folder")
    fig_dirs = {nb: ensure_dir(root / nb, f"figure folder of {nb!r}") for nb in todo}
    executed_root = ensure_dir(executed_dir, "executed-notebook folder")
    ensure_dir(cache_root(), "cache folder ($REPSPEC_CACHE)")
    kernel = ensure_kernel(kernel_name)
    progress = progress_enabled(progress)

    manifests = []
    with _kernel_env():
        for nb, params in todo.items():
            params = {**params, "out_dir": str(root)}
            used = {k: v for k, v in (overrides or {}).items() if k in params}
            print(f"repspec: running {nb} at profile {profile!r}" + (f" with {used}" if used else ""),
                  file=sys.stderr)
            m = _run_one(nb, params, used, fig_dirs[nb], executed_root / f"{nb}.{profile}.ipynb",
                         kernel, log_output, progress)
            print(f"repspec: {nb} {m['status']} in {m['wall_time_s']:.1f} s -> {fig_dirs[nb]}", file=sys.stderr)
            manifests.append(m)
    failed = [m for m in manifests if m["status"] != "ok"]
    if failed:
        lines = "; ".join(f"{m['notebook']}: {m['error']} (see {m['executed_notebook']})" for m in failed)
        raise RunFailed(f"{len(failed)} of {len(manifests)} notebook(s) failed: {lines}", manifests)
    return manifests


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
    run.add_argument("--list", action="store_true", help="show the notebooks and their parameters; run nothing")
    run.add_argument("--out-dir", default=None, help="figure root (default $REPSPEC_FIGURES or <repo>/figures)")
    run.add_argument("--executed-dir", default="runs/executed", help="where executed notebooks go")
    run.add_argument("--kernel", default=None, help="Jupyter kernel name (default: one running this python)")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    args = ap.parse_args(argv)
    try:
        overrides = parse_set(args.sets)
        if args.list:
            print(_describe(plan(args.only, args.profile, overrides), args.profile))
            return 0
        run_notebooks(args.only, args.profile, overrides=overrides, out_dir=args.out_dir,
                      executed_dir=args.executed_dir, kernel_name=args.kernel, log_output=args.log_output)
    except RunFailed as exc:
        print(f"repspec: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"repspec: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
