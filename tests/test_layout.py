"""The library's layout: one leaf registry, no import circle, every plug-in registered in any import order,
and the docs that the code cites (docs/SPEC.md sections, docs/DESIGN.md's module list) present and in step."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "repspec_utils"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, at module level or inside functions alike. An import of a name
    from a package counts as an import of the submodule when one of that name exists. The implicit import of a
    parent package's __init__ is not an edge (Python runs it before any submodule, whoever imports what)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    g = import_graph()
    assert "repspec_utils.infra.registry" in g["repspec_utils.training.loop"]           # module level, relative
    assert "repspec_utils.data.core" in g["repspec_utils.data.mnist"]     # relative, inside a subpackage
    assert "repspec_utils.infra.provenance" in g["repspec_utils.infra.notebook"]        # inside a method


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_registry_and_files_are_leaves():
    g = import_graph()
    assert g["repspec_utils.infra.registry"] == set() and g["repspec_utils.infra.files"] == set()


def test_no_module_assigns_another_modules_attributes():
    """`othermodule.NAME = ...` or setattr(othermodule, ...) in the package: the patching the registry replaced."""
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and
                    (n.level or (n.module or "").startswith("repspec_utils")) for a in n.names}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in imported:
                    offenders.append(f"{name}: {t.value.id}.{t.attr} = ...")
    assert not offenders, offenders


@pytest.mark.parametrize("first", ["repspec_utils.training.loop", "repspec_utils.data", "repspec_utils.infra.registry",
                                   "repspec_utils.experiments.recipes", "repspec_utils.models"])
def test_everything_registered_whatever_is_imported_first(first):
    """In a fresh interpreter: import one module, then a plug-in's dataset, method and model resolve."""
    code = (f"import {first}\n"
            "from repspec_utils.infra import registry\n"
            "from repspec_utils.data import get_data\n"
            "print(sorted(registry.DATASETS), sorted(registry.METHODS), sorted(registry.MODELS),"
            " sorted(registry.OBJECTIVES), sorted(registry.AUGMENTATIONS))\n"
            "try:\n"
            "    get_data('transfer_standin', root='/nonexistent-repspec-root')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    for name in ("transfer_standin", "transfer_flowers102", "xor", "mnist", "cifar10_synthetic",  # datasets
                 "bss", "l2sp", "ll_readout", "rep_ub", "rep", "ll", "none",                    # methods
                 "barlow_resnet18", "standin_transfer_mlp", "mlp", "cifar_resnet18",            # models
                 "barlow", "supervised", "cifar"):                                               # objectives, augs
        assert f"'{name}'" in out, (name, out)
    # the dataset resolves to its loader, which then looks for the data (not a bare AssertionError)
    assert out.strip().splitlines()[-1] == "DataMissingError", out


def test_registry_errors_list_the_names_and_refuse_a_clash():
    from repspec_utils.data import get_data
    from repspec_utils.infra import registry
    from repspec_utils.training import TrainConfig, validate

    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; choose one of .*transfer_standin"):
        get_data("imagenet")
    with pytest.raises(ValueError, match="unknown method 'trades'; choose one of .*bss.*rep_ub"):
        validate(TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [3]}, method="trades"))
    with pytest.raises(ValueError, match="unknown model kind 'vit'; choose one of .*barlow_resnet18"):
        validate(TrainConfig(dataset="xor", model={"kind": "vit"}))
    with pytest.raises(ValueError, match="dataset 'xor' takes no argument 'n_train'"):
        get_data("xor", n_train=3)
    table = registry.Registry("thing")
    table.register("a", len)
    with pytest.raises(ValueError, match="already registered"):
        table.register("a", print)
    assert table.names() == ("a",) and table.lookup("a") is len and table.get("b") is None
    with pytest.raises(TypeError):
        table["b"] = len  # read-only mapping: entries come through register()


def test_valid_names_come_from_the_registry():
    """A newly registered method is valid for train() with no second list to edit."""
    from repspec_utils.infra import registry
    from repspec_utils.training import TrainConfig, validate

    cfg = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [3]}, method="test_only_method", lam=0.1)
    with pytest.raises(ValueError):
        validate(cfg)
    registry.METHODS.register("test_only_method", lambda cfg, model, x: None)
    try:
        validate(cfg)
    finally:
        registry.METHODS._items.pop("test_only_method")
        registry.METHODS._meta.pop("test_only_method")


def _cited_sections() -> dict[str, list[str]]:
    cites: dict[str, list[str]] = {}
    files = [*PKG.rglob("*.py"), *(ROOT / "notebooks").glob("*.ipynb"), *(ROOT / "profiles").glob("*.yaml"),
             *(ROOT / "scripts").glob("*"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py"),
             ROOT / "README.md", ROOT / "docs" / "DESIGN.md"]
    for f in files:
        if f.is_file():
            for sec in re.findall(r"SPEC §(\d+)", f.read_text(encoding="utf-8", errors="replace")):
                cites.setdefault(sec, []).append(f.name)
    return cites


def test_every_cited_spec_section_exists():
    spec = (ROOT / "docs" / "SPEC.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## §?(\d+)\.? ", spec, flags=re.M))
    cites = _cited_sections()
    assert len(cites) >= 5  # the code does cite it
    missing = {s: sorted(set(f))[:5] for s, f in cites.items() if s not in sections}
    assert not missing, f"docs/SPEC.md lacks cited sections: {missing}"
