"""Transfer learning (SPEC §6): the L2-SP and BSS baselines, the finetuning datasets, and the offline stand-in.

Regularisers (registered as PENALTIES['l2sp'] and PENALTIES['bss']; the trainer adds cfg.lam × penalty()):

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

Data (names for `get_transfer_data`; prefixed 'transfer_' they are also dataset names for TrainConfig):

- 'flowers102': torchvision's Flowers102 in <root>/flowers-102 (train = its 'train' + 'val' splits, test = 'test').
- 'stanford_dogs': ImageFolder on <dir>/Images with the official train_list.mat / test_list.mat,
  <dir> = argument `folder`, env REPSPEC_DOGS_DIR, or <root>/StanfordDogs.
- 'mit_indoor67': ImageFolder on <dir>/Images with the official TrainImages.txt / TestImages.txt,
  <dir> = argument `folder`, env REPSPEC_INDOOR67_DIR, or <root>/MITIndoor67.
- 'cifar10' (or an explicit 'cifar10_synthetic'): `data.get_data` then bilinear upsampling 32 → image_size.
- 'standin': the offline stand-in (DATA.md): a small labelled subset of one of MNIST / Fashion-MNIST, to
  finetune an MLP backbone pretrained on the other (`pretrain_standin_backbone`). Its `source` and every
  TrainResult trained on it say TRANSFER STAND-IN.
Images are decoded once (Resize(image_size·256/224) + CenterCrop(image_size), the usual evaluation
preprocessing) and cached as uint8 under <cache>/transfer-data; the returned ArrayDatasets are float32 in
[0, 1] and take N·3·image_size²·4 bytes (224 px: 0.6 MB per image), so pass n_train / n_test on small machines.
"""

from __future__ import annotations

import hashlib
import os
import types
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cache, data
from .data import ArrayDataset, DataMissingError, data_root
from .models import MLP, RepModel
from .train import MODEL_BUILDERS, PENALTIES, TrainConfig

__all__ = ["L2SP", "BSS", "make_l2sp", "make_bss", "reference_weights", "get_transfer_data", "transfer_standin",
           "pretrain_standin_backbone", "build_standin_model", "standin_finetune_config", "TRANSFER_RECIPES",
           "transfer_config", "STANDIN_TAG"]

STANDIN_TAG = "TRANSFER STAND-IN"


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
    from .train import make_model

    n_classes = model.readout.out_features
    fresh = make_model(cfg, types.SimpleNamespace(x=example_x.cpu(), n_classes=n_classes))
    return {name: p.detach() for name, p in fresh.named_parameters()}


def _kwargs(cfg: TrainConfig, allowed: dict) -> dict:
    unknown = set(cfg.method_kwargs) - set(allowed)
    if unknown:
        raise ValueError(f"method {cfg.method!r} takes method_kwargs {sorted(allowed)}, got unknown {sorted(unknown)}")
    return {**allowed, **cfg.method_kwargs}


def make_l2sp(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> L2SP:
    """PENALTIES['l2sp']: L2-SP towards the pretrained weights; method_kwargs alpha (0.1), beta (0.01); lam = 1."""
    kw = _kwargs(cfg, {"alpha": 0.1, "beta": 0.01})
    if cfg.lam != 1.0:
        raise ValueError(f"L2-SP takes its strengths from method_kwargs (alpha, beta); set lam=1.0, got lam={cfg.lam}")
    if cfg.weight_decay:
        warnings.warn("L2-SP replaces weight decay; weight_decay > 0 also decays towards 0", stacklevel=2)
    return L2SP(model, reference_weights(cfg, model, example_x), kw["alpha"], kw["beta"])


def make_bss(cfg: TrainConfig, model: nn.Module, example_x: Tensor) -> BSS:
    """PENALTIES['bss']: BSS on the batch features Φ(x); η = cfg.lam, method_kwargs k (1)."""
    kw = _kwargs(cfg, {"k": 1})
    if cfg.lam <= 0:
        raise ValueError(f"BSS strength η is cfg.lam; it must be > 0, got {cfg.lam}")
    if cfg.reg_epoch_end_step:
        raise ValueError("BSS needs batch features; set reg_epoch_end_step=False")
    return BSS(k=kw["k"])


PENALTIES["l2sp"] = make_l2sp
PENALTIES["bss"] = make_bss


# ----------------------------------------------------------------------------------------- image loading
def _preprocess(image_size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.PILToTensor(), v2.Resize(round(image_size * 256 / 224), antialias=True),
                       v2.CenterCrop(image_size)])


def _subset_indices(n: int, k: int | None, seed: int) -> list[int]:
    if k is None or k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def _decode(dataset, indices: list[int], key: dict, image_size: int) -> tuple[Tensor, Tensor]:
    """uint8 images (N, 3, s, s) and labels of dataset[indices], decoded once and cached."""
    path = cache.cache_root() / "transfer-data" / f"{cache.make_key(kind='transfer-data', **key)}.pt"

    def build():
        tf = _preprocess(image_size)
        xs, ys = [], []
        for i in indices:
            img, label = dataset[i]
            xs.append(tf(img.convert("RGB")))
            ys.append(int(label))
        return {"x": torch.stack(xs), "y": torch.tensor(ys, dtype=torch.int64)}

    out = cache.cached(path, build)
    return out["x"], out["y"]


def _to_dataset(x_u8: Tensor, y: Tensor, name: str, source: str, n_classes: int) -> ArrayDataset:
    return ArrayDataset(x=x_u8.float().div_(255), y=y, name=name, source=source, box=(0.0, 1.0), n_classes=n_classes)


def _missing(what: str, looked: Sequence[Path], layout: str, how: str) -> DataMissingError:
    lines = "\n".join(f"  {p}{'' if p.exists() else '  (missing)'}" for p in looked)
    return DataMissingError(f"{what} not found. Looked for:\n{lines}\nExpected layout:\n{layout}\n{how}")


def _folder(arg, env: str, default: Path) -> Path:
    if arg is not None:
        return Path(arg).expanduser()
    return Path(os.environ[env]).expanduser() if os.environ.get(env) else default


def _flowers102(root: Path, image_size: int, download: bool, n_train, n_test, seed: int):
    from torchvision.datasets import Flowers102

    base = root / "flowers-102"
    need = [base / "jpg", base / "imagelabels.mat", base / "setid.mat"]
    if not download and not all(p.exists() for p in need):
        raise _missing("Oxford Flowers-102", need,
                       "  <root>/flowers-102/{jpg/image_00001.jpg ..., imagelabels.mat, setid.mat}",
                       "Fix: pass download=True (needs internet) or unpack 102flowers.tgz, imagelabels.mat and "
                       f"setid.mat from https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ into {base} "
                       "(root = argument `root`, env REPSPEC_DATA, or <repo>/data).")
    out = []
    for splits, k, part in ((("train", "val"), n_train, "train"), (("test",), n_test, "test")):
        parts = [Flowers102(str(root), split=s, download=download) for s in splits]
        ds = torch.utils.data.ConcatDataset(parts)
        idx = _subset_indices(len(ds), k, seed)
        x, y = _decode(ds, idx, {"name": "flowers102", "split": part, "root": str(base.resolve()), "idx": idx,
                                 "size": image_size}, image_size)
        src = (f"real: Oxford Flowers-102 via torchvision ({base}), split {'+'.join(splits)}, {len(idx)} images, "
               f"Resize+CenterCrop {image_size}px")
        out.append(_to_dataset(x, y, "flowers102", src, 102))
    return out[0], out[1]


def _split_folder(name: str, folder: Path, split_files: dict[str, Path], read_split: Callable[[Path], list[str]],
                  n_classes: int, image_size: int, n_train, n_test, seed: int, how: str):
    """ImageFolder on folder/Images restricted to the official split lists (relative paths 'class/file.jpg')."""
    from torchvision.datasets import ImageFolder

    need = [folder / "Images", *split_files.values()]
    if not all(p.exists() for p in need):
        raise _missing(name, need, "  <dir>/Images/<class>/<image>.jpg\n  " + "\n  ".join(
            f"<dir>/{p.name}" for p in split_files.values()), how)
    out = []
    for part, k in (("train", n_train), ("test", n_test)):
        wanted = {p.replace("\\", "/") for p in read_split(split_files[part])}
        images = folder / "Images"
        ds = ImageFolder(str(images), is_valid_file=lambda p: Path(p).relative_to(images).as_posix() in wanted,
                         allow_empty=True)
        missing = sorted(wanted - {Path(p).relative_to(images).as_posix() for p, _ in ds.samples})
        if missing or len(ds.classes) != n_classes:
            raise DataMissingError(f"{name}: {split_files[part]} lists {len(wanted)} images of {n_classes} classes "
                                   f"but {images} holds {len(ds)} of them in {len(ds.classes)} class folders; "
                                   f"missing e.g. {missing[:3]}")
        idx = _subset_indices(len(ds), k, seed)
        x, y = _decode(ds, idx, {"name": name, "split": part, "root": str(folder.resolve()), "idx": idx,
                                 "size": image_size}, image_size)
        src = (f"real: {name} ImageFolder {images} with official split {split_files[part].name}, {len(idx)} images, "
               f"Resize+CenterCrop {image_size}px")
        out.append(_to_dataset(x, y, name.lower().replace(" ", "_").replace("-", ""), src, n_classes))
    return out[0], out[1]


def _read_mat_list(path: Path) -> list[str]:
    from scipy.io import loadmat

    return [str(entry).strip() for entry in loadmat(str(path), squeeze_me=True)["file_list"]]


def _read_txt_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _resize_cifar(name: str, root, image_size: int, download: bool, n_train, n_test, seed: int, cifar_dir=None):
    if name == "cifar10":
        train_ds, test_ds = data.get_data(name, root=root, cifar_dir=cifar_dir, download=download)
    else:  # generate exactly the synthetic images asked for (default sizes otherwise)
        sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        train_ds, test_ds = data.get_data(name, root=root, seed=seed, **sizes)
    out = []
    for ds, k in ((train_ds, n_train), (test_ds, n_test)):
        ds = ds.subset(_subset_indices(len(ds), k, seed))
        x = torch.cat([F.interpolate(ds.x[i:i + 256], size=(image_size, image_size), mode="bilinear",
                                     align_corners=False, antialias=image_size < ds.x.shape[-1]).clamp_(0, 1)
                       for i in range(0, len(ds), 256)])
        out.append(ArrayDataset(x=x, y=ds.y, name=f"{name}_{image_size}", n_classes=ds.n_classes, box=ds.box,
                                source=f"{ds.source}; {len(ds)} images resized bilinearly 32 -> {image_size}px"))
    return out[0], out[1]


def get_transfer_data(name: str, *, root=None, image_size: int = 224, download: bool = False, seed: int = 0,
                      n_train: int | None = None, n_test: int | None = None, folder=None, cifar_dir=None,
                      **standin_kwargs) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) ArrayDatasets (N, 3, s, s) in [0, 1] of a finetuning task: 'flowers102', 'stanford_dogs',
    'mit_indoor67', 'cifar10', 'cifar10_synthetic', or 'standin' (flattened MNIST-type images, see
    `transfer_standin`). n_train / n_test: seeded random subsets. folder: the Dogs / Indoor folder."""
    root_p = data_root(root)
    if name == "standin":
        return transfer_standin(root=root, seed=seed, n_test=n_test, **standin_kwargs)
    if standin_kwargs:
        raise TypeError(f"unexpected arguments for {name!r}: {sorted(standin_kwargs)}")
    if name == "flowers102":
        return _flowers102(root_p, image_size, download, n_train, n_test, seed)
    if name == "stanford_dogs":
        d = _folder(folder, "REPSPEC_DOGS_DIR", root_p / "StanfordDogs")
        return _split_folder("Stanford Dogs", d, {"train": d / "train_list.mat", "test": d / "test_list.mat"},
                             _read_mat_list, 120, image_size, n_train, n_test, seed,
                             "Fix: download images.tar and lists.tar from http://vision.stanford.edu/aditya86/"
                             f"ImageNetDogs/, unpack both into {d} (or pass folder=... / set REPSPEC_DOGS_DIR).")
    if name == "mit_indoor67":
        d = _folder(folder, "REPSPEC_INDOOR67_DIR", root_p / "MITIndoor67")
        return _split_folder("MIT Indoor-67", d, {"train": d / "TrainImages.txt", "test": d / "TestImages.txt"},
                             _read_txt_list, 67, image_size, n_train, n_test, seed,
                             "Fix: download indoorCVPR_09.tar, TrainImages.txt and TestImages.txt from "
                             f"https://web.mit.edu/torralba/www/indoor.html into {d} (or pass folder=... / "
                             "set REPSPEC_INDOOR67_DIR).")
    if name in ("cifar10", "cifar10_synthetic"):
        return _resize_cifar(name, root, image_size, download, n_train, n_test, seed, cifar_dir)
    raise ValueError(f"unknown transfer dataset {name!r}; choose one of "
                     "'flowers102', 'stanford_dogs', 'mit_indoor67', 'cifar10', 'cifar10_synthetic', 'standin'")


# ------------------------------------------------------------------------------------ offline stand-in
def transfer_standin(target: str = "fashion_mnist", source: str = "mnist", n_per_class: int = 100,
                     n_test: int | None = None, seed: int = 0, root=None) -> tuple[ArrayDataset, ArrayDataset]:
    """STAND-IN finetuning task: n_per_class labelled training images per class of `target` (seeded, balanced)
    and its test set (or a seeded n_test subset), flattened (N, 784) in [0, 1], for a backbone pretrained on
    `source`. Every `source` string starts with 'TRANSFER STAND-IN'."""
    names = {"mnist", "fashion_mnist"}
    if {target, source} != names:
        raise ValueError(f"the stand-in pretrains on one of {sorted(names)} and finetunes on the other; "
                         f"got source={source!r}, target={target!r}")
    train_full, test_full = data.get_data(target, root=root)
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in range(train_full.n_classes):
        members = (train_full.y == c).nonzero()[:, 0]
        if len(members) < n_per_class:
            raise ValueError(f"{target} has only {len(members)} training images of class {c}")
        idx.append(members[torch.randperm(len(members), generator=g)[:n_per_class]])
    train_idx = torch.cat(idx).sort().values
    test_ds = test_full.subset(_subset_indices(len(test_full), n_test, seed))
    tag = (f"{STANDIN_TAG} (offline substitute for the paper's ImageNet -> Dogs/Flowers/Indoor/CIFAR transfer; "
           f"backbone pretrained on {source}): ")
    train_ds = train_full.subset(train_idx)
    train_ds.source = tag + (f"{n_per_class} labelled images per class of {target} (seed {seed}) "
                             f"from {train_full.source}")
    test_ds.source = tag + f"{len(test_ds)} {target} test images from {test_full.source}"
    train_ds.name = test_ds.name = "transfer_standin"
    return train_ds, test_ds


def pretrain_standin_backbone(source: str = "mnist", widths: Sequence[int] = (512,), *, epochs: int = 5,
                              lr: float = 0.5, batch_size: int = 256, init_std: float = 0.05,
                              n_train: int | None = None, seed: int = 0, path: str | Path | None = None,
                              activation: str = "gelu", device="cpu", progress: bool | None = None,
                              use_cache: bool = True) -> Path:
    """Pretrain the stand-in backbone: an MLP 784→widths→10 trained with `train` on `source` (MNIST or
    Fashion-MNIST, no penalty); saves its Φ (hidden layers) with provenance to `path` and returns the path.
    (init_std 0.05 and lr 0.5 rather than the paper's MNIST recipe, N(0, 0.01²) and lr 0.1 for 200 epochs,
    so that a few epochs give a useful backbone.)"""
    from .train import train

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def build_standin_model(spec: dict) -> MLP:
    """MODEL_BUILDERS['standin_transfer_mlp']: the pretrained stand-in Φ with a new head N(0, head_init_std²).
    spec: weights (path), n_classes (10), head_init_std (1.0), weights_md5 (optional check), seed."""
    spec = dict(spec)
    spec.pop("kind", None)
    path = Path(spec.pop("weights"))
    want_md5 = spec.pop("weights_md5", None)
    n_classes, head_std, seed = spec.pop("n_classes", 10), spec.pop("head_init_std", 1.0), spec.pop("seed", None)
    if spec:
        raise ValueError(f"unknown stand-in model arguments {sorted(spec)}")
    if not path.is_file():
        raise FileNotFoundError(f"stand-in backbone weights not found at {path.resolve()}. Create them with "
                                f"repspec_utils.transfer.pretrain_standin_backbone(source='mnist', path='{path}').")
    if want_md5 is not None and _md5(path) != want_md5:
        raise ValueError(f"stand-in backbone {path} has md5 {_md5(path)}, the config expects {want_md5}")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = MLP(blob["d_in"], blob["widths"], n_classes, blob["activation"], seed=seed)
    missing = model.load_state_dict(blob["state_dict"], strict=False).missing_keys
    if sorted(missing) != ["readout.bias", "readout.weight"]:
        raise ValueError(f"stand-in backbone {path} does not fit its MLP (missing {missing})")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        model.readout.weight.copy_(torch.randn(model.readout.weight.shape, generator=gen) * head_std)
        model.readout.bias.zero_()
    model.pretrained_on = blob["pretrained_on"]
    return model


MODEL_BUILDERS["standin_transfer_mlp"] = build_standin_model


def standin_finetune_config(weights: str | Path, method: str = "none", lam: float = 0.0, *, n_per_class: int = 100,
                            target: str = "fashion_mnist", source: str = "mnist", n_test: int | None = None,
                            epochs: int = 30, burn_in: int = 20, lr: float = 0.01, batch_size: int = 64,
                            seed: int = 0, **overrides) -> TrainConfig:
    """TrainConfig finetuning the stand-in backbone on the stand-in task with SPEC's transfer recipe (new head
    N(0, 1), backbone lr = head lr / 5, cosine schedule, batch 64), at CPU scale."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"stand-in backbone weights not found at {weights.resolve()}; create them with "
                                "pretrain_standin_backbone(...)")
    model = {"kind": "standin_transfer_mlp", "weights": str(weights), "weights_md5": _md5(weights), "n_classes": 10,
             "head_init_std": 1.0}
    kwargs = dict(dataset="transfer_standin", model=model, method=method, lam=lam, lr=lr, batch_size=batch_size,
                  epochs=epochs, burn_in=burn_in, seed=seed, lr_schedule="cosine", backbone_lr_mult=0.2,
                  data_kwargs={"target": target, "source": source, "n_per_class": n_per_class, "n_test": n_test})
    return TrainConfig(**{**kwargs, **overrides})


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


# ------------------------------------------------------------------------ dataset names for TrainConfig
def _register_dataset(name: str, loader: Callable[..., tuple[ArrayDataset, ArrayDataset]]) -> None:
    """Make TrainConfig(dataset=name, data_kwargs=kw) load loader(seed=cfg.data_seed, **kw)."""
    register = getattr(data, "register_dataset", None)
    if register is not None:  # the intended hook (see the note below)
        register(name, loader)
        return
    # WORKAROUND until data.py has a dataset registry: train.validate checks data.DATASET_NAMES and
    # train.load_training_data calls train.get_data, so extend the one and route the other.
    from . import train as _train

    if name not in data.DATASET_NAMES:
        data.DATASET_NAMES = (*data.DATASET_NAMES, name)
    inner = _train.get_data
    extra = getattr(inner, "_transfer_loaders", None)
    if extra is None:
        extra = {}

        def get_data(key, *args, **kwargs):
            if key in extra:
                return extra[key](*args, **kwargs)
            return inner(key, *args, **kwargs)

        get_data._transfer_loaders = extra
        _train.get_data = get_data
    extra[name] = loader


_register_dataset("transfer_standin", lambda seed=0, **kw: transfer_standin(seed=seed, **kw))
for _name in ("flowers102", "stanford_dogs", "mit_indoor67", "cifar10", "cifar10_synthetic"):
    _register_dataset(f"transfer_{_name}", lambda seed=0, _n=_name, **kw: get_transfer_data(_n, seed=seed, **kw))
