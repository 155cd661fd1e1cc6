"""`spt-adapter inspect`: real spandrel architectures saved to disk (a claimed SwinIR, KAIR's DnCNN
under the dncnn preset, an SRVGGNetCompact that no plugin claims) and what it prints about them; the
no-match message of TargetError."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from _archs import dncnn, small_swinir
from _helpers import run_cli, save_safetensors
from spt_adapter.errors import TargetError

spandrel = pytest.importorskip("spandrel")


@pytest.fixture(scope="module")
def swinir_ckpt(tmp_path_factory):
    return save_safetensors(small_swinir(scale=2), tmp_path_factory.mktemp("ckpt") / "swinir_x2.safetensors")


@pytest.fixture(scope="module")
def dncnn_ckpt(tmp_path_factory):
    """KAIR's dncnn_25.pth layout (grey, 17 convs, 64 channels; a plain state dict), random weights."""
    path = tmp_path_factory.mktemp("ckpt") / "dncnn_25.pth"
    torch.save(dncnn(channels=1, nc=64, nb=17).state_dict(), path)
    return path


def test_claimed_backbone_shows_preset_tree_and_unit_cost(swinir_ckpt, capsys):
    code, out, err = run_cli(["inspect", str(swinir_ckpt)], capsys)
    assert code == 0, err
    assert "SwinIR" in out and "scale x2" in out and "3-channel input" in out
    assert "plugin 'spandrel', preset 'swinir'" in out
    tree = [line for line in out.splitlines() if line.startswith("    layers.")]
    assert len(tree) == 2 and all("RSTB" in line and "<- unit: 16 channels" in line for line in tree)
    # the parameter share is what inject would add: compare with a real injection
    bb = spt_adapter.load_backbone(swinir_ckpt)
    model = spt_adapter.inject(bb.model, bb.targets)
    units = sum(p.numel() for _, p in model.unit_parameters())
    backbone = sum(p.numel() for p in bb.model.parameters()) - units
    assert f"add {units:,} parameters = {100 * units / backbone:.2f} %" in out


def test_depth_limits_the_tree_and_counts_what_is_below(swinir_ckpt, capsys):
    code, out, _ = run_cli(["inspect", str(swinir_ckpt), "--depth", "1"], capsys)
    assert code == 0
    tree = out.split("module tree")[1].split("\ntargets ")[0]
    assert "layers.0" not in tree and "  layers  " in tree
    assert "(+42 below)" in out  # everything under `layers` that depth 1 hides
    code, out, _ = run_cli(["inspect", str(swinir_ckpt), "--depth", "0"], capsys)
    assert code == 0 and "module tree" not in out and "match 2 module(s)" in out


@pytest.fixture(scope="module")
def compact_ckpt(tmp_path_factory):
    """Real-ESRGAN's SRVGGNetCompact: an architecture no plugin claims."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2, act_type="prelu")
    path = tmp_path_factory.mktemp("ckpt") / "compact_x2.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def test_kair_dncnn_is_claimed_by_the_dncnn_preset_and_takes_patterns(dncnn_ckpt, capsys):
    code, out, err = run_cli(["inspect", str(dncnn_ckpt), "--depth", "1"], capsys)
    assert code == 0, err
    assert "DnCNN" in out and "1-channel input" in out and "dncnn" in out
    # the dncnn preset: a concat unit on each of the 15 hidden convs (README's preset table: 13.1 %)
    assert "match 15 module(s)" in out and "13.14 % of the backbone" in out
    code, out, err = run_cli(
        ["inspect", str(dncnn_ckpt), "--targets", "model.7", "model.15", "--fusion", "sft"], capsys
    )
    assert code == 0, err
    assert "match 2 module(s)" in out and out.count("64 channels") == 4  # marked in the tree, listed below
    # sft unit: encoder (1->16 3x3, 16->16 3x3) + one 1x1 conv 16 -> 2*64
    unit = (1 * 16 * 9 + 16) + (16 * 16 * 9 + 16) + (16 * 128 + 128)
    assert f"+{unit:,} parameters" in out


def test_an_unclaimed_backbone_says_no_plugin_and_asks_for_targets(compact_ckpt, capsys):
    code, out, err = run_cli(["inspect", str(compact_ckpt), "--depth", "1"], capsys)
    assert code == 0, err
    assert "SRVGGNetCompact" in out and "no plugin" in out and "--targets" in out
    assert "match" not in out  # no preset, no patterns: nothing to match


def test_a_pattern_matching_nothing_prints_the_tree_then_one_error(dncnn_ckpt, swinir_ckpt, capsys):
    code, out, err = run_cli(["inspect", str(dncnn_ckpt), "--targets", "modl.7", "--depth", "1"], capsys)
    assert code == 1 and "module tree" in out
    assert err.count("\n") == 1 and "'modl.7' matched no module; closest names: ['model.7'" in err
    code, out, err = run_cli(["inspect", str(swinir_ckpt), "--targets", "zzz.*"], capsys)
    assert code == 1 and "closest names" not in err
    assert "top-level modules are: conv_first, patch_embed, patch_unembed, pos_drop, layers, norm" in err


def test_target_error_without_a_close_name_lists_the_top_level_modules():
    model = torch.nn.Sequential()
    model.add_module("encoder", torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()))
    model.add_module("decoder", torch.nn.Conv2d(8, 3, 3))
    with pytest.raises(TargetError) as info:
        spt_adapter.inspect_targets(model, "qqqqqq")
    assert "closest names: []" not in str(info.value)
    assert "top-level modules are: encoder, decoder" in str(info.value)
    with pytest.raises(TargetError, match=r"closest names: \['encoder.1', 'encoder.0'"):
        spt_adapter.inspect_targets(model, "encoder.9")


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(["inspect", str(tmp_path / "nope.pth")], capsys)
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
