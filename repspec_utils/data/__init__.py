"""Datasets: the `ArrayDataset` type and `get_data`, with one module per family of loaders.

| module     | datasets (registry.DATASETS names)                                                    |
|------------|---------------------------------------------------------------------------------------|
| `core`     | `ArrayDataset`, errors, the data root, `get_data` / `dataset_names`                   |
| `toy`      | 'xor', 'xor_noisy', 'sin' (generated, box [-2, 2]); 'digits' (scikit-learn, tests)    |
| `mnist`    | 'mnist', 'fashion_mnist' (torchvision, md5-checked raw files, offline pre-population) |
| `cifar`    | 'cifar10' (torchvision), 'cifar10_synthetic' (a labelled SYNTHETIC stand-in)           |
| `finetune` | 'transfer_flowers102', 'transfer_stanford_dogs', 'transfer_mit_indoor67',             |
|            | 'transfer_cifar10', 'transfer_cifar10_synthetic', 'transfer_standin'                  |

Every loader returns whole datasets as tensors: x float32 inside the dataset's `box`, y int64 labels
(SPEC §6 for the recipes). Data root: argument ``root``, else env ``REPSPEC_DATA``, else ``<repo>/data``.
Offline sources: `bash scripts/fetch_data.sh` (see README). `python -m repspec_utils.data` verifies them.
"""

from __future__ import annotations

from . import cifar, finetune, mnist, toy  # noqa: F401  (importing them registers their datasets)
from .cifar import CIFAR10_CLASSES, make_synthetic_cifar10
from .core import (ArrayDataset, DataIntegrityError, DataMissingError, data_fingerprint, data_root, dataset_fingerprint,
                   dataset_names, get_data, pair_fingerprint)
from .finetune import STANDIN_TAG, get_transfer_data, transfer_standin
from .mnist import FASHION_MNIST_MD5, MNIST_MD5, mnist_raw_dir, prepare_fashion_mnist, prepare_mnist, verify_raw_files
from .toy import make_digits, make_sin, make_xor, make_xor_noisy, sin_label

__all__ = ["ArrayDataset", "DataIntegrityError", "DataMissingError", "dataset_names", "dataset_fingerprint",
           "data_fingerprint", "pair_fingerprint", "MNIST_MD5",
           "FASHION_MNIST_MD5", "CIFAR10_CLASSES", "SyntheticCIFAR10", "data_root", "make_xor", "make_xor_noisy",
           "make_sin", "make_digits", "sin_label", "prepare_mnist", "prepare_fashion_mnist", "verify_raw_files",
           "mnist_raw_dir", "make_synthetic_cifar10", "get_data", "get_transfer_data", "transfer_standin",
           "STANDIN_TAG"]


def __getattr__(name: str):
    # `SyntheticCIFAR10` is built on first use (PEP 562), so that the toy problems do not import torchvision
    if name == "SyntheticCIFAR10":
        return cifar._synthetic_cifar10_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
