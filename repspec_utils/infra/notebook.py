"""The in-notebook API: a figure notebook's parameters, its profiles, its output folder, and its record.

A figure notebook `notebooks/<stem>.ipynb` has exactly one cell tagged `parameters` holding `name: type = literal`
lines (read with papermill's own parser, `papermill.inspect_notebook`; the annotation is what
`papermill --help-notebook` shows): its fast defaults (profile 'smoke', what `pytest --nbval-lax notebooks/`
runs), plus `profile = "smoke"` and `out_dir = ""`. `profiles/<stem>.yaml` maps
each of smoke / cpu / paper to overrides of those parameters. Every value is type-checked against its default
before anything runs (int is accepted for a float; a None default accepts anything). Relative paths are taken
from the repository root.

Writing a figure notebook (copy notebooks/fig1_tradeoff.ipynb):
 1. markdown: title, what the figure shows and why, the batch command and expected runtime;
 2. the `parameters` cell: annotated literals only (`epochs: int = 4  # help`), smoke-fast values, then
    `profile: str = "smoke"` and `out_dir: str = ""`; add each new parameter's range to `parameters.RULES`;
 3. `P = notebook.notebook_params(globals(), "<stem>")`: checks types, sets torch's threads from a
    `torch_threads` parameter, gives P.fig_dir, P.info(), P.record();
 4. derived values, then library calls; `P.record(data_sources=[train_set, ...], seeds=...)`;
 5. `plotting.save_figure(fig, "<stem>", P.fig_dir, P.info())` and `P.save_table(df, "<name>")` (tidy CSV);
 6. a final cell of `assert`s that must hold at any profile;
 7. `profiles/<stem>.yaml` with a `figure:` section (title, what it shows, its page, the claims it tests, its own
    parameter rules: infra/figures.py) and smoke: {} (or the defaults), cpu: {...}, paper: {...}; clear outputs, save.
The batch runner (`repspec run`, module `reproduce`) executes these notebooks with papermill.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any, Mapping

from repspec_utils.infra import cache, figures, parameters
from repspec_utils.infra.files import REPO_ROOT, atomic_write_text, portable

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILES = ("smoke", "cpu", "paper")
RUNNER_PARAMS = ("profile", "out_dir")  # every notebook has them; the runner sets them itself
RECORD_FILE = "record.json"      # written by the notebook (NotebookRun.record), merged into the manifest


class ParameterError(ValueError, TypeError):
    """A parameter is unknown to its notebook, or its value has the wrong type for the notebook's default. In a
    notebook (JupyterLab, papermill) it shows as its one line, without a traceback: the message says everything."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for how an exception is shown (papermill prints it)
        return [f"ParameterError: {self}"]


class OutputDirError(OSError):
    """An output, executed-notebook or cache folder is missing and cannot be created (or is not writable)."""


# ----------------------------------------------------------------------------------------------------
# Notebooks, their parameters cells, and profiles
# ----------------------------------------------------------------------------------------------------


def notebooks() -> list[str]:
    """Stems of the figure notebooks in notebooks/, in run order: sorted, then those that read the others' tables
    (the claims page) last."""
    names = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    last = [n for n in names if figures.figure(n).runs_last]  # `figure.runs_last` in its profile file
    return [n for n in names if n not in last] + last


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


@functools.lru_cache(maxsize=64)
def _inspect(path: str, mtime_ns: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(defaults, help) of a notebook's parameters cell read by papermill's own parser (the Python translator's
    `inspect`, what `papermill.inspect_notebook` and `papermill --help-notebook` use), cached per file version."""
    import nbformat
    from papermill.translators import PythonTranslator

    notebook = Path(path).stem
    source = parameters_cell(notebook)
    statements = ast.parse(source).body
    for node in statements:  # papermill skips what it cannot read; we refuse it, naming the line
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else \
            node.target if isinstance(node, ast.AnnAssign) and node.value is not None else None
        try:
            if not isinstance(target, ast.Name):
                raise ValueError
            ast.literal_eval(node.value)
        except ValueError:
            raise ValueError(f"parameters cell of {notebook!r}, line {node.lineno}: only `name = literal` "
                             f"lines are allowed (compute derived values in a later cell): "
                             f"{ast.get_source_segment(source, node)!r}") from None
    found = {p.name: p._asdict() for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(source))}
    if len(found) != len(statements):
        raise ValueError(f"parameters cell of {notebook!r}: papermill reads {len(found)} parameters from "
                         f"{len(statements)} lines ({', '.join(found)}); keep one `name = literal` per line")
    defaults = {name: ast.literal_eval(p["default"]) for name, p in found.items()}
    helps = {name: p["help"] or "" for name, p in found.items()}
    missing = [k for k in RUNNER_PARAMS if k not in defaults]
    if missing:
        raise ValueError(f"parameters cell of {notebook!r} must define {', '.join(missing)}")
    return defaults, helps


def _parameters(notebook: str) -> tuple[dict[str, Any], dict[str, str]]:
    path = notebook_path(notebook)
    defaults, helps = _inspect(str(path), path.stat().st_mtime_ns)
    return dict(defaults), dict(helps)


def notebook_defaults(notebook: str) -> dict[str, Any]:
    """The notebook's parameters-cell defaults {name: value}, in cell order."""
    return _parameters(notebook)[0]


def parameter_help(notebook: str) -> dict[str, str]:
    """The trailing `# comment` of each parameter in the notebook's parameters cell ('' if none)."""
    return _parameters(notebook)[1]


def _profile_file(notebook: str) -> Path:
    return figures.profile_file(notebook_path(notebook).stem)


def load_profiles(notebook: str) -> dict[str, dict[str, Any]]:
    """All profiles of a notebook {profile: overrides} from profiles/<notebook>.yaml (not type-checked)."""
    path = _profile_file(notebook)
    if not path.is_file():
        raise ValueError(f"notebook {notebook!r} has no profile file {path}")
    data = figures.read_yaml(path)
    profiles = sorted(k for k in data if k != figures.FIGURE_KEY) if isinstance(data, dict) else None
    if profiles != sorted(PROFILES):
        raise ValueError(f"{path} must map exactly the profiles {', '.join(PROFILES)} to parameter overrides (and may "
                         f"have a `{figures.FIGURE_KEY}:` section), found "
                         f"{', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__}")
    parameters.rules_for(notebook_path(notebook).stem)  # its figure section and rule names are checked too
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
        parameters.check_value(name, out[name], ParameterError, notebook=Path(str(notebook)).stem)
    if "profile" in out and out["profile"] not in PROFILES:
        raise ParameterError(f"parameter 'profile' must be one of {', '.join(PROFILES)}, got {out['profile']!r}")
    return out


def profile_params(notebook: str, profile: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Effective parameters: defaults, then the profile, then `overrides`, all checked; `profile` set."""
    params = notebook_defaults(notebook)
    params.update(load_profile(notebook, profile))
    params.update(check_params(dict(overrides or {}), notebook))
    params["profile"] = profile
    try:
        parameters.check_relations(params, ParameterError)
    except ParameterError as exc:
        raise ParameterError(f"{notebook!r} at profile {profile!r}: {exc}") from None
    return params


# ----------------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------------
def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path: `~` expanded, relative paths taken from the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


COMMITTED_DIR = "figures"  # the committed results: written only by an explicit `repspec run --out-dir figures`
STAGING_DIR = ".staging"   # where the runner stages a run inside its output folder (reproduce.STAGING)


def default_out_dir(profile: str = "smoke") -> Path:
    """Where a run's figures go unless told otherwise: $REPSPEC_FIGURES, else <repo>/runs/<profile> (git-ignored), so
    exploring (JupyterLab, papermill, `repspec run` without --out-dir) never overwrites the committed figures/."""
    return resolve_path(os.environ.get("REPSPEC_FIGURES") or Path("runs") / profile)


RESULT_NEUTRAL = ("executor", "max_workers", "torch_threads")  # overrides that change where work runs, not results


def is_committed_root(root: str | os.PathLike) -> bool:
    """Whether `root` is the committed results folder figures/ itself."""
    return resolve_path(root).resolve() == (REPO_ROOT / COMMITTED_DIR).resolve()


def committed_write_refusal(notebook: str, out_dir: str | os.PathLike, profile: str) -> str | None:
    """Why a notebook run must not write into `out_dir` directly (None if it may): figures/ is written only through
    the runner's staging folder (`repspec run --out-dir figures`), so that a partial, failed or smoke run never
    leaves committed files half-replaced."""
    if not str(out_dir) or not is_committed_root(out_dir):
        return None
    return (f"out_dir {str(out_dir)!r} is the committed results folder: a notebook never writes there directly (a "
            f"failed or partial run would leave it half-replaced). Explore into runs/ (out_dir '' or runs/...), or "
            f"regenerate on purpose with `repspec run --profile {profile if profile != 'smoke' else 'cpu'} --only "
            f"{Path(notebook).stem} --out-dir figures` (staged; replaced only when the run ends ok)")


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


def figure_dir(out_dir: str | os.PathLike, notebook: str, profile: str = "smoke") -> Path:
    """The figure's own folder <out_dir>/<notebook> (created); out_dir '' means default_out_dir(profile)."""
    root = resolve_path(out_dir) if str(out_dir) else default_out_dir(profile)
    return ensure_dir(root / Path(notebook).stem, f"figure folder of {notebook!r}")


# ----------------------------------------------------------------------------------------------------
# Inside a notebook
# ----------------------------------------------------------------------------------------------------
def to_jsonable(obj: Any) -> Any:
    """`obj` with mappings, sequences, paths and numpy / torch scalars turned into JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        with contextlib.suppress(Exception):
            return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def write_json(obj: Any, path: Path) -> None:
    """`obj` (made JSON-able: paths and scalars as str / numbers) as indented JSON, written atomically."""
    atomic_write_text(json.dumps(to_jsonable(obj), indent=2) + "\n", path)


def read_json(path: Path) -> dict:
    """A JSON file's content, {} if the file does not exist."""
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
    into the manifest. `data_sources` may hold strings or datasets (their `.source` is stored, and their content
    fingerprint `.identity` under `data_fingerprints`, the same value the cache keys carry)."""
    path = Path(fig_dir) / RECORD_FILE
    if "data_sources" in fields:
        srcs = fields["data_sources"]
        srcs = [srcs] if isinstance(srcs, str) or not isinstance(srcs, (list, tuple)) else srcs
        prints = {portable(str(s.source)): s.identity for s in srcs if hasattr(s, "identity")}
        if prints:
            fields["data_fingerprints"] = prints
        fields["data_sources"] = [portable(str(getattr(s, "source", s))) for s in srcs]  # no machine paths
    rec = read_json(path)
    for key, value in to_jsonable(fields).items():
        rec[key] = _merge(rec[key], value) if key in rec else value
    write_json(rec, path)
    return rec


EXECUTION_ONLY = ("executor", "max_workers")  # where jobs ran: never part of a result (nor of a cache key)


def profile_label(profile: str, deviations: Mapping[str, Any] | None) -> str:
    """'cpu' plus the parameters a run changed from its profile ('cpu n_attack=50'): the footers' and the claims
    table's name for what produced a figure. Where the jobs ran (EXECUTION_ONLY: executor, max_workers) is left
    out: the same profile run inline or on workers gives the same results (the manifest still records it)."""
    return profile + "".join(f" {k}={v!r}" for k, v in (deviations or {}).items() if k not in EXECUTION_ONLY)


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
        self.fig_dir = figure_dir(params["out_dir"], notebook, params.get("profile", "smoke"))

    def info(self, **extra: Any) -> dict[str, Any]:
        """Footer info for `plotting.save_figure`: profile (with any deviations), seeds / epochs when they are
        parameters, data = the recorded data_sources, commit, compute = what the models, attacks and re-fits used
        so far took to compute (their original times, also when loaded from the cache; also written to the
        manifest); `extra` (e.g. attacked=1000) adds or overrides."""
        from repspec_utils.infra import provenance

        info = {"profile": self.label}
        info.update({k: self.params[k] for k in ("seeds", "epochs") if k in self.params})
        sources = read_json(self.fig_dir / RECORD_FILE).get("data_sources")
        if sources:
            info["data"] = "; ".join(merge_splits(sources))
        info["commit"] = provenance.git_commit()
        summary = cache.compute_summary()
        if summary:
            info["compute"] = format_compute(summary)
            self.record(compute=summary)
        from repspec_utils.infra.executor import job_devices

        if job_devices():  # work that ran as jobs (local / slurm / debug): where
            self.record(job_devices=job_devices())
        info.update(extra)
        return info

    @property
    def writes_committed_results(self) -> bool:
        """True when this run writes the committed figures/ (directly, or through the runner's staging folder
        inside it): `repspec run --out-dir figures`. A notebook may then also update repo-level pages."""
        committed, here = (REPO_ROOT / COMMITTED_DIR).resolve(), self.fig_dir.resolve()
        direct = here.parent == committed
        staged = committed in here.parents and STAGING_DIR in here.relative_to(committed).parts
        return direct or staged

    def compute(self) -> str:
        """What this run's models, attacks and re-fits took to compute so far (`format_compute`)."""
        return format_compute(cache.compute_summary())

    def record(self, **fields: Any) -> dict:
        """`record(self.fig_dir, **fields)`: e.g. data_sources=[train_set], seeds=[...]."""
        return record(self.fig_dir, **fields)

    def save_table(self, df, name: str, gzip: bool = False, float_format: str | None = None) -> Path:
        """Write a tidy pandas DataFrame to <fig_dir>/<name>.csv (no index; `gzip`: <name>.csv.gz, byte-stable, for
        tables too large to commit as text; `float_format` e.g. '%.6g' for fields drawn, not compared) and record
        it; returns the path."""
        path = self.fig_dir / f"{name}.csv{'.gz' if gzip else ''}"
        df.to_csv(path, index=False, float_format=float_format,
                  compression={"method": "gzip", "mtime": 0} if gzip else None)
        self.record(tables=[path.name])
        return path

    def __repr__(self) -> str:
        return f"NotebookRun({self.notebook!r}, profile={self.label!r}, fig_dir='{self.fig_dir}')"


def format_duration(seconds: float) -> str:
    """'42 s', '3.5 min', '1.2 h'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_compute(summary: dict) -> str:
    """`cache.compute_summary()` as one footer phrase, e.g. 'training 42.0 min (12 models + 3 burn-ins), attacks
    18.5 min (12 runs)', 'white-box PGD / AutoAttack …' (evaluations); a kind it has no label for is listed
    under its own name; uncached analyses add 'metric …' (pull-back metric on a plane, per model) and 'σ traces …'
    (timed now, every run); entries cached without a time are counted and said to be missing (the total then is a
    lower bound, marked ≥, or 'time not recorded' when no entry of that kind has one)."""
    order = [("train", "training", "models"), ("attack", "attacks", "runs"),
             ("whitebox", "white-box PGD / AutoAttack", "evaluations"), ("refit", "re-fits", "re-fits"),
             ("metric", "metric", "models"), ("sigma-trace", "σ traces", "runs")]
    known = {kind for kind, _, _ in order} | {"burn-in"}
    order += [(kind, kind, "entries") for kind in summary if kind not in known]  # never drop a kind's time silently
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
            parts.append(f"{label} ≥ {format_duration(seconds)} ({count}, {missing} without a recorded time)")
        else:
            parts.append(f"{label} {format_duration(seconds)} ({count})")
    return ", ".join(parts) if parts else "n/a"


def injected_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """Names that papermill injected into a running kernel: the assignments of the executed cells that start with
    papermill's '# Parameters' comment (IPython keeps every executed cell's source in `In`); [] outside IPython."""
    names: list[str] = []
    for source in namespace.get("In", []) or []:
        if not isinstance(source, str) or not source.lstrip().startswith("# Parameters"):
            continue
        with contextlib.suppress(SyntaxError):
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign):
                    names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return list(dict.fromkeys(names))


def merge_splits(sources: list[str]) -> list[str]:
    """Data sources with their train and test split lines merged: '…, train split' + '…, test split' -> '…, train +
    test split' (the footer says the same in half the space)."""
    out: list[str] = []
    for src in sources:
        for split, other in (("train", "test"), ("test", "train")):
            suffix = f", {split} split"
            if src.endswith(suffix) and src[: -len(suffix)] + f", {other} split" in sources:
                src = src[: -len(suffix)] + ", train + test split"
        if src not in out:
            out.append(src)
    return out


def notebook_params(namespace: dict[str, Any], notebook: str) -> NotebookRun:
    """Check the parameters-cell variables in `namespace` (a notebook's globals()); start its record.

    Call right after the parameters cell: `P = notebook.notebook_params(globals(), "fig1_tradeoff")`.
    A wrong type or a value outside its declared range (`parameters.RULES`, `RELATIONS`) raises ParameterError naming
    the parameter, as does a name papermill injected that the notebook does not have; int -> float fixes are
    written back.
    """
    defaults = notebook_defaults(notebook)
    missing = [k for k in defaults if k not in namespace]
    if missing:
        raise ParameterError(f"parameters {', '.join(missing)} of {notebook!r} are undefined: run the "
                             f"parameters cell first")
    unknown = [k for k in injected_parameters(namespace) if k not in defaults]
    if unknown:
        raise ParameterError(f"{notebook!r} has no parameter(s) {', '.join(map(repr, unknown))} (injected by "
                             f"papermill: a typo in -p?); its parameters: {', '.join(defaults)}")
    params = check_params({k: namespace[k] for k in defaults}, notebook)
    parameters.check_relations(params, ParameterError)
    refusal = committed_write_refusal(notebook, params.get("out_dir", ""), params.get("profile", "smoke"))
    if refusal:
        raise ParameterError(refusal)
    namespace.update(params)
    if params.get("torch_threads"):  # 0: torch's default
        import torch

        torch.set_num_threads(int(params["torch_threads"]))
    if "executor" in params:  # where this notebook's training and attack jobs run (never part of a cache key)
        from repspec_utils.infra import executor as _executor

        try:
            _executor.configure(params["executor"], params.get("max_workers") or None)
        except ValueError as err:
            raise ParameterError(str(err)) from None
    run = NotebookRun(notebook, params)
    cache.reset_compute()
    from repspec_utils.infra.executor import reset_job_devices

    reset_job_devices()
    (run.fig_dir / RECORD_FILE).unlink(missing_ok=True)
    run.record(notebook=notebook, profile=run.profile, deviations=run.deviations)
    return run


