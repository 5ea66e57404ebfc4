"""Training the three-group EfficientNet-B0 ensemble on cell crops.

Modules, in pipeline order::

    config    typed recipes: the named presets (milimed2021, kit2025), the three groups, fine-tuning,
              the pseudo-labeller, snapshot schedule
    dataset   cells.csv + crops, image / soft / pseudo targets
    sampler   the per-class quota sampler and the semi-balanced sampler, sharded for DDP
    augment   4-channel flips, rotations, RandomResizer, RandomPad
    losses    focal and BCE with soft targets
    loop      train_group: snapshots, resume, AMP, channels-last, DDP, log, manifest
    finetune  one epoch over the validation cells, manual labels repeated
    pseudo    the under-fit ResNet18 labeller and its negative / mitotic-spindle rules
    metrics   cell-level validation mAP

Quick start::

    from hpa_kernel.training import training_preset, train_group
    paths = train_group(training_preset("milimed2021", 2, pretrained="b0_imagenet.pth"), "cells/cells.csv", "weights/")

Under ``torchrun`` the same training runs with DistributedDataParallel:
``torchrun --nproc_per_node 2 -m hpa_kernel.training --cells cells.csv --group 1 --out weights``.
"""

from hpa_kernel.training.config import (
    DEFAULT_RECIPE,
    PRESETS,
    AugmentConfig,
    FinetuneConfig,
    LabelRules,
    LossConfig,
    PseudoLabelConfig,
    SamplerConfig,
    SoftLabelConfig,
    TrainConfig,
    finetune_preset,
    group_config,
    quick_config,
    snapshot_steps,
    training_preset,
)
from hpa_kernel.training.finetune import FinetuneInputs, class_finetune_indices, finetune_checkpoints, finetune_indices
from hpa_kernel.training.loop import RunOptions, TrainInputs, checkpoint_name, train_group
from hpa_kernel.training.pseudo import apply_pseudo_rules, make_pseudo_labels, train_pseudo_labeller

__all__ = [
    "DEFAULT_RECIPE",
    "PRESETS",
    "AugmentConfig",
    "FinetuneConfig",
    "FinetuneInputs",
    "LabelRules",
    "LossConfig",
    "PseudoLabelConfig",
    "RunOptions",
    "SamplerConfig",
    "SoftLabelConfig",
    "TrainConfig",
    "TrainInputs",
    "apply_pseudo_rules",
    "checkpoint_name",
    "class_finetune_indices",
    "finetune_checkpoints",
    "finetune_indices",
    "finetune_preset",
    "group_config",
    "make_pseudo_labels",
    "quick_config",
    "snapshot_steps",
    "train_group",
    "train_pseudo_labeller",
    "training_preset",
]
