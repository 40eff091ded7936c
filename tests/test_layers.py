"""The package's folders are its layers (docs/DESIGN.md): calls run one way, analysis needs no torch, DESIGN.md lists
the tree as it is, and moving code between layers left every cache key as it was."""

import json
import re
import subprocess
import sys

import pytest
from test_layout import PKG, ROOT, _modules, import_graph

# lowest first: a module may import from its own layer and the layers before it, never from a later one
LAYERS = ("infra", "analysis", "data", "models", "method", "attacks", "training", "defences", "evaluation",
          "experiments")
ENTRY_POINTS = {"repspec_utils", "repspec_utils.__main__"}  # the package's lazy attribute access and `python -m`


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module in ENTRY_POINTS:
        return "entry"
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module} is not inside a layer folder ({', '.join(LAYERS)})")
    return parts[1]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module from a later layer (module- or function-level alike)."""
    out = []
    for mod, deps in sorted(graph.items()):
        if mod in ENTRY_POINTS:
            continue
        rank = LAYERS.index(layer_of(mod))
        for dep in sorted(deps):
            if dep in ENTRY_POINTS:
                out.append(f"{mod} -> {dep} (the package root)")
            elif LAYERS.index(layer_of(dep)) > rank:
                out.append(f"{mod} ({layer_of(mod)}) -> {dep} ({layer_of(dep)})")
    return out


def test_every_module_sits_in_a_layer_folder():
    for mod in _modules():
        layer_of(mod)


def test_no_module_imports_from_a_later_layer():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_a_planted_violation_is_caught(tmp_path):
    """infra importing the experiments (at function level) is reported; the same import the other way is not."""
    graph = import_graph()
    planted = {**graph, "repspec_utils.infra.cache": graph["repspec_utils.infra.cache"] | {
        "repspec_utils.experiments.recipes"}}
    assert layer_violations(planted) == ["repspec_utils.infra.cache (infra) -> repspec_utils.experiments.recipes "
                                         "(experiments)"]
    # and the graph itself sees a function-level import written in a file
    src = (PKG / "infra" / "cache.py").read_text(encoding="utf-8")
    assert "from repspec_utils.experiments" not in src


def test_the_layer_list_is_the_folder_list():
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)


def test_analysis_loads_no_torch():
    mods = sorted(m for m in _modules() if layer_of(m) in ("analysis", "infra"))
    code = "".join(f"import {m}\n" for m in mods) + "import sys\nprint(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    assert _fresh(code).stdout.strip() == "[]"


@pytest.mark.parametrize("what, code", [
    ("repspec --help", "import sys; sys.argv = ['repspec', '--help']\nfrom repspec_utils.infra import runner\n"
                       "try:\n    runner.main()\nexcept SystemExit:\n    pass"),
    ("the claims notebook's imports", "from repspec_utils.analysis import claims, plotting, results\n"
                                      "from repspec_utils.infra import files, notebook"),
])
def test_light_entry_points_start_fast(what, code):
    """Under 2 s of CPU time (user + system) in a fresh interpreter, the best of three starts. CPU time, not wall: on
    this 2-core machine a run beside other work stretches the wall clock 2-3x while the CPU time stays put."""
    import os

    best = float("inf")
    for _ in range(3):
        t0 = os.times()
        _fresh(code + "\nimport sys; assert 'torch' not in sys.modules")
        t1 = os.times()
        best = min(best, (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system))
    assert best < 2.0, f"{what} took {best:.2f} s of CPU time"


def design_tree(design: str) -> set[str]:
    """The files named in DESIGN.md's tree block: lines `folder/   a.py · b.py` (the root: `repspec_utils/`)."""
    listed, folder = set(), ""
    for line in design.split("```")[1].splitlines():
        m = re.match(r"\s*([a-z_]+)/\s+(.*)", line)
        if m:  # a folder's first line; the lines after it without a `folder/` continue its list
            folder, line = ("" if m.group(1) == "repspec_utils" else m.group(1) + "/"), m.group(2)
        listed |= {folder + f for f in re.findall(r"\b([a-z_]+\.py)\b", line)}
    return listed


def test_design_md_lists_the_tree():
    """DESIGN.md (under 100 lines) names every module of the package in its tree, and nothing that is not there."""
    design = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert len(design.splitlines()) < 100
    files = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if not (p.name == "__init__.py" and p.parent != PKG)}
    listed = design_tree(design)
    assert listed == files, f"not in DESIGN.md: {sorted(files - listed)}; not in the package: {sorted(listed - files)}"


def test_cache_keys_unchanged_by_the_move():
    """The train keys of every recipe's configs (defaults and the real-image analogs) equal those recorded before the
    package was split into layers (tests/data/cache_keys.json, written at 0d58c49)."""
    from repspec_utils.experiments import recipes
    from repspec_utils.infra import cache

    recorded = json.loads((ROOT / "tests" / "data" / "cache_keys.json").read_text())
    calls = {"xor": ("xor_configs", {}), "xor_noisy": ("xor_configs", {"noisy": True}), "sin": ("sin_configs", {}),
             "mnist": ("mnist_configs", {}), "mnist_ref": ("mnist_configs", {"variant": "reference"}),
             "fashion": ("mnist_configs", {"dataset": "fashion_mnist"}), "cifar": ("cifar_configs", {}),
             "cifar_analog": ("cifar_configs", {"dataset": "fashion_mnist", "image_size": 28}),
             "baselines": ("baseline_configs", {}), "barlow": ("barlow_configs", {}),
             "barlow_analog": ("barlow_configs", {"dataset": "fashion_mnist", "image_size": 28})}
    assert set(calls) == set(recorded)
    for name, (fn, kw) in calls.items():
        keys = [cache.make_key(kind="train", cfg=c) for c in getattr(recipes, fn)(**kw)]
        assert keys == recorded[name], name


# ---------------------------------------------------------------- one definition per method, read by both engines
def _mlp(depth: int):
    from repspec_utils.models import MLP

    return MLP(2, [4] * depth, 2, seed=0)


@pytest.mark.parametrize("depth, max_layer", [(1, None), (3, None), (3, 1), (3, 2)])
def test_both_engines_penalise_the_same_layers(depth, max_layer):
    """For every method registered with `layers`, the batched engine's λ weights are non-zero exactly on the layers
    `penalised_layers` hands the single-model trainer (hidden layers in order, readout last)."""
    from repspec_utils.infra.registry import METHODS
    from repspec_utils.method.penalties import layer_weights, penalised_layers

    model = _mlp(depth)
    order = [*model.hidden, model.readout]
    spectral_methods = METHODS.where_has("layers")
    assert {"none", "rep", "ll", "ll_readout", "rep_ub"} <= set(spectral_methods)
    for method in spectral_methods:
        ml = max_layer if "phi" in METHODS.meta(method)["layers"] else None
        chosen = {id(m) for m in penalised_layers(model, method, ml)}
        weights = layer_weights(method, 0.5, len(order), ml)
        assert [w != 0 for w in weights] == [id(m) in chosen for m in order], method
        assert set(weights) <= {0.0, 0.5}


def test_a_new_method_runs_in_both_engines_or_is_refused_clearly():
    """Registering a method with `layers` makes it usable by train() and train_batched with the same layers; one
    without `layers` trains with train() and is refused by the batched engine, naming the methods it runs."""
    import torch

    from repspec_utils.infra.registry import METHODS
    from repspec_utils.method.penalties import make_spectral
    from repspec_utils.training import TrainConfig, train
    from repspec_utils.training.ensemble import train_batched

    METHODS.register("test_first_layer_only", make_spectral, layers=("phi",), doc="test")
    METHODS.register("test_no_layers", lambda cfg, model, x: None, doc="test")
    try:
        base = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [4, 4]}, epochs=2, burn_in=1, lam=0.1,
                           max_layer=1, n_train=64)
        cfg, rep = base.replace(method="test_first_layer_only"), base.replace(method="rep")
        for engine in (lambda c: train(c, use_cache=False, progress=False),
                       lambda c: train_batched([c], use_cache=False, progress=False)[0]):
            new, same = engine(cfg).model.state_dict(), engine(rep).model.state_dict()  # rep on layer 1: the same
            assert new.keys() == same.keys()
            for k in new:
                torch.testing.assert_close(new[k], same[k], rtol=0, atol=0)
            other = engine(rep.replace(max_layer=2)).model.state_dict()  # and the test can tell a different set
            assert any(not torch.equal(new[k], other[k]) for k in new)
        train(base.replace(method="test_no_layers", lam=0.0, max_layer=None), use_cache=False, progress=False)
        with pytest.raises(ValueError, match="test_no_layers.*use train()|σ_max penalties on weight layers"):
            train_batched([base.replace(method="test_no_layers", lam=0.0, max_layer=None)], use_cache=False,
                          progress=False)
    finally:
        for name in ("test_first_layer_only", "test_no_layers"):
            METHODS._items.pop(name, None)
            METHODS._meta.pop(name, None)


def test_parameter_names_come_from_their_one_source():
    """The notebook parameters `precision`, `deep_inits` and `executor` accept exactly the registered precisions and
    initialisations and the executor module's executors (no second hand-kept tuple)."""
    from repspec_utils.attacks.precision import PRECISIONS
    from repspec_utils.infra import registry
    from repspec_utils.infra.executor import EXECUTORS
    from repspec_utils.infra.parameters import RULES
    from repspec_utils.models.base import INITS

    assert set(registry.PRECISIONS.names()) == set(PRECISIONS) and set(registry.INITS.names()) == set(INITS)
    for name in PRECISIONS:
        assert RULES["precision"].ok(name)
    assert not RULES["precision"].ok("fp16") and "'bf16'" in RULES["precision"].text
    assert RULES["deep_inits"].ok(list(INITS)) and not RULES["deep_inits"].ok(["xavier"])
    assert all(RULES["executor"].ok(e) for e in ("", *EXECUTORS)) and not RULES["executor"].ok("ray")
    registry.PRECISIONS.register("test_fp8", "a test entry")
    try:
        assert RULES["precision"].ok("test_fp8")  # registering a name is all it takes
    finally:
        registry.PRECISIONS._items.pop("test_fp8")
        registry.PRECISIONS._meta.pop("test_fp8")


def test_method_catalogue_matches_the_registrations():
    """Every registered method has a catalogue entry (label, colour) and every entry is registered or is a table's
    setting `of` a registered one: the analysis layer's labels, colours, order and claim roles come from there."""
    from repspec_utils.analysis import claims, plotting
    from repspec_utils.infra.registry import METHODS

    catalogue = METHODS.catalogue()
    registered = set(METHODS.names())
    assert registered <= set(catalogue), f"methods without a catalogue entry: {registered - set(catalogue)}"
    for name, entry in catalogue.items():
        assert (name in registered) != ("of" in entry), name  # registered, or a setting of a registered method
        assert "of" not in entry or entry["of"] in registered, name
        assert isinstance(entry["colour"], int) and 0 <= entry["colour"] < len(plotting._CB), name
        assert plotting.method_label(name) == entry["label"]
    assert len({e["label"] for e in catalogue.values()}) == len(catalogue)  # a label names one method
    assert claims.REP_METHODS == ("rep", "rep_ub") and claims.SAME_LAMBDA == ("ll", "ll_readout")
    assert plotting.method_order(catalogue) == list(catalogue)


def test_a_runtime_registered_method_is_shown_by_its_registration():
    """A user's own method (registered at run time, not in the catalogue) is labelled and coloured from its
    registration; without one it is shown by its name."""
    from repspec_utils.analysis import plotting
    from repspec_utils.infra.registry import METHODS

    METHODS.register("test_mine", lambda cfg, model, x: None, label="my penalty", colour=6)
    METHODS.register("test_bare", lambda cfg, model, x: None)
    try:
        assert plotting.method_label("test_mine") == "my penalty" and plotting.method_color("test_mine") == plotting._CB[6]
        assert plotting.method_label("test_bare") == "test_bare" and plotting.method_color("test_bare") == plotting._CB[5]
    finally:
        for name in ("test_mine", "test_bare"):
            METHODS._items.pop(name, None)
            METHODS._meta.pop(name, None)


def test_a_bad_catalogue_is_refused(tmp_path):
    from repspec_utils.infra.registry import _read_catalogue

    bad = tmp_path / "c.yaml"
    bad.write_text("a: {colour: 1}\n")
    with pytest.raises(ValueError, match="label"):
        _read_catalogue(bad, "method")
    bad.write_text("a: {label: A, of: b}\n")
    with pytest.raises(ValueError, match="'b', which has no entry"):
        _read_catalogue(bad, "method")


def _string_constants(path) -> list[tuple[int, str]]:
    """(line, value) of every string literal of a module that is not a docstring."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_library_module_lists_figures():
    """One figure, one place: no string literal of the library names a notebook (titles, claims, rules and flags
    are in the figure's profile file)."""
    stems = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")} - {"claims"}  # also the `figure.claims` key
    assert len(stems) > 10
    hits = [f"{p.relative_to(PKG)}:{line} {value!r}" for p in PKG.rglob("*.py")
            for line, value in _string_constants(p) if value in stems]
    assert not hits, hits


def test_every_figure_is_described_in_its_profile_file():
    from repspec_utils.analysis.claims import CLAIMS
    from repspec_utils.infra import figures, notebook

    specs = {f.name: f for f in figures.all_figures()}
    assert set(specs) == set(notebook.notebooks())  # a profile file per notebook, and no other
    on_page = [f.name for f in figures.page_figures()]
    assert set(on_page) == set(specs) - {"claims"} and on_page[:3] == ["fig1_tradeoff", "fig2_xor_distance",
                                                                      "fig3_xor_geometry"]
    assert all(specs[n].title and specs[n].shows for n in on_page)
    assert {c.claim for c in figures.claim_sources()} == set(CLAIMS)  # every claim is tested by some figure
    assert [c.claim for c in figures.claim_sources()] == sorted(c.claim for c in figures.claim_sources())
    assert figures.flagged("field") == ("baselines_mnist",) and figures.flagged("runs_last") == ("claims",)
    assert notebook.notebooks()[-1] == "claims"
    assert "fig4_mnist" in figures.flagged("mlp") and "fig6_cifar_resnet" not in figures.flagged("mlp")


def test_a_figures_rules_come_from_its_profile_file():
    from repspec_utils.infra.parameters import check_value, describe

    check_value("n_attack", 0, notebook="appA_xor_noisy")  # 0: every correctly classified point
    with pytest.raises(ValueError, match="10000 test images"):
        check_value("n_attack", 20_000, notebook="fig4_mnist")
    check_value("epochs", 0, notebook="fig8_transfer")  # 0: the task's recipe
    with pytest.raises(ValueError, match="n_attack"):
        check_value("n_attack", 0, notebook="fig4_mnist")
    with pytest.raises(ValueError, match="epochs"):
        check_value("epochs", 0, notebook="fig4_mnist")
    assert "recipe" in describe("lr", "fig8_transfer") and "recipe" not in (describe("lr", "fig4_mnist") or "")


@pytest.mark.parametrize("section, error", [
    ("figure: {title: T, colour: 3}", "unknown key"),
    ("figure: {title: T, claims: [{claim: one, tests: X}]}", "claim's number"),
    ("figure: {title: T, claims: [{claim: 1}]}", "name the test"),
    ("figure: {title: T, rules: {n_attack: no_such_rule}}", "unknown rule name"),
    ("figure: {page: 5}", "needs a `title`"),
    ("figure: {title: T, mlp: yes please}", "true or false"),
])
def test_a_bad_figure_section_is_refused_before_anything_runs(tmp_path, monkeypatch, section, error):
    """Through every interface: the profile load that the runner, papermill's first cell and the Python API share."""
    import shutil

    from repspec_utils.infra import figures, notebook

    for p in figures.PROFILE_DIR.glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    path = tmp_path / "fig1_tradeoff.yaml"
    text = path.read_text(encoding="utf-8")
    start, end = text.index("\nfigure:") + 1, text.index("\nsmoke:") + 1
    path.write_text(text[:start] + section + "\n" + text[end:], encoding="utf-8")
    monkeypatch.setattr(figures, "PROFILE_DIR", tmp_path)
    with pytest.raises(ValueError, match=error):
        notebook.profile_params("fig1_tradeoff", "smoke")


def test_figure_rules_name_registered_datasets_and_tasks():
    """The named rules that list dataset names list registered ones; Fig 8's transfer tasks come from the datasets'
    registrations (`task`), so a new registered task is valid with no second list."""
    from repspec_utils.infra import registry
    from repspec_utils.infra.parameters import NAMED_RULES

    for rule in ("conv_data", "cifar_data"):
        names = re.findall(r"'([a-z0-9_]+)'", NAMED_RULES[rule].text)
        assert names and set(names) <= set(registry.DATASETS.names()), (rule, names)
    tasks = NAMED_RULES["transfer_tasks"]
    assert tasks.ok(["standin", "analog", "stanford_dogs", "flowers102", "mit_indoor67", "cifar10"])
    assert not tasks.ok(["cifar10_synthetic"]) and not tasks.ok(["imagenet"])
    registry.DATASETS.register("transfer_test_task", lambda **k: None, kind="transfer", task="test_task")
    try:
        assert tasks.ok(["test_task"])
    finally:
        registry.DATASETS._items.pop("transfer_test_task")
        registry.DATASETS._meta.pop("transfer_test_task")


def test_a_profile_file_is_parsed_once_and_each_reader_gets_its_own_copy(tmp_path, monkeypatch):
    """The profile load and the `figure:` reader share one parse per file version; an edit is seen at once."""
    import shutil

    import yaml

    from repspec_utils.infra import figures, notebook

    for p in figures.PROFILE_DIR.glob("*.yaml"):
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setattr(figures, "PROFILE_DIR", tmp_path)
    calls = []
    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: calls.append(1) or real(text))
    notebook.load_profiles("fig1_tradeoff")
    figures.figure("fig1_tradeoff")
    assert len(calls) == 1
    first = figures.read_yaml(tmp_path / "fig1_tradeoff.yaml")
    first["smoke"]["planted"] = 1
    assert "planted" not in figures.read_yaml(tmp_path / "fig1_tradeoff.yaml")["smoke"]
    path = tmp_path / "fig1_tradeoff.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("figure:", "figure:\n  colour: 3", 1), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown key"):
        notebook.load_profiles("fig1_tradeoff")
