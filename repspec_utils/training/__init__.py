"""Training: the config and its checks (`config`), the one loop with burn-in, branches, cache and resume (`loop`), augmentations (`augment`) and the batched 2-D engine (`ensemble`)."""

from __future__ import annotations

from repspec_utils.training.augment import cifar_augment, crop_augment, crop_flip_augment, no_augment, random_crop
from repspec_utils.training.config import (SCHEDULES, SEED_MAX, MethodParts, TrainConfig, TrainingDiverged, TrainResult,
                                           bf16_supported_here, check_memory, diverged, method_parts, schedule_epochs,
                                           validate, warn_if_slow_bf16)
from repspec_utils.training.loop import (data_identity, epoch_generator, load_training_data,
                                         make_model, make_optimizer, phase_key, prepare_model, resolve_device, set_lr,
                                         supervised_loss, torch_threads, train, train_step)

__all__ = ['MethodParts', 'SCHEDULES', 'SEED_MAX', 'TrainConfig', 'TrainResult', 'TrainingDiverged', 'bf16_supported_here', 'check_memory', 'cifar_augment', 'crop_augment', 'crop_flip_augment', 'data_identity', 'diverged', 'epoch_generator', 'load_training_data', 'make_model', 'make_optimizer', 'method_parts', 'no_augment', 'phase_key', 'prepare_model', 'random_crop', 'resolve_device', 'schedule_epochs', 'set_lr', 'supervised_loss', 'torch_threads', 'train', 'train_step', 'validate', 'warn_if_slow_bf16']
