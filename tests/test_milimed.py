"""The 2021 4th-place team's checkpoints: the kit's network equals efficientnet_pytorch's.

The reference is the real implementation (``efficientnet-pytorch``, a test-only dependency): the
team's network, built with ``from_name`` (nothing downloads), with seeded random weights including
the BatchNorm running statistics.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
nn = torch.nn

from hpa_kernel.classifier import load_checkpoint, prepare_batch  # noqa: E402
from hpa_kernel.classifier import milimed  # noqa: E402
# the bundle's fixtures need no efficientnet_pytorch; its tests live in test_milimed_bundle.py
from test_milimed_bundle import bundled, segmentation_files, seven_files  # noqa: E402, F401 - fixtures

logger = logging.getLogger(__name__)
TOLERANCE = 1e-5


def team_network(seed: int = 0):
    """The team's network (their In[19]) with seeded random weights, BatchNorm statistics included.

    Running statistics drawn from nothing would wash the input out within a few blocks (the output
    would be a constant, and a padding error would go unseen). So they are first measured on
    random crops, then each is perturbed at random; the affine BatchNorm parameters are random too.
    """
    torch.manual_seed(seed)
    net = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", in_channels=4, num_classes=18, image_size=512)
    net._fc = nn.Sequential(nn.Linear(1280, 18), nn.Sigmoid())
    g = torch.Generator().manual_seed(seed + 1)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.momentum = None  # cumulative average over the calibration pass
        params = net._global_params
        net._global_params = params._replace(drop_connect_rate=None)  # no random drop while measuring
        calibration = torch.from_numpy(team_inputs(4, 128, seed=seed).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
        net.train()(calibration)
        net._global_params = params
        for m in bns:
            m.momentum = 0.01
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.02 * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.2 + 0.9)
    return net.eval()


def team_inputs(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 crops (n, size, size, 4) in R, G, B, Y order, each with its own brightness."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.3, 1.0, n).reshape(n, 1, 1, 1)
    return (rng.random((n, size, size, 4)) * 255 * scale).astype(np.uint8)


def team_predict(net, crops: np.ndarray):
    """Their preprocessing (In[15]): crop / 255 as float (== uint16 / 65535), channels R, G, B, Y."""
    x = torch.from_numpy(crops.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return net(x)


@pytest.fixture(scope="module")
def team_file(tmp_path_factory):
    net = team_network()
    path = tmp_path_factory.mktemp("team") / "b0-old.pt"
    torch.save(net.state_dict(), path)
    return path, net


def test_key_map_is_a_bijection_between_the_two_layouts(team_file):
    path, net = team_file
    mapping = milimed.milimed_key_map()
    model, _ = milimed.load_milimed(path)
    assert set(mapping) == set(net.state_dict())
    assert sorted(mapping.values()) == sorted(model.state_dict())
    assert len(set(mapping.values())) == len(mapping)


@pytest.mark.parametrize("size", [256, pytest.param(512, marks=pytest.mark.slow)])
def test_kit_network_equals_efficientnet_pytorch(team_file, size):
    path, net = team_file
    model, config = milimed.load_milimed(path)
    crops = team_inputs(2, size, seed=size)
    theirs = team_predict(net, crops)
    x = torch.from_numpy(crops.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        ours = torch.sigmoid(model(x))
    diff = (ours - theirs).abs().max().item()
    logger.info("max abs diff at %d: %.3g", size, diff)
    assert diff <= TOLERANCE, f"max abs diff {diff} at {size}"
    # The comparison means something: outputs spread over the sigmoid and differ between crops.
    assert theirs.max() - theirs.min() > 0.3
    assert (theirs[0] - theirs[1]).abs().max() > 1e-3
    expected = (18, "tf_efficientnet_b0", "efficientnet_pytorch", "milimed2021")
    assert (config.num_classes, config.arch, config.source_format, config.recipe) == expected


def test_batchnorm_matches_efficientnet_pytorch(team_file):
    model, _ = milimed.load_milimed(team_file[0])
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    theirs = [m for m in team_file[1].modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(theirs) == 49
    assert {(m.eps, round(m.momentum, 6)) for m in bns} == {(theirs[0].eps, round(theirs[0].momentum, 6))} == {(1e-3, 0.01)}


def test_converted_checkpoint_through_the_kit_inference_path(team_file, tmp_path):
    """Converted file -> load_checkpoint -> prepare_batch (uint8 R, G, B, Y crops) -> sigmoid, as the
    ensemble does, against their crop / 255. At 256 to keep the default suite fast (same code path)."""
    path, net = team_file
    pth, cfg_path = milimed.convert_milimed_checkpoint(path, tmp_path / "b0-old.pth", input_size=256)
    saved = json.loads(cfg_path.read_text())
    assert saved["source_format"] == "efficientnet_pytorch" and saved["recipe"] == "milimed2021"
    assert (saved["num_classes"], saved["arch"], saved["mean"], saved["std"]) == (18, "tf_efficientnet_b0", [0.0] * 4, [1.0] * 4)
    assert saved["channels"] == ["red", "green", "blue", "yellow"]
    model, config = load_checkpoint(pth)
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)][0] == pytest.approx(0.01)
    crops = team_inputs(2, 256, seed=7)
    with torch.no_grad():
        ours = torch.sigmoid(model(prepare_batch(crops, config)))
    diff = (ours - team_predict(net, crops)).abs().max().item()
    logger.info("max abs diff through prepare_batch: %.3g", diff)
    assert diff <= TOLERANCE


def _save_state(state, path):
    torch.save(state, path)
    return path


def test_refuses_a_file_with_a_wrong_key(team_file, tmp_path):
    state = dict(team_file[1].state_dict())
    state["_fc.weight"] = state.pop("_fc.0.weight")  # a plain Linear head instead of the team's Sequential
    bad = _save_state(state, tmp_path / "wrong-key.pt")
    with pytest.raises(ValueError, match=r"wrong-key\.pt.*missing key '_fc\.0\.weight'"):
        milimed.load_milimed(bad)
    state = dict(team_file[1].state_dict(), **{"_fc.1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"extra-key\.pt.*unexpected key '_fc\.1\.weight'"):
        milimed.load_milimed(_save_state(state, tmp_path / "extra-key.pt"))


def test_refuses_a_file_with_a_wrong_shape(team_file, tmp_path):
    state = dict(team_file[1].state_dict())
    state["_fc.0.weight"] = torch.zeros(19, 1280)
    bad = _save_state(state, tmp_path / "wrong-shape.pt")
    with pytest.raises(ValueError, match=r"wrong-shape\.pt.*'_fc\.0\.weight' has shape \(19, 1280\), expected \(18, 1280\)"):
        milimed.load_milimed(bad)
    state = dict(team_file[1].state_dict())
    state["_conv_stem.weight"] = torch.zeros(32, 3, 3, 3)  # a 3-channel network
    with pytest.raises(ValueError, match=r"rgb\.pt.*'_conv_stem\.weight' has shape \(32, 3, 3, 3\)"):
        milimed.load_milimed(_save_state(state, tmp_path / "rgb.pt"))


def test_refuses_a_pickled_model(team_file, tmp_path):
    bad = tmp_path / "whole-model.pt"
    torch.save(team_file[1], bad)  # the module object, not a state_dict: weights_only refuses it
    with pytest.raises(ValueError, match=r"whole-model\.pt.*weights_only=True"):
        milimed.load_milimed(bad)


@pytest.mark.slow
def test_kit_ensemble_equals_the_team_merge(seven_files, bundled):
    """The kit's ensemble over the bundle equals their merge_solution_values (In[21]-In[24])."""
    from hpa_kernel.classifier import Ensemble
    from hpa_kernel.manifest import load_manifest

    crops = team_inputs(2, 512, seed=3)
    team = 0.0
    for group in milimed.MILIMED_GROUPS:
        for name, weight in group.checkpoints:
            net = team_network()
            net.load_state_dict(torch.load(seven_files / name, weights_only=True))
            team = team + group.weight * weight * team_predict(net, crops).numpy()
    ensemble = Ensemble.from_manifest(load_manifest(bundled / "weights_manifest.json", bundled))
    ours = ensemble.predict(crops)
    assert ours.shape == (2, 18)
    diff = np.abs(ours - team).max()
    logger.info("ensemble of seven: max abs diff %.3g", diff)
    assert diff <= TOLERANCE
    assert np.abs(team[0] - team[1]).max() > 1e-3  # the crops give different answers: the comparison is not vacuous


@pytest.mark.parametrize("variant", [{"arch": "efficientnet_b0", "bn_eps": 1e-3}, {"arch": "tf_efficientnet_b0", "bn_eps": 1e-5}])
def test_the_comparison_sees_padding_and_batchnorm_errors(team_file, variant):
    """Negative control: PyTorch-style symmetric padding, or timm's default BatchNorm eps, fail the tolerance."""
    from hpa_kernel.classifier import create_classifier

    path, net = team_file
    wrong = create_classifier(variant["arch"], in_chans=4, num_classes=18, bn_eps=variant["bn_eps"]).eval()
    wrong.load_state_dict(milimed.convert_state_dict(milimed.read_milimed_state(path), wrong, path))
    crops = team_inputs(2, 128, seed=128)
    x = torch.from_numpy(crops.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        diff = (torch.sigmoid(wrong(x)) - team_predict(net, crops)).abs().max().item()
    assert diff > 100 * TOLERANCE


def test_checkpoint_config_checks_the_source_format():
    from hpa_kernel.classifier import CheckpointConfig

    assert CheckpointConfig().source_format == "timm"  # configs written before the field still read the same
    with pytest.raises(ValueError, match="source_format must be one of"):
        CheckpointConfig(source_format="keras")
    with pytest.raises(ValueError, match="needs a tf_efficientnet_\\* arch"):
        CheckpointConfig(arch="efficientnet_b0", source_format="efficientnet_pytorch")
    assert CheckpointConfig.from_dict(milimed.milimed_config(epoch=12).to_dict()) == milimed.milimed_config(epoch=12)
