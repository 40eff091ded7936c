"""Transfer learning (SPEC §6): the L2-SP and BSS baselines, the stand-in backbone, and the paper's recipes.

Regularisers (registered as METHODS['l2sp'] and METHODS['bss']; the trainer adds cfg.lam × penalty()):

- **L2-SP** (Li, Grandvalet & Davoine, ICML 2018, "Explicit inductive bias for transfer learning with
  convolutional networks", their Ω for L2-SP):  Ω(w) = α/2 ‖w_S − w⁰_S‖² + β/2 ‖w_S̄‖², where w_S are the
  parameters shared with the source network (here every trainable parameter of Φ: conv / linear weights and
  biases, BatchNorm affine parameters), w⁰_S their pretrained values (the starting point of finetuning,
  rebuilt from cfg.model, so not the burn-in checkpoint), and w_S̄ the new head (readout weight and bias).
  α, β come from cfg.method_kwargs ('alpha', default 0.1; 'beta', default 0.01) and the config must have
  lam = 1 (lam would otherwise rescale α and β together). L2-SP replaces weight decay: use weight_decay = 0.
- **BSS** (Chen, Wang, Fu, Long & Wang, NeurIPS 2019, Batch Spectral Shrinkage):  L_bss(F) = η Σ_{i=1..k}
  σ_{−i}(F)², the k smallest singular values of the batch feature matrix F = Φ(x_batch) (B × p). η is
  cfg.lam (SPEC's "BSS λ ∈ {0.01, 0.001}"); method_kwargs: 'k' (default 1). It needs the batch features,
  so it cannot take the penalty-only step at epoch end (reg_epoch_end_step must be False).

The finetuning datasets are in `data.finetune` (dataset names 'transfer_<task>').
"""

from __future__ import annotations

import math
import types
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from repspec_utils.data.finetune import ANALOG_TRANSFER_TAG, STANDIN_TAG, get_transfer_data, transfer_standin
from repspec_utils.data.mnist import MNIST_LIKE
from repspec_utils.infra import cache
from repspec_utils.infra.files import atomic_path, md5_file
from repspec_utils.infra.registry import METHODS, MODELS
from repspec_utils.models.base import RepModel
from repspec_utils.models.mlp import MLP
from repspec_utils.models.resnet import check_small_resnet, small_resnet
from repspec_utils.training.config import TrainConfig
from repspec_utils.training.loop import make_model, train

__all__ = ["L2SP", "BSS", "make_l2sp", "make_bss", "reference_weights", "get_transfer_data", "transfer_standin",
           "pretrain_standin_backbone", "build_standin_model", "standin_finetune_config", "TRANSFER_RECIPES",
           "transfer_config", "STANDIN_TAG", "ANALOG_TRANSFER_TAG", "pretrain_analog_backbone",
           "build_analog_transfer_model", "analog_finetune_config"]


# ------------------------------------------------------------------------------------------- regularisers
def _head_ids(model: nn.Module) -> set[int]:
    return {id(p) for p in model.readout.parameters()}


class L2SP:
    """Ω(w) = α/2 ‖w_S − w⁰_S‖² + β/2 ‖w_head‖² over the trainable parameters of Φ (S) and the readout."""

    needs_features = False

    def __init__(self, model: RepModel, reference: dict[str, Tensor], alpha: float = 0.1, beta: float = 0.01):
        head = _head_ids(model)
        self.alpha, self.beta = float(alpha), float(beta)
        self.head = [p for p in model.readout.parameters() if p.requires_grad]
        self.shared: list[tuple[nn.Parameter, Tensor]] = []
        for name, p in model.named_parameters():
            if id(p) in head or not p.requires_grad:
                continue
            if name not in reference:
                raise ValueError(f"L2-SP: no pretrained value for parameter {name!r}")
            if reference[name].shape != p.shape:
                raise ValueError(f"L2-SP: {name} has shape {tuple(p.shape)}, "
                                 f"its reference {tuple(reference[name].shape)}")
            self.shared.append((p, reference[name].detach().to(p.device, p.dtype)))

    def penalty(self) -> Tensor:
        """α/2 Σ_S ‖w − w⁰‖² + β/2 Σ_head ‖w‖²: scalar, differentiable."""
        sp = sum(((p - p0) ** 2).sum() for p, p0 in self.shared)
        l2 = sum((p**2).sum() for p in self.head)
        return 0.5 * self.alpha * sp + 0.5 * self.beta * l2

    def state_dict(self) -> dict:
        """Nothing to carry: w⁰ is rebuilt from the config."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """No state (see state_dict)."""


class BSS:
    """Batch Spectral Shrinkage: η Σ_{i=1..k} σ_{−i}(F)² over the k smallest singular values of F (B, p)."""

    needs_features = True

    def __init__(self, k: int = 1, eta: float = 1.0):
        if int(k) < 1:
            raise ValueError(f"BSS needs k >= 1, got {k}")
        self.k, self.eta = int(k), float(eta)

    def penalty(self, features: Tensor | None = None) -> Tensor:
        """η Σ of the k smallest σ(F)² of the batch features F (B, p) (F flattened to 2-D): scalar."""
        if features is None:
            raise ValueError("BSS needs the batch features: call penalty(features) (no epoch-end penalty step)")
        f = features.flatten(1)
        if self.k > min(f.shape):
            raise ValueError(f"BSS k={self.k} exceeds min(batch, feature dim) = {min(f.shape)}")
        s = torch.linalg.svdvals(f)  # descending
        return self.eta * s[-self.k:].pow(2).sum()

    def state_dict(self) -> dict:
        """No state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """No state."""


def reference_weights(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> dict[str, Tensor]:
    """w⁰: the parameters of cfg's model as built before any training (pretrained backbone), by name."""
    n_classes = model.readout.out_features
    fresh = make_model(cfg, types.SimpleNamespace(x=example_x.cpu(), n_classes=n_classes))
    return {name: p.detach() for name, p in fresh.named_parameters()}


def _kwargs(cfg: TrainConfig, allowed: dict) -> dict:
    unknown = set(cfg.method_kwargs) - set(allowed)
    if unknown:
        raise ValueError(f"method {cfg.method!r} takes method_kwargs {sorted(allowed)}, got unknown {sorted(unknown)}")
    return {**allowed, **cfg.method_kwargs}


def _check_l2sp(cfg: TrainConfig) -> None:
    """METHODS['l2sp'] check: only alpha / beta, each a finite number >= 0 (before any data is loaded)."""
    for k, v in _kwargs(cfg, {"alpha": 0.1, "beta": 0.01}).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"method 'l2sp': {k} must be a finite number >= 0, got {v!r}")


def _check_bss(cfg: TrainConfig) -> None:
    """METHODS['bss'] check: only k, a positive integer."""
    k = _kwargs(cfg, {"k": 1})["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"method 'bss': k (singular values shrunk) must be an integer >= 1, got {k!r}")


@METHODS.register("l2sp", doc="L2-SP towards the pretrained weights (Li et al. 2018)", check=_check_l2sp)
def make_l2sp(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> L2SP:
    """METHODS['l2sp']: L2-SP towards the pretrained weights; method_kwargs alpha (0.1), beta (0.01); lam = 1."""
    kw = _kwargs(cfg, {"alpha": 0.1, "beta": 0.01})
    if cfg.lam != 1.0:
        raise ValueError(f"L2-SP takes its strengths from method_kwargs (alpha, beta); set lam=1.0, got lam={cfg.lam}")
    if cfg.weight_decay:
        warnings.warn("L2-SP replaces weight decay; weight_decay > 0 also decays towards 0", stacklevel=2)
    return L2SP(model, reference_weights(cfg, model, example_x), kw["alpha"], kw["beta"])


@METHODS.register("bss", needs_features=True, doc="Batch Spectral Shrinkage (Chen et al. 2019)", check=_check_bss)
def make_bss(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> BSS:
    """METHODS['bss']: BSS on the batch features Φ(x); η = cfg.lam, method_kwargs k (1)."""
    kw = _kwargs(cfg, {"k": 1})
    if cfg.lam <= 0:
        raise ValueError(f"BSS strength η is cfg.lam; it must be > 0, got {cfg.lam}")
    if cfg.reg_epoch_end_step:
        raise ValueError("BSS needs batch features; set reg_epoch_end_step=False")
    return BSS(k=kw["k"])


def pretrain_standin_backbone(source: str = "mnist", widths: Sequence[int] = (512,), *, epochs: int = 5,
                              lr: float = 0.5, batch_size: int = 256, init_std: float = 0.05,
                              n_train: int | None = None, seed: int = 0, path: str | Path | None = None,
                              activation: str = "gelu", device="cpu", progress: bool | None = None,
                              use_cache: bool = True) -> Path:
    """Pretrain the stand-in backbone: an MLP 784→widths→10 trained with `train` on `source` (MNIST or
    Fashion-MNIST, no penalty); saves its Φ (hidden layers) with provenance to `path` and returns the path.
    (init_std 0.05 and lr 0.5 rather than the paper's MNIST recipe, N(0, 0.01²) and lr 0.1 for 200 epochs,
    so that a few epochs give a useful backbone.)"""
    model = {"kind": "mlp", "widths": [int(w) for w in widths], "activation": activation, "init_std": init_std}
    cfg = TrainConfig(dataset=source, model=model, lr=lr, batch_size=batch_size, epochs=epochs, burn_in=0, seed=seed,
                      n_train=n_train)
    res = train(cfg, device=device, progress=progress, use_cache=use_cache)
    model = res.model.cpu()
    test_acc = float(res.history["test_acc"].iloc[-1])
    path = Path(path) if path is not None else cache.cache_root() / "transfer-standin" / f"backbone-{res.key}.pt"
    blob = {"format": "repspec-standin-backbone-v1", "d_in": model.d_in, "widths": model.widths,
            "activation": model.activation, "state_dict": {k: v for k, v in model.state_dict().items()
                                                             if k.startswith("hidden.")},
            "pretrained_on": source, "data_source": res.data_source, "source_test_acc": test_acc,
            "config": repr(cfg)}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


def _load_backbone(weights: str | Path, weights_md5: str | None, what: str, maker: str) -> tuple[Path, dict]:
    """(path, contents) of a pretrained-backbone file, checked to exist (else naming `maker`, the function that
    makes it) and, if weights_md5 is given, to have that md5; loaded weights-only: tensors and plain data, never
    code."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"{what} backbone weights not found at {path.resolve()}. Create them with "
                                f"repspec_utils.defences.transfer.{maker}(source='mnist', path='{path}').")
    if weights_md5 is not None and md5_file(path) != weights_md5:
        raise ValueError(f"{what} backbone {path} has md5 {md5_file(path)}, the config expects {weights_md5}")
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _with_new_head(model: RepModel, head_init_std: float, seed: int | None, pretrained_on: str) -> RepModel:
    """SPEC §6's new head, in place: readout weights N(0, head_init_std²) seeded by `seed`, bias 0."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        model.readout.weight.copy_(torch.randn(model.readout.weight.shape, generator=gen) * head_init_std)
        model.readout.bias.zero_()
    model.pretrained_on = pretrained_on
    return model


def _finetune_config(kind: str, dataset: str, weights: str | Path, what: str, maker: str, method: str, lam: float,
                     n_per_class: int, target: str, source: str, n_test: int | None, epochs: int, burn_in: int,
                     lr: float, batch_size: int, seed: int, overrides: dict) -> TrainConfig:
    """SPEC §6's finetuning recipe (new head N(0, 1), backbone lr = head lr / 5, cosine schedule) of the backbone
    file `weights` (model `kind`, its md5 part of the key) on `dataset`, n_per_class images per class of `target`."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{what} backbone weights not found at {weights.resolve()}; create them with "
                                f"{maker}(...)")
    model = {"kind": kind, "weights": str(weights), "weights_md5": md5_file(weights), "n_classes": 10,
             "head_init_std": 1.0}
    kwargs = dict(dataset=dataset, model=model, method=method, lam=lam, lr=lr, batch_size=batch_size,
                  epochs=epochs, burn_in=burn_in, seed=seed, lr_schedule="cosine", backbone_lr_mult=0.2,
                  data_kwargs={"target": target, "source": source, "n_per_class": n_per_class, "n_test": n_test})
    return TrainConfig(**{**kwargs, **overrides})


@MODELS.register("standin_transfer_mlp")
def build_standin_model(weights: str | Path, n_classes: int = 10, head_init_std: float = 1.0,
                        weights_md5: str | None = None, seed: int | None = None) -> MLP:
    """MODELS['standin_transfer_mlp']: the pretrained stand-in Φ (from the file `weights`, optionally checked
    against `weights_md5`) with a new head N(0, head_init_std²) of n_classes outputs, seeded by `seed`."""
    path, blob = _load_backbone(weights, weights_md5, "stand-in", "pretrain_standin_backbone")
    model = MLP(blob["d_in"], blob["widths"], n_classes, blob["activation"], seed=seed)
    missing = model.load_state_dict(blob["state_dict"], strict=False).missing_keys
    if sorted(missing) != ["readout.bias", "readout.weight"]:
        raise ValueError(f"stand-in backbone {path} does not fit its MLP (missing {missing})")
    return _with_new_head(model, head_init_std, seed, blob["pretrained_on"])


def standin_finetune_config(weights: str | Path, method: str = "none", lam: float = 0.0, *, n_per_class: int = 100,
                            target: str = "fashion_mnist", source: str = "mnist", n_test: int | None = None,
                            epochs: int = 30, burn_in: int = 20, lr: float = 0.01, batch_size: int = 64,
                            seed: int = 0, **overrides) -> TrainConfig:
    """TrainConfig finetuning the stand-in backbone on the stand-in task with SPEC's transfer recipe (new head
    N(0, 1), backbone lr = head lr / 5, cosine schedule, batch 64), at CPU scale."""
    return _finetune_config("standin_transfer_mlp", "transfer_standin", weights, "stand-in",
                            "pretrain_standin_backbone", method, lam, n_per_class, target, source, n_test, epochs,
                            burn_in, lr, batch_size, seed, overrides)


# ------------------------------------------------------------------------ real-image analog (conv backbone)
ANALOG_BACKBONE_FORMAT = "repspec-analog-backbone-v1"


def pretrain_analog_backbone(source: str = "mnist", width: int = 16, blocks: int = 1, *, epochs: int = 3,
                             lr: float = 0.01, batch_size: int = 128, n_train: int | None = None, seed: int = 0,
                             path: str | Path | None = None, device="cpu", progress: bool | None = None,
                             use_cache: bool = True) -> Path:
    """Pretrain Fig 8's REAL-IMAGE ANALOG backbone: Fig 6's small ResNet (`recipes.conv_model(source, width,
    blocks)`: one channel, the source's normalisation inside, 28 px padded to 32) trained supervised with `train` on
    all (or n_train) real `source` images, no penalty, no augmentation, lr constant. Saves Φ (every tensor but the
    readout, BatchNorm statistics included) with provenance to `path` (default: in the cache, named by the training
    key) and returns it. A file of plain tensors and data: `build_analog_transfer_model` loads it weights-only."""
    analogs = tuple(sorted(MNIST_LIKE))  # = recipes.IMAGE_ANALOGS (recipes imports this module, not the reverse)
    if source not in analogs:
        raise ValueError(f"the analog backbone pretrains on one of {analogs}, got {source!r}")
    check_small_resnet(width, blocks, 1, source)
    # = recipes.conv_model(source, width, blocks) for an analog (test_transfer checks the two agree)
    spec = {"kind": "small_resnet", "width": width, "blocks": blocks, "channels": 1, "stats": source, "pad": 2}
    cfg = TrainConfig(dataset=source, data_kwargs={"flatten": False}, model=spec, augment="none", lr=lr,
                      batch_size=batch_size, epochs=epochs, burn_in=0, seed=seed, n_train=n_train,
                      eval_every=epochs)
    res = train(cfg, device=device, progress=progress, use_cache=use_cache)
    model = res.model.cpu()
    path = Path(path) if path is not None else cache.cache_root() / "transfer-analog" / f"backbone-{res.key}.pt"
    blob = {"format": ANALOG_BACKBONE_FORMAT, "spec": {k: v for k, v in spec.items() if k != "kind"},
            "state_dict": {k: v for k, v in model.state_dict().items() if not k.startswith("readout.")},
            "pretrained_on": source, "data_source": res.data_source,
            "source_test_acc": float(res.history["test_acc"].dropna().iloc[-1]), "config": repr(cfg)}
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    return path


@MODELS.register("analog_transfer_resnet")
def build_analog_transfer_model(weights: str | Path, n_classes: int = 10, head_init_std: float = 1.0,
                                weights_md5: str | None = None, seed: int | None = None) -> RepModel:
    """MODELS['analog_transfer_resnet']: the pretrained small-ResNet Φ from the file `weights` (optionally checked
    against `weights_md5`; loaded weights-only, so it cannot run code) with a new fc head N(0, head_init_std²), bias
    0, of n_classes outputs, seeded by `seed` — SPEC §6's new head."""
    path, blob = _load_backbone(weights, weights_md5, "analog", "pretrain_analog_backbone")
    if not isinstance(blob, dict) or blob.get("format") != ANALOG_BACKBONE_FORMAT:
        raise ValueError(f"{path} is not a {ANALOG_BACKBONE_FORMAT} file (made by pretrain_analog_backbone)")
    model = small_resnet(**blob["spec"], n_classes=n_classes, seed=seed)
    result = model.load_state_dict(blob["state_dict"], strict=False)
    if sorted(result.missing_keys) != ["readout.bias", "readout.weight"] or result.unexpected_keys:
        raise ValueError(f"analog backbone {path} does not fit its small ResNet (missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys})")
    return _with_new_head(model, head_init_std, seed, blob["pretrained_on"])


def analog_finetune_config(weights: str | Path, method: str = "none", lam: float = 0.0, *, n_per_class: int = 100,
                           target: str = "fashion_mnist", source: str = "mnist", n_test: int | None = None,
                           epochs: int = 30, burn_in: int = 20, lr: float = 0.01, batch_size: int = 64,
                           seed: int = 0, **overrides) -> TrainConfig:
    """TrainConfig finetuning the analog conv backbone on n_per_class real `target` images per class with SPEC's
    transfer recipe (new head N(0, 1), backbone lr = head lr / 5, cosine schedule, batch 64); the backbone file's
    md5 is part of the key."""
    return _finetune_config("analog_transfer_resnet", "transfer_analog", weights, "analog", "pretrain_analog_backbone",
                            method, lam, n_per_class, target, source, n_test, epochs, burn_in, lr, batch_size, seed,
                            overrides)


# ------------------------------------------------------------------------------------- paper recipes
TRANSFER_RECIPES: dict[str, dict] = {  # SPEC §6 (ResNet50, bs 64, cosine, backbone lr = head lr / 5, burn-in 30)
    "stanford_dogs": {"epochs": 50, "lr": 0.005, "reg_every": 160},
    "flowers102": {"epochs": 1000, "lr": 0.005, "reg_every": 160},
    "mit_indoor67": {"epochs": 100, "lr": 0.01, "reg_every": 160},
    "cifar10": {"epochs": 50, "lr": 0.01, "reg_every": 15},
}
_N_CLASSES = {"stanford_dogs": 120, "flowers102": 102, "mit_indoor67": 67, "cifar10": 10}


def transfer_config(name: str, method: str = "none", lam: float = 0.0, *, seed: int = 0,
                    weights: str = "IMAGENET1K_V2", **overrides) -> TrainConfig:
    """The paper-scale TrainConfig of one transfer task (SPEC §6) for method none / ll / rep / l2sp / bss.
    Spectral methods regularise every reg_every steps plus an epoch-end step; L2-SP and BSS every step."""
    if name not in TRANSFER_RECIPES:
        raise ValueError(f"unknown transfer task {name!r}; choose one of {sorted(TRANSFER_RECIPES)}")
    r = TRANSFER_RECIPES[name]
    spectral = method in ("ll", "rep")
    kwargs = dict(dataset=f"transfer_{name}", method=method, lam=lam, seed=seed, batch_size=64, burn_in=30,
                  epochs=r["epochs"], lr=r["lr"], lr_schedule="cosine", backbone_lr_mult=0.2,
                  reg_every=r["reg_every"] if spectral else 1, reg_epoch_end_step=spectral,
                  model={"kind": "resnet50_transfer", "n_classes": _N_CLASSES[name], "weights": weights,
                         "head_init_std": 1.0})
    return TrainConfig(**{**kwargs, **overrides})


