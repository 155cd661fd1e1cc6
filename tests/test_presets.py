"""Every preset: recognised on a small real instance, exact identity at start, and the widths it
states equal the widths a probe pass measures."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from _archs import RESTORMER_TARGETS
from spt_adapter.backbones.presets import PRESETS, find_preset, register_preset
from spt_adapter.core.keys import get_logical_module
from spt_adapter.core.planning import describe_layout, probe_channels
from spt_adapter.plugins.manager import call_hook

pytest.importorskip("spandrel")


def _instances():
    from spandrel.architectures.DAT import DAT
    from spandrel.architectures.DRUNet import DRUNet
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.NAFNet import NAFNet
    from spandrel.architectures.SCUNet import SCUNet
    from spandrel.architectures.SwinIR import SwinIR

    yield (
        "swinir",
        "spandrel",
        lambda: SwinIR(embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, img_size=16),
        16,
    )
    yield (
        "hat",
        "spandrel",
        lambda: HAT(
            embed_dim=12,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            img_size=16,
            upscale=2,
            num_feat=8,
            compress_ratio=3,
            squeeze_factor=4,
        ),
        16,
    )
    yield (
        "dat",
        "spandrel",
        lambda: DAT(
            embed_dim=16,
            depth=[1, 1],
            num_heads=[2, 2],
            split_size=[2, 4],
            img_size=16,
            upscale=2,
            expansion_factor=2.0,
        ),
        16,
    )
    yield "rrdb", "spandrel", lambda: ESRGAN(num_filters=8, num_blocks=2, scale=2), 16
    yield "nafnet", "spandrel", lambda: NAFNet(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 16
    yield "scunet", "spandrel", lambda: SCUNet(config=[1] * 7, dim=64), 64
    yield "drunet", "spandrel", lambda: DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=1), 16
    from spandrel.architectures.DnCNN import DnCNN

    yield "dncnn", "spandrel", lambda: DnCNN(in_nc=1, out_nc=1, nc=8, nb=8, act_mode="R"), 16
    yield "dncnn", "spandrel", lambda: DnCNN(in_nc=3, out_nc=3, nc=8, nb=5, act_mode="BR"), 16  # batch norm kept
    try:
        from spandrel_extra_arches.architectures.Restormer import Restormer

        yield (
            "restormer",
            "restormer",
            lambda: Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]),
            16,
        )
    except ImportError:  # pragma: no cover
        pass
    try:
        from basicsr.archs.rrdbnet_arch import RRDBNet
        from basicsr.archs.swinir_arch import SwinIR as BasicSRSwinIR

        yield "rrdb", "basicsr", lambda: RRDBNet(3, 3, num_feat=8, num_block=2, num_grow_ch=4), 16
        yield (
            "swinir",
            "basicsr",
            lambda: BasicSRSwinIR(
                embed_dim=12, depths=[1, 1], num_heads=[2, 2], window_size=4, img_size=16, mlp_ratio=2
            ),
            16,
        )
    except ImportError:  # pragma: no cover
        pass


CASES = list(_instances())


@pytest.mark.parametrize("preset,integration,build,size", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_preset_claim_identity_and_widths(preset, integration, build, size):
    torch.manual_seed(0)
    net = build().eval()
    claim = call_hook("spt_adapter_claim_model", model=net)
    assert claim is not None and (claim.preset, claim.integration) == (preset, integration)
    names = spt_adapter.inspect_targets(net, claim.targets)
    assert len(names) >= 2
    if claim.channels:  # stated widths must be the real ones
        layouts = {n: describe_layout(net, n, get_logical_module(net, n)) for n in names}
        x = torch.rand(
            1,
            net.conv_first.in_channels
            if hasattr(net, "conv_first")
            else next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels,
            size,
            size,
        )
        assert probe_channels(net, names, layouts, x) == claim.channels
    x = torch.rand(1, next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)).in_channels, size, size)
    with torch.no_grad():
        expected = net(x)
        model = spt_adapter.inject(net)
        assert model.spt_targets["default"] == names
        config = model.spt_config["default"]
        assert (config.preset, config.integration) == (preset, integration)
        got = model(x, prior=torch.rand(1, 1, size, size))
    assert torch.equal(got, expected), "a fresh injection must be an exact identity"


def test_rrdb_spandrel_naming_skips_the_trunk_conv():
    from spandrel.architectures.ESRGAN import ESRGAN

    claim = call_hook("spt_adapter_claim_model", model=ESRGAN(num_filters=8, num_blocks=3, scale=2))
    assert claim.targets == ["model.1.sub.0", "model.1.sub.1", "model.1.sub.2"]


def test_restormer_default_targets():
    pytest.importorskip("spandrel_extra_arches")
    from spandrel_extra_arches.architectures.Restormer import Restormer

    claim = call_hook(
        "spt_adapter_claim_model",
        model=Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]),
    )
    assert claim.targets == RESTORMER_TARGETS
    assert claim.channels == {
        "encoder_level1": 8,
        "encoder_level2": 16,
        "encoder_level3": 32,
        "latent": 64,
        "decoder_level3": 32,
        "decoder_level2": 16,
        "decoder_level1": 16,
        "refinement": 16,
    }


def test_unknown_architecture_is_not_claimed_and_duplicates_are_rejected():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3))
    assert find_preset(net) is None and call_hook("spt_adapter_claim_model", model=net) is None
    with pytest.raises(ValueError, match="already registered"):
        register_preset(PRESETS[0])


def test_adapter_on_the_wrong_architecture_names_the_expected_preset(tmp_path):
    from spandrel.architectures.NAFNet import NAFNet
    from spandrel.architectures.SwinIR import SwinIR

    swinir = SwinIR(embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, img_size=16)
    path = spt_adapter.inject(swinir).save_adapter(tmp_path / "swinir.safetensors")
    with pytest.raises(spt_adapter.FingerprintMismatchError, match="preset 'swinir' of integration 'spandrel'"):
        spt_adapter.load_adapter(NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1]), path)


def test_dncnn_presets_every_hidden_conv_and_a_light_one(tmp_path):
    """dncnn: a unit on every hidden conv (not the first nor the output conv); dncnn-light: three, at
    1/4, 1/2 and the end of the depth, picked by name with --arch. The shares of the parameters they
    train are the README's (tools/preset_shares.py prints them)."""
    import argparse

    from safetensors.torch import save_file
    from spandrel.architectures.DnCNN import DnCNN

    from spt_adapter.commands.builders import load_backbone_from_args

    net = DnCNN(in_nc=1, out_nc=1, nc=64, nb=20, act_mode="R")  # DnCNN-3's size
    claim = call_hook("spt_adapter_claim_model", model=net)
    assert claim.preset == "dncnn" and claim.targets == [f"model.{2 * i}" for i in range(1, 19)]
    light = next(p for p in PRESETS if p.name == "dncnn-light").targets(net)
    assert light == ["model.10", "model.20", "model.36"]
    total = sum(p.numel() for p in net.parameters())
    full = spt_adapter.inject(net)
    shares = [sum(p.numel() for _, p in full.unit_parameters()) / total]
    net = full.eject()
    shares.append(sum(p.numel() for _, p in spt_adapter.inject(net, light).unit_parameters()) / total)
    assert [round(100 * s, 1) for s in shares] == [13.1, 2.2]

    path = tmp_path / "dncnn.safetensors"
    save_file(
        {k: v.contiguous() for k, v in DnCNN(in_nc=1, out_nc=1, nc=8, nb=17, act_mode="R").state_dict().items()},
        str(path),
    )
    args = argparse.Namespace(backbone=None, weights=str(path), arch="dncnn-light")
    _, targets, _ = load_backbone_from_args(args)
    assert targets == ["model.8", "model.16", "model.30"] and args._claim == ("spandrel", "dncnn-light")
    args = argparse.Namespace(backbone=str(path), weights=None, arch=None)
    _, targets, _ = load_backbone_from_args(args)
    assert len(targets) == 15 and args._claim == ("spandrel", "dncnn")
