"""Finetuning datasets for the transfer experiments (SPEC §6): Oxford Flowers-102, Stanford Dogs, MIT Indoor-67,
CIFAR-10 resized, and the offline stand-in (a labelled subset of MNIST or Fashion-MNIST, to finetune a
backbone pretrained on the other). Registered as the datasets 'transfer_<name>'.

- 'flowers102': torchvision's Flowers102 in <root>/flowers-102 (train = its 'train' + 'val' splits, test = 'test').
- 'stanford_dogs': ImageFolder on <dir>/Images with the official train_list.mat / test_list.mat,
  <dir> = argument `folder`, env REPSPEC_DOGS_DIR, or <root>/StanfordDogs.
- 'mit_indoor67': ImageFolder on <dir>/Images with the official TrainImages.txt / TestImages.txt,
  <dir> = argument `folder`, env REPSPEC_INDOOR67_DIR, or <root>/MITIndoor67.
- 'cifar10' (or an explicit 'cifar10_synthetic'): `get_data` then bilinear upsampling 32 → image_size.
- 'standin': `transfer_standin`; its `source` and every TrainResult trained on it say TRANSFER STAND-IN.
Images are decoded once (Resize(image_size·256/224) + CenterCrop(image_size), the usual evaluation
preprocessing) and cached as uint8 under <cache>/transfer-data; the returned ArrayDatasets are float32 in
[0, 1] and take N·3·image_size²·4 bytes (224 px: 0.6 MB per image), so pass n_train / n_test on small machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from repspec_utils.infra import cache
from repspec_utils.infra.registry import DATASETS

from .core import ArrayDataset, DataMissingError, data_root, get_data

STANDIN_TAG = "TRANSFER STAND-IN"
TRANSFER_TASKS = ("flowers102", "stanford_dogs", "mit_indoor67", "cifar10", "cifar10_synthetic", "standin")


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
        train_ds, test_ds = get_data(name, root=root, cifar_dir=cifar_dir, download=download)
    else:  # generate exactly the synthetic images asked for (default sizes otherwise)
        sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        train_ds, test_ds = get_data(name, root=root, seed=seed, **sizes)
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
ANALOG_TRANSFER_TAG = "REAL-IMAGE ANALOG"


def transfer_standin(target: str = "fashion_mnist", source: str = "mnist", n_per_class: int = 100,
                     n_test: int | None = None, seed: int = 0, root=None,
                     images: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    """STAND-IN finetuning task: n_per_class labelled training images per class of `target` (seeded, balanced)
    and its test set (or a seeded n_test subset), flattened (N, 784) in [0, 1], for a backbone pretrained on
    `source`. Every `source` string starts with 'TRANSFER STAND-IN'. images=True: the same images as (N, 1, 28, 28)
    for a conv backbone (Fig 8's real-image analog, issue 27); its sources start with 'REAL-IMAGE ANALOG'."""
    names = {"mnist", "fashion_mnist"}
    if {target, source} != names:
        raise ValueError(f"the stand-in pretrains on one of {sorted(names)} and finetunes on the other; "
                         f"got source={source!r}, target={target!r}")
    train_full, test_full = get_data(target, root=root, **({"flatten": False} if images else {}))
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
    if images:
        tag = (f"{ANALOG_TRANSFER_TAG} ({source} -> {target} transfer, small ResNet) — not the paper's ImageNet "
               f"transfer: ")
    train_ds = train_full.subset(train_idx)
    train_ds.source = tag + (f"{n_per_class} labelled images per class of {target} (seed {seed}) "
                             f"from {train_full.source}")
    test_ds.source = tag + f"{len(test_ds)} {target} test images from {test_full.source}"
    train_ds.name = test_ds.name = "transfer_standin"
    return train_ds, test_ds


@DATASETS.register("transfer_standin", kind="transfer", task="standin")
def load_transfer_standin(seed: int = 0, root=None, **kwargs):
    """'transfer_standin': `transfer_standin(seed=seed, root=root, **kwargs)` (target, source, n_per_class, n_test)."""
    return transfer_standin(seed=seed, root=root, **kwargs)


@DATASETS.register("transfer_analog", kind="transfer", task="analog")
def load_transfer_analog(seed: int = 0, root=None, **kwargs):
    """'transfer_analog': `transfer_standin(images=True, seed=seed, root=root, **kwargs)` — Fig 8's REAL-IMAGE ANALOG
    (28-px images for a conv backbone; target, source, n_per_class, n_test)."""
    train_ds, test_ds = transfer_standin(seed=seed, root=root, images=True, **kwargs)
    train_ds.name = test_ds.name = "transfer_analog"
    return train_ds, test_ds


def _register_task(task: str) -> None:
    def load(seed: int = 0, **kwargs):
        return get_transfer_data(task, seed=seed, **kwargs)

    load.__name__ = load.__qualname__ = f"load_transfer_{task}"
    load.__doc__ = f"'transfer_{task}': `get_transfer_data({task!r}, seed=seed, **kwargs)`."
    # `task`: the name Fig 8's `tasks` parameter takes (the paper's four; the synthetic CIFAR-10 stands in for one)
    meta = {"task": task} if task != "cifar10_synthetic" else {}
    DATASETS.register(f"transfer_{task}", load, kind="transfer", **meta)


for _task in TRANSFER_TASKS:
    if _task != "standin":  # registered above, with its own arguments
        _register_task(_task)
