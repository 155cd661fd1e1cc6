"""DnCNN's published numbers through ``spt-adapter eval --no-adapter``, and the eval path they need.

Always run: *pre-upsampled SR* (a x1 backbone given ``--task sr:<s>``: the LR image is
bicubic-upsampled before the network; a grey network reads and is scored on the Y channel) on a tiny
random-weight DnCNN, against a reference computed here step by step.

Opt-in (``SPT_DNCNN_ROOT`` = a cszn/DnCNN checkout): each test converts a ``model/*.mat`` with
``tools/convert_dncnn_mat.py`` into ``tmp_path`` and scores it with the CLI on the checkout's test sets
(``CBSD68`` from the folder ``SPT_FULL_DATA`` names). Published (cszn/DnCNN README; DnCNN paper, TIP 2017, colour table):
DnCNN-3 SR x4 Set5 31.40 / Set14 28.04 dB (Y, border 4); DnCNN-3 BSD68 sigma 25 29.02 dB; CDnCNN-B
CBSD68 sigma 25 31.23 dB. MATLAB's ``randn('seed', 0)`` cannot be drawn here, so the denoising numbers
use KAIR's noise with seed 0 and get a wider tolerance.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import full_data
from _helpers import cli, save_safetensors
from spt_adapter.cli import main
from spt_adapter.data.images import imresize_bicubic

pytest.importorskip("spandrel")

ROOT = Path(__file__).resolve().parents[1]
DNCNN_ROOT = os.environ.get("SPT_DNCNN_ROOT")


def _dncnn(channels: int, seed: int = 0):
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(seed)
    net = DnCNN(in_nc=channels, out_nc=channels, nc=8, nb=8, act_mode="R").eval()
    with torch.no_grad():  # a visible, image-dependent correction (random init barely changes the input)
        for p in net.parameters():
            p.mul_(2.0)
    return net


def _no_adapter_eval(ckpt: Path, data: Path, task: str, out: Path, *extra: str) -> list[str]:
    """``eval --no-adapter``: the backbone alone on ``data``."""
    return cli("eval", no_adapter=True, backbone=ckpt, data=data, task=task, out=out, no_progress=True) + list(extra)


def _rows(out: Path) -> dict[str, list[float]]:
    with open(out / "eval.csv") as f:
        return {r["image"]: [float(r["backbone_psnr"]), float(r["backbone_ssim"])] for r in csv.DictReader(f)}


def _psnr(a: np.ndarray, b: np.ndarray, border: int) -> float:
    a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return 10 * math.log10(255.0**2 / float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def _reference_y(net, rgb: np.ndarray, s: int) -> float:
    """Demo_test_DnCNN3.m for a colour file, written out: modcrop, uint8 LR, float bicubic upsample,
    Y of YCbCr in, Y out (rounded to 8 bits as eval saves it), PSNR against the unrounded Y of the HR."""
    h, w = rgb.shape[:2]
    hr = rgb[: h - h % s, : w - w % s]
    lr = imresize_bicubic(hr, scale=1 / s)
    up = imresize_bicubic(lr.astype(np.float64) / 255, size=hr.shape[:2])
    coeffs = np.array([65.481, 128.553, 24.966])
    y_in = (up @ coeffs + 16) / 255
    y_gt = hr.astype(np.float64) / 255 @ coeffs + 16
    with torch.no_grad():
        out = net(torch.from_numpy(y_in.astype(np.float32))[None, None])[0, 0].clamp(0, 1).numpy()
    return _psnr(np.round(out.astype(np.float64) * 255), y_gt, s)


def _photos(folder: Path) -> dict[str, np.ndarray]:
    """Two colour pictures (sizes not multiples of the scale), one grey file and one colour file of a
    grey picture (all channels equal: read as colour, as MATLAB reads it)."""
    folder.mkdir()
    yy, xx = np.mgrid[0:45, 0:38]
    a = np.stack([(xx * 6) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
    b = np.stack([128 + 100 * np.sin(xx / 3.0), 128 + 90 * np.cos(yy / 4.0), 60 + 0 * xx], -1).astype(np.uint8)
    g = ((np.sin(xx / 2.0) * np.cos(yy / 5.0) + 1) * 120).astype(np.uint8)
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(b).save(folder / "b.png")
    Image.fromarray(g, mode="L").save(folder / "g.png")
    Image.fromarray(np.repeat(g[..., None], 3, 2)).save(folder / "g_rgb.png")
    return {"a": a, "b": b, "g": g, "g_rgb": np.repeat(g[..., None], 3, 2)}


def test_eval_pre_upsampled_sr_grey_backbone_reads_and_scores_the_y_channel(tmp_path, capsys):
    net = _dncnn(1)
    ckpt = save_safetensors(net, tmp_path / "dncnn_grey.safetensors")
    images = _photos(tmp_path / "hq")
    out = tmp_path / "ev"
    assert main(_no_adapter_eval(ckpt, tmp_path / "hq", "sr:3", out, "--pre-upsampled", "--crops", "1")) == 0
    printed = capsys.readouterr().out
    assert "pre-upsampled SR" in printed and "Y channel" in printed
    assert "pre-upsampled" in (out / "eval.md").read_text()
    rows = _rows(out)
    for name in ("a", "b", "g_rgb"):
        assert rows[name][0] == pytest.approx(_reference_y(net, images[name], 3), abs=2e-4), name
    # a grey file keeps its grey values (MATLAB: no rgb2ycbcr), its upsampled LR rounded to 8 bits
    g = images["g"][:45, :36]
    up = imresize_bicubic(imresize_bicubic(g, scale=1 / 3), size=g.shape).astype(np.float32) / 255
    with torch.no_grad():
        o = net(torch.from_numpy(up)[None, None])[0, 0].clamp(0, 1).numpy()
    assert rows["g"][0] == pytest.approx(_psnr(np.round(o.astype(np.float64) * 255), g, 3), abs=2e-4)
    # the network made a difference: scoring the upsampled input itself gives other numbers
    a = images["a"][:45, :36]
    lr = imresize_bicubic(a, scale=1 / 3)
    coeffs = np.array([65.481, 128.553, 24.966])
    bicubic = _psnr(
        np.round(imresize_bicubic(lr.astype(np.float64) / 255, size=a.shape[:2]) @ coeffs + 16),
        a / 255.0 @ coeffs + 16,
        3,
    )
    assert abs(rows["a"][0] - bicubic) > 0.05


def test_eval_pre_upsampled_sr_colour_backbone_and_the_adapter_refusal(tmp_path, capsys):
    """A colour x1 backbone reads the upsampled RGB and is scored on Y as any SR; with an adapter
    the mode is refused in one line (no adapter can be trained for it)."""
    import spt_adapter

    net = _dncnn(3)
    ckpt = save_safetensors(net, tmp_path / "dncnn_rgb.safetensors")
    images = _photos(tmp_path / "hq")
    out = tmp_path / "ev"
    assert main(_no_adapter_eval(ckpt, tmp_path / "hq", "sr:2", out, "--pre-upsampled", "--crops", "0")) == 0
    a = images["a"][:44, :38]
    up = imresize_bicubic(imresize_bicubic(a, scale=1 / 2).astype(np.float64) / 255, size=a.shape[:2])
    with torch.no_grad():
        o = net(torch.from_numpy(up.astype(np.float32)).permute(2, 0, 1)[None])[0].clamp(0, 1).permute(1, 2, 0)
    coeffs = np.array([65.481, 128.553, 24.966])
    expected = _psnr(np.round(o.numpy().astype(np.float64) * 255) / 255 @ coeffs + 16, a / 255.0 @ coeffs + 16, 2)
    assert _rows(out)["a"][0] == pytest.approx(expected, abs=2e-4)

    model = spt_adapter.inject(spt_adapter.load_backbone(ckpt).model, ["model.2"])
    spt_adapter.save_adapter(model, tmp_path / "a.safetensors")
    capsys.readouterr()
    assert (
        main(
            cli(
                "eval",
                backbone=ckpt,
                adapter=tmp_path / "a.safetensors",
                data=tmp_path / "hq",
                task="sr:2",
                out=tmp_path / "ev2",
                no_progress=True,
            )
        )
        != 0
    )
    err = capsys.readouterr().err
    assert "pre-upsampled SR" in err and "--no-adapter" in err and "Traceback" not in err


def test_eval_pre_upsampled_sr_is_asked_for_by_name(tmp_path, capsys):
    """A x1 backbone given sr:<s> without --pre-upsampled is refused (naming the flag), not silently
    scored on upsampled input; the flag on a denoising task, on a x2 backbone, or with an adapter
    is refused too. Nothing is written in any of these cases."""
    net = _dncnn(3)
    ckpt = save_safetensors(net, tmp_path / "dncnn_rgb.safetensors")
    _photos(tmp_path / "hq")
    base = ["eval", "--backbone", str(ckpt), "--data", str(tmp_path / "hq"), "--no-progress", "--crops", "0"]
    cases = [
        (["--no-adapter", "--task", "sr:2"], "add --pre-upsampled"),
        (["--no-adapter", "--task", "denoise:25", "--pre-upsampled"], "is for --task sr:<scale>"),
        (["--adapter", str(tmp_path / "none.safetensors"), "--task", "sr:2", "--pre-upsampled"], "--no-adapter"),
    ]
    for i, (extra, says) in enumerate(cases):
        out = tmp_path / f"ev{i}"
        capsys.readouterr()
        assert main([*base, *extra, "--out", str(out)]) != 0, extra
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    from spt_adapter.commands.eval import check_pre_upsampled
    from spt_adapter.errors import SPTError

    for scale in (2, None):  # a backbone that upscales by itself (or may) gets no upsampled input
        with pytest.raises(SPTError, match="drop --pre-upsampled"):
            check_pre_upsampled("sr:2", scale, "net")
    check_pre_upsampled("sr:2", 1, "net")


# ------------------------------------------------------------------------------------------------
# opt-in: the real DnCNN models
# ------------------------------------------------------------------------------------------------
needs_dncnn = pytest.mark.skipif(
    not DNCNN_ROOT, reason="set SPT_DNCNN_ROOT to a cszn/DnCNN checkout (model/*.mat, testsets/)"
)


def _convert(name: str, tmp_path: Path) -> Path:
    pytest.importorskip("h5py")
    out = tmp_path / f"{name}.safetensors"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "convert_dncnn_mat.py"),
            str(Path(DNCNN_ROOT) / "model" / f"{name}.mat"),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


def _mean(ckpt: Path, data: Path, task: str, out: Path, *extra: str) -> tuple[float, float]:
    assert main(_no_adapter_eval(ckpt, data, task, out, "--crops", "0", *extra)) == 0
    return tuple(_rows(out)["MEAN"])


@pytest.mark.slow
@needs_dncnn
@pytest.mark.parametrize("testset, published", [("Set5", (31.40, 0.8845)), ("Set14", (28.04, 0.7672))])
def test_dncnn3_sr_x4_reproduces_the_published_psnr(tmp_path, testset, published):
    ckpt = _convert("DnCNN3", tmp_path)
    psnr, ssim = _mean(ckpt, Path(DNCNN_ROOT) / "testsets" / testset, "sr:4", tmp_path / "ev", "--pre-upsampled")
    assert abs(psnr - published[0]) <= 0.05 and abs(ssim - published[1]) <= 0.002, (psnr, ssim)


@pytest.mark.slow
@needs_dncnn
def test_dncnn3_bsd68_sigma25_is_near_the_published_psnr(tmp_path):
    ckpt = _convert("DnCNN3", tmp_path)
    psnr, _ = _mean(ckpt, Path(DNCNN_ROOT) / "testsets" / "BSD68", "denoise:25", tmp_path / "ev", "--seed", "0")
    assert abs(psnr - 29.02) <= 0.05, psnr


@pytest.mark.slow
@needs_dncnn
def test_cdncnn_b_cbsd68_sigma25_is_near_the_published_psnr(tmp_path):
    cbsd68 = full_data("CBSD68") / "CBSD68"  # cszn/DnCNN has no colour sets: the full CBSD68, opt-in
    ckpt = _convert("GD_Color_Blind", tmp_path)
    psnr, _ = _mean(ckpt, cbsd68, "denoise:25", tmp_path / "ev", "--seed", "0", "--noise", "kair")
    assert abs(psnr - 31.23) <= 0.05, psnr
