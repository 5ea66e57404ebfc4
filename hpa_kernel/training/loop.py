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

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.io import atomic_write
from hpa_kernel.training.config import TrainConfig, epoch_cosine_lr, snapshot_steps

__all__ = ["train_group", "predict", "validation_loss_and_map", "checkpoint_name", "epoch_checkpoint_name", "filter_cells_for", "RUNS_DIR"]

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

    x = x.float().div_(255.0)
    x = (x - torch.tensor(mean, device=x.device).view(1, -1, 1, 1)) / torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def predict(model, dataset, mean, std, device="cpu", batch_size: int = 64, workers: int = 0, progress: bool = False) -> np.ndarray:
    """Sigmoid probabilities (N, 19) of ``model`` over a dataset of (crop, target) pairs, in order."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    out = []
    with torch.no_grad():
        for x, _ in tqdm(loader, desc="predict", disable=not progress, leave=False):
            logits = model(_normalise(x.to(device), mean, std, False))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)


def validation_loss_and_map(model, dataset, config: TrainConfig, device="cpu", loss_fn=None) -> dict:
    """Validation loss and cell-level mAP (:func:`~.metrics.mean_average_precision`) of ``model``."""
    import torch

    from hpa_kernel.training.metrics import mean_average_precision

    probs = predict(model, dataset, config.mean, config.std, device, batch_size=max(config.batch_size, 32), workers=config.workers)
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
    from hpa_kernel.training.dataset import filter_cells, read_cells_table

    if config.train_filter:
        return filter_cells(cells_csv, config.filter_column, MITOTIC_SPINDLE)
    return read_cells_table(cells_csv)


def _read_labels(config: TrainConfig, soft_labels, pseudo_labels):
    """(soft labels, raw scores or None, pseudo labels) from the files given."""
    from hpa_kernel.training.dataset import read_pseudo_labels, read_scores, read_soft_labels

    soft = read_soft_labels(soft_labels) if soft_labels is not None else None
    scores = read_scores(soft_labels) if soft_labels is not None and config.soft.default_map is not None else None
    pseudo = read_pseudo_labels(pseudo_labels) if pseudo_labels is not None else None
    return soft, scores, pseudo


def _make_sampler(config: TrainConfig, ts, train_idx, dist):
    """(sampler, optimizer steps per epoch, per-epoch reweighting callback or None) of the recipe."""
    from hpa_kernel.classes import NEGATIVE
    from hpa_kernel.training.sampler import QuotaSampler, SemiBalancedSampler, acceptance_of, quota_pools, sample_weights

    s, batch = config.sampler, config.batch_size
    if s.kind == "quota":
        size = s.epoch_size or len(train_idx)
        steps = config.steps_per_epoch or max(1, math.ceil(size / (batch * dist.world)))
        pools = quota_pools(ts.labels[train_idx], ts.targets[train_idx], ts.manual[train_idx], s.quotas, NEGATIVE,
                            s.duplicate_min, s.spindle_class, s.spindle_repeats, s.extra_passes)
        sampler = QuotaSampler(pools, s.quotas, acceptance_of(ts.labels[train_idx], s.label_power), steps * batch, dist.world,
                               dist.rank, config.seed, no_test=(s.spindle_class,))
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


def train_group(
    config: TrainConfig,
    cells_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    val_cells: str | os.PathLike | None = None,
    soft_labels: str | os.PathLike | None = None,
    pseudo_labels: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = None,
    name: str | None = None,
    manifest: bool = True,
    progress: bool = True,
    cache: bool | None = None,
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
    val_cells : path, optional
        A ``cells.csv`` for the per-epoch validation; otherwise ``config.val_fraction`` of the
        images of ``cells_csv`` are held out (none when 0).
    soft_labels, pseudo_labels : path, optional
        Manual soft labels (``hpa-kernel label export``) and pseudo labels
        (:func:`~.pseudo.make_pseudo_labels`) that replace the image-level targets.
    resume : bool
        Continue from ``runs/{name}/last.pt`` (it must exist and have the same config and number of
        optimizer steps).
    device : str, optional
        ``"cuda"``, ``"cpu"``...; default CUDA when available. Under torchrun each rank uses
        ``cuda:LOCAL_RANK``.
    name : str, optional
        Snapshot stem; default ``g{group}`` (files ``g{group}_m{k}.pth``).
    manifest : bool
        Create or update ``out_dir/weights_manifest.json`` with the snapshot hashes; only with the
        default ``name`` (the manifest lists ``g{group}_m{k}.pth``).
    progress : bool
        Show tqdm bars (rank 0).
    cache : bool, optional
        Keep resized crops in memory; default when ``input_size <= 128``.

    Returns
    -------
    list of Path
    """
    from hpa_kernel.training.augment import Augmenter
    from hpa_kernel.training.dataset import CellDataset, read_cells_table, recipe_targets

    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    table = filter_cells_for(config, cells_csv)
    labels = _read_labels(config, soft_labels, pseudo_labels)
    ts = recipe_targets(table, config, *labels)
    k = config.num_classes
    cache = config.input_size <= 128 if cache is None else cache
    if val_cells is not None:
        train_idx = np.arange(len(table))
        vtable = read_cells_table(val_cells)
        vtargets = recipe_targets(vtable, config, labels[0], labels[1], None).targets[:, :k]
        val_ds = CellDataset(vtable["crop_path"], vtargets, config.input_size, None, cache)
    else:
        train_idx, val_idx = _split_by_image(table, config.val_fraction, config.seed)
        val_ds = CellDataset(table["crop_path"].iloc[val_idx], ts.targets[val_idx, :k], config.input_size, None, cache) if len(val_idx) else None
    train_ds = CellDataset(table["crop_path"].iloc[train_idx], ts.targets[train_idx, :k], config.input_size, Augmenter(config.augment), cache)
    logger.info("group %d (%s): %d training cells (%d manual, %d pseudo), %d validation cells", config.group, config.recipe,
                len(train_ds), int((ts.source[train_idx] == "manual").sum()), int((ts.source[train_idx] == "pseudo").sum()),
                len(val_ds) if val_ds else 0)

    dist = _setup(device)
    sampler, steps, reweight = _make_sampler(config, ts, train_idx, dist)
    try:
        return _fit(config, train_ds, val_ds, sampler, steps, Path(out_dir), name or f"g{config.group}", dist,
                    resume=resume, progress=progress, manifest=manifest and name is None, on_recall=reweight)
    finally:
        if dist.initialized_here:
            import torch.distributed

            torch.distributed.destroy_process_group()


def _fit(config: TrainConfig, train_ds, val_ds, sampler, steps: int, out_dir: Path, name: str, dist: _Dist, *,
         resume: bool = False, progress: bool = True, manifest: bool = False, on_recall=None, init_state=None,
         extra: dict | None = None, file_names: list[str] | None = None) -> list[Path]:
    """The training loop shared by :func:`train_group` and fine-tuning."""
    import torch
    import torch.distributed as tdist
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from hpa_kernel.classifier import CheckpointConfig, create_classifier, save_checkpoint
    from hpa_kernel.training.losses import create_loss

    device = dist.device
    cuda = device.type == "cuda"
    amp = config.amp and cuda
    channels_last = config.channels_last and cuda
    torch.manual_seed(config.seed)
    pretrained = config.pretrained if init_state is None and not resume else None
    model = create_classifier(config.arch, in_chans=4, num_classes=config.num_classes, drop_rate=config.drop_rate, pretrained=pretrained)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = _optimizer_and_schedule(config, model, steps)
    total = config.epochs * steps
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = create_loss(config.loss)
    by_epoch = bool(config.ensemble_epochs)
    snaps = [] if by_epoch else snapshot_steps(total, config.n_checkpoints, config.snapshot_fraction)
    n_snaps = len(config.ensemble_epochs) if by_epoch else len(snaps)
    if not by_epoch and len(snaps) < config.n_checkpoints:
        logger.warning("only %d optimizer steps: %d snapshots instead of %d", total, len(snaps), config.n_checkpoints)
    if file_names is not None and len(file_names) != n_snaps:
        raise ValueError(f"file_names has {len(file_names)} entries for {n_snaps} snapshots")
    paths = [out_dir / f for f in file_names] if file_names else [out_dir / f"{name}_m{k}.pth" for k in range(n_snaps)]
    run_dir = out_dir / RUNS_DIR / name
    last_path = run_dir / "last.pt"
    log_path = run_dir / "log.jsonl"

    start_epoch, step, recall = 0, 0, None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"resume: {last_path} not found (train without --resume first)")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        if state.get("format") != _RESUME_FORMAT or state.get("config") != _config_json(config):
            raise ValueError(f"resume: {last_path} was written by a different training config; "
                             f"use the same settings or a new output folder (saved: {state.get('config')})")
        if int(state.get("total_steps", total)) != total:
            raise ValueError(f"resume: {last_path} is a run of {state['total_steps']} optimizer steps, this one has {total} "
                             "(the number of training cells or of processes changed); use the same cells and processes "
                             "or a new output folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        recall = np.asarray(state["recall"], dtype=float) if state.get("recall") is not None else None
        logger.info("resumed %s at epoch %d, step %d of %d", name, start_epoch, step, total)
        if start_epoch >= config.epochs:
            logger.info("%s is already trained (%d epochs)", name, config.epochs)

    if dist.rank:
        # Every rank seeded alike (and on resume restored rank 0's saved state): without this the
        # ranks would draw the same augmentations and dropout masks for their different cells.
        torch.manual_seed(config.seed + 1_000_003 * dist.rank + step)
    if not resume and dist.main and log_path.is_file():
        log_path.unlink()
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        pin_memory=cuda, drop_last=False, persistent_workers=False)

    def save_snapshot(k: int | None, epoch: int, path: Path | None = None) -> None:
        cfg = CheckpointConfig(
            arch=config.arch, num_classes=config.num_classes, input_size=config.input_size, mean=config.mean, std=config.std,
            group=config.group, augmentation=config.augment.to_dict(), loss=config.loss.to_dict(), epoch=epoch, step=step,
            recipe=config.recipe,
            extra={"name": name, "snapshot": k, "snapshot_steps": snaps, "ensemble_epochs": list(config.ensemble_epochs),
                   "epoch_index": epoch - 1, "total_steps": total, "world_size": dist.world, "train_config": config.to_dict(),
                   **(extra or {})},
        )
        path = path or paths[k]
        save_checkpoint(model, cfg, path)
        logger.info("checkpoint after epoch %d (0-based %d), step %d: %s", epoch, epoch - 1, step, path)

    ncls = config.num_classes
    for epoch in range(start_epoch, config.epochs):
        if on_recall is not None:
            on_recall(recall)
        sampler.set_epoch(epoch)
        net.train()
        t0 = time.perf_counter()
        # loss sum, batches, true positives, positives: summed on the device, read once per epoch
        stats = torch.zeros(2 + 2 * ncls, device=device)
        bar = tqdm(loader, total=len(loader), desc=f"{name} epoch {epoch + 1}/{config.epochs}", disable=not (progress and dist.main),
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x = _normalise(x.to(device, non_blocking=True), config.mean, config.std, channels_last)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            with torch.no_grad():
                pos = (y >= config.sampler.threshold).float()
                stats[0] += loss.detach()
                stats[1] += 1
                stats[2:2 + ncls] += ((logits.detach() > 0).float() * pos).sum(0)
                stats[2 + ncls:] += pos.sum(0)
            if not bar.disable:  # reading the loss waits for the device
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step in snaps and dist.main:
                save_snapshot(snaps.index(step), epoch + 1)
        bar.close()
        if dist.world > 1:
            tdist.all_reduce(stats)
        stats = stats.double().cpu()
        tp, npos = stats[2:2 + ncls].numpy(), stats[2 + ncls:].numpy()
        recall = np.where(npos > 0, tp / np.maximum(npos, 1), np.nan)
        if dist.main and by_epoch:
            save_snapshot(None, epoch + 1, out_dir / epoch_checkpoint_name(name, epoch))
            if epoch in config.ensemble_epochs:
                save_snapshot(config.ensemble_epochs.index(epoch), epoch + 1)
        if dist.main:
            record = {"name": name, "epoch": epoch + 1, "step": step, "train_loss": float(stats[0] / max(1.0, float(stats[1]))),
                      "lr": scheduler.get_last_lr()[0]}
            if val_ds is not None and len(val_ds):
                record.update(validation_loss_and_map(model, val_ds, config, device, loss_fn))
                model.train()
            record["seconds"] = round(time.perf_counter() - t0, 3)
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            logger.info("%s", " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            state = {
                "format": _RESUME_FORMAT, "config": _config_json(config), "epoch": epoch + 1, "step": step, "total_steps": total,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(), "recall": None if recall is None else [float(r) for r in recall],
            }
            atomic_write(last_path, lambda tmp: torch.save(state, tmp))
        if dist.world > 1:
            tdist.barrier()
    if dist.main and manifest:
        _update_manifest(out_dir, config.group)
    missing = [p for p in paths if not p.is_file()]
    if dist.main and missing:
        raise ValueError(f"training finished but snapshots are missing: {[str(p) for p in missing]}")
    return paths
