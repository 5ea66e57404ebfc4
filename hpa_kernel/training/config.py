"""Typed training configurations: the three ensemble groups, fine-tuning and the pseudo-labeller.

Every configuration is a frozen dataclass that checks itself in ``__post_init__``. An experiment is
an override, never an edit of a default::

    >>> import dataclasses
    >>> cfg = dataclasses.replace(group_config(2), epochs=3, input_size=64)
    >>> cfg.group, cfg.n_checkpoints, cfg.loss.name
    (2, 2, 'focal')

The three groups of the ensemble (weights 0.2 / 0.4 / 0.4 at inference):

======  ===============================================================  =======  ===========
group   augmentations                                                    loss     checkpoints
======  ===============================================================  =======  ===========
1       flip + rotation                                                  focal    1
2       RandomResizer (p=0.4) + flip + rotation                          focal    2
3       RandomResizer (p=0.3) + RandomPad (p=0.3) + flip + rotation      BCE      4
======  ===============================================================  =======  ===========

Checkpoint ensembling ("snapshots"): a run of ``T`` optimizer steps keeps ``K = n_checkpoints``
snapshots. They are evenly spaced over the last ``snapshot_fraction`` of the steps and the last one
is the final step: ``s_k = T - (K - 1 - k) * max(1, floor(snapshot_fraction * T / K))`` for
``k = 0 .. K-1`` (see :func:`snapshot_steps`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from hpa_kernel.classes import MITOTIC_SPINDLE, NUM_CLASSES

__all__ = [
    "AugmentConfig",
    "LossConfig",
    "SamplerConfig",
    "TrainConfig",
    "FinetuneConfig",
    "PseudoLabelConfig",
    "group_config",
    "quick_config",
    "snapshot_steps",
]

def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


@dataclass(frozen=True)
class AugmentConfig:
    """Which 4-channel augmentations run, and with what probabilities.

    Sizes are fractions of the input size, so they scale with it: the 2021 recipe at 512 px resizes
    to a random R in [256, 384] and back (``resize_range=(0.5, 0.75)``) and pads each side by 0-200 px
    before resizing back (``pad_max=200/512``).

    Parameters
    ----------
    flip : bool
        Random horizontal and vertical flips (each p=0.5).
    rotate90 : bool
        A random multiple of 90 degrees.
    rotate_p : float
        Probability of an extra rotation by an arbitrary angle in ``[-rotate_max, rotate_max]``.
    rotate_max : float
        Largest arbitrary rotation, degrees.
    resize_p : float
        Probability of the RandomResizer.
    resize_range : (float, float)
        RandomResizer's intermediate size as fractions of the input size.
    pad_p : float
        Probability of RandomPad.
    pad_max : float
        RandomPad's largest padding per side as a fraction of the input size.
    """

    flip: bool = True
    rotate90: bool = True
    rotate_p: float = 0.5
    rotate_max: float = 180.0
    resize_p: float = 0.0
    resize_range: tuple[float, float] = (0.5, 0.75)
    pad_p: float = 0.0
    pad_max: float = 200.0 / 512.0

    def __post_init__(self):
        object.__setattr__(self, "resize_range", tuple(float(v) for v in self.resize_range))
        for name in ("rotate_p", "resize_p", "pad_p"):
            _check_prob(name, getattr(self, name))
        lo, hi = self.resize_range if len(self.resize_range) == 2 else (None, None)
        if lo is None or not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"resize_range must be (lo, hi) with 0 < lo <= hi <= 1, got {self.resize_range}")
        if not 0.0 <= self.rotate_max <= 180.0:
            raise ValueError(f"rotate_max must be in [0, 180] degrees, got {self.rotate_max}")
        if not 0.0 <= self.pad_max <= 2.0:
            raise ValueError(f"pad_max must be a fraction of the input size in [0, 2], got {self.pad_max}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LossConfig:
    """The training loss: ``"focal"`` (``gamma``, ``alpha``) or ``"bce"``; both accept soft targets.

    ``alpha`` weights the positive term and ``1 - alpha`` the negative term; ``alpha=None`` weights
    both by 1.
    """

    name: str = "focal"
    gamma: float = 2.0
    alpha: float | None = None

    def __post_init__(self):
        if self.name not in ("focal", "bce"):
            raise ValueError(f"loss name must be 'focal' or 'bce', got {self.name!r}")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.alpha is not None:
            _check_prob("alpha", self.alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SamplerConfig:
    """Parameters of the semi-balanced sampler (formula in :mod:`hpa_kernel.training.sampler`).

    Parameters
    ----------
    alpha : float
        Balance exponent: 0 = uniform sampling, 1 = fully inverse-frequency.
    label_power : float
        Divide a cell's weight by ``n_labels ** label_power`` so that images with many labels are
        not over-used.
    hardness : float
        Strength of the per-class hardness term ``1 + hardness * (1 - recall_c)``; 0 disables it.
    threshold : float
        A soft target at or above this counts as a positive for the class frequencies.
    """

    alpha: float = 0.5
    label_power: float = 0.5
    hardness: float = 1.0
    threshold: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"sampler alpha must be in [0, 1], got {self.alpha}")
        if self.label_power < 0 or self.hardness < 0:
            raise ValueError(f"label_power and hardness must be >= 0, got {self.label_power} and {self.hardness}")
        _check_prob("threshold", self.threshold)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """One training run of one ensemble group.

    Parameters
    ----------
    group : int
        1, 2 or 3; recorded in the checkpoint configs.
    arch : str
        timm architecture.
    input_size : int
        Network input, a multiple of 32 (512 for the real ensemble).
    epochs : int
        Passes of ``steps_per_epoch`` optimizer steps.
    steps_per_epoch : int or None
        None = ``len(train cells) // (batch_size * world_size)``, at least 1.
    batch_size : int
        Per process.
    lr, weight_decay : float
        AdamW with a one-cycle schedule (``warmup`` fraction of the steps).
    n_checkpoints : int
        Snapshots kept for the ensemble (see :func:`snapshot_steps`).
    snapshot_fraction : float
        Fraction of the final steps over which the snapshots are spread.
    val_fraction : float
        Fraction of the images held out for the per-epoch validation mAP when no validation table
        is given (0 = no validation).
    amp, channels_last : bool
        Mixed precision and channels-last memory on CUDA (ignored on the CPU).
    workers : int
        DataLoader worker processes.
    """

    group: int = 1
    arch: str = "efficientnet_b0"
    input_size: int = 512
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    warmup: float = 0.1
    n_checkpoints: int = 1
    snapshot_fraction: float = 0.3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    val_fraction: float = 0.1
    mean: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    amp: bool = True
    channels_last: bool = True
    workers: int = 0
    seed: int = 0
    drop_rate: float = 0.2

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))
        if isinstance(self.sampler, dict):
            object.__setattr__(self, "sampler", SamplerConfig(**self.sampler))
        if self.group not in (1, 2, 3):
            raise ValueError(f"group must be 1, 2 or 3, got {self.group}")
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {self.steps_per_epoch}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.n_checkpoints < 1:
            raise ValueError(f"n_checkpoints must be >= 1, got {self.n_checkpoints}")
        if not 0.0 < self.snapshot_fraction <= 1.0:
            raise ValueError(f"snapshot_fraction must be in (0, 1], got {self.snapshot_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if len(self.mean) != 4 or len(self.std) != 4 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std need 4 values (std > 0), got {self.mean} and {self.std}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - names:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**data)


_GROUPS: dict[int, TrainConfig] = {
    1: TrainConfig(group=1, augment=AugmentConfig(), loss=LossConfig("focal"), n_checkpoints=1),
    2: TrainConfig(group=2, augment=AugmentConfig(resize_p=0.4), loss=LossConfig("focal"), n_checkpoints=2),
    3: TrainConfig(group=3, augment=AugmentConfig(resize_p=0.3, pad_p=0.3), loss=LossConfig("bce"), n_checkpoints=4),
}


def group_config(group: int, **overrides) -> TrainConfig:
    """The training recipe of ensemble group 1, 2 or 3, with optional field overrides.

    >>> group_config(3).loss.name, group_config(3).augment.pad_p
    ('bce', 0.3)
    """
    if group not in _GROUPS:
        raise ValueError(f"group must be 1, 2 or 3, got {group!r}")
    return dataclasses.replace(_GROUPS[group], **overrides)


def quick_config(group: int, **overrides) -> TrainConfig:
    """A small CPU preset for the demo and tests: 64 px input, batch 16, 2 epochs of 60 steps.

    It keeps the group's augmentations, loss and number of snapshots; only sizes and lengths shrink.
    Step times are in ``benchmarks/RESULTS.md`` (Training).
    """
    quick = dict(input_size=64, batch_size=16, epochs=2, steps_per_epoch=60, lr=3e-3, warmup=0.05,
                 snapshot_fraction=0.5, val_fraction=0.0, amp=False, channels_last=False, drop_rate=0.0)
    quick.update(overrides)
    return group_config(group, **quick)


def snapshot_steps(total_steps: int, n_checkpoints: int, fraction: float) -> list[int]:
    """The optimizer steps (1-based) after which the ensemble snapshots are saved.

    ``s_k = T - (K - 1 - k) * max(1, floor(fraction * T / K))``, clipped to at least step 1 and made
    unique; the last snapshot is always the final step.

    >>> snapshot_steps(100, 4, 0.3)
    [79, 86, 93, 100]
    >>> snapshot_steps(2, 4, 0.3)
    [1, 2]
    """
    if total_steps < 1 or n_checkpoints < 1:
        raise ValueError(f"total_steps and n_checkpoints must be >= 1, got {total_steps} and {n_checkpoints}")
    gap = max(1, math.floor(fraction * total_steps / n_checkpoints))
    steps = [max(1, total_steps - (n_checkpoints - 1 - k) * gap) for k in range(n_checkpoints)]
    return sorted(set(steps))


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on the validation cells: one "epoch" of ``epoch_size`` samples.

    Cells without manual labels are used once each and manually labelled cells ``repeats`` times;
    when that is more than ``epoch_size`` the list is subsampled at random, when less it is used as
    is. Each group keeps its own augmentations and loss; ``lr`` is the fine-tuning peak rate.
    """

    epoch_size: int = 200_000
    repeats: int = 4
    lr: float = 2e-4
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.epoch_size < 1 or self.repeats < 1:
            raise ValueError(f"epoch_size and repeats must be >= 1, got {self.epoch_size} and {self.repeats}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """The deliberately under-fit pseudo-labeller and its two rules.

    Parameters
    ----------
    train : TrainConfig
        The labeller's training run (ResNet18, one short epoch by default).
    negative_threshold : float
        Drop an image label from a cell when the labeller's probability is below this.
    positive_threshold : float
        Add mitotic spindle (``positive_class``) to a cell of an image without it when the
        probability is at or above this.
    positive_class : int
        The class of the positive rule (11, mitotic spindle).
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(group=1, arch="resnet18", epochs=1, n_checkpoints=1, loss=LossConfig("bce"),
                                            val_fraction=0.0, drop_rate=0.0)
    )
    negative_threshold: float = 0.3
    positive_threshold: float = 0.9
    positive_class: int = MITOTIC_SPINDLE

    def __post_init__(self):
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainConfig.from_dict(self.train))
        _check_prob("negative_threshold", self.negative_threshold)
        _check_prob("positive_threshold", self.positive_threshold)
        if not 0 <= self.positive_class < NUM_CLASSES:
            raise ValueError(f"positive_class must be a class id 0..{NUM_CLASSES - 1}, got {self.positive_class}")
