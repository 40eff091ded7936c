"""MLPs (SPEC §6): a_l = φ(W_l a_{l-1} + b_l)/√n_l, F = W_L Φ + b_L; the authors' variant `bias_scaled` puts the
readout bias inside the 1/√n scaling; `BatchedMLP` holds M independent MLPs as one computation."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils.models.base import INITS, RepModel, first_layers, get_activation, normal_init_, torch_default_init_


class BiasScaledLinear(nn.Linear):
    """y = x Wᵀ + s·b with a fixed scale s (the authors' MLP applies 1/√fan_in to a layer's output *bias included*):
    the parameter `bias` stays the raw b (its init, gradient and weight decay act on b, as in the reference code),
    the function sees `effective_bias()` = s·b."""

    def __init__(self, in_features: int, out_features: int, bias_scale: float):
        super().__init__(in_features, out_features)
        self.bias_scale = float(bias_scale)

    def effective_bias(self) -> torch.Tensor:
        """s·b: the bias the layer adds."""
        return self.bias * self.bias_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias_scale={self.bias_scale:g}"


def effective_bias(layer: nn.Linear) -> torch.Tensor:
    """The bias a Linear layer adds: `bias`, or s·bias for a `BiasScaledLinear`."""
    return layer.effective_bias() if isinstance(layer, BiasScaledLinear) else layer.bias


class MLP(RepModel):
    """MLP with a_l = φ(W_l a_{l-1} + c_l)/√n_l, Φ = a_{L-1}, F = W_L Φ + c_L; all params N(0, init_std²)
    (init='normal', SPEC §6), or init='torch': PyTorch's nn.Linear default, U(±1/√fan_in) (a labelled deviation,
    for deep nets that do not leave the N(0, 0.01²) saddle).

    bias_scaled=True is the authors' code (SPEC §6, "the reference MLP"): every layer after the first scales its
    output *bias included* by 1/√fan_in, so c_l = b_l/√n_{l-1} for l ≥ 2 (one hidden layer:
    F = (W_2 φ(W_1 x + b_1) + b_2)/√n); bias_scaled=False (repspec's earlier variant) has c_l = b_l. The same
    functions of x for the same effective biases; what differs is how b_l is initialised and learns."""

    def __init__(
        self,
        d_in: int,
        widths: Sequence[int],
        n_classes: int,
        activation: str = "gelu",
        init_std: float = 0.01,
        seed: int | None = None,
        init: str = "normal",
        batchnorm: bool = False,
        bias_scaled: bool = False,
    ):
        super().__init__()
        if not isinstance(bias_scaled, bool):
            raise ValueError(f"bias_scaled must be True or False, got {bias_scaled!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        widths = [int(w) for w in ([widths] if isinstance(widths, int) else widths)]
        if d_in <= 0 or n_classes <= 0 or not widths or min(widths) <= 0:
            raise ValueError(f"MLP needs positive sizes, got d_in={d_in}, widths={widths}, n_classes={n_classes}")
        self.d_in, self.widths, self.n_classes, self.activation = d_in, widths, n_classes, activation
        self.act = get_activation(activation)
        dims = [d_in, *widths]
        self.bias_scaled = bias_scaled
        self.hidden = nn.ModuleList(mlp_layer(a, b, l, bias_scaled) for l, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.readout = mlp_layer(widths[-1], n_classes, len(widths), bias_scaled)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.init = init
        if init == "torch":
            torch_default_init_([*self.hidden, self.readout], gen)
        else:
            normal_init_(list(self.parameters()), init_std, gen)
        # batchnorm: a BatchNorm1d on every hidden pre-activation, z_l = BN(W_l a_{l-1} + b_l) (an architecture
        # change, e.g. for AR-AT's split BatchNorm on an MLP); created after the draws above, so the Linear layers'
        # initial weights are the same with and without it
        self.batchnorm = bool(batchnorm)
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) for w in widths) if self.batchnorm else None

    def _pre(self, l: int, a: torch.Tensor) -> torch.Tensor:
        z = self.hidden[l](a)
        return self.norms[l](z) if self.norms is not None else z

    def _last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """φ(z_{L-1}) before its 1/√n_{L-1} scaling: (B, n_{L-1})."""
        a = x.flatten(1)
        for l, layer in enumerate(self.hidden[:-1]):
            a = self.act(self._pre(l, a)) / math.sqrt(layer.out_features)
        return self.act(self._pre(len(self.hidden) - 1, a))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._last_hidden(x) / math.sqrt(self.widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W_L (φ/√n) + b = (W_L/√n) φ + b: scaling the 10×n readout instead of the B×n activations saves two
        # elementwise passes per step (about 7% of an MNIST step)
        w = self.readout.weight / math.sqrt(self.widths[-1])
        return F.linear(self._last_hidden(x), w, effective_bias(self.readout))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(z_{L-1}) without the 1/√n: the authors' `feature_map` output, on which their re-fit is trained."""
        return self._last_hidden(x)

    @property
    def feature_scale(self) -> float:
        """Φ = feature_scale · raw_features (1/√n_{L-1})."""
        return 1.0 / math.sqrt(self.widths[-1])

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """The hidden Linear layers, or only the first `max_layer` of them (the layer ablation)."""
        return first_layers(list(self.hidden), max_layer)

    @torch.no_grad()
    def set_layers(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> "MLP":
        """Copy weights and biases into the layers (hidden layers in order, then the readout); returns self."""
        layers = [*self.hidden, self.readout]
        if len(weights) != len(layers) or len(biases) != len(layers):
            raise ValueError(f"this MLP has {len(layers)} layers, got {len(weights)} weights / {len(biases)} biases")
        for layer, W, b in zip(layers, weights, biases):
            layer.weight.copy_(W)
            layer.bias.copy_(b)
        return self


class BatchedMLP(nn.Module):
    """M independent MLPs with stacked parameters W_l: (M, n_l, n_{l-1}); (B, d) or (M, B, d) -> (M, B, C).

    Member i is initialised exactly as `MLP(..., seed=seeds[i])`, so batched and single training agree.
    Used to train all seeds x methods x settings of the small 2-D experiments as one computation.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        d_in: int,
        widths: Sequence[int],
        n_classes: int,
        activation: str = "gelu",
        init_std: float = 0.01,
        init: str = "normal",
        bias_scaled: bool = False,
    ):
        super().__init__()
        members = [MLP(d_in, widths, n_classes, activation, init_std, seed=s, init=init, bias_scaled=bias_scaled)
                   for s in seeds]
        self.d_in, self.widths, self.n_classes, self.activation = d_in, members[0].widths, n_classes, activation
        self.bias_scaled = bias_scaled
        dims = [d_in, *self.widths]
        # the factor on each layer's bias (MLP's bias_scaled: 1/√fan_in after the first layer)
        self.bias_scales = [1.0 if (l == 0 or not bias_scaled) else 1.0 / math.sqrt(dims[l]) for l in range(len(dims))]
        self.act = get_activation(activation)
        self.n_models = len(members)
        layers = lambda m: [*m.hidden, m.readout]  # noqa: E731
        n_layers = len(layers(members[0]))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers(m)[l].weight.detach() for m in members])) for l in range(n_layers)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers(m)[l].bias.detach() for m in members])) for l in range(n_layers)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Φ for every member: (B, d) or (M, B, d) -> (M, B, n_{L-1})."""
        a = x.flatten(-1) if x.dim() == 3 else x
        if a.dim() == 2:
            a = a.unsqueeze(0).expand(self.n_models, -1, -1)
        for W, b, s in zip(self.weights[:-1], self.biases[:-1], self.bias_scales):
            a = self.act(torch.baddbmm(self._bias(b, s), a, W.transpose(1, 2))) / math.sqrt(W.shape[1])
        return a

    @staticmethod
    def _bias(b: torch.Tensor, scale: float) -> torch.Tensor:
        return (b if scale == 1.0 else b * scale).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, b = self.weights[-1], self.biases[-1]
        return torch.baddbmm(self._bias(b, self.bias_scales[-1]), self.features(x), W.transpose(1, 2))

    def forward_with_preacts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits (M, B, C), the hidden layers' pre-activations z_l (M, B, n_l)): the same function as forward."""
        a = x.flatten(-1) if x.dim() == 3 else x
        if a.dim() == 2:
            a = a.unsqueeze(0).expand(self.n_models, -1, -1)
        preacts = []
        for W, b, s in zip(self.weights[:-1], self.biases[:-1], self.bias_scales):
            z = torch.baddbmm(self._bias(b, s), a, W.transpose(1, 2))
            preacts.append(z)
            a = self.act(z) / math.sqrt(W.shape[1])
        W, b = self.weights[-1], self.biases[-1]
        return torch.baddbmm(self._bias(b, self.bias_scales[-1]), a, W.transpose(1, 2)), preacts

    def member(self, i: int) -> MLP:
        """Model i as a standalone `MLP` (a copy of its parameters)."""
        m = MLP(self.d_in, self.widths, self.n_classes, self.activation,
                bias_scaled=self.bias_scaled).to(self.weights[0].dtype)
        m.set_layers([W[i] for W in self.weights], [b[i] for b in self.biases])
        return m


def mlp_layer(n_in: int, n_out: int, index: int, bias_scaled: bool) -> nn.Linear:
    """Layer `index` (0 = first) of an MLP: a BiasScaledLinear(1/√n_in) after the first when bias_scaled."""
    if bias_scaled and index > 0:
        return BiasScaledLinear(n_in, n_out, 1.0 / math.sqrt(n_in))
    return nn.Linear(n_in, n_out)
