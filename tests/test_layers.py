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
