"""Ensemble inference: groups of checkpoints, sigmoid averaged within a group, groups weighted.

For crops ``x``::

    p_g(x) = sum over the group's checkpoints k of w_gk * mean over TTA views t of sigmoid(model_k(t(x)))
    p(x)   = sum over groups g of weight_g * p_g(x)

``w_gk`` are the per-checkpoint weights of the manifest (uniform when it gives none). Every
checkpoint must have the recipe's number of outputs (:attr:`InferenceRecipe.num_outputs`, 18 for
``milimed2021``); :meth:`Ensemble.predict` returns that many columns, and
:func:`hpa_kernel.confidence.recipe_confidence` turns them into the 19 classes.

A plan may use fewer checkpoints than the manifest lists (``checkpoints_per_group``): the first
``n`` of each group are used, their weights rescaled to sum to 1, and a group with ``n = 0`` is
left out, the remaining group weights being rescaled to sum to 1. Each checkpoint's JSON decides its input size and normalisation
(:func:`~hpa_kernel.classifier.checkpoint.prepare_batch`); crops are prepared once per distinct
preprocessing. On CUDA the forward runs under fp16 autocast in channels_last; on the CPU in fp32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpa_kernel.classifier.checkpoint import CheckpointConfig, load_checkpoint, prepare_batch
from hpa_kernel.options import say_option
from hpa_kernel.recipe import InferenceRecipe, get_recipe, recipes_for_outputs

__all__ = ["TTA_VIEWS", "DEFAULT_TTA", "Member", "Ensemble", "resolve_tta"]

logger = logging.getLogger(__name__)

#: Views a TTA may use; each is its own inverse, and a cell-level classifier needs no un-flip.
TTA_VIEWS = ("identity", "hflip", "vflip", "rot180")
DEFAULT_TTA = ("identity", "hflip", "vflip")


def resolve_tta(tta: bool | Sequence[str] | None) -> tuple[str, ...]:
    """``True`` → :data:`DEFAULT_TTA`, ``False``/``None`` → identity only, or an explicit list of views."""
    if tta is None or tta is False:
        return ("identity",)
    if tta is True:
        return DEFAULT_TTA
    views = tuple(tta)
    bad = [v for v in views if v not in TTA_VIEWS]
    if bad or not views:
        raise ValueError(f"tta views must be a non-empty subset of {TTA_VIEWS}, got {views}")
    return views


def _view(x, name: str):
    if name == "identity":
        return x
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    return x.flip(-1, -2)  # rot180


@dataclass
class Member:
    """One loaded checkpoint of the ensemble."""

    model: object
    config: CheckpointConfig
    path: str


class Ensemble:
    """Groups of classifier checkpoints with their weights.

    Parameters
    ----------
    groups : list of list of Member
        The loaded checkpoints, group by group.
    weights : sequence of float
        One weight per group, summing to 1.
    device : str or torch.device
    names : sequence of str, optional
        Group names for log messages.
    checkpoint_weights : sequence of sequence of float, optional
        Per group, the weight of each checkpoint (summing to 1); default uniform.
    recipe : InferenceRecipe or str, optional
        Its ``num_outputs`` is what every checkpoint must have (default recipe: 18).

    Raises
    ------
    ValueError
        A checkpoint whose ``num_classes`` does not fit the recipe, naming the file and the fix.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[Member]],
        weights: Sequence[float],
        device="cpu",
        names=None,
        checkpoint_weights: Sequence[Sequence[float]] | None = None,
        recipe: InferenceRecipe | str | None = None,
    ):
        import torch

        if len(groups) != len(weights) or not groups:
            raise ValueError(f"need one weight per group, got {len(groups)} groups and {len(weights)} weights")
        names = tuple(names) if names is not None else tuple(f"g{i + 1}" for i in range(len(groups)))
        if len(names) != len(groups):
            raise ValueError(f"names must give one name per group, got {len(names)} names for {len(groups)} groups")
        empty = [name for name, g in zip(names, groups, strict=True) if len(g) == 0]
        if empty:
            raise ValueError(f"every ensemble group needs at least one checkpoint; group(s) {', '.join(empty)} have none")
        if abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
            raise ValueError(f"group weights must be non-negative and sum to 1, got {list(weights)}")
        self.recipe = get_recipe(recipe)
        for member in (m for g in groups for m in g):  # before any model is moved to the device
            _check_fits(member, self.recipe)
        self.groups = [list(g) for g in groups]
        self.weights = tuple(float(w) for w in weights)
        self.checkpoint_weights = _check_checkpoint_weights(checkpoint_weights, self.groups, names)
        self.device = torch.device(device)
        self.names = names
        self.cuda = self.device.type == "cuda"
        for member in self.members:
            member.model.to(self.device)
            if self.cuda:
                member.model.to(memory_format=torch.channels_last)
            member.model.eval()

    @property
    def num_outputs(self) -> int:
        """Columns of :meth:`predict` (the recipe's ``num_outputs``)."""
        return self.recipe.num_outputs

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[Sequence[str | os.PathLike]],
        weights: Sequence[float],
        device="cpu",
        names=None,
        checkpoint_weights: Sequence[Sequence[float]] | None = None,
        recipe: InferenceRecipe | str | None = None,
    ) -> Ensemble:
        """Load ``paths`` (group by group) with :func:`load_checkpoint`.

        Each checkpoint's JSON config is checked against the recipe before its weights are read.
        """
        from hpa_kernel.classifier.checkpoint import load_config

        recipe = get_recipe(recipe)
        for group in paths:
            for p in group:
                _check_fits(Member(None, load_config(p), str(p)), recipe)
        groups = []
        for group in paths:
            members = []
            for p in group:
                model, config = load_checkpoint(p, map_location="cpu")
                members.append(Member(model, config, str(p)))
            groups.append(members)
        return cls(groups, weights, device, names, checkpoint_weights, recipe)

    @classmethod
    def from_manifest(cls, manifest, device="cpu", recipe: InferenceRecipe | str | None = None) -> Ensemble:
        """Load every checkpoint of a :class:`hpa_kernel.manifest.Manifest` (already verified by its loader)."""
        ens = cls.from_checkpoints(
            manifest.checkpoint_paths(), manifest.weights, device, [g.name for g in manifest.groups],
            manifest.checkpoint_weights, recipe,
        )
        logger.info(
            "ensemble on %s (%s outputs, recipe %s): %s", ens.device, ens.num_outputs, ens.recipe.name,
            ", ".join(
                f"{n} x{len(g)} w={w:g} ({'/'.join(f'{c:g}' for c in cw)})"
                for n, g, w, cw in zip(ens.names, ens.groups, ens.weights, ens.checkpoint_weights, strict=True)
            ),
        )
        return ens

    # -- plans ----------------------------------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        return [m for g in self.groups for m in g]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Checkpoints per group."""
        return tuple(len(g) for g in self.groups)

    def _check_plan(self, checkpoints_per_group):
        if checkpoints_per_group is None:
            return self.sizes
        plan = tuple(int(n) for n in checkpoints_per_group)
        if len(plan) != len(self.groups) or any(n < 0 or n > s for n, s in zip(plan, self.sizes, strict=True)) or sum(plan) == 0:
            raise ValueError(
                f"checkpoints_per_group must give 0..{list(self.sizes)} checkpoints per group (at least one in all), got {list(plan)}"
            )
        return plan

    def n_passes(self, tta=False, checkpoints_per_group=None) -> int:
        """Forward passes per crop under a plan: checkpoints used x TTA views."""
        return sum(self._check_plan(checkpoints_per_group)) * len(resolve_tta(tta))

    # -- inference -------------------------------------------------------------------------------
    def predict(self, crops: np.ndarray, *, tta=False, checkpoints_per_group=None, batch_size: int = 32) -> np.ndarray:
        """Ensemble probabilities for uint8 or uint16 crops (scaled by dtype, :data:`~hpa_kernel.classifier.checkpoint.CROP_SCALE`).

        Parameters
        ----------
        crops : ndarray, shape (N, S, S, 4), uint8 or uint16
            Cell crops in R, G, B, Y order (kit2025 crops are uint8, milimed2021 crops uint16).
        tta : bool or sequence of str
            ``True`` for :data:`DEFAULT_TTA`, or views from :data:`TTA_VIEWS`.
        checkpoints_per_group : sequence of int, optional
            Use only the first ``n`` checkpoints of each group (default all); see the module doc.
        batch_size : int

        Returns
        -------
        ndarray, shape (N, num_outputs), float32 in [0, 1]
        """
        import torch

        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 4 or crops.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"crops must be uint8 or uint16 of shape (N, S, S, 4), got {crops.dtype} {crops.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan = self._check_plan(checkpoints_per_group)
        views = resolve_tta(tta)
        active = [
            (g[:n], _renormalised(cw[:n], plan), w)
            for g, n, w, cw in zip(self.groups, plan, self.weights, self.checkpoint_weights, strict=True)
            if n > 0
        ]
        total_w = sum(w for _, _, w in active)
        if total_w <= 0:
            raise ValueError(f"the plan {list(plan)} keeps only groups of weight 0")
        k = self.num_outputs
        out = np.zeros((len(crops), k), dtype=np.float64)
        if len(crops) == 0:
            return out.astype(np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                chunk = crops[start : start + batch_size]
                inputs: dict = {}  # one prepared tensor per distinct preprocessing
                acc = np.zeros((len(chunk), k), dtype=np.float64)
                for members, member_weights, w in active:
                    gsum = np.zeros_like(acc)
                    for member, mw in zip(members, member_weights, strict=True):
                        key = (member.config.input_size, member.config.channels, member.config.mean, member.config.std)
                        if key not in inputs:
                            inputs[key] = prepare_batch(chunk, member.config, self.device, channels_last=self.cuda)
                        x = inputs[key]
                        for v in views:
                            gsum += (mw / len(views)) * self._forward(member.model, _view(x, v))
                    acc += (w / total_w) * gsum
                out[start : start + len(chunk)] = acc
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def _forward(self, model, x) -> np.ndarray:
        import torch

        if self.cuda:
            with torch.autocast("cuda", dtype=torch.float16):
                logits = model(x)
        else:
            logits = model(x)
        return torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64)


def _check_fits(member: Member, recipe: InferenceRecipe) -> None:
    """ValueError when the checkpoint's number of outputs is not the recipe's, naming the file and the fix."""
    found = member.config.num_classes
    if found == recipe.num_outputs:
        if member.config.recipe is not None and member.config.recipe != recipe.name:
            logger.warning("checkpoint %s was trained with recipe %s and is used under %s", member.path, member.config.recipe, recipe.name)
        return
    others = recipes_for_outputs(found)
    fix = (
        f"set {say_option('recipe', others[0])} for {found}-output checkpoints"
        if others
        else f"use checkpoints with {recipe.num_outputs} outputs"
    )
    raise ValueError(
        f"checkpoint {member.path} has {found} outputs, but recipe {recipe.name} expects {recipe.num_outputs}; {fix}"
    )


def _check_checkpoint_weights(checkpoint_weights, groups, names) -> tuple[tuple[float, ...], ...]:
    """Per-group checkpoint weights, checked (one per checkpoint, >= 0, summing to 1); default uniform."""
    if checkpoint_weights is None:
        return tuple(tuple(1.0 / len(g) for _ in g) for g in groups)
    checkpoint_weights = [tuple(float(w) for w in cw) for cw in checkpoint_weights]
    if len(checkpoint_weights) != len(groups):
        raise ValueError(f"checkpoint_weights must give one list per group, got {len(checkpoint_weights)} for {len(groups)} groups")
    for name, g, cw in zip(names, groups, checkpoint_weights, strict=True):
        if len(cw) != len(g) or min(cw) < 0 or abs(sum(cw) - 1.0) > 1e-6:
            raise ValueError(f"group {name}: checkpoint weights must be {len(g)} numbers >= 0 summing to 1, got {list(cw)}")
    return tuple(checkpoint_weights)


def _renormalised(weights: Sequence[float], plan) -> tuple[float, ...]:
    """The weights of the checkpoints a plan keeps, rescaled to sum to 1."""
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"the plan {list(plan)} keeps only checkpoints of weight 0 in a group")
    return tuple(w / total for w in weights)
