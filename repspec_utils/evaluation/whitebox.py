"""White-box robust accuracy of a trained model: L∞ PGD per ε and AutoAttack (through torchattacks), cached
under the model's key (`whitebox_robustness`)."""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from repspec_utils import attacks as _attacks
from repspec_utils.attacks.base import check_box, eval_mode
from repspec_utils.evaluation.robustness import check_model_output, dataset_identity, model_device, predict
from repspec_utils.infra import cache

# ----------------------------------------------------------------------------------------------------
# White-box robust accuracy at fixed L∞ budgets (issue 13): PGD and AutoAttack
# ----------------------------------------------------------------------------------------------------
WHITEBOX_VERSION = 1


AUTOATTACK_HINT = ("AutoAttack comes from torchattacks, installed without its dependencies (its requests pin "
                   "conflicts with JupyterLab's, and it never imports requests): "
                   "pip install --no-deps 'torchattacks==3.5.1' (scripts/setup.sh does this)")


class _AsImage(nn.Module):
    """A flat-input model seen as an image model (torchattacks' Square attack needs (N, C, H, W))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.flatten(1))


def _image_shape(d: int) -> tuple[int, int, int]:
    side = int(round(d ** 0.5))
    return (1, side, side) if side * side == d else (1, 1, d)


def autoattack_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, seed: int = 0,
                        version: str = "standard", batch_size: int = 500) -> tuple[float, Tensor]:
    """Robust accuracy under AutoAttack (Croce & Hein 2020; torchattacks' implementation: APGD-CE, APGD-T, FAB-T,
    Square at `version='standard'`) at L∞ radius ε, inputs in [0, 1]: (fraction of samples still classified
    correctly, per-sample bool). Flat inputs are shown to it as (N, 1, H, W) images. ImportError with the install
    line when torchattacks is missing."""
    if int(n_classes) < 4:
        raise ValueError(f"AutoAttack's targeted DLR loss needs at least 4 classes, got {n_classes}")
    try:
        import torchattacks
    except ImportError as err:
        raise ImportError(AUTOATTACK_HINT) from err
    flat = x.dim() == 2
    net = _AsImage(model) if flat else model
    xs = x.reshape(x.shape[0], *_image_shape(x.shape[1])) if flat else x
    robust = torch.zeros(x.shape[0], dtype=torch.bool)
    with eval_mode(net):
        attack = torchattacks.AutoAttack(net, norm="Linf", eps=float(eps), version=version, n_classes=int(n_classes),
                                         seed=int(seed))
        for s in range(0, x.shape[0], batch_size):
            xb, yb = xs[s:s + batch_size], y[s:s + batch_size]
            adv = attack(xb, yb)
            with torch.no_grad():
                robust[s:s + batch_size] = (net(adv).argmax(1) == yb).cpu()
    return robust.double().mean().item(), robust


def _whitebox_key(cache_key: dict, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa):
    """The cache key and path of one white-box evaluation (`whitebox_robustness`)."""
    key = cache.make_key(kind="whitebox", model=cache_key, eps=[float(e) for e in eps], n=int(n), seed=seed,
                         pgd_steps=int(pgd_steps), autoattack_eps=autoattack_eps,
                         autoattack_n=None if autoattack_eps is None else n_aa,
                         data=[getattr(test_ds, "name", None), len(test_ds.y), dataset_identity(test_ds)], version=WHITEBOX_VERSION)
    return key, cache.cache_root() / "whitebox" / f"{key}.pt"


def whitebox_is_cached(cache_key: dict, test_ds, eps: list, n: int, seed: int = 0, pgd_steps: int = 40,
                       autoattack_eps: float | None = None, autoattack_n: int | None = None) -> bool:
    """Whether `whitebox_robustness` with these arguments would load its values from the cache (the executor
    submits only the evaluations that are not)."""
    n_aa = int(n) if autoattack_n is None else int(autoattack_n)
    return _whitebox_key(cache_key, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa)[1].exists()


def whitebox_robustness(model: nn.Module, test_ds, eps: list, n: int, seed: int = 0, pgd_steps: int = 40,
                        autoattack_eps: float | None = None, autoattack_n: int | None = None,
                        cache_key: dict | None = None, batch_size: int = 4096) -> dict:
    """White-box robust accuracy of a model on the first n test samples of a seeded shuffle (every sample, not
    only the correctly classified ones: a misclassified sample counts as broken): `pgd_acc_eps=<ε>` for each ε
    (L∞ PGD, uniform random start, `pgd_steps` steps of 2.5ε/steps, one restart) and, with `autoattack_eps`,
    `autoattack_acc` (AutoAttack standard at that ε, on the first `autoattack_n` of the n samples; None: all n).
    Cached under `cache_key` like the attack tables. -> dict of those values with `n_eval`, `clean_acc_eval`
    (accuracy on the same samples), `n_autoattack` and `seconds`."""
    box = check_box(test_ds.box)
    if isinstance(n, bool) or int(n) != n or not 1 <= n <= len(test_ds.y):
        raise ValueError(f"n must be an integer in [1, {len(test_ds.y)}] (the test set's size), got {n!r}")
    width = box[1] - box[0]
    for e in [*eps, *([] if autoattack_eps is None else [autoattack_eps])]:
        if not 0 <= float(e) <= width:
            raise ValueError(f"every ε must lie in [0, {width:g}] (the box's width), got {e!r}")
    if isinstance(pgd_steps, bool) or int(pgd_steps) != pgd_steps or pgd_steps < 1:
        raise ValueError(f"pgd_steps must be an integer >= 1, got {pgd_steps!r}")
    n_aa = int(n) if autoattack_n is None else int(autoattack_n)
    if autoattack_eps is not None and not 1 <= n_aa <= n:
        raise ValueError(f"autoattack_n must be an integer in [1, n={n}], got {autoattack_n!r}")
    path = None
    if cache_key is not None:
        key, path = _whitebox_key(cache_key, test_ds, eps, n, seed, pgd_steps, autoattack_eps, n_aa)
        stored = cache.load(path)
        if stored is not None:
            cache.note_compute("whitebox", key, stored["seconds"])
            return stored
    t0 = time.perf_counter()
    idx = torch.randperm(len(test_ds.y), generator=torch.Generator().manual_seed(int(seed)))[:int(n)]
    dev = model_device(model)
    x, y = test_ds.x[idx].to(dev), test_ds.y[idx].to(dev)
    out = {"n_eval": int(n), "clean_acc_eval": (predict(model, x, batch_size) == y).double().mean().item()}
    for j, e in enumerate(eps):
        out[f"pgd_acc_eps={float(e):g}"] = _attacks.robust_accuracy(model, x, y, float(e), box, steps=int(pgd_steps),
                                                                   seed=int(seed) + j, max_batch=batch_size)
    if autoattack_eps is not None:
        n_classes = check_model_output(model, test_ds.x[:2])
        out["autoattack_acc"] = autoattack_accuracy(model, x[:n_aa], y[:n_aa], autoattack_eps, n_classes,
                                                    seed=seed)[0]
        out["n_autoattack"] = n_aa
    out["seconds"] = time.perf_counter() - t0
    if path is not None:
        cache.save(out, path)
        cache.note_compute("whitebox", key, out["seconds"])
    return out
