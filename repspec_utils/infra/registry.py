"""The named tables every plug-in registers itself in (a leaf module: imports nothing from the package).

| table           | a name resolves to                                                | registered in            |
|-----------------|-------------------------------------------------------------------|--------------------------|
| `DATASETS`      | loader(**kwargs) -> (train, test) ArrayDatasets                   | `data.*`                 |
| `MODELS`        | builder(spec: dict) -> RepModel                                   | `models`, `defences`     |
| `METHODS`       | factory(cfg, model, example_x) -> penalty object, or None         | `method.penalties`, `defences` |
| `OBJECTIVES`    | objective(model, x, y, gen) -> (loss, features, n_correct)        | `training.loop`, `defences.barlow` |
| `AUGMENTATIONS` | augment(x, gen) -> x                                              | `training.augment`, `defences.barlow` |
| `PRECISIONS`    | what the precision does (a sentence)                              | `attacks.precision`      |
| `INITS`         | what the initialisation draws (a sentence)                        | `models.base`            |

A plug-in module registers with a decorator, the way torchvision registers its models:

    from repspec_utils.infra.registry import METHODS

    @METHODS.register("my_penalty", doc="what it penalises")
    def make_my_penalty(cfg, model, example_x): ...

The first read of any table imports every plug-in module (`PLUGINS`, `load_plugins`), so every name is
registered whatever is imported first, and importing the package alone stays light (no torch). The valid names of a
table are `TABLE.names()`; an unknown name raises a ValueError that lists them (`TABLE.lookup(name)`).

A table may also have a *catalogue*: a YAML file in the package that declares, per name, how it is shown (label,
colour, order, roles) and that is read without importing any plug-in (`TABLE.catalogue()`, `TABLE.display(name)`),
so that code which only draws or tabulates (the analysis layer) takes its names from the registry with no torch.
METHODS has one (`method/catalogue.yaml`); a test checks it against the registrations.
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "DATASETS", "MODELS", "METHODS", "OBJECTIVES", "AUGMENTATIONS", "PRECISIONS", "INITS", "TABLES"]


# The plug-in modules (relative to this package), imported on the first read of any table, in this order (their
# dependencies first), so every name is registered whatever was imported before and a light import of the package
# (the CLI's --help, the analysis of committed tables) does not load torch. Named here, not imported: a leaf.
PLUGINS = ("data", "models", "attacks.precision", "method.penalties", "training.loop", "training.augment", "defences.barlow",
           "defences.transfer", "defences.adversarial")
_LOADED = threading.Event()
_LOADING = threading.RLock()
_BUSY: list[bool] = [False]  # set while this thread imports the plug-ins (the lock is re-entrant)


def load_plugins() -> None:
    """Import every plug-in module once (registering its entries); a no-op afterwards, and while it runs (a plug-in
    reading a table as it loads sees what is registered so far, as an eager import order would give it)."""
    if _LOADED.is_set():
        return
    with _LOADING:
        if _LOADED.is_set() or _BUSY[0]:
            return
        _BUSY[0] = True
        try:
            for name in PLUGINS:
                importlib.import_module(f"repspec_utils.{name}")
            _LOADED.set()
        finally:
            _BUSY[0] = False


class Registry(Mapping[str, T], Generic[T]):
    """A name -> object table with a `register` decorator, optional per-entry metadata, and errors that list
    the valid names. Read-only as a Mapping; entries are added only through `register`."""

    def __init__(self, kind: str, catalogue: str | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._catalogue_file = None if catalogue is None else Path(__file__).resolve().parents[1] / catalogue
        self._catalogue: dict[str, dict[str, Any]] | None = None

    def register(self, name: str, obj: T | None = None, **meta: Any):
        """Register `obj` under `name` (or use as a decorator: `@TABLE.register(name, **meta)`).
        A second registration of the same name with a different object is an error."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(o: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not o and _qualname(old) != _qualname(o):
                raise ValueError(f"{self.kind} {name!r} is already registered ({_qualname(old)}); "
                                 f"refusing to replace it with {_qualname(o)}")
            self._items[name] = o
            self._meta[name] = dict(meta)
            return o

        return add if obj is None else add(obj)

    def lookup(self, name: str) -> T:
        """The object registered as `name`; ValueError naming the valid names if there is none (`get` keeps the
        Mapping meaning: None or a default)."""
        self.check(name)
        return self._items[name]

    def check(self, name: Any) -> None:
        """ValueError unless `name` is registered."""
        load_plugins()
        if not isinstance(name, str) or name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}")

    def meta(self, name: str) -> dict[str, Any]:
        """The keyword metadata given at registration (a copy)."""
        self.check(name)
        return dict(self._meta[name])

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        load_plugins()
        return tuple(sorted(self._items))

    def where(self, **meta: Any) -> tuple[str, ...]:
        """The names whose metadata has every given key with the given value, sorted."""
        return tuple(n for n in self.names() if all(self._meta[n].get(k) == v for k, v in meta.items()))

    def where_has(self, key: str) -> tuple[str, ...]:
        """The names whose metadata has `key` (any value), sorted."""
        return tuple(n for n in self.names() if key in self._meta[n])

    def catalogue(self) -> dict[str, dict[str, Any]]:
        """The declared entries {name: fields}, in the file's order (the house order); read once, importing no plug-in.
        Empty for a table without a catalogue."""
        if self._catalogue is None:
            self._catalogue = {} if self._catalogue_file is None else _read_catalogue(self._catalogue_file, self.kind)
        return self._catalogue

    def display(self, name: str) -> dict[str, Any]:
        """How `name` is shown: its catalogue entry; else, for a name registered at run time (a user's own plug-in,
        so the plug-ins are loaded already), the `label` / `colour` given at registration; else {} (shown as is)."""
        entry = self.catalogue().get(name)
        if entry is not None:
            return dict(entry)
        meta = self._meta.get(name, {})
        return {k: meta[k] for k in ("label", "colour") if k in meta}

    def __getitem__(self, name: str) -> T:
        load_plugins()
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        load_plugins()
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def _read_catalogue(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in data.items()):
        raise ValueError(f"{path}: the {kind} catalogue must map each name to a mapping of its fields")
    for name, entry in data.items():
        if not isinstance(entry.get("label"), str) or not entry["label"]:
            raise ValueError(f"{path}: {kind} {name!r} needs a non-empty `label`")
        of = entry.get("of")
        if of is not None and of not in data:
            raise ValueError(f"{path}: {kind} {name!r} is a setting `of` {of!r}, which has no entry")
    return {k: dict(v) for k, v in data.items()}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


DATASETS: Registry[Callable[..., Any]] = Registry("dataset")
MODELS: Registry[Callable[[dict], Any]] = Registry("model kind")
METHODS: Registry[Callable[..., Any]] = Registry("method", catalogue="method/catalogue.yaml")
OBJECTIVES: Registry[Callable[..., Any]] = Registry("objective")
AUGMENTATIONS: Registry[Callable[..., Any]] = Registry("augmentation")
PRECISIONS: Registry[str] = Registry("precision")
INITS: Registry[str] = Registry("initialisation")
TABLES: Mapping[str, Registry] = {"datasets": DATASETS, "models": MODELS, "methods": METHODS,
                                  "objectives": OBJECTIVES, "augmentations": AUGMENTATIONS,
                                  "precisions": PRECISIONS, "inits": INITS}
