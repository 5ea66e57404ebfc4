"""Typed training configurations: named recipes, the three ensemble groups, fine-tuning and the pseudo-labeller.

Two named recipes (:func:`training_preset`), each a :class:`TrainConfig` per ensemble group:

* ``"milimed2021"`` (the default of ``hpa-kernel train``): the 4th-place team's code. Their network
  (timm ``tf_efficientnet_b0``, BatchNorm eps 1e-3 and momentum 0.01, dropout 0.2, drop path 0.2,
  ImageNet weights with a new random 4-channel stem, float32) with 18 outputs (Negative is ``1 - max``
  at inference), Adam 3e-4 with a per-epoch cosine (``T_max`` 15, ``eta_min`` 1e-5), 16 epochs of
  316,666 quota draws in batches of 32, a checkpoint every epoch and the ensembled epochs chosen by
  number, focal loss (``alpha`` 1, ``gamma`` 2) or BCE on probabilities (log clamped at -100), their
  augmentations, the per-class quota sampler, the train filter, per-class soft-label maps,
  pseudo-negatives at 0.01 and positives at 0.99 for the team's classes, and the class-6 antibody
  rule (:data:`MILIMED_LABELS`).
* ``"kit2025"``: this kit's own earlier choices. Random init, 19 outputs, AdamW 1e-3 with
  warm-up and a per-step cosine, snapshots over the last steps, rotations of +-180 degrees, the
  recall-weighted sampler, pseudo-negatives at 0 and one soft-label map.

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
    "PRESETS",
    "DEFAULT_RECIPE",
    "SoftLabelConfig",
    "LabelRules",
    "MILIMED_LABELS",
    "training_preset",
    "finetune_preset",
    "MILIMED_QUOTAS",
    "MILIMED_EPOCH_SIZE",
    "MILIMED_SOFT",
    "MILIMED_FINETUNE_REPEATS",
    "MILIMED_VALIDATION_SOFT",
    "epoch_cosine_lr",
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
    rotate_nearest : bool
        Nearest-neighbour interpolation for the arbitrary rotation (torchvision's ``RandomRotation``
        default, which the team used) instead of bilinear.
    resize_last : bool
        The team's order: RandomResizer and RandomPad keep their new size, the flips and the
        rotation act on that canvas, and one final resize brings it back to the input size. False:
        each of the two resizes back at once (the kit's order).
    """

    flip: bool = True
    rotate90: bool = True
    rotate_p: float = 0.5
    rotate_max: float = 180.0
    resize_p: float = 0.0
    resize_range: tuple[float, float] = (0.5, 0.75)
    pad_p: float = 0.0
    pad_max: float = 200.0 / 512.0
    resize_last: bool = False
    rotate_nearest: bool = False

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

    ``form="split"`` (the kit's): ``alpha`` weights the positive term and ``1 - alpha`` the negative
    term; ``alpha=None`` weights both by 1. ``form="pt"`` (the team's): ``alpha * (1 - pt)**gamma * BCE``
    with ``pt = exp(-BCE)`` per element, ``alpha`` a plain factor (None = 1).

    ``on="logits"`` (kit2025): the cross-entropy from the logits (exact at any logit).
    ``on="probabilities"`` (milimed2021, as the team's ``F.binary_cross_entropy`` / ``nn.BCELoss``):
    the sigmoid first, in float32, then the cross-entropy with each log clamped at -100, so a
    saturated wrong logit (``sigmoid`` rounding to 0 or 1) costs 100 and has gradient 0 (see
    :mod:`hpa_kernel.training.losses`). Only for ``"bce"`` and the ``"pt"`` focal form.
    """

    name: str = "focal"
    gamma: float = 2.0
    alpha: float | None = None
    form: str = "split"
    on: str = "logits"

    def __post_init__(self):
        if self.name not in ("focal", "bce"):
            raise ValueError(f"loss name must be 'focal' or 'bce', got {self.name!r}")
        if self.form not in ("split", "pt"):
            raise ValueError(f"loss form must be 'split' or 'pt', got {self.form!r}")
        if self.on not in ("logits", "probabilities"):
            raise ValueError(f"loss 'on' must be 'logits' or 'probabilities', got {self.on!r}")
        if self.on == "probabilities" and self.name == "focal" and self.form != "pt":
            raise ValueError("loss on='probabilities' is the team's form: use it with 'bce' or the focal form 'pt'")
        if self.gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma}")
        if self.alpha is not None:
            _check_prob("alpha", self.alpha)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The team's per-class draws per epoch (their ``sample_size`` 20 000: x0.5, x1, x2, x1/3), used
#: as relative quotas; ``-1`` is the Negative pool (cells with none of the trained classes).
MILIMED_QUOTAS: dict[int, float] = {
    **{c: 10_000.0 for c in (1, 3, 4, 6, 8, 9, 10, 12, 15)},
    **{c: 20_000.0 for c in (2, 5, 7, 13, 14, 17)},
    0: 40_000.0, 16: 40_000.0, 11: 6_666.0, -1: 20_000.0,
}


@dataclass(frozen=True)
class SamplerConfig:
    """Which sampler draws the training cells, and its parameters.

    ``kind="weighted"`` (kit2025): the recall-weighted semi-balanced sampler
    (:func:`~hpa_kernel.training.sampler.sample_weights`). ``kind="quota"`` (milimed2021): the
    per-class quota sampler (:class:`~hpa_kernel.training.sampler.QuotaSampler`).

    Parameters
    ----------
    alpha : float
        Balance exponent: 0 = uniform sampling, 1 = fully inverse-frequency (weighted).
    label_power : float
        Weighted: divide a cell's weight by ``n_labels ** label_power``. Quota: a drawn cell is
        accepted with probability ``(1 / n_labels) ** label_power``.
    hardness : float
        Strength of the per-class hardness term ``1 + hardness * (1 - recall_c)``; 0 disables it (weighted).
    threshold : float
        A soft target at or above this counts as a positive for the class frequencies (weighted)
        and for the training recall in the log.
    quotas : dict
        Quota: relative draws per class per epoch, ``-1`` for the Negative pool. Classes without
        cells are skipped and their share goes to the others.
    epoch_size : int or None
        Quota: draws per epoch (all ranks together) before ``epoch_scale``; None = the number of
        training cells. milimed2021: 316,666, the team's (the sum of their quotas). An explicit
        ``TrainConfig.steps_per_epoch`` overrides it (``steps_per_epoch * batch_size * world`` draws).
    epoch_scale : float
        Quota: the one factor that shrinks the epoch for small data (tests, a first run on few cells):
        ``max(1, round(epoch_size * epoch_scale))`` draws per epoch (:meth:`draws_per_epoch`).
    duplicate_min : float
        Quota: a cell whose soft label of the class is at or above this is in that class's pool twice.
    duplicate_source : str
        Quota: which soft labels count for the duplicates and the extra passes: ``"manual"`` (the
        manual scores) or ``"any"`` (the team's: also the class-6 antibody rule's 1.0 and the 0.99
        positive pseudo-labels; a plain image label never counts).
    spindle_class, spindle_repeats : int
        Quota: the class whose positives (target > 0) are repeated ``spindle_repeats`` times in
        its pool (those manually scored >= 0.99 three times as often), drawn without the acceptance test.
    extra_passes : dict
        Quota: ``{class: (t1, t2, ...)}``: after the duplicates, for each ``t`` in turn the pool is
        extended by its own entries manually scored >= ``t`` (the team's class 12: 0.7, 0.9, 0.9,
        so a cell scored >= 0.9 is in the pool 16 times and one in [0.7, 0.9) twice).
    """

    alpha: float = 0.5
    label_power: float = 0.5
    hardness: float = 1.0
    threshold: float = 0.5
    kind: str = "weighted"
    quotas: dict = field(default_factory=dict)
    epoch_size: int | None = None
    epoch_scale: float = 1.0
    duplicate_min: float = 0.9
    duplicate_source: str = "manual"
    spindle_class: int = MITOTIC_SPINDLE
    spindle_repeats: int = 41
    extra_passes: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "quotas", {int(k): float(v) for k, v in dict(self.quotas).items()})
        object.__setattr__(self, "extra_passes", {int(k): tuple(float(t) for t in v) for k, v in dict(self.extra_passes).items()})
        if self.duplicate_source not in ("manual", "any"):
            raise ValueError(f"duplicate_source must be 'manual' or 'any', got {self.duplicate_source!r}")
        if self.kind not in ("weighted", "quota"):
            raise ValueError(f"sampler kind must be 'weighted' or 'quota', got {self.kind!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"sampler alpha must be in [0, 1], got {self.alpha}")
        if self.label_power < 0 or self.hardness < 0:
            raise ValueError(f"label_power and hardness must be >= 0, got {self.label_power} and {self.hardness}")
        _check_prob("threshold", self.threshold)
        _check_prob("duplicate_min", self.duplicate_min)
        if any(v < 0 for v in self.quotas.values()) or any(not -1 <= k < NUM_CLASSES for k in self.quotas):
            raise ValueError(f"quotas must map class ids 0..{NUM_CLASSES - 1} or -1 to counts >= 0, got {self.quotas}")
        if self.kind == "quota" and not sum(self.quotas.values()) > 0:
            raise ValueError("the quota sampler needs quotas with a positive sum")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise ValueError(f"epoch_size must be >= 1 or None, got {self.epoch_size}")
        if not self.epoch_scale > 0:
            raise ValueError(f"epoch_scale must be > 0, got {self.epoch_scale}")
        if self.spindle_repeats < 1:
            raise ValueError(f"spindle_repeats must be >= 1, got {self.spindle_repeats}")

    def draws_per_epoch(self, n_cells: int) -> int:
        """Quota draws per epoch (all ranks): ``max(1, round((epoch_size or n_cells) * epoch_scale))``.

        >>> SamplerConfig(kind="quota", quotas={0: 1.0}, epoch_size=316_666, epoch_scale=0.01).draws_per_epoch(50)
        3167
        """
        return max(1, round((self.epoch_size or n_cells) * self.epoch_scale))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SoftLabelConfig:
    """How manual scores (1..5) become targets, and the rules around them.

    Parameters
    ----------
    default_map : dict or None
        ``{score: soft label}`` for classes without their own map; None keeps the ``soft_label``
        column of the export as is (kit2025).
    class_maps : dict
        ``{class: {score: soft label}}``. A mean score between two integers is interpolated.
    unscored_value : float or None
        Target of a cell labelled with a class of ``unscored_classes`` that has no manual score
        for it, when the soft-label file scores that class for some cell (the team: 0.69).
    unscored_classes : tuple of int
    exclusive_class, exclusive_min : int, float
        A manual soft label of ``exclusive_class`` at or above ``exclusive_min`` makes it the cell's
        only label (the team: mitotic spindle, 0.2); ``exclusive_min`` None disables the rule.
        The cell keeps the soft targets the other rules set; plain image labels drop to 0.
    exclusive_keeps : tuple of int
        Classes whose plain image-label target such a cell keeps when the file scores the class
        (the team: 12, whose unscored 0.69 their class-12 sampler reset to 1.0).
    """

    default_map: dict | None = None
    class_maps: dict = field(default_factory=dict)
    unscored_value: float | None = None
    unscored_classes: tuple[int, ...] = ()
    exclusive_class: int = MITOTIC_SPINDLE
    exclusive_min: float | None = None
    exclusive_keeps: tuple[int, ...] = ()

    def __post_init__(self):
        def norm(m, where):
            out = {int(k): float(v) for k, v in dict(m).items()}
            if not out or any(not 0.0 <= v <= 1.0 for v in out.values()):
                raise ValueError(f"{where} must map scores to soft labels in [0, 1], got {m}")
            return out

        if self.default_map is not None:
            object.__setattr__(self, "default_map", norm(self.default_map, "default_map"))
        object.__setattr__(self, "class_maps", {int(c): norm(m, f"class_maps[{c}]") for c, m in dict(self.class_maps).items()})
        object.__setattr__(self, "unscored_classes", tuple(int(c) for c in self.unscored_classes))
        object.__setattr__(self, "exclusive_keeps", tuple(int(c) for c in self.exclusive_keeps))
        if any(not 0 <= c < NUM_CLASSES for c in self.exclusive_keeps):
            raise ValueError(f"exclusive_keeps must be class indices 0..{NUM_CLASSES - 1}, got {self.exclusive_keeps}")
        if self.unscored_value is not None:
            _check_prob("unscored_value", self.unscored_value)
        if self.exclusive_min is not None:
            _check_prob("exclusive_min", self.exclusive_min)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The team's pseudo-label classes (``code/data_prep.py``): ``auto-relabel`` negatives (before the
#: manual maps), ``auto-relabel2`` negatives (after them: the 0.01 overrides a manual score) and the
#: positive pseudo-labels (class 6 at 0.99). Never 8, 9, 11, 15, 16.
MILIMED_PSEUDO_BEFORE: tuple[int, ...] = (0, 2, 3, 4, 5, 6, 7, 10, 13, 14, 17)
MILIMED_PSEUDO_AFTER: tuple[int, ...] = (1, 6, 12)
MILIMED_PSEUDO_POSITIVE: tuple[int, ...] = (6,)


@dataclass(frozen=True)
class LabelRules:
    """Which pseudo labels count, in which order, and the class-6 antibody rule.

    Parameters
    ----------
    pseudo_scope : str
        ``"all"`` (the kit's): every dropped label gets ``pseudo_negative`` and every added one
        ``pseudo_positive``, before the manual scores. ``"milimed2021"``: only the team's classes
        (:data:`MILIMED_PSEUDO_BEFORE`, :data:`MILIMED_PSEUDO_AFTER`, :data:`MILIMED_PSEUDO_POSITIVE`).
    pseudo_overrides_manual : bool
        The ``MILIMED_PSEUDO_AFTER`` negatives come after the manual scores and override them
        (training); False applies them before (fine-tuning, where the validation scores came last).
    antibody_class : int or None
        The class of the antibody rule (6, ``relabel_me6``): its labelled cells get
        ``antibody_values[0]`` (0.51) in images of a flagged antibody, else ``antibody_values[1]``
        (1.0), both counted as relabelled (duplicated in the sampler at >= 0.9). None: off.
    antibody_values : (float, float)

    Examples
    --------
    >>> [sorted(s) for s in LabelRules("milimed2021").pseudo_classes()][1:]
    [[1, 6, 12], [6]]
    """

    pseudo_scope: str = "all"
    pseudo_overrides_manual: bool = True
    antibody_class: int | None = None
    antibody_values: tuple[float, float] = (0.51, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "antibody_values", tuple(float(v) for v in self.antibody_values))
        if self.pseudo_scope not in ("all", "milimed2021"):
            raise ValueError(f"pseudo_scope must be 'all' or 'milimed2021', got {self.pseudo_scope!r}")
        if self.antibody_class is not None and not 0 <= self.antibody_class < NUM_CLASSES:
            raise ValueError(f"antibody_class must be a class id 0..{NUM_CLASSES - 1} or None, got {self.antibody_class}")
        if len(self.antibody_values) != 2 or any(not 0.0 <= v <= 1.0 for v in self.antibody_values):
            raise ValueError(f"antibody_values must be two soft labels (flagged, other) in [0, 1], got {self.antibody_values}")

    def pseudo_classes(self) -> tuple[frozenset, frozenset, frozenset]:
        """(negatives before the manual scores, negatives after them, positives) of the scope."""
        if self.pseudo_scope == "all":
            every = frozenset(range(NUM_CLASSES))
            return every, frozenset(), every
        return frozenset(MILIMED_PSEUDO_BEFORE), frozenset(MILIMED_PSEUDO_AFTER), frozenset(MILIMED_PSEUDO_POSITIVE)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The team's label rules: their pseudo-label classes and ``relabel_me6``.
MILIMED_LABELS = LabelRules(pseudo_scope="milimed2021", antibody_class=6)


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
        Peak learning rate and weight decay of the optimiser.
    recipe : str
        The preset this config came from (recorded in the checkpoint JSON).
    num_classes : int
        Trained outputs: 19, or 18 when Negative is ``1 - max`` at inference.
    optimizer : str
        ``"adamw"`` or ``"adam"``.
    schedule : str
        ``"warmup_cosine"``: linear warm-up over the ``warmup`` fraction of the steps, then a
        per-step cosine. ``"epoch_cosine"``: the rate of epoch ``e`` (0-based) is
        :func:`epoch_cosine_lr` with ``t_max`` and ``eta_min``, constant within the epoch.
        ``"constant"``: ``lr`` throughout.
    pretrained : str or None
        None: random initialisation. ``"imagenet"``: ImageNet weights from a local file found by
        name (``$HPA_KERNEL_WEIGHTS``, then the Kaggle input folders; ``tf_efficientnet_b0_imagenet.pth``
        or efficientnet_pytorch's ``efficientnet-b0-355c32eb.pth``; see
        :mod:`hpa_kernel.classifier.pretrained`); nothing downloads and a missing file fails before
        training. A path: that file (or a folder holding one of those names). ``"hub"``: timm's hub
        (online only).
    stem : str
        How the 3-channel ImageNet stem becomes 4 channels: ``"adapt"`` (timm's ``adapt_input_conv``,
        kit2025) or ``"random"`` (a new randomly initialised stem, ImageNet everywhere else: the team's
        ``from_pretrained(..., in_channels=4)``). Unused without ``pretrained``.
    batchnorm : str
        BatchNorm settings, a key of :data:`hpa_kernel.classifier.checkpoint.SOURCE_FORMATS`:
        ``"timm"`` (timm's defaults for ``arch``: momentum 0.1, eps 1e-5, or 1e-3 for ``tf_*``) or
        ``"efficientnet_pytorch"`` (eps 1e-3, PyTorch momentum 0.01 = 1 - the TF decay 0.99, the
        team's; needs a ``tf_efficientnet_*`` arch; the head then gets PyTorch's ``nn.Linear``
        initialisation, as efficientnet_pytorch's ``_fc``). Recorded as the checkpoint's
        ``source_format``, so inference rebuilds the same network.
    drop_path_rate : float
        Stochastic depth (efficientnet_pytorch's ``drop_connect_rate``), growing linearly over the blocks.
    n_checkpoints : int
        Snapshots kept for the ensemble (see :func:`snapshot_steps`) when ``ensemble_epochs`` is empty.
    snapshot_fraction : float
        Fraction of the final steps over which the snapshots are spread.
    ensemble_epochs : tuple of int
        When given: a checkpoint after every epoch (``{name}_e{epoch}.pth``) and the ensemble
        snapshots ``{name}_m{k}.pth`` are those of these epochs (0-based, so 16 epochs are 0..15).
    train_filter : bool
        Drop cells whose cleaner value (column ``filter_column`` of ``cells.csv``) is below 1,
        except in images labelled mitotic spindle; False: keep the ``valid`` cells.
    filter_column : str
        ``"train_value"``: the team's training cleaner (milimed2021); ``"penalty"``: the kit's cell value.
    train_crop : str
        ``"kit2025"``: the kit's crops (column ``crop``, 8-bit, masked to the cell);
        ``"milimed2021"``: the team's training crops (column ``train_crop``, 16-bit, squared box +
        16 px, other cells zeroed, background kept).
    soft : SoftLabelConfig
        Manual score maps and their rules.
    pseudo_negative, pseudo_positive : float or None
        Targets of the labels the pseudo-labeller dropped and added. ``pseudo_negative`` None:
        the pseudo labels replace the cell's labels (a dropped label is 0).
    labels : LabelRules
        The pseudo-label scope and order, and the class-6 antibody rule.
    val_fraction : float
        Fraction of the images held out for the per-epoch validation mAP when no validation table
        is given (0 = no validation).
    amp, channels_last : bool
        Mixed precision (float16 autocast) and channels-last memory on CUDA (ignored on the CPU).
        milimed2021 trains in float32, as the team did.
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
    recipe: str = "kit2025"
    num_classes: int = NUM_CLASSES
    optimizer: str = "adamw"
    schedule: str = "warmup_cosine"
    t_max: int = 15
    eta_min: float = 1e-5
    pretrained: str | None = None
    stem: str = "adapt"
    batchnorm: str = "timm"
    drop_path_rate: float = 0.0
    n_checkpoints: int = 1
    snapshot_fraction: float = 0.3
    ensemble_epochs: tuple[int, ...] = ()
    train_filter: bool = False
    filter_column: str = "penalty"
    train_crop: str = "kit2025"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    soft: SoftLabelConfig = field(default_factory=SoftLabelConfig)
    pseudo_negative: float | None = None
    pseudo_positive: float = 1.0
    labels: LabelRules = field(default_factory=LabelRules)
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
        if isinstance(self.soft, dict):
            object.__setattr__(self, "soft", SoftLabelConfig(**self.soft))
        if isinstance(self.labels, dict):
            object.__setattr__(self, "labels", LabelRules(**self.labels))
        object.__setattr__(self, "ensemble_epochs", tuple(int(e) for e in self.ensemble_epochs))
        if self.num_classes not in (NUM_CLASSES - 1, NUM_CLASSES):
            raise ValueError(f"num_classes must be {NUM_CLASSES} or {NUM_CLASSES - 1} (Negative as 1 - max), got {self.num_classes}")
        if self.train_crop not in ("kit2025", "milimed2021"):
            raise ValueError(f"train_crop must be 'kit2025' or 'milimed2021', got {self.train_crop!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("warmup_cosine", "epoch_cosine", "constant"):
            raise ValueError(f"schedule must be 'warmup_cosine', 'epoch_cosine' or 'constant', got {self.schedule!r}")
        if self.t_max < 1 or self.eta_min < 0 or (self.schedule == "epoch_cosine" and self.eta_min > self.lr):
            raise ValueError(f"t_max must be >= 1 and eta_min in [0, lr], got {self.t_max} and {self.eta_min}")
        bad = [e for e in self.ensemble_epochs if not 0 <= e < self.epochs]
        if bad or len(set(self.ensemble_epochs)) != len(self.ensemble_epochs):
            raise ValueError(f"ensemble_epochs must be distinct epoch numbers 0..{self.epochs - 1} (0-based), got {self.ensemble_epochs}")
        for name in ("pseudo_negative", "pseudo_positive"):
            if getattr(self, name) is not None:
                _check_prob(name, getattr(self, name))
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
        self._check_network()

    def _check_network(self) -> None:
        from hpa_kernel.classifier.checkpoint import SOURCE_FORMATS
        from hpa_kernel.classifier.pretrained import STEMS

        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if self.batchnorm not in SOURCE_FORMATS:
            raise ValueError(f"batchnorm must be one of {sorted(SOURCE_FORMATS)}, got {self.batchnorm!r}")
        if self.batchnorm == "efficientnet_pytorch" and not self.arch.startswith("tf_efficientnet"):
            raise ValueError(f"batchnorm 'efficientnet_pytorch' needs a tf_efficientnet_* arch (TF 'same' padding), "
                             f"got {self.arch!r}")
        if not 0.0 <= self.drop_rate < 1.0 or not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_rate and drop_path_rate must be in [0, 1), got {self.drop_rate} and {self.drop_path_rate}")

    def network_kwargs(self) -> dict:
        """The ``timm.create_model`` keywords of the network (dropout, stochastic depth, BatchNorm).

        >>> training_preset("milimed2021", 1).network_kwargs()
        {'drop_rate': 0.2, 'drop_path_rate': 0.2, 'bn_eps': 0.001, 'bn_momentum': 0.01}
        """
        from hpa_kernel.classifier.checkpoint import SOURCE_FORMATS

        out = {"drop_rate": self.drop_rate}
        if self.drop_path_rate:
            out["drop_path_rate"] = self.drop_path_rate
        return {**out, **SOURCE_FORMATS[self.batchnorm]}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(data) - names:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; expected some of {sorted(names)}")
        return cls(**data)


_KIT_GROUPS: dict[int, TrainConfig] = {
    1: TrainConfig(group=1, augment=AugmentConfig(), loss=LossConfig("focal"), n_checkpoints=1),
    2: TrainConfig(group=2, augment=AugmentConfig(resize_p=0.4), loss=LossConfig("focal"), n_checkpoints=2),
    3: TrainConfig(group=3, augment=AugmentConfig(resize_p=0.3, pad_p=0.3), loss=LossConfig("bce"), n_checkpoints=4),
}

#: The team's score maps (their relabelling files; the export's 1..5 scale; class 8's 3-point
#: scale {1: 0, 2: 0.5, 3: 1} is extended with 4, 5 -> 1).
MILIMED_SOFT = SoftLabelConfig(
    default_map={1: 0.0, 2: 0.25, 3: 0.5, 4: 0.9, 5: 1.0},
    class_maps={
        1: {1: 0.0, 2: 0.4, 3: 0.5, 4: 0.85, 5: 1.0},
        8: {1: 0.0, 2: 0.5, 3: 1.0, 4: 1.0, 5: 1.0},
        9: {1: 0.0, 2: 0.5, 3: 0.75, 4: 1.0, 5: 1.0},
        11: {1: 0.0, 2: 0.05, 3: 0.2, 4: 0.65, 5: 1.0},
        12: {1: 0.0, 2: 0.3, 3: 0.75, 4: 1.0, 5: 1.0},
        15: {1: 0.0, 2: 0.0, 3: 0.6, 4: 1.0, 5: 1.0},
    },
    # The team set 0.69 for unscored positives of 1, 8, 9, 12 and 15, but their class-12 sampler
    # (``UpSampleSampler``) then reset class 12's 0.69 to 1.0 before training: 12 is left out here.
    unscored_value=0.69, unscored_classes=(1, 8, 9, 15), exclusive_class=MITOTIC_SPINDLE, exclusive_min=0.2,
    exclusive_keeps=(12,),
)

#: The team's draws per epoch: the sum of their per-class quotas (9,896 batches of 32).
MILIMED_EPOCH_SIZE = int(sum(MILIMED_QUOTAS.values()))

# The team's network (efficientnet_pytorch 0.7.1, ``EfficientNet.from_pretrained('efficientnet-b0',
# in_channels=4, num_classes=18)``): TF "same" padding (timm's tf_ variant), BatchNorm eps 1e-3 and
# momentum 0.01, dropout 0.2, drop_connect 0.2, ImageNet weights with a new random 4-channel stem, fp32.
_MILIMED_BASE = TrainConfig(
    recipe="milimed2021", num_classes=NUM_CLASSES - 1, optimizer="adam", lr=3e-4, weight_decay=0.0, warmup=0.0,
    schedule="epoch_cosine", t_max=15, eta_min=1e-5, epochs=16, batch_size=32, pretrained="imagenet", drop_rate=0.2,
    arch="tf_efficientnet_b0", stem="random", batchnorm="efficientnet_pytorch", drop_path_rate=0.2, amp=False,
    train_filter=True, filter_column="train_value", train_crop="milimed2021",
    sampler=SamplerConfig(kind="quota", quotas=MILIMED_QUOTAS, label_power=0.5, duplicate_min=0.9,
                          extra_passes={12: (0.7, 0.9, 0.9)}, epoch_size=MILIMED_EPOCH_SIZE, duplicate_source="any"),
    soft=MILIMED_SOFT, pseudo_negative=0.01, pseudo_positive=0.99, labels=MILIMED_LABELS,
)
_TEAM_AUG = dict(flip=True, rotate90=False, rotate_p=1.0, rotate_max=90.0, resize_range=(0.5, 0.75), pad_max=200.0 / 512.0,
                 resize_last=True, rotate_nearest=True)
# Their losses run on probabilities: F.binary_cross_entropy / nn.BCELoss, each log clamped at -100.
_TEAM_FOCAL = LossConfig("focal", 2.0, 1.0, "pt", on="probabilities")

# The groups follow the manifest's layout (1, 2, 4 checkpoints; hpa_kernel.manifest.DEFAULT_LAYOUT)
# and the team's notebook: group 1 is their "old" model (one checkpoint), group 2 "resize + pad"
# (epochs 12 and 13, weighted 0.5/0.5 at inference) and group 3 "resize" (epochs 12-15, weighted
# 0.2/0.3/0.3/0.2). BCE stays with the resize + pad augmentations, as in the kit's groups.
_MILIMED_GROUPS: dict[int, TrainConfig] = {
    1: dataclasses.replace(_MILIMED_BASE, group=1, augment=AugmentConfig(**_TEAM_AUG), loss=_TEAM_FOCAL,
                           ensemble_epochs=(15,), n_checkpoints=1),
    2: dataclasses.replace(_MILIMED_BASE, group=2, augment=AugmentConfig(**_TEAM_AUG, resize_p=0.3, pad_p=0.3),
                           loss=LossConfig("bce", on="probabilities"), ensemble_epochs=(12, 13), n_checkpoints=2),
    3: dataclasses.replace(_MILIMED_BASE, group=3, augment=AugmentConfig(**_TEAM_AUG, resize_p=0.4),
                           loss=_TEAM_FOCAL, ensemble_epochs=(12, 13, 14, 15), n_checkpoints=4),
}

#: The named training recipes: ``{name: {group: TrainConfig}}``.
PRESETS: dict[str, dict[int, TrainConfig]] = {"milimed2021": _MILIMED_GROUPS, "kit2025": _KIT_GROUPS}
#: The recipe of ``hpa-kernel train`` and the training notebooks.
DEFAULT_RECIPE = "milimed2021"


def training_preset(name: str = DEFAULT_RECIPE, group: int = 1, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` for ensemble ``group``, with field overrides.

    >>> training_preset("milimed2021", 3).ensemble_epochs, training_preset("kit2025", 2).num_classes
    ((12, 13, 14, 15), 19)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown training recipe {name!r}; expected one of {sorted(PRESETS)}")
    if group not in PRESETS[name]:
        raise ValueError(f"group must be 1, 2 or 3, got {group!r}")
    base = PRESETS[name][group]
    overrides = dict(overrides)
    if "epochs" in overrides:
        overrides.update({k: v for k, v in _follow_epochs(base, int(overrides["epochs"])).items() if k not in overrides})
    return dataclasses.replace(base, **overrides)


def _follow_epochs(base: TrainConfig, epochs: int) -> dict:
    """When the number of epochs changes: the ensembled epochs keep their distance from the end (in a
    run too short for that, the last ones, as many as before) and the per-epoch cosine still reaches
    ``eta_min`` at the last epoch (``t_max = epochs - 1``, as 15 for 16).

    >>> _follow_epochs(training_preset("milimed2021", 3), 6)
    {'ensemble_epochs': (2, 3, 4, 5), 't_max': 5}
    >>> g2 = training_preset("milimed2021", 2)
    >>> _follow_epochs(g2, 6)["ensemble_epochs"], _follow_epochs(g2, 2)["ensemble_epochs"]
    ((2, 3), (0, 1))
    """
    out = {}
    if base.ensemble_epochs:
        n = len(base.ensemble_epochs)
        shifted = tuple(sorted({e - base.epochs + epochs for e in base.ensemble_epochs}))
        out["ensemble_epochs"] = shifted if shifted[0] >= 0 else tuple(range(max(0, epochs - n), epochs))
    if base.schedule == "epoch_cosine":
        out["t_max"] = max(1, epochs - 1)
    return out


def group_config(group: int, recipe: str = "kit2025", **overrides) -> TrainConfig:
    """The training recipe of ensemble group 1, 2 or 3 (kit2025 unless ``recipe`` says otherwise).

    >>> group_config(3).loss.name, group_config(3).augment.pad_p
    ('bce', 0.3)
    """
    return training_preset(recipe, group, **overrides)


def quick_config(group: int, recipe: str = "kit2025", **overrides) -> TrainConfig:
    """A small CPU preset for the demo and tests: 64 px input, batch 16, 2 epochs of 60 steps.

    It keeps the group's augmentations, loss and number of snapshots; only sizes and lengths shrink,
    and the network starts from random weights (nothing downloads). Under milimed2021 the ensembled
    epochs become the last ones and the cosine reaches ``eta_min`` at the last epoch. Step times are
    in ``benchmarks/RESULTS.md`` (Training).
    """
    quick = dict(input_size=64, batch_size=16, epochs=2, steps_per_epoch=60, lr=3e-3, warmup=0.05,
                 snapshot_fraction=0.5, val_fraction=0.0, amp=False, channels_last=False, drop_rate=0.0, pretrained=None)
    quick.update(overrides)
    return training_preset(recipe, group, **quick)


def epoch_cosine_lr(epoch: int, lr: float, t_max: int, eta_min: float) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under a per-epoch cosine (``CosineAnnealingLR``).

    ``eta_min + (lr - eta_min) * (1 + cos(pi * epoch / t_max)) / 2``.

    >>> round(epoch_cosine_lr(15, 3e-4, 15, 1e-5), 10), round(epoch_cosine_lr(5, 3e-4, 15, 1e-5), 7)
    (1e-05, 0.0002275)
    """
    return eta_min + (lr - eta_min) * (1.0 + math.cos(math.pi * epoch / t_max)) / 2.0


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


#: The team's fine-tuning repeats of the manually scored cells, per class.
MILIMED_FINETUNE_REPEATS: dict[int, int] = {0: 0, 1: 2, 2: 3, 3: 2, 4: 5, 5: 5, 6: 4, 7: 7, 8: 2, 9: 2, 10: 3, 11: 0, 12: 5,
                                            13: 0, 14: 0, 15: 4, 16: 0, 17: 7, 18: 0}


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on the validation cells: one pass.

    Without ``class_repeats`` (kit2025), one "epoch" of ``epoch_size`` samples: cells without manual
    labels are used once each and manually labelled cells ``repeats`` times; when that is more than
    ``epoch_size`` the list is subsampled at random, when less it is used as is. With
    ``class_repeats`` (milimed2021), the per-class lists of
    :func:`~hpa_kernel.training.finetune.class_finetune_indices`, ``epoch_size`` unused. Each group
    keeps its own augmentations and loss; ``lr`` is the fine-tuning rate, constant when
    ``constant_lr`` (else the group's schedule over the one epoch); ``batch_size`` None = the group's.
    ``soft`` (milimed2021: the team's validation-set score maps) replaces the checkpoint's score maps
    for the fine-tuning targets; manual values in ``undecided`` (``{class: values}``, the team's
    0.5 of classes 8, 9, 12, 15) are not repeated.

    The team's composition (milimed2021; each an ablation switch): ``duplicate_at`` (``{6: 1.0}``)
    adds the cells of class ``c`` whose relabelled target equals the value once more before the
    repeats; for ``rule_classes`` (6) a target set by a label rule (not only a manual score) is
    repeated too, except at ``skip_values`` (0.01, 0.51, 0.99: pseudo labels and the flagged
    antibodies); ``train_min`` (``{11: 0.9, 15: 0.9}``) adds the *training* cells of ``c`` whose
    training target is >= the value (once, not repeated); validation cells labelled with an
    ``exclude_classes`` class (11) are left out; ``manual_last`` applies the validation scores
    after every pseudo label (the team relabelled the validation cells last).
    """

    epoch_size: int = 200_000
    repeats: int = 4
    lr: float = 2e-4
    batch_size: int | None = None
    seed: int = 0
    recipe: str = "kit2025"
    class_repeats: dict | None = None
    class_fraction: dict = field(default_factory=dict)
    class_multiply: dict = field(default_factory=dict)
    constant_lr: bool = False
    soft: SoftLabelConfig | None = None
    undecided: dict = field(default_factory=dict)
    duplicate_at: dict = field(default_factory=dict)
    rule_classes: tuple[int, ...] = ()
    skip_values: tuple[float, ...] = ()
    train_min: dict = field(default_factory=dict)
    exclude_classes: tuple[int, ...] = ()
    manual_last: bool = False

    def __post_init__(self):
        for name in ("duplicate_at", "train_min"):
            object.__setattr__(self, name, {int(k): float(v) for k, v in dict(getattr(self, name)).items()})
        object.__setattr__(self, "rule_classes", tuple(int(c) for c in self.rule_classes))
        object.__setattr__(self, "exclude_classes", tuple(int(c) for c in self.exclude_classes))
        object.__setattr__(self, "skip_values", tuple(float(v) for v in self.skip_values))
        if isinstance(self.soft, dict):
            object.__setattr__(self, "soft", SoftLabelConfig(**self.soft))
        object.__setattr__(self, "undecided", {int(k): tuple(float(x) for x in v) for k, v in dict(self.undecided).items()})
        if self.class_repeats is not None:
            object.__setattr__(self, "class_repeats", {int(k): int(v) for k, v in dict(self.class_repeats).items()})
            if any(v < 0 for v in self.class_repeats.values()):
                raise ValueError(f"class_repeats must be >= 0, got {self.class_repeats}")
        object.__setattr__(self, "class_fraction", {int(k): float(v) for k, v in dict(self.class_fraction).items()})
        object.__setattr__(self, "class_multiply", {int(k): int(v) for k, v in dict(self.class_multiply).items()})
        if any(not 0.0 <= v <= 1.0 for v in self.class_fraction.values()):
            raise ValueError(f"class_fraction values must be in [0, 1], got {self.class_fraction}")
        if any(v < 1 for v in self.class_multiply.values()):
            raise ValueError(f"class_multiply values must be >= 1, got {self.class_multiply}")
        if self.epoch_size < 1 or self.repeats < 1:
            raise ValueError(f"epoch_size and repeats must be >= 1, got {self.epoch_size} and {self.repeats}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {self.batch_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_VAL_MAP = {1: 0.0, 2: 0.5, 3: 0.8, 4: 1.0, 5: 1.0}
#: The team's validation-set score maps (``data_prep.get_train_validation_data``); class 11 keeps its training map.
MILIMED_VALIDATION_SOFT = dataclasses.replace(
    MILIMED_SOFT,
    default_map={1: 0.0, 2: 0.25, 3: 0.5, 4: 0.75, 5: 1.0},
    class_maps={**{c: _VAL_MAP for c in (1, 2, 3, 4, 5, 6, 8, 12, 15)},
                7: {1: 0.0, 2: 0.2, 3: 0.75, 4: 1.0, 5: 1.0}, 9: {1: 0.0, 2: 0.0, 3: 0.5, 4: 1.0, 5: 1.0},
                10: {1: 0.0, 2: 0.0, 3: 0.8, 4: 1.0, 5: 1.0}, 17: {1: 0.0, 2: 0.5, 3: 1.0, 4: 1.0, 5: 1.0},
                11: MILIMED_SOFT.class_maps[11]},
    unscored_classes=(1, 8, 9, 12, 15),  # fine-tuning keeps class 12's 0.69 (no sampler resets it)
)

_FINETUNE_PRESETS: dict[str, FinetuneConfig] = {
    "milimed2021": FinetuneConfig(recipe="milimed2021", lr=3e-5, batch_size=16, constant_lr=True,
                                  class_repeats=MILIMED_FINETUNE_REPEATS, class_fraction={17: 0.25}, class_multiply={11: 4},
                                  soft=MILIMED_VALIDATION_SOFT, undecided={c: (0.5,) for c in (8, 9, 12, 15)},
                                  duplicate_at={6: 1.0}, rule_classes=(6,), skip_values=(0.01, 0.51, 0.99),
                                  train_min={11: 0.9, 15: 0.9}, exclude_classes=(11,), manual_last=True),
    "kit2025": FinetuneConfig(),
}


def finetune_preset(name: str = DEFAULT_RECIPE, **overrides) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of recipe ``name``, with field overrides.

    >>> finetune_preset("milimed2021").lr, finetune_preset("kit2025").repeats
    (3e-05, 4)
    """
    if name not in _FINETUNE_PRESETS:
        raise ValueError(f"unknown fine-tuning recipe {name!r}; expected one of {sorted(_FINETUNE_PRESETS)}")
    return dataclasses.replace(_FINETUNE_PRESETS[name], **overrides)


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
