"""The classifier factory and the checkpoint format (state_dict + JSON, weights_only loading)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpa_kernel.classes import NUM_CLASSES
from hpa_kernel.classifier import (
    CheckpointConfig,
    config_path_for,
    create_classifier,
    load_checkpoint,
    load_config,
    prepare_batch,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def small_config():
    return CheckpointConfig(arch="resnet18", input_size=64, mean=(0.1, 0.2, 0.3, 0.4), std=(0.5, 0.5, 0.5, 0.5), group=2)


def test_factory_builds_4_channel_19_output_b0():
    torch.manual_seed(0)
    model = create_classifier("efficientnet_b0")
    model.eval()
    assert model.conv_stem.in_channels == 4
    with torch.no_grad():
        out = model(torch.zeros(2, 4, 64, 64))
    assert out.shape == (2, NUM_CLASSES)


def test_factory_rejects_pretrained_and_unknown_arch():
    with pytest.raises(ValueError, match="download"):
        create_classifier("resnet18", pretrained=True)
    with pytest.raises(ValueError, match="unknown timm architecture 'not_a_net'"):
        create_classifier("not_a_net")


def test_checkpoint_round_trip_with_weights_only(tmp_path, small_config):
    torch.manual_seed(1)
    model = create_classifier(small_config.arch).eval()
    pth, js = save_checkpoint(model, small_config, tmp_path / "ck.pth")
    assert js == config_path_for(pth) and js.is_file()
    # the state_dict alone loads under the strict unpickler
    state = torch.load(pth, weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded, config = load_checkpoint(pth)
    assert config == small_config
    assert not loaded.training
    x = torch.randn(3, 4, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)


def test_checkpoint_of_other_architecture_is_refused(tmp_path, small_config):
    # resnet34 weights under a JSON that says resnet18: the key sets differ
    pth, _ = save_checkpoint(create_classifier("resnet34"), small_config, tmp_path / "ck.pth")
    with pytest.raises(ValueError, match="does not fit resnet18"):
        load_checkpoint(pth)


def test_checkpoint_with_shape_mismatch_is_refused_with_value_error(tmp_path, small_config):
    pth, js = save_checkpoint(create_classifier("resnet18"), small_config, tmp_path / "ck.pth")
    data = json.loads(js.read_text())
    data["arch"] = "efficientnet_b0"
    js.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="does not fit efficientnet_b0"):
        load_checkpoint(pth)


def test_missing_or_broken_json_is_reported(tmp_path, small_config):
    pth, js = save_checkpoint(create_classifier("resnet18"), small_config, tmp_path / "ck.pth")
    js.unlink()
    with pytest.raises(FileNotFoundError, match=r"ck\.json"):
        load_checkpoint(pth)
    js.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(pth)
    js.write_text(json.dumps({"arch": "resnet18", "colour": "red"}))
    with pytest.raises(ValueError, match="unknown checkpoint config keys"):
        load_config(pth)
    js.write_text(json.dumps({"arch": "resnet18", "input_size": 33}))
    with pytest.raises(ValueError, match=r"ck\.json: input_size must be a positive multiple of 32"):
        load_config(pth)
    js.write_text(json.dumps(["resnet18"]))
    with pytest.raises(ValueError, match=r"ck\.json: expected a JSON object, got list"):
        load_config(pth)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")


def test_pickled_module_is_refused_by_weights_only(tmp_path, small_config):
    model = create_classifier("resnet18")
    pth = tmp_path / "whole.pth"
    torch.save(model, pth)  # a pickled module, not a state_dict
    (tmp_path / "whole.json").write_text(json.dumps(small_config.to_dict()))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(pth)


def test_prepare_batch_orders_resizes_and_normalises(small_config):
    crops = np.zeros((2, 128, 128, 4), dtype=np.uint8)
    crops[..., 0] = 255  # red full, others 0
    x = prepare_batch(crops, small_config)
    assert tuple(x.shape) == (2, 4, 64, 64)
    # red: (1 - 0.1) / 0.5 ; blue: (0 - 0.3) / 0.5
    assert torch.allclose(x[:, 0], torch.full((2, 64, 64), 1.8), atol=1e-5)
    assert torch.allclose(x[:, 2], torch.full((2, 64, 64), -0.6), atol=1e-5)
    yrgb = CheckpointConfig(arch="resnet18", input_size=64, channels=("yellow", "red", "green", "blue"))
    x2 = prepare_batch(crops, yrgb)
    assert float(x2[:, 1].mean()) == pytest.approx(1.0) and float(x2[:, 0].mean()) == 0.0
    with pytest.raises(ValueError, match="uint8 or uint16"):
        prepare_batch(crops.astype(np.float32), small_config)
    with pytest.raises(ValueError, match=r"\(N, S, S, 4\)"):
        prepare_batch(crops[..., :3], small_config)


def test_prepare_batch_scales_by_dtype(small_config):
    """uint8 / 255 (kit2025 crops), uint16 / 65535 (milimed2021 crops, the team's scale); mean/std after."""
    rng = np.random.default_rng(3)
    crops16 = rng.integers(0, 65535, size=(2, 64, 64, 4), endpoint=True).astype(np.uint16)
    x = prepare_batch(crops16, small_config)  # input_size 64: no resize
    mean = np.array(small_config.mean)[None, :, None, None]
    std = np.array(small_config.std)[None, :, None, None]
    by_hand = (crops16.transpose(0, 3, 1, 2).astype(np.float64) / 65535.0 - mean) / std
    np.testing.assert_allclose(x.numpy(), by_hand, rtol=0, atol=1e-5)
    crops8 = rng.integers(0, 255, size=(2, 64, 64, 4), endpoint=True).astype(np.uint8)
    # an 8-bit value v and the team's 16-bit 257 v are the same input
    as16 = crops8.astype(np.uint16) * 257
    np.testing.assert_allclose(prepare_batch(crops8, small_config).numpy(), prepare_batch(as16, small_config).numpy(), rtol=0, atol=1e-6)


def test_config_checks_itself():
    with pytest.raises(ValueError, match="multiple of 32"):
        CheckpointConfig(input_size=100)
    with pytest.raises(ValueError, match="std must be positive"):
        CheckpointConfig(std=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="unknown channels"):
        CheckpointConfig(channels=("red", "green", "blue", "purple"))
