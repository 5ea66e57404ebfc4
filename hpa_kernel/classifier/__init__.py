"""The cell classifier: a timm network with 4 input channels and 18 outputs (19 under the kit2025 recipe), and its checkpoints.

One factory (:func:`create_classifier`) and one checkpoint format (:mod:`.checkpoint`): a plain
``state_dict`` file loadable with ``torch.load(weights_only=True)`` beside a JSON config that
carries the preprocessing (input size, channel order, mean, std) and the training recipe.
"""

from hpa_kernel.classifier.checkpoint import (
    CheckpointConfig,
    config_path_for,
    load_checkpoint,
    load_config,
    prepare_batch,
    save_checkpoint,
)
from hpa_kernel.classifier.ensemble import DEFAULT_TTA, TTA_VIEWS, Ensemble, Member, resolve_tta
from hpa_kernel.classifier.model import create_classifier

__all__ = [
    "CheckpointConfig",
    "DEFAULT_TTA",
    "Ensemble",
    "Member",
    "TTA_VIEWS",
    "config_path_for",
    "create_classifier",
    "load_checkpoint",
    "load_config",
    "prepare_batch",
    "resolve_tta",
    "save_checkpoint",
]
