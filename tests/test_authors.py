"""The authors' method definitions (ll_readout, rep_ub) and the precision setting (issue 10)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from repspec_utils.infra import cache
from repspec_utils.infra.registry import OBJECTIVES
from repspec_utils.method import penalties as authors
from repspec_utils.method.penalties import make_penalty
from repspec_utils.models import MLP, activation_derivative
from repspec_utils.training import TrainConfig, make_optimizer, train_step, validate


def _net(seed=0, d_in=4, width=6):
    torch.manual_seed(seed)
    return MLP(d_in, [width], 3, init_std=0.5, seed=seed).double()


def _step(method, model, x, y, lam=0.1, wd=1e-3):
    cfg = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [6]}, method=method, lam=lam,
                      weight_decay=wd, lr=0.1, epochs=2, burn_in=1)
    opt = make_optimizer(cfg, model)
    pen = make_penalty(cfg, model, x)
    train_step(model, opt, OBJECTIVES["supervised"], x, y, None, pen, lam if pen is not None else 0.0)
    return model


def test_ll_readout_moves_only_the_readout_relative_to_none():
    base = _net()
    x, y = torch.rand(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    a, b = _step("none", copy.deepcopy(base), x, y), _step("ll_readout", copy.deepcopy(base), x, y)
    assert torch.equal(a.hidden[0].weight, b.hidden[0].weight)  # W1 exactly where 'none' leaves it
    assert torch.equal(a.hidden[0].bias, b.hidden[0].bias)
    assert not torch.allclose(a.readout.weight, b.readout.weight)  # the readout is penalised
    c = _step("ll", copy.deepcopy(base), x, y)
    assert not torch.allclose(a.hidden[0].weight, c.hidden[0].weight)  # the paper's ll reaches W1


def test_gelu_derivative_matches_autograd():
    z = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.gelu(z).sum(), z)
    assert torch.allclose(activation_derivative("gelu")(z), g, atol=1e-12)
    peak = activation_derivative("gelu")(torch.tensor(math.sqrt(2), dtype=torch.float64))
    assert abs(peak.item() - 1.1289) < 1e-4  # max GELU′, at +√2


def test_rep_ub_activation_term_by_hand_on_a_two_unit_net():
    net = MLP(2, [2], 2, init_std=1.0, seed=3).double()
    x = torch.tensor([[0.2, -1.0], [1.5, 0.3], [-0.7, 0.9]], dtype=torch.float64)
    pen = authors.RepUBPenalty(net, None, mode="exact")
    net.train()
    net(x)
    W, b = net.hidden[0].weight.detach(), net.hidden[0].bias.detach()
    by_hand = 0.0
    for row in x:
        z = W @ row + b
        dphi = [0.5 * (1 + math.erf(v / math.sqrt(2))) + v * math.exp(-v * v / 2) / math.sqrt(2 * math.pi)
                for v in z.tolist()]
        by_hand += max(d * d for d in dphi) / len(x)
    assert abs(pen.activation_value().item() - by_hand) < 1e-12
    sigma2 = torch.linalg.matrix_norm(W, ord=2).item() ** 2
    assert abs(pen.penalty().item() - (sigma2 + by_hand)) < 1e-10
    pen.close()


def test_rep_ub_batched_engine_matches_penalty_definition():
    from repspec_utils.models import BatchedMLP

    net = BatchedMLP([0, 1], 2, [5], 2, init_std=1.0).double()
    x = torch.rand(7, 2, dtype=torch.float64)
    logits, pre = net.forward_with_preacts(x)
    assert torch.allclose(logits, net(x))
    single = net.member(1).double()
    single.train()
    pen = authors.RepUBPenalty(single, None, mode="exact")
    single(x)
    assert torch.allclose(authors.activation_term(pre, "gelu")[1], pen.activation_value())
    pen.close()


@pytest.mark.parametrize("changes, needle", [
    ({"method": "bogus"}, "ll_readout"),
    ({"method": "rep_ub", "model": {"kind": "cifar_resnet18"}}, "rep_ub"),
    ({"precision": "fp16"}, "precision"),
    ({"lam": -1.0}, "lam"),
])
def test_bad_method_settings_rejected_before_training(changes, needle):
    cfg = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [3]}, epochs=2, burn_in=1).replace(**changes)
    with pytest.raises(ValueError, match=needle):
        validate(cfg)


def test_ll_readout_needs_a_readout():
    with pytest.raises(ValueError, match="readout"):
        authors.readout_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_precision_enters_the_key_only_when_not_default():
    cfg = TrainConfig(dataset="mnist", model={"kind": "mlp", "widths": [10]})
    legacy = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("precision", "schedule")}
    assert cache.make_key(cfg=cfg) == cache.make_key(cfg=legacy)  # existing keys unchanged
    assert cache.make_key(cfg=cfg) != cache.make_key(cfg=cfg.replace(precision="bf16"))


def test_bf16_attack_points_are_adversarial_in_fp32():
    from repspec_utils.attacks import tangent_attack

    torch.manual_seed(0)
    net = MLP(20, [64], 4, init_std=1.0, seed=0)
    x = torch.rand(12, 20)
    y = net(x).argmax(1)
    from repspec_utils.attacks import BF16AttackWarning

    with pytest.warns(BF16AttackWarning, match="overstates the distance"):  # said, not silent
        res = tangent_attack(net, x, y, T=5, seed=0, precision="bf16")
    with torch.no_grad():
        pred = net(res.x_adv).argmax(1)
    assert res.success.any()
    assert (pred[res.success] != y[res.success]).all()  # adversarial for the fp32 model
    assert torch.allclose(res.distance[res.success], (res.x_adv - x).flatten(1).norm(dim=1)[res.success])
    with pytest.raises(ValueError, match="precision"):
        tangent_attack(net, x, y, T=1, precision="fp16")
