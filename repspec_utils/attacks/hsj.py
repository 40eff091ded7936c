"""HopSkipJump (Chen et al. 2020), L2, hard-label: a geometric step along the estimated boundary normal, then
bisection back to the boundary."""

from __future__ import annotations

from torch import Tensor, nn

from repspec_utils.attacks.base import AttackResult
from repspec_utils.attacks.boundary import BoundaryOptions, boundary_attack, with_options_signature
from repspec_utils.attacks.precision import in_full_fp32


def _hsj_step(x0: Tensor, xb: Tensor, u: Tensor, size: Tensor) -> Tensor:
    """HSJ proposal: xb + size·u (geometric progression along the estimated gradient direction)."""
    return xb + size.to(xb.dtype)[:, None] * u


@in_full_fp32
@with_options_signature
def hop_skip_jump(model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0), **options) -> AttackResult:
    """HopSkipJump (Chen et al. 2020, L2, untargeted, geometric step ‖x_b − x‖/√t): x (N, ...) -> AttackResult."""
    return boundary_attack(_hsj_step, "hsj", model, x, y, box, BoundaryOptions(**options))
