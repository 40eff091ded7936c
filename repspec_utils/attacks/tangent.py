"""Tangent Attack (Ma et al. 2021): from the boundary point, step to the tangent point of the hemisphere of
radius ‖x_b − x‖ · size around x_b, then bisect back to the boundary."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from repspec_utils.attacks.base import AttackResult
from repspec_utils.attacks.boundary import BoundaryOptions, boundary_attack, with_options_signature
from repspec_utils.attacks.precision import in_full_fp32


# ----------------------------------------------------------------------------------------------------
# The two steps
# ----------------------------------------------------------------------------------------------------
def _tangent_point(x0: Tensor, xb: Tensor, u: Tensor, radius: Tensor) -> Tensor:
    """Tangent point, seen from x0, of the hemisphere {‖z − xb‖ = R, (z − xb)·u ≥ 0} (rows; u unit normal).

    Geometry (Ma et al. 2021), in the 2-D plane through xb spanned by u and x0 − xb, origin xb:
      v = x0 − xb = a·u + b·e2 with a = v·u (< 0 when x0 lies on the benign side), b = ‖v − a u‖ ≥ 0,
      e2 = (v − a u)/b, D = ‖v‖ ≥ R (R = D/√t·2^-k), s = √(D² − R²) (the tangent length from x0).
      A point K = R(cos θ u + sin θ e2) of the circle is a tangent point iff (K)·(v − K) = 0, i.e.
      a cos θ + b sin θ = R/D. Of the two roots, θ = atan2(b, a) − arccos(R/D) is the one on x0's side
      (sin θ ≥ 0), the one whose tangent line from x0 cuts the plane {z·u = 0} closest to x0's foot:
          K = xb + (R/D²)·[(aR + b s)·u + (bR − a s)·e2]      (‖K − xb‖ = R, K·v = R²).
      It lies on the adversarial hemisphere iff cos θ ≥ 0 ⇔ aR + b s ≥ 0 ⇔ (for a < 0) b ≥ R.
      If b < R the foot of x0 on the plane, xb + b e2, is inside the hemisphere's base: no tangent line
      does better than the perpendicular from x0, and we take the hemisphere point above that foot,
          K = xb + √(R² − b²)·u + b·e2,
      which meets the tangent formula at b = R (both give xb + R e2), so K is continuous in R. (At t = 1,
      R = D, this reflects x0 across the plane.) If b = 0 (x0 straight below xb), e2 = 0 and K = xb + R u.
    The caller clamps K to the box."""
    v = x0 - xb
    a = (v * u).sum(1)
    w = v - a[:, None] * u
    b = w.norm(dim=1)
    d2 = (v * v).sum(1)
    e2 = w / b.clamp_min(torch.finfo(v.dtype).tiny)[:, None]
    e2 = torch.where((b > 1e-12 * d2.sqrt())[:, None], e2, torch.zeros_like(e2))
    r = radius.to(v.dtype)
    s = (d2 - r * r).clamp_min(0).sqrt()
    cu, ce = a * r + b * s, b * r - a * s
    tangent = xb + (r / d2)[:, None] * (cu[:, None] * u + ce[:, None] * e2)
    above_foot = xb + (r * r - b * b).clamp_min(0).sqrt()[:, None] * u + b[:, None] * e2
    return torch.where((cu >= 0)[:, None], tangent, above_foot)


def _tangent_step(x0: Tensor, xb: Tensor, u: Tensor, size: Tensor) -> Tensor:
    """TA proposal: tangent point of the hemisphere of radius `size` centred at xb."""
    return _tangent_point(x0, xb, u, size)


@in_full_fp32
@with_options_signature
def tangent_attack(model: nn.Module, x: Tensor, y: Tensor | None = None, box=(0.0, 1.0), **options) -> AttackResult:
    """Tangent Attack (Ma et al. 2021, hemisphere, L2, untargeted, hard-label): x (N, ...) -> AttackResult."""
    return boundary_attack(_tangent_step, "tangent", model, x, y, box, BoundaryOptions(**options))
