"""The declared range of every notebook parameter, in one place: read by the batch runner (`repspec run`, also
with --list), by papermill and interactive runs (the notebook's first cell, `notebook.notebook_params`), so a bad
value is rejected with its name, the value and the allowed range before any training starts.

`RULES` maps a parameter name to the values it accepts, whatever notebook has it (names mean the same thing in
every notebook); `RELATIONS` are the checks between parameters (burn-in before the last epoch, ...). A name that
is in no table is only type-checked against its default. Add a rule when you add a parameter.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from repspec_utils.infra import figures, registry
from repspec_utils.infra.executor import EXECUTORS

__all__ = ["Rule", "RULES", "NAMED_RULES", "RELATIONS", "rules_for", "check_value", "check_relations", "describe"]


class Rule:
    """Values a parameter accepts: `ok(value)` is True; `text` says which in words (e.g. 'an integer ≥ 1'), given as a
    string or as a function that returns it when shown (for tables filled on import, like the method registry)."""

    def __init__(self, ok: Callable[[Any], bool], text: str | Callable[[], str]):
        self.ok, self._text = ok, text

    @property
    def text(self) -> str:
        return self._text() if callable(self._text) else self._text

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def at_least(lo: float, integer: bool = False, strict: bool = False) -> Rule:
    kind = "an integer" if integer else "a finite number"
    return Rule(lambda v: (_int(v) if integer else _num(v)) and (v > lo if strict else v >= lo),
                f"{kind} {'>' if strict else '≥'} {lo:g}")


def between(lo: float, hi: float, open_: bool = False) -> Rule:
    return Rule(lambda v: _num(v) and ((lo < v < hi) if open_ else (lo <= v <= hi)),
                f"a number in {'(' if open_ else '['}{lo:g}, {hi:g}{')' if open_ else ']'}")


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, f"one of {', '.join(map(repr, choices))}")


def non_empty_list(element: Rule, unique: bool = False, length: int | None = None) -> Rule:
    def ok(v):
        if not isinstance(v, (list, tuple)) or not v or (length is not None and len(v) != length):
            return False
        if unique and len({repr(e) for e in v}) != len(v):
            return False
        return all(element.ok(e) for e in v)

    size = f"{length} " if length is not None else "a non-empty list of "
    return Rule(ok, lambda: f"{size}{'distinct ' if unique else ''}values, each {element.text}")  # read when shown


def registered(table: str) -> Rule:
    """A name registered in `registry.TABLES[table]` (read when checked: the plug-ins register on first read)."""
    names = registry.TABLES[table]
    return Rule(lambda v: isinstance(v, str) and v in names, lambda: f"one of {', '.join(map(repr, names.names()))}")


def registered_meta(table: str, key: str) -> Rule:
    """A value of the metadata `key` of some entry of `registry.TABLES[table]` (e.g. the datasets' `task`)."""
    names = registry.TABLES[table]

    def values() -> list:
        return sorted({names.meta(n)[key] for n in names.where_has(key)})
    return Rule(lambda v: isinstance(v, str) and v in values(), lambda: f"one of {', '.join(map(repr, values()))}")


def _methods() -> Rule:
    """Distinct registered method names (`registered` in a `non_empty_list`), said in words of methods."""
    return Rule(non_empty_list(registered("methods"), unique=True).ok,
                lambda: f"a non-empty list of distinct method names from: {', '.join(registry.METHODS.names())}")


def int_in(lo: int, hi: int, note: str = "") -> Rule:
    return Rule(lambda v: _int(v) and lo <= v <= hi, f"an integer in {lo}..{hi}{note}")


POSITIVE_INT = at_least(1, integer=True)
SEED = int_in(0, 2**32 - 1, " (2**32 - 1: seeds combine with epochs into exact generator seeds)")
WIDTH = int_in(1, 10**6, " (wider nets do not fit a machine's memory; the run checks the exact need)")
# the test sets of the image notebooks: an attack or evaluation count above them cannot be met
MNIST_TEST = int_in(1, 10_000, " (MNIST / Fashion-MNIST have 10000 test images)")
COUNT_OR_ALL = at_least(0, integer=True)       # 0 means "all"
NON_NEGATIVE = at_least(0)
POSITIVE = at_least(0, strict=True)
SEEDS = non_empty_list(SEED, unique=True)
WIDTHS = non_empty_list(WIDTH, unique=True)
STRENGTHS = non_empty_list(NON_NEGATIVE, unique=True)

RULES: dict[str, Rule] = {
    # training
    "seeds": SEEDS, "xor_seeds": SEEDS, "seed": SEED, "map_seed": SEED,
    "epochs": POSITIVE_INT, "xor_epochs": POSITIVE_INT, "pretrain_epochs": POSITIVE_INT,
    "burn_in": at_least(0, integer=True), "xor_burn_in": at_least(0, integer=True),
    "lam": NON_NEGATIVE, "lam_ll": NON_NEGATIVE, "lam_rep": NON_NEGATIVE, "l2sp_beta": NON_NEGATIVE,
    "lams": STRENGTHS, "spectral_lams": STRENGTHS, "bss_lams": STRENGTHS, "l2sp_alphas": STRENGTHS,
    "weight_decay": NON_NEGATIVE, "map_weight_decay": NON_NEGATIVE,
    "weight_decays": STRENGTHS, "xor_weight_decays": STRENGTHS,
    "lr": POSITIVE, "batch_size": int_in(1, 10**7), "reg_every": POSITIVE_INT,
    "width": WIDTH, "map_width": WIDTH, "pretrain_width": WIDTH,
    "widths": Rule(lambda v: WIDTHS.ok(v) or non_empty_list(non_empty_list(WIDTH), unique=True).ok(v),
                   "a non-empty list of distinct widths in 1..10**6 (deep nets: of distinct non-empty lists of them)"),
    "xor_widths": WIDTHS,
    "n_train": COUNT_OR_ALL, "pretrain_n_train": COUNT_OR_ALL, "n_per_class": POSITIVE_INT, "n_test": COUNT_OR_ALL,
    "image_size": at_least(4, integer=True),
    "base_width": int_in(1, 512, " (the first stage's channels of a ResNet; 64 with blocks 2 is ResNet18)"),
    "blocks": int_in(1, 16, " (basic blocks per residual stage)"),
    "methods": _methods(),
    "precision": registered("precisions"),
    "deep_ablation": non_empty_list(POSITIVE_INT, unique=True),
    "stage_ablation": non_empty_list(Rule(lambda v: _int(v) and 0 <= v <= 4, "an integer in 0..4"), unique=True),
    "deep_inits": non_empty_list(registered("inits"), unique=True),
    "n_power_iters": non_empty_list(POSITIVE_INT, unique=True),
    "n_steps": POSITIVE_INT,
    "conv_shapes": non_empty_list(non_empty_list(POSITIVE_INT, length=5)),
    # adversarial training (issue 13): L∞ radii live in the [0, 1] image box
    "lam_lsp": NON_NEGATIVE, "lam_arat": NON_NEGATIVE, "train_eps": between(0, 1), "train_steps": POSITIVE_INT,
    "lsp_k": POSITIVE_INT, "arat_bn": Rule(lambda v: isinstance(v, bool), "True or False"),
    "eval_eps": non_empty_list(between(0, 1), unique=True), "n_eval": POSITIVE_INT, "pgd_steps": POSITIVE_INT,
    "n_autoattack": COUNT_OR_ALL,
    "train_eps_255": between(0, 255), "eval_eps_255": non_empty_list(between(0, 255), unique=True),  # CIFAR: ε·255
    # attacks
    "n_attack": POSITIVE_INT, "attack_T": at_least(0, integer=True), "T": at_least(0, integer=True),
    "many_seeds": int_in(0, 1000, " (0: none)"),
    "attack_probes": POSITIVE_INT, "fmn_steps": POSITIVE_INT,
    # geometry, plots
    "grid_n": at_least(2, integer=True), "n_edge": at_least(2, integer=True),
    "grid_lim": POSITIVE, "lim": POSITIVE, "eps": NON_NEGATIVE,
    "digits": non_empty_list(Rule(lambda v: _int(v) and 0 <= v <= 9, "a digit 0..9"), unique=True, length=3),
    # claims
    "acc_tolerance": NON_NEGATIVE, "level": between(0, 1, open_=True),
    # machine
    "torch_threads": COUNT_OR_ALL,
    "executor": one_of("", *EXECUTORS),
    "max_workers": COUNT_OR_ALL,
}


# Rules a figure takes for one of its parameters instead of RULES', by name, in its profile file (`figure.rules`,
# infra/figures.py): where one notebook gives a name a wider or narrower meaning.
_ANALOGS = ("fashion_mnist", "mnist")  # the conv figures' real-image analogs (28-px MNIST / Fashion-MNIST, issue 27)
NAMED_RULES: dict[str, Rule] = {
    "mnist_test": MNIST_TEST,
    "all_correct": Rule(COUNT_OR_ALL.ok, "an integer ≥ 0 (0: every correctly classified point)"),
    "conv_data": one_of("cifar10", "cifar10_synthetic", *_ANALOGS),  # CIFAR-10, its stand-in, or an analog
    "cifar_data": one_of("cifar10", "cifar10_synthetic"),
    "transfer_tasks": non_empty_list(registered_meta("datasets", "task"), unique=True),  # Fig 8's tasks
    "count_or_recipe": Rule(COUNT_OR_ALL.ok, "an integer ≥ 0 (0: the task's recipe)"),
    "number_or_recipe": Rule(NON_NEGATIVE.ok, "a finite number ≥ 0 (0: the task's recipe)"),
}


def _burn_in(epochs: str, burn_in: str) -> tuple[tuple[str, str], Callable[[Mapping], bool], str]:
    return ((epochs, burn_in), lambda p: p[epochs] == 0 or p[burn_in] < p[epochs],  # 0: a recipe's own epochs
            f"{burn_in} must be below {epochs} (every method branches at {burn_in} and trains to {epochs})")


RELATIONS: list[tuple[tuple[str, ...], Callable[[Mapping], bool], str]] = [
    _burn_in("epochs", "burn_in"),
    _burn_in("xor_epochs", "xor_burn_in"),
    (("n_attack", "n_test"), lambda p: p["n_test"] == 0 or p["n_attack"] <= p["n_test"],
     "n_attack must not exceed n_test (only test samples can be attacked; n_test 0 = all)"),
    (("n_autoattack", "n_eval"), lambda p: p["n_autoattack"] <= p["n_eval"],
     "n_autoattack must not exceed n_eval (AutoAttack runs on the first n_autoattack of the n_eval samples; 0: skip)"),
    (("n_eval", "n_test"), lambda p: p["n_test"] == 0 or p["n_eval"] <= p["n_test"],
     "n_eval must not exceed n_test (the white-box attacks run on n_eval of the test images; n_test 0 = all)"),
    (("dataset", "image_size"), lambda p: p["dataset"] not in _ANALOGS or p["image_size"] == 28,
     "the real-image analogs (fashion_mnist, mnist) have 28-px images: image_size must be 28"),
    (("dataset", "n_test"), lambda p: p["dataset"] not in _ANALOGS or p["n_test"] == 0,
     "the real-image analogs are evaluated on all 10000 test images: n_test must be 0"),
    (("lsp_k", "batch_size"), lambda p: p["lsp_k"] < p["batch_size"],
     "lsp_k must be below batch_size (the neighbours are other samples of the minibatch)"),
]


def rules_for(notebook: str | None) -> dict[str, Rule]:
    """RULES with the notebook's own rules on top (its profile file's `figure.rules`, by name from NAMED_RULES);
    ValueError naming the file for a rule name that does not exist."""
    if notebook is None:
        return dict(RULES)
    fig = figures.figure(str(notebook))
    unknown = sorted(set(fig.rules.values()) - set(NAMED_RULES))
    if unknown:
        raise ValueError(f"{figures.profile_file(fig.name)}: unknown rule name(s) {', '.join(map(repr, unknown))} under "
                         f"figure.rules; valid: {', '.join(NAMED_RULES)}")
    return {**RULES, **{name: NAMED_RULES[rule] for name, rule in fig.rules.items()}}


def describe(name: str, notebook: str | None = None) -> str | None:
    """The allowed values of parameter `name` (of `notebook`) in words, or None when only its type is checked."""
    rule = rules_for(notebook).get(name)
    return rule.text if rule is not None else None


def check_value(name: str, value: Any, error: type[Exception] = ValueError, notebook: str | None = None) -> None:
    """Raise `error` naming the parameter, the value and the allowed range when `value` is outside its rule."""
    rule = rules_for(notebook).get(name)
    if rule is not None and not rule.ok(value):
        raise error(f"parameter {name!r} = {value!r} is out of range: it must be {rule.text}")


def check_relations(params: Mapping[str, Any], error: type[Exception] = ValueError) -> None:
    """Raise `error` when a full parameter set breaks a RELATIONS check (only checks whose parameters it has)."""
    for names, ok, text in RELATIONS:
        if all(n in params for n in names) and not ok(params):
            shown = ", ".join(f"{n}={params[n]!r}" for n in names)
            raise error(f"parameters {shown} contradict each other: {text}")
