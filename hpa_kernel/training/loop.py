"""Training runs: one ensemble group, with snapshots, resume, AMP, channels-last and DDP.

:func:`train_group` is the entry point. It trains ``config.epochs`` x ``steps_per_epoch`` optimizer
steps of the config's recipe (milimed2021: Adam with a per-epoch cosine on the cells the train
filter keeps, drawn by the quota sampler; kit2025: AdamW with warm-up and a per-step cosine on the
valid cells, drawn by the semi-balanced sampler), and writes into ``out_dir``:

* ``g{group}_m{k}.pth`` + ``.json``: the ensemble snapshots, in the checkpoint format of
  :mod:`hpa_kernel.classifier`: with ``ensemble_epochs``, those after the listed epochs (0-based),
  otherwise ``n_checkpoints`` saved at the steps of :func:`~.config.snapshot_steps`;
* ``g{group}_e{epoch:02d}.pth`` + ``.json`` (with ``ensemble_epochs``): a checkpoint after every
  epoch, so the ensembled epochs can be chosen again afterwards;
* ``weights_manifest.json``: created from :func:`hpa_kernel.manifest.default_manifest` if absent,
  then the hashes of the files present are pinned with :func:`hpa_kernel.manifest.update_hashes`;
* ``runs/{name}/last.pt``: the resume state after each epoch (model, optimizer, scheduler, AMP
  scaler, epoch, step, total steps, RNG, per-class recall of the sampler), loadable with
  ``weights_only=True``;
* ``runs/{name}/log.jsonl``: one JSON line per epoch (train loss, validation loss and cell-level
  mAP, learning rate, seconds).

Several processes: run the same call under ``torchrun``; the process group is initialised from
the environment (``env://``), with NCCL on CUDA and gloo on the CPU. Each rank trains on its shard of
the sampler and only rank 0 writes files or validates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.diskspace import torch_save
from hpa_kernel.io import atomic_write
from hpa_kernel.options import say_option
from hpa_kernel.training.config import TrainConfig, epoch_cosine_lr, snapshot_steps

__all__ = [
    "train_group", "TrainInputs", "RunOptions", "predict", "validation_loss_and_map", "checkpoint_name", "epoch_checkpoint_name",
    "filter_cells_for", "RUNS_DIR",
]

logger = logging.getLogger(__name__)

RUNS_DIR = "runs"
_RESUME_FORMAT = 1


def checkpoint_name(group: int, k: int) -> str:
    """The file name of snapshot ``k`` of a group, as listed in ``weights_manifest.json``.

    >>> checkpoint_name(3, 1)
    'g3_m1.pth'
    """
    return f"g{group}_m{k}.pth"


@dataclass
class _Dist:
    world: int
    rank: int
    device: object
    initialized_here: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


def _device(device):
    """``torch.device`` of :func:`hpa_kernel.paths.resolve_device`: None means CUDA when available, else the CPU."""
    import torch

    from hpa_kernel.paths import resolve_device

    return torch.device(resolve_device(device))


def _setup(device) -> _Dist:
    import torch
    import torch.distributed as dist

    device = _device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(1, 0, device, False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        here = True
    logger.info("distributed: rank %d of %d on %s (%s)", dist.get_rank(), dist.get_world_size(), device, dist.get_backend())
    return _Dist(dist.get_world_size(), dist.get_rank(), device, here)


class _WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``; picklable."""

    def __init__(self, total: int, warmup: int, floor: float = 0.02):
        self.total, self.warmup, self.floor = int(total), int(warmup), float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class _EpochCosine:
    """LR factor of a per-epoch cosine: epoch ``step // steps`` at :func:`~.config.epoch_cosine_lr`; picklable."""

    def __init__(self, steps: int, t_max: int, floor: float):
        self.steps, self.t_max, self.floor = int(steps), int(t_max), float(floor)

    def __call__(self, step: int) -> float:
        return epoch_cosine_lr(step // self.steps, 1.0, self.t_max, self.floor)


class _Constant:
    """LR factor 1; picklable."""

    def __call__(self, step: int) -> float:
        return 1.0


def _optimizer_and_schedule(config: TrainConfig, model, steps: int):
    """The optimiser and the per-step LambdaLR of a config (AdamW/Adam; warm-up cosine, epoch cosine or constant)."""
    import torch

    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * steps
    if config.schedule == "epoch_cosine":
        factor = _EpochCosine(steps, config.t_max, config.eta_min / config.lr)
    elif config.schedule == "constant":
        factor = _Constant()
    else:
        factor = _WarmupCosine(total, int(config.warmup * total))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_checkpoint_name(name: str, epoch: int) -> str:
    """The file of the checkpoint after epoch ``epoch`` (0-based).

    >>> epoch_checkpoint_name("g2", 12)
    'g2_e12.pth'
    """
    return f"{name}_e{epoch:02d}.pth"


def _normalise(x, mean, std, channels_last: bool):
    import torch

    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # 16-bit crops arrive in [0, 1]
    x = (x - torch.tensor(mean, device=x.device).view(1, -1, 1, 1)) / torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def predict(model, dataset, config, device="cpu", *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities (N, 19) of ``model`` over a dataset of (crop, target) pairs, in order.

    Parameters
    ----------
    model : torch.nn.Module
    dataset : Dataset of (crop, target)
    config : TrainConfig or CheckpointConfig
        Its ``mean`` and ``std`` normalise the crops; a :class:`~.config.TrainConfig` also gives the
        DataLoader ``workers`` (otherwise 0).
    device : str or torch.device
    batch_size : int
    progress : bool
        Show a tqdm bar.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    model.eval()
    workers = config.workers if isinstance(config, TrainConfig) else 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    with torch.no_grad():
        for x, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
            logits = model(_normalise(x.to(device), config.mean, config.std, False))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def validation_loss_and_map(model, dataset, config: TrainConfig, device="cpu", loss_fn=None) -> dict:
    """Validation loss and cell-level mAP (:func:`~.metrics.mean_average_precision`) of ``model``."""
    import torch

    from hpa_kernel.training.metrics import mean_average_precision

    probs = predict(model, dataset, config, device, batch_size=max(config.batch_size, 32))
    targets = dataset.targets
    result = {"val_map": mean_average_precision(targets, probs)[0]}
    if loss_fn is not None:
        p = torch.from_numpy(np.clip(probs, 1e-6, 1 - 1e-6))
        result["val_loss"] = float(loss_fn(torch.log(p / (1 - p)), torch.from_numpy(targets)))
    return result


def _split_by_image(table, fraction: float, seed: int):
    """Row indices (train, validation): ``fraction`` of the images held out, at least one kept for training."""
    images = np.array(sorted(table["image_id"].unique()))
    if fraction <= 0 or len(images) < 2:
        return np.arange(len(table)), np.array([], dtype=int)
    rng = np.random.default_rng(seed)
    n_val = min(len(images) - 1, max(1, int(round(fraction * len(images)))))
    val_images = set(rng.choice(images, size=n_val, replace=False).tolist())
    is_val = table["image_id"].isin(val_images).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _config_json(config: TrainConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def _update_manifest(out_dir: Path, group: int) -> None:
    from hpa_kernel import manifest as mf

    path = out_dir / mf.MANIFEST_NAME
    if not path.is_file():
        mf.write_manifest(mf.default_manifest(), path)
        logger.info("wrote a new %s", path)
    mf.update_hashes(path, weights_dir=out_dir, segmentation=False)
    logger.info("pinned the sha256 of the group %d checkpoints in %s", group, path)


def filter_cells_for(config: TrainConfig, cells_csv):
    """The training rows of ``cells_csv``: the train filter of the recipe, or the ``valid`` cells."""
    from hpa_kernel.classes import MITOTIC_SPINDLE
    from hpa_kernel.training.dataset import CROP_COLUMNS, filter_cells, read_cells_table, use_crops

    column = CROP_COLUMNS[config.train_crop]
    if config.train_filter:
        return filter_cells(cells_csv, config.filter_column, MITOTIC_SPINDLE, column)
    return use_crops(read_cells_table(cells_csv), cells_csv, column)


def _read_labels(config: TrainConfig, soft_labels, pseudo_labels, antibody_marks=None):
    """(soft labels, raw scores or None, pseudo labels, images of flagged antibodies) from the files given."""
    from hpa_kernel.training.dataset import read_antibody_marks, read_pseudo_labels, read_scores, read_soft_labels

    soft = read_soft_labels(soft_labels) if soft_labels is not None else None
    scores = read_scores(soft_labels) if soft_labels is not None and config.soft.default_map is not None else None
    pseudo = read_pseudo_labels(pseudo_labels) if pseudo_labels is not None else None
    marked = read_antibody_marks(antibody_marks) if antibody_marks is not None else None
    if marked is None and config.labels.antibody_class is not None:
        logger.info("no antibody marks: every class-%d cell gets %s", config.labels.antibody_class, config.labels.antibody_values[1])
    return soft, scores, pseudo, marked


def _make_sampler(config: TrainConfig, ts, train_idx, dist):
    """(sampler, optimizer steps per epoch, per-epoch reweighting callback or None) of the recipe."""
    from hpa_kernel.classes import NEGATIVE
    from hpa_kernel.training.sampler import (
        QuotaRules, QuotaSampler, SamplerShard, SemiBalancedSampler, acceptance_of, quota_pools, sample_weights,
    )

    s, batch = config.sampler, config.batch_size
    if s.kind == "quota":
        if config.steps_per_epoch:
            per_rank, steps = config.steps_per_epoch * batch, config.steps_per_epoch
        else:  # the epoch's draws shared by the ranks; the last batch may be short (the team's drop_last=False)
            per_rank = math.ceil(s.draws_per_epoch(len(train_idx)) / dist.world)
            steps = math.ceil(per_rank / batch)
        relabelled = ts.relabelled if s.duplicate_source == "any" else ts.manual  # which soft labels are duplicated
        pools = quota_pools(ts.labels[train_idx], ts.targets[train_idx], relabelled[train_idx], s.quotas, NEGATIVE,
                            QuotaRules(s.duplicate_min, s.spindle_class, s.spindle_repeats, s.extra_passes))
        sampler = QuotaSampler(pools, s.quotas, acceptance_of(ts.labels[train_idx], s.label_power), per_rank,
                               SamplerShard(dist.world, dist.rank, config.seed), no_test=(s.spindle_class,))
        logger.info("quota sampler: %s draws per epoch by class (-1 = Negative)", sampler.counts)
        return sampler, steps, None
    targets = ts.targets[train_idx, :config.num_classes]
    steps = config.steps_per_epoch or max(1, len(train_idx) // (batch * dist.world))
    weights = sample_weights(targets, s.alpha, s.label_power, 0.0, None, s.threshold)
    sampler = SemiBalancedSampler(weights, steps * batch, dist.world, dist.rank, config.seed)

    def reweight(recall):
        if s.hardness and recall is not None:
            sampler.set_weights(sample_weights(targets, s.alpha, s.label_power, s.hardness, recall, s.threshold))

    return sampler, steps, reweight


@dataclass(frozen=True)
class TrainInputs:
    """The optional inputs of :func:`train_group` besides the training ``cells.csv``.

    Attributes
    ----------
    val_cells : path, optional
        A ``cells.csv`` for the per-epoch validation; otherwise ``config.val_fraction`` of the
        images of the training table are held out (none when 0).
    soft_labels, pseudo_labels : path, optional
        Manual soft labels (``hpa-kernel label export``) and pseudo labels
        (:func:`~.pseudo.make_pseudo_labels`) that replace the image-level targets.
    antibody_marks : path, optional
        The class-6 antibody marks (:func:`~.dataset.read_antibody_marks`); without them every
        class-6 cell gets 1.0 under milimed2021.
    """

    val_cells: str | os.PathLike | None = None
    soft_labels: str | os.PathLike | None = None
    pseudo_labels: str | os.PathLike | None = None
    antibody_marks: str | os.PathLike | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a training or fine-tuning run goes, apart from what it learns.

    Attributes
    ----------
    resume : bool
        Continue from ``runs/{name}/last.pt`` (it must exist and have the same config and number of
        optimizer steps). Training only.
    device : str, optional
        ``"cuda"``, ``"cpu"``...; default CUDA when available. Under torchrun each rank uses
        ``cuda:LOCAL_RANK``.
    name : str, optional
        Snapshot stem; default ``g{group}`` (files ``g{group}_m{k}.pth``). Training only.
    manifest : bool
        Create or update ``out_dir/weights_manifest.json`` with the snapshot hashes; in training
        only with the default ``name`` (the manifest lists ``g{group}_m{k}.pth``).
    progress : bool
        Show tqdm bars (rank 0).
    cache : bool, optional
        Keep resized crops in memory; default when ``input_size <= 128``.
    """

    resume: bool = False
    device: str | None = None
    name: str | None = None
    manifest: bool = True
    progress: bool = True
    cache: bool | None = None


@dataclass(frozen=True)
class _Cells:
    """The training targets, the training rows and the datasets of a run."""

    targets: object
    train_idx: np.ndarray
    train_ds: object
    val_ds: object | None


def _datasets(config: TrainConfig, cells_csv, inputs: TrainInputs, cache: bool) -> _Cells:
    """Read the tables and labels of a run and make its training and validation datasets."""
    from hpa_kernel.training.augment import Augmenter
    from hpa_kernel.training.dataset import CROP_COLUMNS, CellDataset, read_cells_table, recipe_targets, use_crops

    table = filter_cells_for(config, cells_csv)
    labels = _read_labels(config, inputs.soft_labels, inputs.pseudo_labels, inputs.antibody_marks)
    ts = recipe_targets(table, config, *labels)
    k = config.num_classes
    if inputs.val_cells is not None:
        train_idx = np.arange(len(table))
        vtable = use_crops(read_cells_table(inputs.val_cells), inputs.val_cells, CROP_COLUMNS[config.train_crop])
        vtargets = recipe_targets(vtable, config, labels[0], labels[1], None, labels[3]).targets[:, :k]
        val_ds = CellDataset(vtable["crop_path"], vtargets, config.input_size, None, cache)
    else:
        train_idx, val_idx = _split_by_image(table, config.val_fraction, config.seed)
        val_ds = CellDataset(table["crop_path"].iloc[val_idx], ts.targets[val_idx, :k], config.input_size, None, cache) if len(val_idx) else None
    train_ds = CellDataset(table["crop_path"].iloc[train_idx], ts.targets[train_idx, :k], config.input_size, Augmenter(config.augment), cache)
    logger.info("group %d (%s): %d training cells (%d manual, %d pseudo), %d validation cells", config.group, config.recipe,
                len(train_ds), int((ts.source[train_idx] == "manual").sum()), int((ts.source[train_idx] == "pseudo").sum()),
                len(val_ds) if val_ds else 0)
    return _Cells(ts, train_idx, train_ds, val_ds)


def train_group(
    config: TrainConfig,
    cells_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    inputs: TrainInputs = TrainInputs(),
    options: RunOptions = RunOptions(),
) -> list[Path]:
    """Train one ensemble group and return the paths of its snapshot checkpoints (``.pth``).

    Parameters
    ----------
    config : TrainConfig
        E.g. :func:`~.config.group_config` or :func:`~.config.quick_config`.
    cells_csv : path
        The training ``cells.csv`` (valid cells are used).
    out_dir : path
        Where the snapshots, the manifest and ``runs/{name}/`` go.
    inputs : TrainInputs
        Validation cells, soft labels and pseudo labels (all optional).
    options : RunOptions
        Resume, device, snapshot name, manifest, progress bars, crop cache.

    Returns
    -------
    list of Path
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(inputs, TrainInputs) or not isinstance(options, RunOptions):
        raise ValueError(f"inputs must be a TrainInputs and options a RunOptions, got {type(inputs).__name__} and "
                         f"{type(options).__name__}")
    if not options.resume:  # a missing ImageNet file fails now, before the cells are read (nothing downloads)
        from hpa_kernel.classifier.pretrained import resolve_pretrained

        resolve_pretrained(config.pretrained, config.arch)
    cache = config.input_size <= 128 if options.cache is None else options.cache
    cells = _datasets(config, cells_csv, inputs, cache)
    dist = _setup(options.device)
    sampler, steps, reweight = _make_sampler(config, cells.targets, cells.train_idx, dist)
    try:
        job = _FitJob(config, cells.train_ds, cells.val_ds, sampler, steps, Path(out_dir), options.name or f"g{config.group}",
                      resume=options.resume, progress=options.progress, manifest=options.manifest and options.name is None,
                      on_recall=reweight)
        return _fit(job, dist)
    finally:
        _teardown(dist)


def _teardown(dist: _Dist) -> None:
    """Destroy the process group when :func:`_setup` created it."""
    if dist.initialized_here:
        import torch.distributed

        torch.distributed.destroy_process_group()


@dataclass(frozen=True)
class _FitJob:
    """What one run of :func:`_fit` trains and where it writes (shared by :func:`train_group` and fine-tuning).

    ``steps`` is the number of optimizer steps per epoch; ``on_recall(recall)`` is called at the start
    of each epoch with the per-class recall of the previous one (None at first); ``init_state`` are
    starting weights; ``extra`` goes into each checkpoint's JSON; ``file_names`` replace the default
    snapshot names ``{name}_m{k}.pth``.
    """

    config: TrainConfig
    train_ds: object
    val_ds: object | None
    sampler: object
    steps: int
    out_dir: Path
    name: str
    resume: bool = False
    progress: bool = True
    manifest: bool = False
    on_recall: Callable | None = None
    init_state: dict | None = None
    extra: dict | None = None
    file_names: tuple[str, ...] | None = None

    @property
    def run_dir(self) -> Path:
        return self.out_dir / RUNS_DIR / self.name

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.jsonl"


@dataclass(frozen=True)
class _Run:
    """The live objects of a run: the job, the processes, the snapshot plan and the torch objects."""

    job: _FitJob
    dist: _Dist
    snaps: list[int]
    paths: list[Path]
    total: int
    model: object
    optimizer: object
    scheduler: object
    scaler: object
    loss_fn: object
    net: object = None
    loader: object = None

    @property
    def amp(self) -> bool:
        return self.job.config.amp and self.dist.device.type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.job.config.channels_last and self.dist.device.type == "cuda"

    @property
    def by_epoch(self) -> bool:
        return bool(self.job.config.ensemble_epochs)


def _snapshot_plan(job: _FitJob, total: int) -> tuple[list[int], list[Path]]:
    """(the steps after which snapshots are saved, empty with ensemble epochs; the snapshot paths)."""
    config = job.config
    by_epoch = bool(config.ensemble_epochs)
    snaps = [] if by_epoch else snapshot_steps(total, config.n_checkpoints, config.snapshot_fraction)
    n_snaps = len(config.ensemble_epochs) if by_epoch else len(snaps)
    if not by_epoch and len(snaps) < config.n_checkpoints:
        logger.warning("only %d optimizer steps: %d snapshots instead of %d", total, len(snaps), config.n_checkpoints)
    if job.file_names is not None and len(job.file_names) != n_snaps:
        raise ValueError(f"file_names has {len(job.file_names)} entries for {n_snaps} snapshots")
    names = list(job.file_names) if job.file_names else [f"{job.name}_m{k}.pth" for k in range(n_snaps)]
    return snaps, [job.out_dir / f for f in names]


def _build(job: _FitJob, dist: _Dist) -> _Run:
    """The seeded model (moved to the device), optimiser, schedule, AMP scaler, loss and snapshot plan of a job."""
    import torch

    from hpa_kernel.classifier import create_classifier
    from hpa_kernel.training.losses import create_loss

    config = job.config
    cuda = dist.device.type == "cuda"
    torch.manual_seed(config.seed)
    pretrained = config.pretrained if job.init_state is None and not job.resume else None
    model = create_classifier(config.arch, in_chans=4, num_classes=config.num_classes, pretrained=pretrained, stem=config.stem,
                              **config.network_kwargs())
    if config.batchnorm == "efficientnet_pytorch":  # the team's head: nn.Linear's own init, U(+-1/sqrt(fan_in))
        model.get_classifier().reset_parameters()
    if job.init_state is not None:
        model.load_state_dict(job.init_state)
    model.to(dist.device)
    if config.channels_last and cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = _optimizer_and_schedule(config, model, job.steps)
    total = config.epochs * job.steps
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and cuda)
    loss_fn = create_loss(config.loss)
    snaps, paths = _snapshot_plan(job, total)
    return _Run(job, dist, snaps, paths, total, model, optimizer, scheduler, scaler, loss_fn)


def _restore(run: _Run) -> tuple[int, int, np.ndarray | None]:
    """Load ``last.pt`` into the run's torch objects and the torch RNG; return (epoch, step, recall) to go on from."""
    import torch

    job, total = run.job, run.total
    last_path = job.last_path
    if not last_path.is_file():
        raise FileNotFoundError(f"resume: {last_path} not found (train without {say_option('resume', True)} first)")
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    if state.get("format") != _RESUME_FORMAT or state.get("config") != _config_json(job.config):
        raise ValueError(f"resume: {last_path} was written by a different training config; "
                         f"use the same settings or a new output folder (saved: {state.get('config')})")
    if int(state.get("total_steps", total)) != total:
        raise ValueError(f"resume: {last_path} is a run of {state['total_steps']} optimizer steps, this one has {total} "
                         "(the number of training cells or of processes changed); use the same cells and processes "
                         "or a new output folder")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    start_epoch, step = int(state["epoch"]), int(state["step"])
    recall = np.asarray(state["recall"], dtype=float) if state.get("recall") is not None else None
    logger.info("resumed %s at epoch %d, step %d of %d", job.name, start_epoch, step, total)
    if start_epoch >= job.config.epochs:
        logger.info("%s is already trained (%d epochs)", job.name, job.config.epochs)
    return start_epoch, step, recall


def _with_loader(run: _Run) -> _Run:
    """The run with its network (DDP-wrapped with several processes) and its training DataLoader."""
    from torch.utils.data import DataLoader

    job, dist = run.job, run.dist
    cuda = dist.device.type == "cuda"
    net = run.model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(run.model, device_ids=[dist.device.index] if cuda else None)
    loader = DataLoader(job.train_ds, batch_size=job.config.batch_size, sampler=job.sampler, num_workers=job.config.workers,
                        pin_memory=cuda, drop_last=False, persistent_workers=False)
    return dataclasses.replace(run, net=net, loader=loader)


def _save_snapshot(run: _Run, k: int | None, epoch: int, step: int, path: Path | None = None) -> None:
    """Save the model as snapshot ``k`` (``run.paths[k]``), or at ``path`` when given."""
    from hpa_kernel.classifier import CheckpointConfig, save_checkpoint

    config, job = run.job.config, run.job
    cfg = CheckpointConfig(
        arch=config.arch, num_classes=config.num_classes, input_size=config.input_size, mean=config.mean, std=config.std,
        group=config.group, augmentation=config.augment.to_dict(), loss=config.loss.to_dict(), epoch=epoch, step=step,
        recipe=config.recipe, source_format=config.batchnorm,
        extra={"name": job.name, "snapshot": k, "snapshot_steps": run.snaps, "ensemble_epochs": list(config.ensemble_epochs),
               "epoch_index": epoch - 1, "total_steps": run.total, "world_size": run.dist.world, "train_config": config.to_dict(),
               **(job.extra or {})},
    )
    path = path or run.paths[k]
    save_checkpoint(run.model, cfg, path)
    logger.info("checkpoint after epoch %d (0-based %d), step %d: %s", epoch, epoch - 1, step, path)


def _train_epoch(run: _Run, epoch: int, step: int):
    """One epoch of optimizer steps (snapshots saved on the way); returns (step, epoch stats on the CPU, float64).

    The stats are the loss sum, the number of batches, then per class the true positives and the
    positives, summed over the processes.
    """
    import torch
    import torch.distributed as tdist
    from tqdm.auto import tqdm

    job, dist, config = run.job, run.dist, run.job.config
    device, ncls = dist.device, config.num_classes
    run.net.train()
    # loss sum, batches, true positives, positives: summed on the device, read once per epoch
    stats = torch.zeros(2 + 2 * ncls, device=device)
    bar = tqdm(run.loader, total=len(run.loader), desc=f"{job.name} epoch {epoch + 1}/{config.epochs}",
               disable=not (job.progress and dist.main), leave=False, dynamic_ncols=True)
    for x, y in bar:
        x = _normalise(x.to(device, non_blocking=True), config.mean, config.std, run.channels_last)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=run.amp):
            logits = run.net(x)
        loss = run.loss_fn(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        step += 1
        with torch.no_grad():
            pos = (y >= config.sampler.threshold).float()
            stats[0] += loss.detach()
            stats[1] += 1
            stats[2:2 + ncls] += ((logits.detach() > 0).float() * pos).sum(0)
            stats[2 + ncls:] += pos.sum(0)
        if not bar.disable:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}")
        if step in run.snaps and dist.main:
            _save_snapshot(run, run.snaps.index(step), epoch + 1, step)
    bar.close()
    if dist.world > 1:
        tdist.all_reduce(stats)
    return step, stats.double().cpu()


def _recall(stats, ncls: int) -> np.ndarray:
    """Per-class recall of the epoch stats of :func:`_train_epoch` (NaN for classes without positives)."""
    tp, npos = stats[2:2 + ncls].numpy(), stats[2 + ncls:].numpy()
    return np.where(npos > 0, tp / np.maximum(npos, 1), np.nan)


def _end_epoch(run: _Run, epoch: int, step: int, stats, recall: np.ndarray, t0: float) -> None:
    """Rank 0 after an epoch: the epoch snapshots, the log line (with validation) and the resume state."""
    import torch

    job, config = run.job, run.job.config
    if run.by_epoch:
        _save_snapshot(run, None, epoch + 1, step, job.out_dir / epoch_checkpoint_name(job.name, epoch))
        if epoch in config.ensemble_epochs:
            _save_snapshot(run, config.ensemble_epochs.index(epoch), epoch + 1, step)
    record = {"name": job.name, "epoch": epoch + 1, "step": step, "train_loss": float(stats[0] / max(1.0, float(stats[1]))),
              "lr": run.scheduler.get_last_lr()[0]}
    if job.val_ds is not None and len(job.val_ds):
        record.update(validation_loss_and_map(run.model, job.val_ds, config, run.dist.device, run.loss_fn))
        run.model.train()
    record["seconds"] = round(time.perf_counter() - t0, 3)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    logger.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    state = {
        "format": _RESUME_FORMAT, "config": _config_json(config), "epoch": epoch + 1, "step": step, "total_steps": run.total,
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
        "torch_rng": torch.get_rng_state(), "recall": None if recall is None else [float(r) for r in recall],
    }
    atomic_write(job.last_path, lambda tmp: torch_save(state, tmp))


def _trim_log(path: Path, epochs_done: int) -> None:
    """On resume: keep the log lines of the epochs in the resume state, dropping those of an epoch that
    was logged but not saved (a kill or a full disk between the two) and a half-written last line."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= epochs_done:
            kept.append(line)
    text = "".join(f"{line}\n" for line in kept)
    if text != path.read_text(errors="replace"):
        logger.info("resume: %s trimmed to the %d epoch(s) of the resume state", path, len(kept))
        atomic_write(path, lambda tmp: tmp.write_text(text))


def _fit(job: _FitJob, dist: _Dist) -> list[Path]:
    """The training loop shared by :func:`train_group` and fine-tuning; returns the snapshot paths."""
    import torch
    import torch.distributed as tdist

    run = _build(job, dist)
    start_epoch, step, recall = _restore(run) if job.resume else (0, 0, None)
    if dist.rank:
        # Every rank seeded alike (and on resume restored rank 0's saved state): without this the
        # ranks would draw the same augmentations and dropout masks for their different cells.
        torch.manual_seed(job.config.seed + 1_000_003 * dist.rank + step)
    if not job.resume and dist.main and job.log_path.is_file():
        job.log_path.unlink()
    if job.resume and dist.main:
        _trim_log(job.log_path, start_epoch)
    run = _with_loader(run)
    for epoch in range(start_epoch, job.config.epochs):
        if job.on_recall is not None:
            job.on_recall(recall)
        job.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        step, stats = _train_epoch(run, epoch, step)
        recall = _recall(stats, job.config.num_classes)
        if dist.main:
            _end_epoch(run, epoch, step, stats, recall, t0)
        if dist.world > 1:
            tdist.barrier()
    if dist.main and job.manifest:
        _update_manifest(job.out_dir, job.config.group)
    missing = [p for p in run.paths if not p.is_file()]
    if dist.main and missing:
        raise ValueError(f"training finished but snapshots are missing: {[str(p) for p in missing]}")
    return run.paths
