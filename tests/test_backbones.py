"""load_backbone: model-zoo files (spandrel's .pth unpickler, .safetensors, BasicSR params/params_ema,
KAIR bare dicts, Restormer params) -> (model with the file's exact weights, default targets)."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from _archs import tiny_swinir
from spt_adapter.backbones.load import BackboneError

pytest.importorskip("spandrel")


def _swinir():
    return tiny_swinir(seed=1, mlp_ratio=4.0)


@pytest.mark.parametrize("layout", ["bare", "params", "params_ema", "safetensors"])
def test_load_backbone_formats(tmp_path, layout):
    net = _swinir()
    sd = net.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "swinir.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "swinir.pth"
        torch.save(sd if layout == "bare" else {layout: sd}, path)
    model, targets = spt_adapter.load_backbone(path)
    loaded = spt_adapter.load_backbone(path)
    assert targets == ["layers.*"] and loaded.preset == "swinir" and loaded.integration == "spandrel"
    assert loaded.descriptor.scale == 2
    for k, v in model.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
    spt = spt_adapter.inject(model, targets)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(spt(x, prior=torch.rand(1, 1, 16, 16)), net.eval()(x))


def test_load_backbone_restormer_params(tmp_path):
    pytest.importorskip("spandrel_extra_arches")
    from spandrel_extra_arches.architectures.Restormer import Restormer

    net = Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    torch.save({"params": net.state_dict()}, tmp_path / "restormer.pth")
    loaded = spt_adapter.load_backbone(tmp_path / "restormer.pth")
    assert loaded.preset == "restormer" and loaded.integration == "restormer"
    assert "latent" in loaded.targets


def test_load_backbone_errors(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        spt_adapter.load_backbone(tmp_path / "missing.pth")
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "unknown.pth")
    with pytest.raises(BackboneError, match="does not recognise the architecture"):
        spt_adapter.load_backbone(tmp_path / "unknown.pth")
