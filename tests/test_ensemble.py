"""Ensemble inference: group averaging and weighting, plans, TTA, batching, manifest loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpa_kernel.classifier import CheckpointConfig, Ensemble, Member, create_classifier, save_checkpoint
from hpa_kernel.manifest import default_manifest, load_manifest, write_manifest

NUM_CLASSES = 18  # outputs under the default recipe (milimed2021)
CFG = CheckpointConfig(arch="resnet18", input_size=32, num_classes=NUM_CLASSES)


class ConstantLogit(torch.nn.Module):
    """Outputs the same logit for every class and crop."""

    def __init__(self, logit):
        super().__init__()
        self.logit = float(logit)

    def forward(self, x):
        return torch.full((x.shape[0], NUM_CLASSES), self.logit)


class LeftRight(torch.nn.Module):
    """Logit = 4 * (mean of the left half - mean of the right half): flip-sensitive."""

    def forward(self, x):
        w = x.shape[-1] // 2
        d = x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))
        return (4 * d)[:, None].expand(-1, NUM_CLASSES)


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _const_ensemble(logits_by_group, weights):
    groups = [[Member(ConstantLogit(v), CFG, f"g{i}m{j}") for j, v in enumerate(g)] for i, g in enumerate(logits_by_group)]
    return Ensemble(groups, weights)


def test_group_average_then_weighted_sum():
    ens = _const_ensemble([[0.0], [1.0, -1.0], [2.0, 0.5, -0.5, 3.0]], [0.2, 0.4, 0.4])
    crops = np.zeros((5, 40, 40, 4), dtype=np.uint8)
    p = ens.predict(crops, batch_size=2)
    g1 = _sig(0.0)
    g2 = (_sig(1.0) + _sig(-1.0)) / 2
    g3 = (_sig(2.0) + _sig(0.5) + _sig(-0.5) + _sig(3.0)) / 4
    assert p.shape == (5, NUM_CLASSES) and p.dtype == np.float32
    np.testing.assert_allclose(p, 0.2 * g1 + 0.4 * g2 + 0.4 * g3, atol=1e-6)
    assert ens.sizes == (1, 2, 4) and ens.n_passes() == 7 and ens.n_passes(True) == 21


def test_reduced_plan_uses_first_checkpoints_and_rescales_weights():
    ens = _const_ensemble([[0.0], [1.0, -1.0], [2.0, 0.5, -0.5, 3.0]], [0.2, 0.4, 0.4])
    crops = np.zeros((3, 32, 32, 4), dtype=np.uint8)
    p = ens.predict(crops, checkpoints_per_group=(1, 1, 2))
    np.testing.assert_allclose(p, 0.2 * _sig(0) + 0.4 * _sig(1) + 0.4 * (_sig(2) + _sig(0.5)) / 2, atol=1e-6)
    p = ens.predict(crops, checkpoints_per_group=(0, 1, 1))  # group 1 dropped: 0.5 / 0.5
    np.testing.assert_allclose(p, 0.5 * _sig(1) + 0.5 * _sig(2), atol=1e-6)
    assert ens.n_passes(True, (0, 1, 1)) == 6
    with pytest.raises(ValueError, match="checkpoints_per_group"):
        ens.predict(crops, checkpoints_per_group=(1, 3, 1))
    with pytest.raises(ValueError, match="checkpoints_per_group"):
        ens.predict(crops, checkpoints_per_group=(0, 0, 0))


def test_tta_averages_flipped_views():
    ens = Ensemble([[Member(LeftRight(), CFG, "lr")]], [1.0])
    crops = np.zeros((1, 32, 32, 4), dtype=np.uint8)
    crops[..., :16, :] = 255  # left half bright: identity logit 4*(1-0)/... on [0,1] scale
    plain = ens.predict(crops)
    d = 1.0  # left half 1.0, right half 0.0 after scaling to [0, 1]
    np.testing.assert_allclose(plain, _sig(4 * d), atol=1e-5)
    # hflip reverses the sign; vflip keeps it
    np.testing.assert_allclose(ens.predict(crops, tta=("identity", "hflip")), (_sig(4) + _sig(-4)) / 2, atol=1e-5)
    np.testing.assert_allclose(ens.predict(crops, tta=("vflip",)), _sig(4), atol=1e-5)
    np.testing.assert_allclose(ens.predict(crops, tta=True), (2 * _sig(4) + _sig(-4)) / 3, atol=1e-5)
    with pytest.raises(ValueError, match="tta views"):
        ens.predict(crops, tta=("rotate90",))


def test_input_checks():
    ens = _const_ensemble([[0.0]], [1.0])
    with pytest.raises(ValueError, match="uint8 or uint16 of shape"):
        ens.predict(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8 or uint16 of shape"):
        ens.predict([[1, 2], [3, 4]])  # not an array: still the same explanation
    with pytest.raises(ValueError, match="uint8 or uint16 of shape"):
        ens.predict(np.zeros((1, 32, 32, 4), dtype=np.float32))
    assert ens.predict(np.zeros((0, 32, 32, 4), dtype=np.uint16)).shape == (0, NUM_CLASSES)  # milimed2021 crops
    assert ens.predict(np.zeros((0, 32, 32, 4), dtype=np.uint8)).shape == (0, NUM_CLASSES)
    with pytest.raises(ValueError, match="sum to 1"):
        _const_ensemble([[0.0], [0.0]], [0.5, 0.6])
    with pytest.raises(ValueError, match="group.s. big have none"):
        Ensemble([[Member(ConstantLogit(0.0), CFG, "m")], []], [0.5, 0.5], names=["small", "big"])
    with pytest.raises(ValueError, match="checkpoint odd has 3 outputs, but recipe milimed2021 expects 18"):
        Ensemble([[Member(ConstantLogit(0.0), CheckpointConfig(arch="resnet18", input_size=32, num_classes=3), "odd")]], [1.0])


def test_from_manifest_matches_direct_forward(tmp_path):
    manifest = default_manifest((1, 2), (0.25, 0.75))
    torch.manual_seed(0)
    models = {}
    for g in manifest.groups:
        for ck in g.checkpoints:
            model = create_classifier("resnet18", num_classes=NUM_CLASSES).eval()
            save_checkpoint(model, CFG, tmp_path / ck.file)
            models[ck.file] = model
    write_manifest(manifest, tmp_path / "weights_manifest.json")
    loaded = load_manifest(weights_dir=tmp_path, require_segmentation=False)
    ens = Ensemble.from_manifest(loaded)
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(3, 48, 48, 4), dtype=np.uint8)
    from hpa_kernel.classifier import prepare_batch

    with torch.no_grad():
        x = prepare_batch(crops, CFG)
        sig = {k: torch.sigmoid(m(x)).numpy() for k, m in models.items()}
    expected = 0.25 * sig["g1_m0.pth"] + 0.75 * (sig["g2_m0.pth"] + sig["g2_m1.pth"]) / 2
    np.testing.assert_allclose(ens.predict(crops, batch_size=2), expected, atol=1e-5)
    assert ens.names == ("g1", "g2")


@pytest.mark.gpu
def test_cuda_fp16_channels_last_matches_cpu(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    cfg = CheckpointConfig(arch="efficientnet_b0", input_size=64, num_classes=NUM_CLASSES)
    cpu_model = create_classifier("efficientnet_b0", num_classes=NUM_CLASSES).eval()
    gpu_model = create_classifier("efficientnet_b0", num_classes=NUM_CLASSES)
    gpu_model.load_state_dict(cpu_model.state_dict())
    cpu_groups, gpu_groups = [[Member(cpu_model, cfg, "b0")]], [[Member(gpu_model, cfg, "b0")]]
    crops = np.random.default_rng(0).integers(0, 255, size=(9, 80, 80, 4), dtype=np.uint8)
    p_cpu = Ensemble(cpu_groups, [1.0], "cpu").predict(crops, tta=True, batch_size=4)
    p_gpu = Ensemble(gpu_groups, [1.0], "cuda").predict(crops, tta=True, batch_size=4)
    np.testing.assert_allclose(p_gpu, p_cpu, atol=5e-3)
