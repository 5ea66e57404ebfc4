"""Fine-tuning the ensemble snapshots on the validation cells.

milimed2021 (``FinetuneConfig.class_repeats``, the team's ``finetuner.py``): one pass over a list
made class by class (:func:`class_finetune_indices`): for each class ``c`` the cells labelled
``c``, plus ``class_repeats[c]`` more copies of those manually scored for ``c``; class 17's
labelled cells are first cut to a random quarter, and class 11's list is taken 4 times; the manual
scores are mapped with the team's validation-set maps, and a value of 0.5 for classes 8, 9, 12,
15 (undecided) is not repeated. Adam 3e-5, constant, batch 16. (The team also added, for classes 11 and 15, training cells scored
>= 0.9, and for class 6 a second copy of its 1.0 cells; only the validation cells are used here.)

kit2025: one "epoch" over the validation cells (``FinetuneConfig.epoch_size`` samples, about 200-250k on
the real data): every cell without manual labels is used once, every manually labelled cell
``repeats`` times. When that list is longer than ``epoch_size`` the unlabelled cells are subsampled
first (the manual repeats are kept); when the manual repeats alone are longer, they are subsampled.
Each checkpoint keeps its group's augmentations and loss (read from its JSON config); the run is
one epoch with the fine-tuning learning rate, and the result is written under the same file name in
a new folder, so that folder is a complete weights folder.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np

from hpa_kernel.training.config import FinetuneConfig, TrainConfig, group_config
from hpa_kernel.training.loop import RunOptions

__all__ = ["finetune_indices", "class_finetune_indices", "finetune_checkpoints"]

logger = logging.getLogger(__name__)


def finetune_indices(manual: np.ndarray, epoch_size: int, repeats: int, seed: int = 0) -> np.ndarray:
    """The cell indices of one fine-tuning epoch, shuffled.

    >>> idx = finetune_indices(np.array([True, False, False]), epoch_size=100, repeats=3)
    >>> sorted(idx.tolist())
    [0, 0, 0, 1, 2]
    >>> len(finetune_indices(np.array([True, False, False]), epoch_size=4, repeats=3))
    4
    """
    manual = np.asarray(manual, dtype=bool)
    if manual.ndim != 1 or len(manual) == 0:
        raise ValueError(f"manual must be a non-empty 1-D boolean array, got shape {manual.shape}")
    if epoch_size < 1 or repeats < 1:
        raise ValueError(f"epoch_size and repeats must be >= 1, got {epoch_size} and {repeats}")
    rng = np.random.default_rng(seed)
    labelled = np.repeat(np.flatnonzero(manual), repeats)
    unlabelled = np.flatnonzero(~manual)
    if len(labelled) >= epoch_size:
        idx = rng.choice(labelled, size=epoch_size, replace=False)
    else:
        room = epoch_size - len(labelled)
        if len(unlabelled) > room:
            unlabelled = rng.choice(unlabelled, size=room, replace=False)
        idx = np.concatenate([labelled, unlabelled])
    return rng.permutation(idx)


def class_finetune_indices(labels: np.ndarray, manual: np.ndarray, repeats, fraction=None, multiply=None, seed: int = 0) -> np.ndarray:
    """The cell indices of the milimed2021 fine-tuning pass, shuffled.

    Parameters
    ----------
    labels, manual : bool arrays (N, C)
        The cells' labels, and where a manual score set the target.
    repeats : mapping
        ``{class: extra copies of the manually scored cells}``; classes not in it get none.
    fraction : mapping, optional
        ``{class: share of its labelled cells kept}`` (random), applied before the copies are added.
    multiply : mapping, optional
        ``{class: times its whole list is taken}``.

    Examples
    --------
    >>> lab = np.zeros((4, 19), bool); lab[:, 1] = True; lab[3, 11] = True
    >>> man = np.zeros_like(lab); man[0, 1] = True
    >>> sorted(class_finetune_indices(lab, man, {1: 2}, multiply={11: 4}).tolist())
    [0, 0, 0, 1, 2, 3, 3, 3, 3, 3]
    """
    labels = np.asarray(labels, dtype=bool)
    manual = np.asarray(manual, dtype=bool)
    if labels.ndim != 2 or manual.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"labels and manual must be non-empty (N, C) arrays of one shape, got {labels.shape} and {manual.shape}")
    fraction, multiply = fraction or {}, multiply or {}
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(labels.shape[1]):
        base = np.flatnonzero(labels[:, c])
        extra = np.repeat(base[manual[base, c]], int(repeats.get(c, 0)))
        if c in fraction:
            base = rng.permutation(base)[: int(len(base) * fraction[c])]
        part = np.concatenate([base, extra])
        parts.append(np.tile(part, int(multiply.get(c, 1))))
    idx = np.concatenate(parts)
    if len(idx) == 0:
        raise ValueError("the fine-tuning list is empty: no cell carries a label")
    return rng.permutation(idx)


def _train_config_of(ckpt_config) -> TrainConfig:
    saved = ckpt_config.extra.get("train_config")
    if saved:
        return TrainConfig.from_dict(saved)
    logger.warning("checkpoint has no training config; using group %s defaults", ckpt_config.group)
    return group_config(ckpt_config.group or 1, arch=ckpt_config.arch, input_size=ckpt_config.input_size,
                        mean=ckpt_config.mean, std=ckpt_config.std, batchnorm=ckpt_config.source_format)


def _finetune_list(ts, config: FinetuneConfig) -> np.ndarray:
    """The fine-tuning indices of a :class:`~.dataset.TargetSet` under ``config``."""
    if config.class_repeats is not None:
        repeatable = ts.manual.copy()
        for c, values in config.undecided.items():
            repeatable[:, c] &= ~np.isin(np.round(ts.targets[:, c], 6), values)
        idx = class_finetune_indices(ts.labels, repeatable, config.class_repeats, config.class_fraction, config.class_multiply,
                                     config.seed)
        logger.info("fine-tuning on %d samples from %d cells (%d manually scored), class repeats %s", len(idx), len(ts.labels),
                    int(ts.manual.any(axis=1).sum()), config.class_repeats)
        return idx
    manual = ts.source == "manual"
    idx = finetune_indices(manual, config.epoch_size, config.repeats, config.seed)
    logger.info("fine-tuning on %d samples: %d manual cells x %d, %d other cells", len(idx), int(manual.sum()), config.repeats,
                int((~manual).sum()))
    return idx


def _check_checkpoints(checkpoints, out_dir: Path) -> None:
    """Raise unless every checkpoint exists and none lies in ``out_dir`` (the fine-tuned files keep their names)."""
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass the .pth files to fine-tune")
    for c in checkpoints:
        if not Path(c).is_file():
            raise FileNotFoundError(f"checkpoint {c} not found")
        if Path(c).resolve().parent == out_dir.resolve():
            raise ValueError(f"out_dir {out_dir} holds the checkpoint {c}; fine-tuned files keep their names, "
                             "choose another folder")


def _finetune_data(table, base: TrainConfig, config: FinetuneConfig, soft_labels, cache: bool | None):
    """(the fine-tuning indices, the dataset without augmentation) of the cells table for checkpoints trained with ``base``."""
    from hpa_kernel.training.dataset import CellDataset, recipe_targets
    from hpa_kernel.training.loop import _read_labels

    labelled = dataclasses.replace(base, soft=config.soft) if config.soft is not None else base
    ts = recipe_targets(table, labelled, *_read_labels(labelled, soft_labels, None))
    cache = base.input_size <= 128 if cache is None else cache
    dataset = CellDataset(table["crop_path"], ts.targets[:, :base.num_classes], base.input_size, None, cache)
    return _finetune_list(ts, config), dataset


def _finetune_plan(base: TrainConfig, idx: np.ndarray, config: FinetuneConfig, dist):
    """(the one-epoch training config, the sampler of this process, the optimizer steps) of a fine-tuning run."""
    from hpa_kernel.training.sampler import ShuffledSampler

    batch = config.batch_size or base.batch_size
    if math.ceil(len(idx) / dist.world) % batch == 1 and len(idx) > dist.world:
        idx = np.concatenate([idx, idx[:dist.world]])  # no last batch of one cell (batch norm needs two)
    sampler = ShuffledSampler(idx, dist.world, dist.rank, config.seed)
    steps = math.ceil(sampler.num_samples / batch)
    tc = dataclasses.replace(base, epochs=1, steps_per_epoch=steps, batch_size=batch, lr=config.lr, warmup=0.0,
                             n_checkpoints=1, snapshot_fraction=1.0, val_fraction=0.0, ensemble_epochs=(),
                             schedule="constant" if config.constant_lr else base.schedule)
    return tc, sampler, steps


def finetune_checkpoints(
    checkpoints: list[str | os.PathLike],
    cells_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    soft_labels: str | os.PathLike | None = None,
    config: FinetuneConfig = FinetuneConfig(),
    options: RunOptions = RunOptions(),
) -> list[Path]:
    """Fine-tune each checkpoint for one epoch on the (validation) cells; returns the new ``.pth`` paths.

    Parameters
    ----------
    checkpoints : list of path
        Snapshots written by :func:`~.loop.train_group`.
    cells_csv : path
        The validation ``cells.csv``.
    out_dir : path
        Output folder; must not be the folder of a checkpoint (the file names are kept).
    soft_labels : path, optional
        The manual soft labels; cells that have them are the "manually labelled" ones.
    config : FinetuneConfig
        Epoch size or class repeats, learning rate (:func:`~.config.finetune_preset`).
    options : RunOptions
        ``device`` (as in :func:`~.loop.train_group`: default CUDA when available;
        ``cuda:LOCAL_RANK`` under torchrun), ``manifest`` (create or update
        ``out_dir/weights_manifest.json`` with the new hashes; ensemble snapshots
        ``g{group}_m{k}.pth`` only), ``progress`` and ``cache``; ``resume`` and ``name`` do not
        apply and must be left unset.

    Returns
    -------
    list of Path
        ``out_dir/<checkpoint name>`` for each checkpoint, in order.
    """
    import torch

    from hpa_kernel.classifier import load_config
    from hpa_kernel.training.augment import Augmenter
    from hpa_kernel.training.dataset import read_cells_table
    from hpa_kernel.training.loop import _fit, _FitJob, _setup, _teardown, _update_manifest, filter_cells_for

    if options.resume or options.name is not None:
        raise ValueError(f"options: fine-tuning takes no resume or name, got resume={options.resume}, name={options.name!r}")
    out_dir = Path(out_dir)
    _check_checkpoints(checkpoints, out_dir)
    read_cells_table(cells_csv)  # fail early on a bad table
    dist = _setup(options.device)
    out: list[Path] = []
    groups = set()
    data: dict[tuple, tuple] = {}  # (indices, dataset) per input size and recipe, so cached crops are read once
    try:
        for ckpt in map(Path, checkpoints):
            base = _train_config_of(load_config(ckpt))
            if base.recipe != config.recipe:
                logger.warning("%s was trained with recipe %s; fine-tuning it with the %s fine-tuning recipe", ckpt, base.recipe, config.recipe)
            key = (base.input_size, base.recipe, base.num_classes, base.train_filter, base.filter_column, base.train_crop)
            if key not in data:  # the cells and crops the checkpoint was trained on (train filter, crop style)
                data[key] = _finetune_data(filter_cells_for(base, cells_csv), base, config, soft_labels, options.cache)
            idx, dataset = data[key]
            tc, sampler, steps = _finetune_plan(base, idx, config, dist)
            dataset.augment = Augmenter(tc.augment)
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            job = _FitJob(tc, dataset, None, sampler, steps, out_dir, f"{ckpt.stem}_ft", progress=options.progress,
                          init_state=state, file_names=(ckpt.name,),
                          extra={"finetuned_from": ckpt.name, "finetune": config.to_dict()})
            out.extend(_fit(job, dist))
            groups.add(tc.group)
        if dist.main and options.manifest and all(p.name.startswith("g") for p in out):
            for g in sorted(groups):
                _update_manifest(out_dir, g)
    finally:
        _teardown(dist)
    return out
