"""DPNUnet: the parameter layout of hpacellseg's networks and the forward pass on the reference fill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hpa_kernel.segmentation.dpn_unet import STAGE_NAMES, DPNUnet, reference_fill_state_dict


@pytest.fixture(scope="module")
def ref(reference):
    with np.load(reference / "segmentation" / "dpn_unet_forward.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def net():
    """DPNUnet with the README section 2 weights, eval mode, float32."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with torch.device("meta"):
        model = DPNUnet()
    model.load_state_dict(reference_fill_state_dict(model), strict=True, assign=True)
    return model.eval()


def test_state_dict_layout_equals_original(reference):
    spec = json.loads((reference / "segmentation" / "dpn_unet_state_dict.json").read_text())
    with torch.device("meta"):
        model = DPNUnet()
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == spec["nuclei"]["entries"] == spec["cell"]["entries"]
    assert len(got) == spec["n_entries"] == 595
    n_float = sum(v.numel() for v in model.state_dict().values() if v.is_floating_point())
    assert n_float == spec["n_float_elements"]
    # BatchNorm layers: eps 1e-3 everywhere, as in the original DPN
    layers = model.batchnorm_layers()
    assert len(layers) == 96 and all(m.eps == 1e-3 for m in layers.values())


def test_fill_recipe_seeds_without_module_prefix():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3))

    w = Wrapped()
    plain = reference_fill_state_dict(w.module)
    wrapped = reference_fill_state_dict(w)
    assert torch.equal(wrapped["module.0.weight"], plain["0.weight"])
    assert not torch.equal(plain["0.weight"][0], plain["0.weight"][1])


def _check_float32(net, ref, name):
    x = torch.from_numpy(ref[f"input_{name}"])
    with torch.no_grad():
        logits, stages = net.forward_stages(x)
    logits = logits[0].numpy()
    want = ref[f"logits_{name}"]
    assert logits.shape == want.shape  # (3, H, W), H != W for input_b
    assert np.abs(logits - want).max() < 1e-4
    soft = torch.softmax(torch.from_numpy(logits).double(), dim=0).numpy()
    assert np.abs(soft - ref[f"softmax_{name}"]).max() < 1e-4
    agree = (soft.argmax(0) == ref[f"softmax_{name}"].argmax(0)).mean()
    assert agree >= 0.999
    for stage in STAGE_NAMES:
        chmean = stages[stage][0].double().mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(chmean, ref[f"stage_{name}_{stage}_chmean"], rtol=1e-4, atol=1e-5, err_msg=stage)
    return logits


def test_forward_float32_non_square(net, ref):
    _check_float32(net, ref, "b")


def test_forward_float32_square(net, ref):
    logits = _check_float32(net, ref, "a")
    # the original's own float32 run
    assert np.abs(logits - ref["logits_a_float32_run"]).max() < 1e-4


@pytest.mark.slow
def test_forward_float64_matches_reference(net, ref):
    model = net.double()
    try:
        for name in ("a", "b"):
            with torch.no_grad():
                logits = model(torch.from_numpy(ref[f"input_{name}"]).double())[0].numpy()
            np.testing.assert_allclose(logits, ref[f"logits_{name}"], rtol=1e-9, atol=1e-9)
    finally:
        net.float()


def test_batch_and_bad_sizes(net):
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        both = net(x)
        one = net(x[1:])
        staged, _ = net.forward_stages(x[1:])
    assert both.shape == (2, 3, 64, 32)
    torch.testing.assert_close(both[1:], one, rtol=1e-5, atol=1e-5)
    assert torch.equal(staged, one)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        net(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="must have 3 channels"):
        net(torch.zeros(1, 4, 64, 64))


def test_batchnorm_mode_switch(net):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            running = net(x)
            net.set_batchnorm_stats({"encoder_stages.0.1": True})
            assert sum(net.batchnorm_stats().values()) == 1
            first_only = net(x)
            net.set_batchnorm_stats(True)
            per_image = net(x)
        assert not torch.allclose(running, first_only) and not torch.allclose(first_only, per_image)
        with pytest.raises(ValueError, match="unknown BatchNorm layers"):
            net.set_batchnorm_stats({"encoder_stages.9.bn": True})
    finally:
        net.set_batchnorm_stats(False)
    assert not any(net.batchnorm_stats().values())
