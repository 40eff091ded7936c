"""Batch reproduction: profiles, parameter checks, notebook form, the papermill runner and its manifests."""

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest

from repspec_utils.infra import figures

from repspec_utils.infra import notebook as nbk
from repspec_utils.infra import runner as rp

NOTEBOOKS = nbk.notebooks()


# ----------------------------------------------------------------------------------------------------
# A synthetic notebook + profile, so parsing and type checks are tested independently of real figures
# ----------------------------------------------------------------------------------------------------
PARAMS_SRC = '''lam = 0.001          # regularization strength
seeds = [400, 401]   # training seeds
method = "rep"
flag = True
epochs = 10
extra = None
profile = "smoke"
out_dir = ""
'''


def _write_notebook(folder: Path, stem: str, params_src: str, n_param_cells: int = 1, rest: str = "x = 1") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell("# Toy"))
    for _ in range(n_param_cells):
        nb.cells.append(nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(f'from repspec_utils.infra import notebook\nP = notebook.notebook_params(globals(), "{stem}")'))
    nb.cells.append(nbformat.v4.new_code_cell(rest))
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def toy(tmp_path, monkeypatch):
    nbdir, profdir = tmp_path / "notebooks", tmp_path / "profiles"
    nbdir.mkdir()
    profdir.mkdir()
    _write_notebook(nbdir, "toy", PARAMS_SRC)
    (profdir / "toy.yaml").write_text("smoke: {}\ncpu:\n  epochs: 100\n  lam: 1.0e-2\npaper:\n  epochs: 15000\n"
                                      "  seeds: [400, 401, 402]\n")
    monkeypatch.setattr(nbk, "NOTEBOOK_DIR", nbdir)
    monkeypatch.setattr(figures, "PROFILE_DIR", profdir)
    return tmp_path


def test_parameters_cell_parsed(toy):
    assert nbk.notebook_defaults("toy") == {"lam": 0.001, "seeds": [400, 401], "method": "rep", "flag": True,
                                           "epochs": 10, "extra": None, "profile": "smoke", "out_dir": ""}
    assert nbk.parameter_help("toy")["lam"] == "regularization strength"


def test_unknown_notebook_and_profile(toy):
    with pytest.raises(ValueError, match="unknown notebook 'nope'.*valid notebooks: toy"):
        nbk.load_profile("nope", "cpu")
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke, cpu, paper"):
        nbk.load_profile("toy", "fast")
    assert nbk.load_profile("toy", "cpu") == {"epochs": 100, "lam": 0.01}
    assert nbk.load_profile("toy", "smoke") == {}


@pytest.mark.parametrize("name, value", [("epochs", "ten"), ("epochs", 1.5), ("epochs", True), ("lam", "0.1"),
                                         ("method", 3), ("flag", 1), ("seeds", 400), ("seeds", [400, "a"])])
def test_wrong_type_names_the_parameter(toy, name, value):
    with pytest.raises(nbk.ParameterError, match=f"parameter '{name}"):
        nbk.check_params({name: value}, "toy")
    with pytest.raises(TypeError):  # ParameterError is both a ValueError and a TypeError
        rp.plan("toy", "cpu", {name: value})


def test_conform_and_unknown_parameter(toy):
    assert nbk.check_params({"lam": 0, "seeds": (1, 2), "extra": "anything"}, "toy") == \
        {"lam": 0.0, "seeds": [1, 2], "extra": "anything"}
    with pytest.raises(nbk.ParameterError, match="no parameter 'lr'.*lam, seeds"):
        nbk.check_params({"lr": 0.1}, "toy")
    with pytest.raises(nbk.ParameterError, match="write 1.0e-3"):
        nbk.check_params({"lam": "1e-3"}, "toy")  # what PyYAML makes of `lam: 1e-3`
    with pytest.raises(nbk.ParameterError, match="'profile' must be one of"):
        nbk.check_params({"profile": "fast"}, "toy")


def test_profile_type_error_names_file_and_parameter(toy):
    (toy / "profiles" / "toy.yaml").write_text("smoke: {}\ncpu: {epochs: ten}\npaper: {}\n")
    with pytest.raises(nbk.ParameterError, match=r"toy\.yaml, profile 'cpu'.*parameter 'epochs'"):
        nbk.load_profile("toy", "cpu")
    (toy / "profiles" / "toy.yaml").write_text("smoke: {}\ncpu: {}\n")
    with pytest.raises(ValueError, match="exactly the profiles smoke, cpu, paper"):
        nbk.load_profile("toy", "cpu")


def test_parameters_cell_form_enforced(toy):
    _write_notebook(toy / "notebooks", "two", PARAMS_SRC, n_param_cells=2)
    with pytest.raises(ValueError, match="exactly one code cell tagged 'parameters', found 2"):
        nbk.notebook_defaults("two")
    _write_notebook(toy / "notebooks", "derived", PARAMS_SRC + "steps = epochs * 10\n")
    with pytest.raises(ValueError, match="line 9: only `name = literal`"):
        nbk.notebook_defaults("derived")
    _write_notebook(toy / "notebooks", "noprofile", "epochs = 1\nout_dir = ''\n")
    with pytest.raises(ValueError, match="must define profile"):
        nbk.notebook_defaults("noprofile")


def test_plan_overrides(toy):
    todo = rp.plan(["toy"], "paper", {"lam": 1})
    assert todo["toy"]["epochs"] == 15000 and todo["toy"]["lam"] == 1.0 and todo["toy"]["profile"] == "paper"
    with pytest.raises(nbk.ParameterError, match="no selected notebook has parameter.*lr"):
        rp.plan(None, "cpu", {"lr": 0.1})
    with pytest.raises(nbk.ParameterError, match="runner's own options"):
        rp.plan(None, "cpu", {"out_dir": "/tmp"})


def test_kernel_runs_this_python():
    import sys

    assert rp._runs_this_python("python") and rp._runs_this_python(sys.executable)
    assert not rp._runs_this_python("/opt/elsewhere/bin/python3")
    assert rp.ensure_kernel() in ("python3", rp.KERNEL_NAME)


def test_parse_set():
    assert rp.parse_set(["lam=1e-3", "method=rep", "seeds=[1, 2]", "flag=False", "name='a=b'"]) == \
        {"lam": 1e-3, "method": "rep", "seeds": [1, 2], "flag": False, "name": "a=b"}
    with pytest.raises(ValueError, match="key=value"):
        rp.parse_set(["lam"])


def test_notebook_params_in_namespace(toy):
    ns = {**nbk.notebook_defaults("toy"), "lam": 1, "out_dir": str(toy / "figs")}
    run = nbk.notebook_params(ns, "toy")
    assert ns["lam"] == 1.0 and isinstance(ns["lam"], float)  # conformed value written back
    assert run.fig_dir == toy / "figs" / "toy" and run.fig_dir.is_dir()
    assert run.deviations == {"lam": 1.0} and run.label == "smoke lam=1.0"
    run.record(data_sources=["a"], seeds=[1])
    rec = run.record(data_sources=["a", "b"], seeds=[2])
    assert rec["data_sources"] == ["a", "b"] and rec["seeds"] == [1, 2]
    with pytest.raises(nbk.ParameterError, match="parameter 'epochs'"):
        nbk.notebook_params({**ns, "epochs": "ten"}, "toy")


def test_footer_and_manifest_say_how_long_the_results_took(toy):
    from repspec_utils.infra import cache

    cache.note_compute("attack", "left over from another notebook", 5.0)
    run = nbk.notebook_params({**nbk.notebook_defaults("toy"), "out_dir": str(toy / "figs")}, "toy")
    assert "compute" not in run.info()  # the ledger starts empty with the notebook
    cache.note_compute("burn-in", "b", 600.0)
    for key in ("m1", "m2"):
        cache.note_compute("train", key, 1200.0)
        cache.note_compute("attack", key, 45.0)
    cache.note_compute("attack", "m1", 45.0)  # the same entry used twice counts once
    cache.note_compute("attack", "old", None)
    info = run.info(attacked=50)
    assert info["compute"] == "training 50.0 min (2 models + 1 burn-ins), attacks ≥ 1.5 min (3 runs, 1 without a " \
                              "recorded time)"
    rec = json.loads((run.fig_dir / nbk.RECORD_FILE).read_text())
    assert rec["compute"]["train"] == {"seconds": 2400.0, "entries": 2, "unrecorded": 0}
    assert nbk.format_compute({"refit": {"seconds": 30.0, "entries": 3, "unrecorded": 0}}) == "re-fits 30 s (3 re-fits)"
    assert nbk.format_compute({"attack": {"seconds": 0.0, "entries": 4, "unrecorded": 4}}) == \
        "attacks: time not recorded (4 runs)"
    assert nbk.format_compute({"metric": {"seconds": 630.0, "entries": 3, "unrecorded": 0},
                              "sigma-trace": {"seconds": 90.0, "entries": 4, "unrecorded": 0}}) == \
        "metric 10.5 min (3 models), σ traces 1.5 min (4 runs)"
    assert nbk.format_compute({"whitebox": {"seconds": 120.0, "entries": 2, "unrecorded": 0},
                              "train": {"seconds": 60.0, "entries": 1, "unrecorded": 0},
                              "newkind": {"seconds": 6.0, "entries": 1, "unrecorded": 0}}) == \
        "training 1.0 min (1 models), white-box PGD / AutoAttack 2.0 min (2 evaluations), newkind 6 s (1 entries)"


def test_uncreatable_folders_fail_before_running(toy, monkeypatch):
    blocker = toy / "blocker"
    blocker.write_text("a file, not a folder")
    executed = toy / "executed"
    with pytest.raises(nbk.OutputDirError, match="figure output folder .*blocker/figs"):
        rp.run_notebooks(["toy"], "smoke", out_dir=blocker / "figs", executed_dir=executed)
    with pytest.raises(nbk.OutputDirError, match="executed-notebook folder .*blocker/ex"):
        rp.run_notebooks(["toy"], "smoke", out_dir=toy / "figs", executed_dir=blocker / "ex")
    monkeypatch.setenv("REPSPEC_CACHE", str(blocker / "cache"))
    with pytest.raises(nbk.OutputDirError, match=r"cache folder \(\$REPSPEC_CACHE\) .*blocker/cache"):
        rp.run_notebooks(["toy"], "smoke", out_dir=toy / "figs", executed_dir=executed)
    assert not executed.exists() or not any(executed.iterdir())  # nothing ran


def test_cli_errors_and_list(toy, capsys):
    assert rp.main(["run", "--only", "nope"]) == 2
    assert "unknown notebook 'nope'" in capsys.readouterr().err
    assert rp.main(["run", "--only", "toy", "--set", "epochs=ten"]) == 2
    assert "parameter 'epochs'" in capsys.readouterr().err
    assert rp.main(["run", "--profile", "paper", "--list", "--verbose", "--set", "lam=0.5"]) == 0
    out = capsys.readouterr().out
    assert "* epochs = 15000" in out and "* lam = 0.5    # regularization strength" in out


# ----------------------------------------------------------------------------------------------------
# The real notebooks and profiles (covers notebooks added later automatically)
# ----------------------------------------------------------------------------------------------------
def test_there_are_notebooks():
    assert "fig1_tradeoff" in NOTEBOOKS


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_notebook_form(nb):
    """One literal-only parameters cell with profile='smoke' and out_dir='', checked by the next code cell;
    stored without outputs; a python3 kernelspec."""
    defaults = nbk.notebook_defaults(nb)  # exactly one parameters cell, literals only
    assert defaults["profile"] == "smoke" and defaults["out_dir"] == ""
    book = nbformat.read(nbk.notebook_path(nb), as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    i = next(k for k, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    assert f'notebook_params(globals(), "{nb}")' in code[i + 1].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{nb}: clear the outputs before committing"
    assert book.metadata.get("kernelspec", {}).get("name") == "python3"
    assert any(line.startswith("assert ") for c in code[i + 2:] for line in c.source.splitlines()), \
        f"{nb}: end with a cell of asserts that must hold at any scale"


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_papermill_sees_every_parameter(nb, caplog):
    """papermill's own parameter inference (`papermill --help-notebook`, `inspect_notebook`) finds every parameter
    with its default, without 'Unable to parse' warnings (it gives up on a line with a second '=' in a comment)."""
    import papermill

    with caplog.at_level("WARNING", logger="papermill"):
        found = papermill.inspect_notebook(str(nbk.notebook_path(nb)))
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()], caplog.text
    defaults = nbk.notebook_defaults(nb)
    assert set(found) == set(defaults)
    for name, value in defaults.items():
        assert ast.literal_eval(found[name]["default"]) == value, name
        # issue 16 item 3: annotated, so `papermill --help-notebook` shows each parameter's type
        kind = {bool: "bool", int: "int", float: "float", str: "str", list: "list"}[type(value)]
        assert found[name]["inferred_type_name"] == kind, f"{nb}: annotate `{name}: {kind} = ...`"


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_profiles_match_notebook(nb):
    """profiles/<nb>.yaml exists, has smoke/cpu/paper, every key is a parameter of the right type, and
    smoke equals the stored defaults (it is what nbval runs)."""
    defaults = nbk.notebook_defaults(nb)
    for profile in nbk.PROFILES:
        values = nbk.load_profile(nb, profile)  # raises on unknown keys and wrong types
        assert set(values) <= set(defaults)
    smoke = nbk.load_profile(nb, "smoke")
    assert smoke == {k: defaults[k] for k in smoke}, f"{nb}: the smoke profile must equal the notebook defaults"


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_every_parameter_type_checked(nb):
    for name, default in nbk.notebook_defaults(nb).items():
        if default is None or name == "profile":
            continue
        wrong = 12345 if isinstance(default, str) else "ten"
        with pytest.raises(nbk.ParameterError, match=f"parameter '{name}'"):
            nbk.check_params({name: wrong}, nb)


def test_runner_fig1_smoke(tmp_path, monkeypatch):
    """papermill run of fig1 at smoke: PNG + PDF, CSVs, manifest with the required fields, executed copy."""
    monkeypatch.setenv("REPSPEC_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    (m,) = rp.run_notebooks("fig1_tradeoff", "smoke", out_dir=tmp_path / "figs", executed_dir=tmp_path / "ex")
    fig_dir = tmp_path / "figs" / "fig1_tradeoff"
    written = json.loads((fig_dir / "manifest.json").read_text())
    assert written == json.loads(json.dumps(m))
    for key in ("profile", "parameters", "commit", "wall_time_s", "data_sources", "date", "host", "outputs"):
        assert key in m, key
    assert m["status"] == "ok" and m["profile"] == "smoke" and m["wall_time_s"] > 0
    assert m["parameters"] == {**nbk.notebook_defaults("fig1_tradeoff"), "out_dir": str(tmp_path / "figs")}
    assert m["data_sources"] and {"cpu", "cpu_count", "gpus", "python"} <= set(m["host"])
    assert any(f.endswith(".png") for f in m["outputs"]) and any(f.endswith(".pdf") for f in m["outputs"])
    for f in m["outputs"] + m.get("tables", []):
        assert (fig_dir / f).is_file() and (fig_dir / f).stat().st_size > 0, f
    executed = nbformat.read(tmp_path / "ex" / "fig1_tradeoff.smoke.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


# ----------------------------------------------------------------------------------------------------
# A failed or killed run never touches the previous results (issue 12, item 1)
# ----------------------------------------------------------------------------------------------------
def _runnable_toy(folder: Path) -> Path:
    """A toy notebook that papermill can execute in a kernel (which does not see the monkeypatched folders): it
    writes an output into <out_dir>/toy, records a data source, then asserts `flag`."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.update(kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
                       language_info={"name": "python"})
    nb.cells.append(nbformat.v4.new_code_cell(PARAMS_SRC, metadata={"tags": ["parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(
        "from pathlib import Path\nfrom repspec_utils.infra import notebook\n"
        "fig_dir = Path(out_dir) / 'toy'\nfig_dir.mkdir(parents=True, exist_ok=True)\n"
        "(fig_dir / 'out.csv').write_text(f'epochs={epochs}\\n')\n"
        "notebook.record(fig_dir, data_sources=['toy data'])\n"
        "assert flag, 'flag must be True'"))
    path = folder / "toy.ipynb"
    nbformat.write(nb, path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_run_leaves_the_previous_outputs_and_manifest_byte_identical(toy, monkeypatch):
    monkeypatch.setenv("REPSPEC_PROGRESS", "0")
    _runnable_toy(toy / "notebooks")
    figs, failed = toy / "figs", toy / "failed"
    (ok,) = rp.run_notebooks("toy", "smoke", out_dir=figs, executed_dir=toy / "ex", failed_dir=failed)
    assert ok["status"] == "ok" and ok["outputs"] == ["out.csv"] and ok["data_sources"] == ["toy data"]
    before = _snapshot(figs / "toy")
    assert set(before) == {"out.csv", "manifest.json"}
    with pytest.raises(rp.RunFailed) as info:
        rp.run_notebooks("toy", "cpu", overrides={"flag": False}, out_dir=figs, executed_dir=toy / "ex",
                         failed_dir=failed)
    assert _snapshot(figs / "toy") == before  # outputs and manifest untouched
    (m,) = info.value.manifests
    kept = Path(m["folder"])
    assert kept.parent == failed and m["status"] == "failed" and "flag must be True" in m["error"]
    assert (kept / "out.csv").read_text() == "epochs=100\n"  # the failed run's partial output, kept aside
    assert json.loads((kept / "manifest.json").read_text())["status"] == "failed"
    assert (kept / "toy.cpu.ipynb").is_file()  # and its executed notebook, with the traceback
    assert not (figs / rp.STAGING).exists()  # no staging left behind


def test_a_killed_run_is_cleaned_and_a_half_replaced_folder_restored(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    root = tmp_path / "figs"
    holder = root / rp.STAGING / f"fig2_xor_distance.{pid}.123"
    (holder / "fig2_xor_distance").mkdir(parents=True)
    (holder / "fig2_xor_distance" / "partial.csv").write_text("half written")
    (holder / "previous").mkdir()  # killed between moving the old folder aside and putting the new one in place
    (holder / "previous" / "manifest.json").write_text("{}")
    alive = root / rp.STAGING / f"fig4_mnist.{os.getpid()}.456"  # a live run's staging is left alone
    alive.mkdir()
    done = rp.clean_staging(root)
    assert (root / "fig2_xor_distance" / "manifest.json").read_text() == "{}"
    assert not holder.exists() and alive.exists() and len(done) == 2


@pytest.mark.slow  # ≈ 130 s on this session's 2-core AVX2 machine: the full default suite must stay under 20 min (issue note)
def test_rerun_from_a_fresh_cache_writes_byte_identical_tables(tmp_path, monkeypatch):
    """issue 12 item 10: no timing columns in samples.csv / models.csv (times live in the manifest), so the result
    tables of a rerun from an empty cache are byte-identical, for an XOR and an MNIST smoke notebook."""
    monkeypatch.setenv("REPSPEC_PROGRESS", "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    tables = {}
    for run in ("a", "b"):
        monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / f"cache_{run}"))
        rp.run_notebooks(["fig2_xor_distance", "fig4_mnist"], "smoke", out_dir=tmp_path / run,
                         executed_dir=tmp_path / f"ex_{run}")
        tables[run] = {str(p.relative_to(tmp_path / run)): p.read_bytes() for p in (tmp_path / run).rglob("*.csv")}
    assert {"fig2_xor_distance/samples.csv", "fig2_xor_distance/models.csv", "fig4_mnist/samples.csv",
            "fig4_mnist/models.csv"} <= set(tables["a"])
    assert tables["a"] == tables["b"]
    header = tables["a"]["fig4_mnist/samples.csv"].split(b"\n")[0].decode()
    assert "seconds" not in header and "certified_radius" in header
    manifest = json.loads((tmp_path / "a" / "fig4_mnist" / "manifest.json").read_text())
    assert set(manifest["compute"]) >= {"train", "attack"}  # the times are in the manifest instead


@pytest.mark.slow  # ≈ 25 s on this session's 2-core AVX2 machine: the full default suite must stay under 20 min (issue note)
def test_concurrent_runs_into_one_folder_each_keep_a_complete_manifest(tmp_path):
    """issue 12 item 7: two runs of one notebook into one output folder at the same time used to race on
    record.json; each run now stages in its own folder, so the manifest that lands is complete."""
    import subprocess
    import sys

    env = {**os.environ, "REPSPEC_PROGRESS": "0", "MPLBACKEND": "Agg", "REPSPEC_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "repspec_utils.infra.runner", "run", "--profile", "smoke",
                               "--only", "fig1_tradeoff", "--out-dir", str(tmp_path / "figs"), "--executed-dir",
                               str(tmp_path / f"ex{i}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    m = json.loads((tmp_path / "figs" / "fig1_tradeoff" / "manifest.json").read_text())
    assert m["status"] == "ok" and m["data_sources"] and m["tables"]
    for f in m["outputs"]:
        assert (tmp_path / "figs" / "fig1_tradeoff" / f).is_file()
    assert not (tmp_path / "figs" / rp.STAGING).exists()


def test_exploring_never_writes_into_the_committed_figures(tmp_path, monkeypatch):
    """issue 16 item 1: without an explicit out_dir (JupyterLab, papermill, `repspec run` without --out-dir) a
    notebook writes to <repo>/runs/<profile>/<figure>/; only `--out-dir figures` touches the committed results."""
    monkeypatch.delenv("REPSPEC_FIGURES", raising=False)
    monkeypatch.setattr(nbk, "REPO_ROOT", tmp_path)
    for profile in ("smoke", "cpu"):
        run = nbk.notebook_params({**nbk.notebook_defaults("fig1_tradeoff"), "profile": profile}, "fig1_tradeoff")
        assert run.fig_dir == tmp_path / "runs" / profile / "fig1_tradeoff"
    assert nbk.default_out_dir("paper") == tmp_path / "runs" / "paper"
    assert "--out-dir figures" in (Path(rp.__file__).parents[2] / "scripts" / "reproduce.sh").read_text()


def test_a_notebook_pointed_at_figures_directly_stops_with_one_line(tmp_path, monkeypatch):
    """issue 28: `papermill … -p out_dir figures` overwrote the committed png/pdf in place (manifest stale) and a
    failed one left an untracked record.json; now the parameters cell stops it, naming the way to do it on purpose.
    The runner's staged writes inside figures/ (figures/.staging/…) stay allowed."""
    monkeypatch.setattr(nbk, "REPO_ROOT", tmp_path)
    (tmp_path / "figures").mkdir()
    for out in ("figures", str(tmp_path / "figures"), "figures/"):
        with pytest.raises(nbk.ParameterError, match=r"committed results folder.*repspec run --profile cpu --only "
                                                     r"fig1_tradeoff --out-dir figures"):
            nbk.notebook_params({**nbk.notebook_defaults("fig1_tradeoff"), "out_dir": out}, "fig1_tradeoff")
    assert not any((tmp_path / "figures").iterdir())  # nothing written, not even record.json
    staged = tmp_path / "figures" / ".staging" / "fig1_tradeoff.1.2"
    run = nbk.notebook_params({**nbk.notebook_defaults("fig1_tradeoff"), "out_dir": str(staged)}, "fig1_tradeoff")
    assert run.fig_dir == staged / "fig1_tradeoff" and run.writes_committed_results


def test_only_a_complete_run_at_a_committed_profile_writes_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(nbk, "REPO_ROOT", tmp_path)
    fig = tmp_path / "figures"
    assert "smoke profile never replaces" in rp.committed_redirect(fig, "smoke", {})
    assert "overrides of seeds" in rp.committed_redirect(fig, "cpu", {"seeds": [0], "executor": "local"})
    assert rp.committed_redirect(fig, "cpu", {"executor": "local", "max_workers": 2}) is None
    assert rp.committed_redirect(fig, "paper", {}) is None
    assert rp.committed_redirect(tmp_path / "runs" / "x", "smoke", {"seeds": [0]}) is None


def test_claims_run_last_whatever_the_order_asked():
    assert rp._select("claims,fig4_mnist,fig2_xor_distance") == ["fig2_xor_distance", "fig4_mnist", "claims"]
    assert nbk.notebooks()[-1] == "claims"


def test_list_gives_one_line_per_notebook_with_its_committed_cost(capsys):
    assert rp.main(["run", "--profile", "cpu", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(nbk.notebooks()) and lines[-1].split()[1] == "claims"
    fig4 = next(line for line in lines if " fig4_mnist " in line)
    assert "of compute from a cold cache" in fig4 or "no committed run" in fig4 or "no estimate" in fig4
    assert rp.main(["run", "--profile", "cpu", "--list", "--verbose", "--only", "fig1_tradeoff"]) == 0
    assert "eps" in capsys.readouterr().out


def test_no_estimate_from_a_committed_run_with_other_parameters(tmp_path):
    """issue 27: `--list` estimated the real-image analogs from committed stand-in runs of minutes. A committed run
    estimates a run only when it computed with the same parameters (where and how it ran aside)."""
    params = nbk.profile_params("fig2_xor_distance", "cpu")
    folder = tmp_path / "fig2_xor_distance"
    folder.mkdir()
    man = {"profile": "cpu", "status": "ok", "wall_time_s": 60.0, "commit": "abc",
           "parameters": {**nbk.to_jsonable(params), "max_workers": 7, "out_dir": "/elsewhere"},
           "compute": {"train": {"seconds": 100.0}, "attacks": {"seconds": 20.0}}}
    nbk.write_json(man, folder / "manifest.json")
    assert rp.estimate("fig2_xor_distance", "cpu", tmp_path, params)["compute_s"] == 120.0  # machine keys differ only
    assert rp.estimate("fig2_xor_distance", "cpu", tmp_path, {**params, "seeds": [0]}) == {"differs": ["seeds"]}
    assert rp.estimate("fig2_xor_distance", "cpu", tmp_path, {**params, "new": 1}) == {"differs": ["new"]}
    assert rp.estimate("fig2_xor_distance", "cpu", tmp_path)["compute_s"] == 120.0  # no params: as before
    assert rp.estimate("fig2_xor_distance", "paper", tmp_path, params) == {}


def test_help_does_not_load_torch():
    """issue 28: `repspec --help` answered in 9 s because importing the package loaded torch and every plug-in."""
    import subprocess
    import sys

    code = ("import sys, repspec_utils.infra.runner as r\n"
            "try:\n    r.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "run" in out.stdout


def test_ctrl_c_prints_one_line_with_the_resume_command(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rp, "run_notebooks", interrupted)
    assert rp.main(["run", "--profile", "cpu", "--only", "fig1_tradeoff"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Resume with: repspec run --profile cpu --only fig1_tradeoff" in err[0]


def test_a_parameter_error_shows_as_one_line_in_a_kernel():
    """issue 28: a papermill typo's message came after ≈ 45 lines of traceback; IPython (and so papermill) shows
    an exception's `_render_traceback_` instead of the traceback."""
    err = nbk.ParameterError("parameter 'epochs' = 'ten' has the wrong type")
    assert err._render_traceback_() == ["ParameterError: parameter 'epochs' = 'ten' has the wrong type"]
