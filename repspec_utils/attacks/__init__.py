"""Minimum-norm L2 adversarial attacks on a batch: Tangent Attack, HopSkipJump (hard-label) and FMN (white-box).

Δx = min ‖δ‖₂ such that argmax_k F_k(x + δ) ≠ y with x + δ inside the box [vmin, vmax] (SPEC §4).

The two hard-label attacks (`tangent`, `hsj`) share one batched skeleton, `boundary.boundary_attack`:

    init      a misclassified start point per sample (Gaussian noise, else another given sample)
    bisect    to the decision boundary (tolerance `tol` on the interpolation coefficient)
    repeat t = 1..T:
        estimate the boundary normal at the boundary point x_b from n_t sign probes
        step      (TA: tangent point of a hemisphere; HSJ: geometric step along the normal),
                  halving the step until the proposal is adversarial
        bisect    back to the boundary between x and the proposal

Every model call carries the rows of all active samples at once (chunked to `max_batch` rows) and the
binary searches run in lock-step. `base.Oracle` is the only path to the model: it observes only the argmax,
counts one query per row for the sample that owns the row, and every caller checks the per-sample budget
before asking, so no sample ever exceeds `max_queries`. A sample whose budget cannot pay for the next
iteration stops and keeps its best adversarial point so far. Every returned adversarial point is a point
the model itself labelled adversarial (no re-interpolation after the query).

Randomness: the start-point draws of a sample (its noise starts, its random fallback candidates) come from a
generator of its own, seeded by `seed` and the sample's bytes; the probe directions of iteration t come from one
`torch.Generator(seed)` shared by the batch, whose draws depend only on t. So the same inputs, arguments and seed
give the same result, and with a `pool` given a sample's result does not depend on which other samples share its
batch (with `pool=None` the pool *is* the batch, so the fallback start depends on it by construction).

Modules: `base` (result, checks, Oracle), `precision` (fp32 / bf16 policy), `boundary` (the skeleton), `tangent`,
`hsj`, `fmn`, `pgd`; here: the table of attacks by name (`run_attack`).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from repspec_utils.attacks.base import (AttackResult, NonFiniteLogits, Oracle, check_box, check_budget,
                                        check_finite_logits, check_inputs, check_label_range, check_labels, eval_mode,
                                        model_dtype)
from repspec_utils.attacks.boundary import (OPTIONS_DOC, BoundaryOptions, attack_progress, binary_search,
                                            boundary_attack, estimate_normal, finalize_fp32, initial_adversarial,
                                            sample_generators, step_search, with_options_signature)
from repspec_utils.attacks.fmn import fmn_attack
from repspec_utils.attacks.hsj import hop_skip_jump
from repspec_utils.attacks.pgd import pgd_examples, pgd_linf, robust_accuracy
from repspec_utils.attacks.precision import (BF16_ATTACK_NOTE, PRECISIONS, BF16AttackWarning, check_precision,
                                             full_fp32_matmuls, in_full_fp32)
from repspec_utils.attacks.tangent import tangent_attack

# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------
ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "tangent": tangent_attack,
    "hsj": hop_skip_jump,
    "fmn": fmn_attack,
}


ALIASES = {"ta": "tangent", "tangent_attack": "tangent", "hopskipjump": "hsj", "hop_skip_jump": "hsj"}


def resolve_attack(name: str) -> str:
    """The canonical attack name ('tangent', 'hsj', 'fmn'); ValueError for an unknown one."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)} (aliases {sorted(ALIASES)})")
    return key


def run_attack(name: str, model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0),
               **kwargs) -> AttackResult:
    """Run the attack called `name` ('tangent', 'hsj', 'fmn') on x (N, ...)."""
    return ATTACKS[resolve_attack(name)](model, x, y, box, **kwargs)

__all__ = ['ALIASES', 'ATTACKS', 'AttackResult', 'BF16AttackWarning', 'BF16_ATTACK_NOTE', 'BoundaryOptions', 'NonFiniteLogits', 'OPTIONS_DOC', 'Oracle', 'PRECISIONS', 'attack_progress', 'binary_search', 'boundary_attack', 'check_box', 'check_budget', 'check_finite_logits', 'check_inputs', 'check_label_range', 'check_labels', 'check_precision', 'estimate_normal', 'eval_mode', 'finalize_fp32', 'fmn_attack', 'full_fp32_matmuls', 'hop_skip_jump', 'in_full_fp32', 'initial_adversarial', 'model_dtype', 'pgd_examples', 'pgd_linf', 'resolve_attack', 'robust_accuracy', 'run_attack', 'sample_generators', 'step_search', 'tangent_attack', 'with_options_signature']
