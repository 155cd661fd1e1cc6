"""The ``lowrank`` unit (issue 28): a narrow feature unit (3x3 down-projection to a rank, 1x1 zero-initialised
up-projection; linear at depth 1, LeakyReLU between 3x3 convs beyond) that reads no prior. Exact identity at start, shapes the file format predicts, save -> load on
a fresh backbone, ONNX export parity, the PEFT glue, and the refusals."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from spt_adapter.core.unit import SPTUnit, unit_parameter_shapes, unit_tensor_count
from spt_adapter.errors import ConfigError, PriorError

pytest.importorskip("spandrel")


def _dncnn():
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    torch.manual_seed(0)
    return DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R").eval()


def _config(**kw):
    return spt_adapter.SPTConfig(targets=["model.2", "model.4", "model.6"], fusion="lowrank", hidden=2, depth=1, **kw)


def _perturb(model, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 20, 24, generator=g), torch.rand(2, 1, 20, 24, generator=g)


@pytest.mark.parametrize("depth", [1, 2])
def test_shapes_and_tensor_count_match_the_built_unit(depth):
    cfg = _config().replace(depth=depth, hidden=3)
    unit = SPTUnit(8, cfg)
    built = {n: tuple(p.shape) for n, p in unit.named_parameters()}
    assert built == unit_parameter_shapes(8, cfg)
    assert len(built) == unit_tensor_count(cfg)
    assert built["fuse.0.weight"] == (3, 8, 3, 3)  # the 3x3 down-projection to the rank
    # rank r on a C-channel map: 9*C*r + r (down) + r*C + C (up), like LoRA's 9*C*r + r*C on a 3x3 conv
    if depth == 1:
        assert sum(p.numel() for p in unit.parameters()) == 9 * 8 * 3 + 3 + 3 * 8 + 8


def test_fresh_units_are_an_exact_identity_and_read_no_prior():
    backbone = _dncnn()
    x, prior = _inputs()
    with torch.no_grad():
        ref = backbone(x)
    model = spt_adapter.inject(_dncnn(), config=_config())
    (config,) = model.spt_config.values()
    assert config.prior_channels == 0 and config.prior == {"kind": "none"}  # a no-prior adapter, recorded so
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    _perturb(model)
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, ref, atol=1e-3)  # the units do change the output once trained
    with pytest.raises(PriorError, match="reads no prior"):  # a prior given anyway is refused, not ignored
        model(x, prior=prior)


def test_only_the_units_train_and_save_load_on_a_fresh_backbone_gives_equal_outputs(tmp_path):
    model = spt_adapter.inject(_dncnn(), config=_config())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".spt_units." in n for n in trainable)
    _perturb(model)
    path = tmp_path / "lowrank.safetensors"
    spt_adapter.save_adapter(model, path)
    loaded = spt_adapter.load_adapter(_dncnn(), path)
    (config,) = loaded.spt_config.values()
    assert config.fusion == "lowrank" and config.hidden == 2
    assert config.prior == {"kind": "none"}
    x, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_onnx_export_matches_pytorch(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from spt_adapter.inference.export import PARITY_ATOL, export, parity

    model = spt_adapter.inject(_dncnn(), config=_config()).eval()
    _perturb(model)
    path = export(model, tmp_path / "lowrank.onnx")
    assert parity(path, "onnx", model, sizes=[(20, 28), (33, 17)]) <= PARITY_ATOL


def test_peft_glue_builds_the_lowrank_unit():
    peft = pytest.importorskip("peft")
    spt_peft = pytest.importorskip("spt_adapter.peft")
    cfg = spt_peft.SPTPeftConfig(
        target_modules=["model.2", "model.4"], fusion="lowrank", hidden=2, depth=1, example_input_shape=[1, 3, 16, 16]
    )
    pm = peft.get_peft_model(_dncnn(), cfg)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert names and all("fuse.0" in n or "fuse.1" in n for n in names)
    x, _ = _inputs()
    with torch.no_grad():
        assert torch.equal(pm(x), _dncnn()(x))


def test_a_student_with_the_lowrank_unit_is_refused():
    with pytest.raises(ConfigError, match="lowrank"):
        _config(student={"width": 8, "depth": 2})


def test_depth_one_is_an_affine_residual_and_depth_two_is_not():
    f1, f2 = torch.rand(1, 8, 6, 6), torch.rand(1, 8, 6, 6)
    for depth, affine in ((1, True), (2, False)):
        torch.manual_seed(0)
        unit = SPTUnit(8, _config().replace(depth=depth))
        with torch.no_grad():
            for p in unit.parameters():
                p.copy_(torch.randn(p.shape))

            def delta(f, unit=unit):
                return unit(f, None) - f

            off = delta(f1 + f2) - delta(f1) - delta(f2) + delta(torch.zeros_like(f1))
        assert bool(torch.allclose(off, torch.zeros_like(off), atol=1e-4)) is affine
