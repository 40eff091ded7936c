"""Pull-back metric, λ_max(g) and the volume element against exact references (closed forms, linear maps)."""

import math

import numpy as np
import pytest
import torch

from repspec_utils.evaluation import geometry as G
from repspec_utils.models import MLP, BatchedMLP

torch.set_num_threads(1)


def _mlp_2d(activation: str, width: int = 8, seed: int = 0) -> MLP:
    """A 2-D one-hidden-layer float64 MLP with O(1) weights (the N(0, 0.01²) init is too flat to test)."""
    m = MLP(2, [width], 2, activation=activation, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return m


def _points(model: MLP, n: int = 200, kink_gap: float = 1e-3) -> torch.Tensor:
    x = (torch.rand(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5) * 7.0
    if model.activation == "relu":  # stay away from the kinks z_j = 0, where φ′ jumps
        z = model.hidden[0](x)
        x = x[z.abs().min(dim=1).values > kink_gap]
    return x


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh", "softplus"])
def test_autograd_metric_matches_closed_form(activation):
    m = _mlp_2d(activation)
    x = _points(m)
    g = G.pullback_metric(m, x)
    torch.testing.assert_close(g, G.metric_2d(m, x), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(G.metric_lambda_max(m, x), G.lambda_max_2d(m, x), rtol=1e-5, atol=0)
    # volume element: autograd slogdet vs Cauchy–Binet (compare √det g; both 0 where fewer than 2 units are active)
    vol_auto = torch.exp(G.log_volume_element(m, x))
    torch.testing.assert_close(vol_auto, G.volume_element_2d(m, x), rtol=1e-5, atol=1e-12)
    lam, logvol = G.metric_stats(m, x)
    torch.testing.assert_close(lam, G.lambda_max_2d(m, x), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.exp(logvol), G.volume_element_2d(m, x), rtol=1e-5, atol=1e-12)


def test_cauchy_binet_equals_det_of_metric():
    m = _mlp_2d("gelu", width=5, seed=3)
    x = _points(m, 50)
    torch.testing.assert_close(G.volume_element_2d(m, x) ** 2, torch.linalg.det(G.metric_2d(m, x)), rtol=1e-9, atol=1e-15)


def test_gelu_derivative_is_exact():
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (dz,) = torch.autograd.grad(torch.nn.functional.gelu(z).sum(), z)
    torch.testing.assert_close(G.activation_derivative("gelu", z.detach()), dz, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(5, 3), (3, 3), (2, 4)])
def test_linear_feature_map(shape):
    """Φ(x) = Ax: g = AᵀA exactly, λ_max = σ_max(A)², log √det g = ½ logdet(AᵀA) (−inf / error when p < d)."""
    p, d = shape
    A = torch.randn(p, d, generator=torch.Generator().manual_seed(p * 10 + d), dtype=torch.float64)
    phi = lambda x: x @ A.T  # noqa: E731
    x = torch.randn(7, d, dtype=torch.float64)
    for mode in ("fwd", "rev"):
        torch.testing.assert_close(G.pullback_metric(phi, x, mode=mode), (A.T @ A).expand(7, d, d), rtol=1e-12, atol=1e-12)
    sigma_max = torch.linalg.matrix_norm(A, 2)
    torch.testing.assert_close(G.metric_lambda_max(phi, x), (sigma_max**2).expand(7), rtol=1e-10, atol=0)
    eig = G.metric_eigenvalues(phi, x)
    assert eig.shape == (7, min(p, d))
    torch.testing.assert_close(eig[0], torch.linalg.svdvals(A) ** 2, rtol=1e-10, atol=1e-12)
    if p >= d:
        expected = 0.5 * torch.logdet(A.T @ A)
        torch.testing.assert_close(G.log_volume_element(phi, x), expected.expand(7), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(G.metric_stats(phi, x)[1], expected.expand(7), rtol=1e-10, atol=1e-12)
    else:
        with pytest.raises(ValueError, match="det g = 0"):
            G.log_volume_element(phi, x)
        assert torch.isneginf(G.log_volume_element(phi, x, singular="-inf")).all()
        assert torch.isneginf(G.metric_stats(phi, x)[1]).all()


def test_image_shaped_input_and_chunking():
    """A deep MLP on (1, 4, 4) inputs: J (N, p, 16) equals the chain D₂W₂D₁W₁/√(n₁n₂), for any chunk size and mode."""
    m = MLP(16, [6, 5], 3, activation="tanh", seed=0).double()
    with torch.no_grad():
        for q in m.parameters():
            q.normal_(generator=torch.Generator().manual_seed(q.numel()))
    x = torch.randn(9, 1, 4, 4, dtype=torch.float64)
    W1, b1, W2, b2 = m.hidden[0].weight, m.hidden[0].bias, m.hidden[1].weight, m.hidden[1].bias
    with torch.no_grad():
        z1 = x.flatten(1) @ W1.T + b1
        z2 = torch.tanh(z1) / math.sqrt(6) @ W2.T + b2
        D1, D2 = 1 - torch.tanh(z1) ** 2, 1 - torch.tanh(z2) ** 2
        J_ref = (D2[:, :, None] * W2) @ (D1[:, :, None] * W1) / math.sqrt(6 * 5)
    for chunk, mode in [(None, "auto"), (2, "fwd"), (4, "rev")]:
        torch.testing.assert_close(G.feature_jacobian(m, x, chunk=chunk, mode=mode), J_ref, rtol=1e-10, atol=1e-14)


def _member64(bm: BatchedMLP, i: int) -> MLP:
    """Member i as a float64 MLP (BatchedMLP.member builds a float32 MLP, which would round the weights)."""
    m = MLP(bm.d_in, bm.widths, bm.n_classes, bm.activation).double()
    with torch.no_grad():
        for layer, W, b in zip([*m.hidden, m.readout], bm.weights, bm.biases):
            layer.weight.copy_(W[i])
            layer.bias.copy_(b[i])
    return m


def test_batched_mlp_matches_members():
    bm = BatchedMLP([0, 1, 2], 2, [6], 2, activation="gelu").double()
    with torch.no_grad():
        for q in bm.parameters():
            q.normal_(generator=torch.Generator().manual_seed(q.numel()))
    x = torch.randn(30, 2, dtype=torch.float64)
    vol, lam = G.volume_element_2d(bm, x), G.lambda_max_2d(bm, x)
    assert vol.shape == lam.shape == (3, 30)
    g_auto = G.pullback_metric(bm, x)
    assert g_auto.shape == (3, 30, 2, 2)
    lam_auto, logvol_auto = G.metric_stats(bm, x)
    for i in range(3):
        mi = _member64(bm, i)
        torch.testing.assert_close(vol[i], G.volume_element_2d(mi, x), rtol=1e-12, atol=0)
        torch.testing.assert_close(lam[i], G.lambda_max_2d(mi, x), rtol=1e-12, atol=0)
        torch.testing.assert_close(g_auto[i], G.metric_2d(mi, x), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(lam_auto, lam, rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.exp(logvol_auto), vol, rtol=1e-5, atol=1e-12)


def test_closed_form_rejects_other_architectures():
    with pytest.raises(ValueError):
        G.volume_element_2d(MLP(2, [4, 4], 2), torch.zeros(1, 2))
    with pytest.raises(ValueError):
        G.lambda_max_2d(MLP(3, [4], 2), torch.zeros(1, 3))


def test_batchnorm_in_train_mode_is_refused():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match="eval"):
        G.metric_lambda_max(net, torch.zeros(4, 2))
    net.eval()
    assert G.metric_lambda_max(net, torch.zeros(4, 2)).shape == (4,)


def test_grid_2d_ordering():
    xx, yy, pts = G.grid_2d(lim=3.5, n=7)
    assert xx.shape == yy.shape == (7, 7) and pts.shape == (49, 2)
    np.testing.assert_allclose(pts[:, 0].numpy(), xx.ravel(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(pts[:, 1].numpy(), yy.ravel(), rtol=0, atol=1e-6)
    assert xx.min() == -3.5 and yy.max() == 3.5 and xx[0, 1] > xx[0, 0] and yy[1, 0] > yy[0, 0]


def test_digit_plane_reproduces_digits():
    gen = torch.Generator().manual_seed(0)
    x1, x2, x3 = (torch.rand(1, 28, 28, generator=gen, dtype=torch.float64) for _ in range(3))
    plane = G.digit_plane(x1, x2, x3, n=40)
    assert plane.coords.shape == (1600, 2) and plane.points.shape == (1600, 784) and plane.xx.shape == (40, 40)
    back = G.plane_points(plane.origin, plane.e1, plane.e2, plane.digit_coords)
    for i, xi in enumerate((x1, x2, x3)):
        torch.testing.assert_close(back[i], xi.reshape(-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(plane.digit_coords, torch.tensor(G.DIGIT_PLANE_COORDS, dtype=torch.float64))
    # the grid is the documented affine map of its coordinates; the corners are (±1, ±1)
    torch.testing.assert_close(plane.points, G.plane_points(plane.origin, plane.e1, plane.e2, plane.coords))
    assert plane.coords.abs().max() == 1.0
    # float32 digits: the same within 1e-6
    p32 = G.digit_plane(x1.float(), x2.float(), x3.float(), n=4)
    back32 = G.plane_points(p32.origin, p32.e1, p32.e2, p32.digit_coords)
    torch.testing.assert_close(back32, torch.stack([x1, x2, x3]).reshape(3, -1).float(), rtol=0, atol=1e-6)


def test_triangle_edges():
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(784, generator=gen, dtype=torch.float64) for _ in range(3)]
    edges = G.triangle_edges(*xs, n=40)
    assert edges.points.shape == (120, 784) and edges.coords.shape == (120, 2) and edges.position.shape == (120,)
    for i in range(3):
        torch.testing.assert_close(edges.points[40 * i], xs[i], rtol=0, atol=1e-12)
        torch.testing.assert_close(edges.points[40 * i + 39], xs[(i + 1) % 3], rtol=0, atol=1e-12)
    plane = G.digit_plane(*xs, n=2)
    torch.testing.assert_close(G.plane_points(plane.origin, plane.e1, plane.e2, edges.coords), edges.points, rtol=0, atol=1e-12)


def test_decision_function_grid():
    m = MLP(2, [4], 2, seed=0).double()
    x = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
    torch.testing.assert_close(G.decision_function_grid(m, x, batch=3), out[:, 1] - out[:, 0])
    bm = BatchedMLP([0, 1], 2, [4], 2)
    assert G.decision_function_grid(bm, x.float()).shape == (2, 10)
    with pytest.raises(ValueError, match="2-class"):
        G.decision_function_grid(MLP(2, [4], 3), x)


def test_tradeoff_examples_exact():
    a, b, c = G.tradeoff_examples()
    assert (a.accuracy, b.accuracy, c.accuracy) == (0.5, 1.0, 1.0)
    assert b.mean_distance < c.mean_distance and b.mean_distance < a.mean_distance
    np.testing.assert_allclose(b.distances, 0.2, rtol=0, atol=1e-12)  # the zigzag passes 0.2 from every point
    np.testing.assert_allclose(c.distances, np.abs(c.points[:, 0]), rtol=0, atol=1e-12)  # boundary x = 0
    np.testing.assert_allclose(a.distances, np.abs(a.points[:, 1]), rtol=0, atol=1e-12)  # boundary y = 0
    for ex in (a, b, c):  # the nearest boundary points lie on the boundary, at the reported distance
        d, near = ex.nearest_boundary(ex.points)
        np.testing.assert_allclose(ex.decision(near), 0.0, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(near - ex.points, axis=1), d, atol=1e-12)
