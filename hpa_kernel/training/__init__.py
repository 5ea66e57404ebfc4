"""Training the three-group EfficientNet-B0 ensemble on cell crops.

Modules, in pipeline order::

    config    typed recipes: the three groups, fine-tuning, the pseudo-labeller, snapshot schedule
    dataset   cells.csv + crops, image / soft / pseudo targets
    sampler   the semi-balanced sampler, sharded for DDP
    augment   4-channel flips, rotations, RandomResizer, RandomPad
    losses    focal and BCE with soft targets
    loop      train_group: snapshots, resume, AMP, channels-last, DDP, log, manifest
    finetune  one epoch over the validation cells, manual labels repeated
    pseudo    the under-fit ResNet18 labeller and its negative / mitotic-spindle rules
    metrics   cell-level validation mAP

Quick start::

    from hpa_kernel.training import quick_config, train_group
    paths = train_group(quick_config(1), "cells/cells.csv", "weights/")

Under ``torchrun`` the same training runs with DistributedDataParallel:
``torchrun --nproc_per_node 2 -m hpa_kernel.training --cells cells.csv --group 1 --out weights``.
"""

from hpa_kernel.training.config import (
    AugmentConfig,
    FinetuneConfig,
    LossConfig,
    PseudoLabelConfig,
    SamplerConfig,
    TrainConfig,
    group_config,
    quick_config,
    snapshot_steps,
)
from hpa_kernel.training.finetune import finetune_checkpoints, finetune_indices
from hpa_kernel.training.loop import checkpoint_name, train_group
from hpa_kernel.training.pseudo import apply_pseudo_rules, make_pseudo_labels, train_pseudo_labeller

__all__ = [
    "AugmentConfig",
    "FinetuneConfig",
    "LossConfig",
    "PseudoLabelConfig",
    "SamplerConfig",
    "TrainConfig",
    "apply_pseudo_rules",
    "checkpoint_name",
    "finetune_checkpoints",
    "finetune_indices",
    "group_config",
    "make_pseudo_labels",
    "quick_config",
    "snapshot_steps",
    "train_group",
    "train_pseudo_labeller",
]
