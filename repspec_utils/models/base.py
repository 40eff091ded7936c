"""What every model shares: activations and their derivatives, `RepModel` (Φ = `features`, `readout`,
`feature_layers()`), inference on a whole set (`predict`, `features`, `accuracy`: no grad, eval mode, calls of
`call_rows` images), `Normalize` (inputs in [0, 1], normalisation inside the model), `RefitModel` (Φ with a new
head), initialisers, and `build_model(spec)` (dispatch through `registry.MODELS`)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils.infra import registry
from repspec_utils.infra.registry import MODELS

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "identity": lambda z: z,  # a linear "MLP": the reference case with closed-form Δx (tests, bounds)
}


CONV_CALL_ROWS = 64  # images per forward call of a convolutional net on the CPU (benchmarks/bench_conv.py --query-batches)


def call_rows(model: nn.Module, device: torch.device | str = "cpu", dense: int = 4096) -> int:
    """Images per forward call when a caller splits a large no-grad pass (an attack's queries, an accuracy, the
    features for a re-fit). A convolutional net on the CPU runs ≈ 1.6–2× faster per image in calls of 16–256 images
    than in calls of thousands (its activations stay in cache; measured on the analogs' small ResNet at widths 16 and
    32 and on the CIFAR ResNet18, one thread): CONV_CALL_ROWS. An MLP's matrix products, and any net on a GPU, run
    best in large calls: `dense`. The split changes how many images go into one call, never the images or the result
    (a test compares them)."""
    if torch.device(device).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return CONV_CALL_ROWS
    return int(dense)


@contextmanager
def eval_mode(model: nn.Module):
    """Run with every submodule in eval mode; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_float_dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


def _batched(fn, x: torch.Tensor, model: nn.Module, batch_size: int | None) -> torch.Tensor:
    """fn over x in calls of `batch_size` images (None: `call_rows`), no grad, every submodule in eval mode."""
    dev, dtype = model_device(model), model_float_dtype(model)
    batch_size = call_rows(model, dev) if batch_size is None else int(batch_size)
    with torch.no_grad(), eval_mode(model):
        return torch.cat([fn(x[s:s + batch_size].to(dev, dtype)) for s in range(0, x.shape[0], batch_size)])


def predict(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Predicted labels argmax F(x): x (N, ...) -> int64 (N,) on the model's device."""
    return _batched(lambda b: model(b).argmax(1), x, model, batch_size)


def features(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The representation Φ(x): x (N, ...) -> (N, p) on the model's device (no grad)."""
    return _batched(model.features, x, model, batch_size)


def accuracy(model: nn.Module, ds, batch_size: int | None = None) -> float:
    """Top-1 accuracy of argmax F on the whole dataset `ds` (x (N, ...), y (N,)): the test accuracy of every table
    and of the training loop's history alike."""
    return (predict(model, ds.x, batch_size).cpu() == ds.y.cpu()).double().mean().item()


def gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    """GELU′(z) = Φ(z) + z·ϕ(z) (exact erf GELU), differentiable."""
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


ACTIVATION_DERIVATIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": gelu_derivative,
    "relu": lambda z: (z > 0).to(z.dtype),
    "tanh": lambda z: 1 - torch.tanh(z) ** 2,
    "softplus": torch.sigmoid,
    "identity": torch.ones_like,
}


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise nonlinearity φ called `name` (gelu, relu, tanh, softplus)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation_derivative(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """φ′ of the nonlinearity `name`, in closed form (used by the authors' rep-spectral activation term)."""
    get_activation(name)
    return ACTIVATION_DERIVATIVES[name]


class RepModel(nn.Module):
    """F(x) = readout(Φ(x)); subclasses define `features` (Φ) and `feature_layers` (weights inside Φ)."""

    readout: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x): (B, *input_shape) -> (B, p)."""
        raise NotImplementedError

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """The Linear/Conv2d layers inside Φ, in forward order (the layers rep-spectral penalises);
        `max_layer` restricts to the first layers (MLP: hidden layers; ResNet: residual stages)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits F(x) = W_L Φ(x) + b_L: (B, *input_shape) -> (B, C)."""
        return self.readout(self.features(x))


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so that inputs stay in the [0, 1] box."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


INITS = ("normal", "torch")  # N(0, init_std²) everywhere (the paper's) | PyTorch's nn.Linear default
registry.INITS.register("normal", "N(0, init_std²) for every weight and bias (the paper's)")
registry.INITS.register("torch", "PyTorch's nn.Linear default (a labelled deviation)")


def torch_default_init_(layers: Sequence[nn.Linear], generator: torch.Generator | None) -> None:
    """PyTorch's nn.Linear initialisation, drawn from `generator`: kaiming_uniform_(a=√5) for the weight, which is
    U(−1/√fan_in, 1/√fan_in), and the same uniform for the bias (as nn.Linear.reset_parameters)."""
    with torch.no_grad():
        for layer in layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            for t in (layer.weight, layer.bias):
                t.copy_((torch.rand(t.shape, generator=generator, dtype=t.dtype) * 2 - 1) * bound)


def normal_init_(tensors: Sequence[torch.Tensor], std: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * std)


def first_layers(layers: list[nn.Module], max_layer: int | None) -> list[nn.Module]:
    if max_layer is None:
        return layers
    if not 1 <= int(max_layer) <= len(layers):
        raise ValueError(f"max_layer must be in 1..{len(layers)}, got {max_layer}")
    return layers[: int(max_layer)]


class RefitModel(RepModel):
    """A frozen feature map Φ of another model with a new linear readout (readout re-training)."""

    def __init__(self, base: RepModel, readout: nn.Linear):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.readout = readout

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.features(x)

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        return self.base.feature_layers(max_layer)


def build_model(spec: dict) -> RepModel:
    """A model from a plain dict (the form stored in cache keys and profiles): registry.MODELS[spec['kind']]
    called with the other entries, e.g. {'kind': 'mlp', 'd_in': 784, 'widths': [2000], 'n_classes': 10, 'seed': 0}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    return MODELS.lookup(kind)(**spec)
