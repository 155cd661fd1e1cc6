"""`spt-adapter train`: a real run on real images (resume included) and every user error caught
before any work starts (no output folder, no prior cache written)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spt_adapter.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need_data():
    if not (DATA / "Set5").is_dir():
        pytest.skip(f"test images not found at {DATA}")


@pytest.fixture(scope="module")
def swinir_ckpt(tmp_path_factory):
    """A tiny real SwinIR (spandrel's class) saved as a safetensors checkpoint (claimed: preset swinir)."""
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    torch.manual_seed(0)
    m = SwinIR(img_size=32, in_chans=3, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=8,
               mlp_ratio=2.0, upscale=1, upsampler="", resi_connection="1conv", drop_path_rate=0.0)
    path = tmp_path_factory.mktemp("ckpt") / "swinir_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def compact_ckpt(tmp_path_factory):
    """A real SRVGGNetCompact (Real-ESRGAN's small net): spandrel loads it, but no preset claims it."""
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    m = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2)
    path = tmp_path_factory.mktemp("ckpt") / "compact_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


@pytest.fixture()
def small_data(tmp_path):
    """Three small real images (Set5 crops) as an HQ folder."""
    _need_data()
    from PIL import Image

    folder = tmp_path / "hq"
    folder.mkdir()
    for p in sorted((DATA / "Set5").glob("*.png"))[:3]:
        Image.open(p).convert("RGB").crop((0, 0, 64, 64)).save(folder / p.name)
    return folder


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# errors before work
# ---------------------------------------------------------------------------------------------
def test_missing_data_folder(tmp_path, swinir_ckpt, capsys):
    out = tmp_path / "run"
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--data", str(tmp_path / "nope"), "--task",
                         "denoise:25", "--out", str(out), "--prior-cache", str(tmp_path / "pc")], capsys)
    assert code == 1 and "--data folder" in err and "does not exist" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_empty_data_folder(tmp_path, swinir_ckpt, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = tmp_path / "run"
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--data", str(tmp_path / "empty"), "--task",
                         "denoise:25", "--out", str(out), "--prior-cache", str(tmp_path / "pc")], capsys)
    assert code == 1 and "holds no images" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_unclaimed_backbone_needs_targets(tmp_path, compact_ckpt, small_data, capsys):
    out = tmp_path / "run"
    code, _, err = _run(["train", "--backbone", str(compact_ckpt), "--data", str(small_data), "--task", "sr:2",
                         "--out", str(out), "--prior-cache", str(tmp_path / "pc")], capsys)
    assert code == 1 and "no plugin claims" in err and "--targets" in err and "SRVGGNetCompact" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_bad_target_pattern_is_named(tmp_path, swinir_ckpt, small_data, capsys):
    out = tmp_path / "run"
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--targets", "layerz.*", "--data", str(small_data),
                         "--task", "denoise:25", "--out", str(out), "--prior-cache", str(tmp_path / "pc")], capsys)
    assert code == 1 and "'layerz.*'" in err and "matched no module" in err
    assert not out.exists()


def test_missing_backbone_and_sam_checkpoint(tmp_path, swinir_ckpt, small_data, capsys):
    common = ["--data", str(small_data), "--task", "denoise:25", "--out", str(tmp_path / "run")]
    code, _, err = _run(["train", "--backbone", str(tmp_path / "missing.pth"), *common], capsys)
    assert code == 1 and "missing.pth does not exist" in err
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--provider", "sam", *common], capsys)
    assert code == 1 and "--sam-checkpoint" in err
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--sam-checkpoint", str(tmp_path / "sam.pth"), *common], capsys)
    assert code == 1 and "sam.pth does not exist" in err
    code, _, err = _run(["train", "--arch", "swinir", *common], capsys)
    assert code == 1 and "no backbone" in err
    code, _, err = _run(["train", "--arch", "rrdb", "--weights", str(swinir_ckpt), *common], capsys)
    assert code == 1 and "not a 'rrdb'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag,value,needle", [
    ("--task", "blur:3", "task must be"), ("--task", "sr:1", "task must be"), ("--iters", "0", "positive integer"),
    ("--lr", "-1", "positive number"), ("--batch", "two", "positive integer"), ("--fusion", "add", "invalid choice"),
])
def test_bad_flags_are_refused_by_the_parser(tmp_path, swinir_ckpt, small_data, capsys, flag, value, needle):
    argv = ["train", "--backbone", str(swinir_ckpt), "--data", str(small_data), "--task", "denoise:25",
            "--out", str(tmp_path / "run"), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_sr_patch_must_divide_by_scale(tmp_path, swinir_ckpt, small_data, capsys):
    code, _, err = _run(["train", "--backbone", str(swinir_ckpt), "--data", str(small_data), "--task", "sr:4",
                         "--patch", "30", "--out", str(tmp_path / "run")], capsys)
    assert code == 1 and "not divisible by the scale 4" in err
