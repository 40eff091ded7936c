"""What a figure is besides its notebook: the `figure:` section of its profile file `profiles/<stem>.yaml`.

A figure is its notebook plus that one file: the profiles (smoke / cpu / paper: parameter overrides) and this
section, so that adding or changing a figure touches no library module. Read without torch, by the results page,
the claims table (analysis) and the parameter checks (`parameters.rules_for`):

    figure:
      title: "Fig 4 — MNIST: accuracy and distance"   # its heading on the results page
      shows: "784→2000→10 GELU MLP: …"                # what it shows, one sentence
      page: 40                                        # its place on the results page (ascending; absent: not on it)
      claims:                                         # the paper's claims its tables test (claims.CLAIMS)
        - {claim: 1, tests: MNIST}                    #   `table: many_seeds` reads models_many_seeds.csv instead
      rules: {n_attack: mnist_test}                   # parameter rules of its own, by name (parameters.NAMED_RULES)
      mlp: true                                       # its tables come from an MLP (the claims rows say which one)
      field: true                                     # its tables are the comparison with the field's methods
      runs_last: true                                 # it reads the other figures' tables: run after them

Unknown keys, a claim that is not an integer, a rule that is not a name: ValueError naming the file.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from dataclasses import field as _default
from pathlib import Path
from typing import Any

from repspec_utils.infra.files import REPO_ROOT

PROFILE_DIR = REPO_ROOT / "profiles"

FIGURE_KEY = "figure"

_FIELDS = ("title", "shows", "page", "claims", "rules", "mlp", "field", "runs_last")

_CLAIM_FIELDS = ("claim", "tests", "table")


@dataclass(frozen=True)
class ClaimSource:
    """One claim a figure's tables test: `tests` names the test in the claims table; `table` reads
    models_<table>.csv instead of models.csv (an optional extra table, skipped when the run did not write it)."""

    claim: int
    figure: str
    tests: str
    table: str | None = None


@dataclass(frozen=True)
class Figure:
    name: str
    title: str = ""
    shows: str = ""
    page: int | None = None
    claims: tuple[ClaimSource, ...] = ()
    rules: dict[str, str] = _default(default_factory=dict)
    mlp: bool = False
    field: bool = False
    runs_last: bool = False


def profile_file(name: str) -> Path:
    return PROFILE_DIR / f"{name}.yaml"


def read_yaml(path: Path) -> Any:
    """A profile file's content (safe_load: no YAML tag may build an object); {} for an empty file.

    Parsed once per file version (path, mtime, size) and shared with the `figure:` reader below; each caller gets its
    own copy, so nothing it changes reaches the next reader."""
    path = Path(path)
    st = path.stat()
    return copy.deepcopy(_parsed(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=64)
def _parsed(path: str, mtime_ns: int, size: int) -> Any:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


@functools.lru_cache(maxsize=None)
def _figure(path: str, mtime_ns: int, size: int) -> Figure:
    p = Path(path)
    data = _parsed(path, mtime_ns, size)
    section = data.get(FIGURE_KEY) if isinstance(data, dict) else None
    if section is None:
        return Figure(p.stem)
    if not isinstance(section, dict):
        raise ValueError(f"{p}: `{FIGURE_KEY}:` must be a mapping of {', '.join(_FIELDS)}")
    unknown = sorted(set(section) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{p}: unknown key(s) {', '.join(map(repr, unknown))} under `{FIGURE_KEY}:`; "
                         f"valid: {', '.join(_FIELDS)}")
    for key in ("title", "shows"):
        if not isinstance(section.get(key, ""), str):
            raise ValueError(f"{p}: `{FIGURE_KEY}.{key}` must be a string")
    page = section.get("page")
    if page is not None and (isinstance(page, bool) or not isinstance(page, int)):
        raise ValueError(f"{p}: `{FIGURE_KEY}.page` must be an integer, got {page!r}")
    if page is not None and not section.get("title"):
        raise ValueError(f"{p}: a figure on the results page (`page`) needs a `title`")
    claims = []
    for i, c in enumerate(section.get("claims") or []):
        where = f"{p}: `{FIGURE_KEY}.claims[{i}]`"
        if not isinstance(c, dict) or sorted(set(c) - set(_CLAIM_FIELDS)):
            raise ValueError(f"{where} must be a mapping of {', '.join(_CLAIM_FIELDS)}, got {c!r}")
        if isinstance(c.get("claim"), bool) or not isinstance(c.get("claim"), int):
            raise ValueError(f"{where}: `claim` must be the claim's number, got {c.get('claim')!r}")
        if not isinstance(c.get("tests"), str) or not c["tests"]:
            raise ValueError(f"{where}: `tests` must name the test (a non-empty string)")
        if c.get("table") is not None and not (isinstance(c["table"], str) and c["table"].isidentifier()):
            raise ValueError(f"{where}: `table` must be a table stem like many_seeds, got {c['table']!r}")
        claims.append(ClaimSource(c["claim"], p.stem, c["tests"], c.get("table")))
    rules = section.get("rules") or {}
    if not isinstance(rules, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rules.items()):
        raise ValueError(f"{p}: `{FIGURE_KEY}.rules` must map parameter names to rule names, got {rules!r}")
    flags = {}
    for key in ("mlp", "field", "runs_last"):
        flags[key] = section.get(key, False)
        if not isinstance(flags[key], bool):
            raise ValueError(f"{p}: `{FIGURE_KEY}.{key}` must be true or false, got {flags[key]!r}")
    return Figure(p.stem, section.get("title", ""), section.get("shows", ""), page, tuple(claims), dict(rules), **flags)


def figure(name: str) -> Figure:
    """The `figure:` section of profiles/<name>.yaml (an empty Figure when the file or the section is absent)."""
    path = profile_file(Path(str(name)).stem)
    if not path.is_file():
        return Figure(Path(str(name)).stem)
    st = path.stat()
    return _figure(str(path), st.st_mtime_ns, st.st_size)


def all_figures() -> list[Figure]:
    """Every profile file's figure (executor.yaml, the executors' settings, is not one), sorted by name."""
    return [figure(p.stem) for p in sorted(PROFILE_DIR.glob("*.yaml")) if p.stem != "executor"]


def page_figures() -> list[Figure]:
    """The figures on the results page, in page order."""
    return sorted((f for f in all_figures() if f.page is not None), key=lambda f: (f.page, f.name))


def claim_sources() -> list[ClaimSource]:
    """Every claim test of every figure: by claim, then in page order (a figure's own tests in its file's order)."""
    rank = {f.name: i for i, f in enumerate(page_figures())}
    sources = [c for f in all_figures() for c in f.claims]
    return sorted(sources, key=lambda c: (c.claim, rank.get(c.figure, len(rank))))  # stable: file order kept


def flagged(key: str) -> tuple[str, ...]:
    """The figures whose section sets `key` (mlp, field, runs_last) true, sorted."""
    return tuple(f.name for f in all_figures() if getattr(f, key))
