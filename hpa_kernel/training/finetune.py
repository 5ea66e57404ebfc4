"""Fine-tuning the ensemble snapshots on the validation cells.

milimed2021 (``FinetuneConfig.class_repeats``, the team's ``finetuner.py``): one pass over a list
made class by class (:func:`class_finetune_indices`). For each class ``c``: the validation cells
labelled ``c`` (none labelled 11: the team's validation set had no class-11 cells); for class 6 its
cells at 1.0 once more; for classes 11 and 15 the *training* cells whose training target is >= 0.9
(``train_cells``); then ``class_repeats[c]`` more copies of those entries whose target is a manual
score (for class 6 also the antibody rule's 1.0; never the 0.01, 0.51 or 0.99 of the pseudo labels
and flagged antibodies), so a class-6 cell at 1.0 comes 2 + 2 x 4 = 10 times. Class 17's list is
cut to a random quarter (its copies kept), class 11's is taken 4 times. The targets use the team's
validation-set maps, keep the pseudo 0.01s and class 12's 0.69, and the validation scores come
after the pseudo labels; a value of 0.5 for classes 8, 9, 12, 15 (undecided) is not repeated.
Adam 3e-5, constant, batch 16, one pass (the team's ``finetuner.py`` as published stops with a
NameError at batch 1000; the pass it was written for is run here).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel.training.config import FinetuneConfig, TrainConfig, group_config
from hpa_kernel.training.loop import RunOptions

__all__ = ["FinetuneInputs", "finetune_indices", "class_finetune_indices", "finetune_checkpoints"]

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


def class_finetune_indices(labels: np.ndarray, manual: np.ndarray, repeats, fraction=None, multiply=None, seed: int = 0,
                           duplicate: np.ndarray | None = None) -> np.ndarray:
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
    duplicate : bool array (N, C), optional
        Cells added once more to the class's list before the copies (which then repeat both).

    Examples
    --------
    >>> lab = np.zeros((4, 19), bool); lab[:, 1] = True; lab[3, 11] = True
    >>> man = np.zeros_like(lab); man[0, 1] = True
    >>> sorted(class_finetune_indices(lab, man, {1: 2}, multiply={11: 4}).tolist())
    [0, 0, 0, 1, 2, 3, 3, 3, 3, 3]
    """
    labels = np.asarray(labels, dtype=bool)
    manual = np.asarray(manual, dtype=bool)
    duplicate = np.zeros_like(labels) if duplicate is None else np.asarray(duplicate, dtype=bool)
    if labels.ndim != 2 or manual.shape != labels.shape or duplicate.shape != labels.shape or len(labels) == 0:
        raise ValueError(f"labels, manual and duplicate must be non-empty (N, C) arrays of one shape, got {labels.shape}, "
                         f"{manual.shape} and {duplicate.shape}")
    fraction, multiply = fraction or {}, multiply or {}
    rng = np.random.default_rng(seed)
    parts = []
    for c in range(labels.shape[1]):
        base = np.flatnonzero(labels[:, c])
        base = np.concatenate([base, base[duplicate[base, c]]])
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


def _repeatable(ts, config: FinetuneConfig) -> np.ndarray:
    """Where a cell's target of a class is repeated: a manual score, or a rule's value for ``rule_classes``."""
    rep = ts.manual.copy()
    for c in config.rule_classes:
        rep[:, c] |= ts.relabelled[:, c]
    values = _soft(ts.targets)
    rep &= ~np.isin(values, config.skip_values)
    for c, undecided in config.undecided.items():
        rep[:, c] &= ~np.isin(values[:, c], undecided)
    return rep


def _soft(targets: np.ndarray) -> np.ndarray:
    """The targets as the soft labels were written (float32 0.51 is 0.50999999)."""
    return np.round(np.asarray(targets, dtype=np.float64), 6)


def _duplicates(ts, config: FinetuneConfig) -> np.ndarray:
    dup = np.zeros_like(ts.labels)
    for c, v in config.duplicate_at.items():
        dup[:, c] = ts.relabelled[:, c] & (_soft(ts.targets[:, c]) == round(v, 6))
    return dup


def _finetune_list(ts, config: FinetuneConfig, borrowed=None) -> np.ndarray:
    """The fine-tuning indices of a :class:`~.dataset.TargetSet` under ``config``.

    ``borrowed``: the class membership (M, C) of training cells appended after the N validation
    cells (indices N..N+M-1), never repeated.
    """
    if config.class_repeats is not None:
        labels, rep, dup = ts.labels, _repeatable(ts, config), _duplicates(ts, config)
        if borrowed is not None and len(borrowed):
            none = np.zeros_like(borrowed)
            labels, rep, dup = np.vstack([labels, borrowed]), np.vstack([rep, none]), np.vstack([dup, none])
        idx = class_finetune_indices(labels, rep, config.class_repeats, config.class_fraction, config.class_multiply,
                                     config.seed, duplicate=dup)
        logger.info("fine-tuning on %d samples from %d cells (%d manually scored, %d training cells), class repeats %s", len(idx),
                    len(labels), int(ts.manual.any(axis=1).sum()), len(labels) - len(ts.labels), config.class_repeats)
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


@dataclass(frozen=True)
class FinetuneInputs:
    """The label files of a fine-tuning run and the training cells it may borrow (all optional).

    Attributes
    ----------
    soft_labels, pseudo_labels, antibody_marks : path
        As for training (:class:`~.loop.TrainInputs`).
    train_cells : path
        The training ``cells.csv``: its cells of ``FinetuneConfig.train_min`` classes scored at or
        above the value (the team's 11 and 15 at >= 0.9) join those classes' lists.
    """

    soft_labels: str | os.PathLike | None = None
    pseudo_labels: str | os.PathLike | None = None
    antibody_marks: str | os.PathLike | None = None
    train_cells: str | os.PathLike | None = None


def _borrowed(base: TrainConfig, config: FinetuneConfig, inputs: FinetuneInputs, val_keys: set):
    """(table rows, training targets, class membership) of the training cells that join the fine-tuning lists."""
    from hpa_kernel.training.dataset import recipe_targets
    from hpa_kernel.training.loop import _read_labels, filter_cells_for

    if not config.train_min or inputs.train_cells is None:
        return None, None, None
    table = filter_cells_for(base, inputs.train_cells)
    ts = recipe_targets(table, base, *_read_labels(base, inputs.soft_labels, inputs.pseudo_labels, inputs.antibody_marks))
    member = np.zeros_like(ts.labels)
    for c, v in config.train_min.items():
        member[:, c] = ts.labels[:, c] & (_soft(ts.targets[:, c]) >= v)
    fresh = np.array([(str(i), int(c)) not in val_keys for i, c in zip(table["image_id"], table["cell_id"])], bool)
    rows = np.flatnonzero(member.any(axis=1) & fresh)
    logger.info("fine-tuning borrows %d training cells of classes %s", len(rows), sorted(config.train_min))
    return table.iloc[rows].reset_index(drop=True), ts.targets[rows], member[rows]


def _finetune_data(table, base: TrainConfig, config: FinetuneConfig, inputs: FinetuneInputs, cache: bool | None):
    """(the fine-tuning indices, the dataset without augmentation) of the cells table for checkpoints trained with ``base``."""
    from hpa_kernel.training.dataset import CellDataset, recipe_targets
    from hpa_kernel.training.loop import _read_labels

    labelled = dataclasses.replace(base, soft=config.soft) if config.soft is not None else base
    if config.manual_last:
        labelled = dataclasses.replace(labelled, labels=dataclasses.replace(labelled.labels, pseudo_overrides_manual=False))
    ts = recipe_targets(table, labelled, *_read_labels(labelled, inputs.soft_labels, inputs.pseudo_labels, inputs.antibody_marks))
    if config.exclude_classes:
        keep = ~ts.labels[:, list(config.exclude_classes)].any(axis=1)
        logger.info("fine-tuning leaves out %d validation cells labelled %s", int((~keep).sum()), list(config.exclude_classes))
        table = table[keep].reset_index(drop=True)
        ts = dataclasses.replace(ts, **{f.name: getattr(ts, f.name)[keep] for f in dataclasses.fields(ts)})
    val_keys = {(str(i), int(c)) for i, c in zip(table["image_id"], table["cell_id"])}
    rows, targets, member = _borrowed(base, config, inputs, val_keys)
    paths, all_targets = list(table["crop_path"]), ts.targets
    if rows is not None and len(rows):
        paths, all_targets = paths + list(rows["crop_path"]), np.vstack([ts.targets, targets])
    cache = base.input_size <= 128 if cache is None else cache
    dataset = CellDataset(paths, all_targets[:, :base.num_classes], base.input_size, None, cache)
    return _finetune_list(ts, config, member), dataset


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
    inputs: FinetuneInputs | None = None,
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
    inputs : FinetuneInputs, optional
        Pseudo labels, antibody marks and the training cells (milimed2021: the 0.01s, class 6's
        0.51/1.0 and the borrowed 11/15 cells); its ``soft_labels`` or the argument, not both.
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
    if inputs is not None and inputs.soft_labels is not None and soft_labels is not None:
        raise ValueError("soft_labels given twice: as the argument and in inputs; pass one")
    inputs = dataclasses.replace(inputs or FinetuneInputs(), **({"soft_labels": soft_labels} if soft_labels is not None else {}))
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
                data[key] = _finetune_data(filter_cells_for(base, cells_csv), base, config, inputs, options.cache)
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
