"""The models: every one exposes Φ (`features`) and the readout; `build_model(spec)` builds any registered kind."""

from __future__ import annotations

from repspec_utils.models.base import (ACTIVATION_DERIVATIVES, ACTIVATIONS, CONV_CALL_ROWS, IMAGENET_MEAN,
                                       IMAGENET_STD, INITS, Normalize, RefitModel, RepModel, activation_derivative,
                                       build_model, call_rows, first_layers, gelu_derivative, get_activation,
                                       normal_init_, torch_default_init_)
from repspec_utils.models.mlp import MLP, BatchedMLP, BiasScaledLinear, effective_bias, mlp_layer
from repspec_utils.models.resnet import (CIFAR10_MEAN, CIFAR10_STD, IMAGE_STATS, ResNetRep, check_small_resnet,
                                         cifar_resnet18, resnet50_transfer, set_circular_padding, small_resnet,
                                         small_resnet_cost)

__all__ = ['ACTIVATIONS', 'ACTIVATION_DERIVATIVES', 'BatchedMLP', 'CONV_CALL_ROWS', 'BiasScaledLinear', 'CIFAR10_MEAN', 'CIFAR10_STD', 'IMAGENET_MEAN', 'IMAGENET_STD', 'IMAGE_STATS', 'INITS', 'MLP', 'Normalize', 'RefitModel', 'RepModel', 'ResNetRep', 'activation_derivative', 'build_model', 'call_rows', 'check_small_resnet', 'cifar_resnet18', 'effective_bias', 'first_layers', 'gelu_derivative', 'get_activation', 'mlp_layer', 'normal_init_', 'resnet50_transfer', 'set_circular_padding', 'small_resnet', 'small_resnet_cost', 'torch_default_init_']
