"""`spt-adapter eval` scores 16-bit ground truth at its own depth (issue 26): outputs rounded to 65535
levels against the full-depth GT, the depth said per image and per folder, 8-bit data scored exactly as
before; paired 16-bit files are read whole for training too."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import run_cli as _run

pytest.importorskip("spandrel")
sys.path.insert(0, str(Path(__file__).parent))


def _identity_dncnn():
    """A DnCNN whose last convolution is zero: it returns its input exactly (residual ``x - n``)."""
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    torch.manual_seed(0)
    net = DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R").eval()  # spandrel detects >= 8 blocks
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    return net


@pytest.fixture
def identity_pth(tmp_path) -> Path:
    path = tmp_path / "id.pth"
    torch.save(_identity_dncnn().state_dict(), path)
    return path


def _gt16(h: int = 26, w: int = 30, seed: int = 3) -> np.ndarray:
    """A 16-bit photo whose low byte carries data (not 8-bit levels x 257)."""
    return np.random.default_rng(seed).integers(2000, 63000, (h, w, 3), dtype=np.uint16)


def _png16(path: Path, image: np.ndarray) -> Path:
    from spt_adapter.deploy.outputs import png16_bytes

    path.write_bytes(png16_bytes(image))
    return path


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * math.log10(peak * peak / mse)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _eval(tmp_path, capsys, backbone, data, *extra):
    argv = ["eval", "--no-adapter", "--backbone", backbone, "--data", data, *extra]
    code, out, err = _run([*argv, "--out", tmp_path / "ev", "--no-progress"], capsys)
    assert code == 0, err
    return out, err, _csv(tmp_path / "ev" / "eval.csv")


def test_paired_16_bit_files_are_scored_at_16_bits_as_numpy_computes_by_hand(tmp_path, capsys, identity_pth):
    pytest.importorskip("cv2")  # Pillow reads 16-bit colour PNGs at 8 bits
    gt = _gt16()
    lq = np.clip(gt.astype(np.int64) + np.random.default_rng(5).integers(-40, 41, gt.shape), 0, 65535)
    lq = lq.astype(np.uint16)
    (tmp_path / "hq").mkdir()
    (tmp_path / "lq").mkdir()
    _png16(tmp_path / "hq" / "a.png", gt)
    _png16(tmp_path / "lq" / "a.png", lq)
    out, err, rows = _eval(tmp_path, capsys, identity_pth, tmp_path / "hq", "--lq", tmp_path / "lq")
    # the network returns its 16-bit input: the score is the LQ file's against the GT's, at 16 bits
    by_hand = _psnr(lq, gt, 65535.0)
    at_8_bits = _psnr(np.rint(lq / 257.0), np.rint(gt / 257.0), 255.0)
    assert abs(at_8_bits - by_hand) > 1.0  # 8-bit rounding changes the score: the test can tell them apart
    assert rows[0]["image"] == "a" and rows[0]["bits"] == "16"
    assert float(rows[0]["backbone_psnr"]) == pytest.approx(by_hand, abs=1e-5)
    assert "scored at 16 bits" in (tmp_path / "ev" / "eval.md").read_text().splitlines()[0]
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert len(lines) == 1 and "1 16-bit ground-truth image(s) (a.png) scored at 16 bits" in lines[0]


def test_synthetic_noise_on_a_16_bit_gt_is_scored_against_the_full_depth_gt(tmp_path, capsys, identity_pth):
    pytest.importorskip("cv2")
    from spt_adapter.data.datasets import degrade
    from spt_adapter.data.images import read_image

    gt = _gt16()
    (tmp_path / "gt").mkdir()
    path = _png16(tmp_path / "gt" / "deep.png", gt)
    _, err, rows = _eval(tmp_path, capsys, identity_pth, tmp_path / "gt", "--task", "denoise:25", "--save-images")
    # by hand: the LQ is made from the 8-bit image as always; the identity network returns it; its
    # 16-bit rounding is the 8-bit value x 257, scored against the file's own 16 bits
    _, lq8 = degrade(read_image(path), "denoise:25", 0)
    by_hand = _psnr(lq8.astype(np.float64) * 257.0, gt, 65535.0)
    at_8_bits = _psnr(lq8, np.rint(gt / 257.0), 255.0)
    assert float(rows[0]["backbone_psnr"]) == pytest.approx(by_hand, abs=1e-5)
    assert abs(float(rows[0]["backbone_psnr"]) - at_8_bits) > 1e-4
    assert "degraded from their 8-bit version" in err
    # --save-images writes what was scored: a 16-bit PNG
    import cv2

    saved = cv2.imread(str(tmp_path / "ev" / "images" / "backbone" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint16
    np.testing.assert_array_equal(saved[:, :, ::-1], lq8.astype(np.uint16) * 257)


def test_a_mixed_folder_says_per_depth_what_was_done(tmp_path, capsys, identity_pth, monkeypatch):
    pytest.importorskip("cv2")
    from PIL import Image

    data = tmp_path / "gt"
    data.mkdir()
    _png16(data / "deep.png", _gt16())
    _png16(data / "grey.png", _gt16(seed=4)[:, :, 0])  # 16-bit grey: Pillow reads all 16 bits
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (26, 30, 3), dtype=np.uint8)).save(data / "flat.png")
    _, err, rows = _eval(tmp_path, capsys, identity_pth, data, "--task", "denoise:15")
    assert {r["image"]: r["bits"] for r in rows} == {"deep": "16", "flat": "8", "grey": "16", "MEAN": ""}
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert len(lines) == 2
    assert "2 16-bit ground-truth image(s) (deep.png, grey.png) scored at 16 bits" in lines[0]
    assert lines[1] == "eval: 1 8-bit ground-truth image(s) scored at 8 bits"
    header = (tmp_path / "ev" / "eval.md").read_text().splitlines()[0]
    assert "2 image(s) scored at 16 bits, 1 at 8" in header
    # without OpenCV a 16-bit colour PNG can only be read at 8 bits: scored at 8, and said so with the fix
    monkeypatch.setitem(sys.modules, "cv2", None)
    _, err, rows = _eval(tmp_path, capsys, identity_pth, data, "--task", "denoise:15")
    assert {r["image"]: r["bits"] for r in rows} == {"deep": "8", "flat": "8", "grey": "16", "MEAN": ""}
    lines = [ln for ln in err.splitlines() if ln.startswith("eval:")]
    assert len(lines) == 3
    assert "(grey.png) scored at 16 bits" in lines[0]
    assert "(deep.png) scored at 8 bits" in lines[1] and "opencv" in lines[1]
    assert lines[2] == "eval: 1 8-bit ground-truth image(s) scored at 8 bits"


def test_an_8_bit_folder_is_scored_exactly_as_before(tmp_path, capsys, identity_pth):
    from PIL import Image

    from spt_adapter.data.datasets import degrade
    from spt_adapter.data.images import read_image

    data = tmp_path / "gt"
    data.mkdir()
    gt8 = np.random.default_rng(2).integers(0, 256, (26, 30, 3), dtype=np.uint8)
    Image.fromarray(gt8).save(data / "flat.png")
    _, err, rows = _eval(tmp_path, capsys, identity_pth, data, "--task", "denoise:25")
    _, lq8 = degrade(read_image(data / "flat.png"), "denoise:25", 0)
    assert float(rows[0]["backbone_psnr"]) == pytest.approx(_psnr(lq8, gt8, 255.0), abs=1e-5)
    assert list(rows[0]) == ["image", "backbone_psnr", "backbone_ssim"]  # no bits column
    assert "eval:" not in err and "16" not in (tmp_path / "ev" / "eval.md").read_text().splitlines()[0]


def test_paired_training_reads_16_bit_files_whole_and_synthetic_training_as_before(tmp_path):
    pytest.importorskip("cv2")
    from types import SimpleNamespace

    from spt_adapter.commands.builders import build_dataset
    from spt_adapter.data.pairs import load_pairs

    gt, lq = _gt16(), _gt16(seed=9)
    (tmp_path / "hq").mkdir()
    (tmp_path / "lq").mkdir()
    _png16(tmp_path / "hq" / "a.png", gt)
    _png16(tmp_path / "lq" / "a.png", lq)
    args = SimpleNamespace(task="paired:1", encoding=None, seed=0, _channels=3)
    pairs = load_pairs(tmp_path / "hq", tmp_path / "lq")
    item = build_dataset(args, tmp_path / "hq", None, None, train=True, patch=16, pairs=pairs)[0]
    top, left, hflip, vflip, rot = item["crop"]
    assert item["bits"] == 16
    want_gt = gt[top : top + 16, left : left + 16]
    want_lq = lq[top : top + 16, left : left + 16]
    if hflip:
        want_gt, want_lq = want_gt[:, ::-1], want_lq[:, ::-1]
    if vflip:
        want_gt, want_lq = want_gt[::-1], want_lq[::-1]
    if rot:
        want_gt, want_lq = want_gt.swapaxes(0, 1), want_lq.swapaxes(0, 1)
    got_gt = item["gt"].numpy().transpose(1, 2, 0) * 65535.0
    got_lq = item["lq"].numpy().transpose(1, 2, 0) * 65535.0
    np.testing.assert_allclose(got_gt, want_gt, atol=0.01)  # float targets: all 16 bits
    np.testing.assert_allclose(got_lq, want_lq, atol=0.01)
    synthetic = SimpleNamespace(task="denoise:25", encoding=None, seed=0, _channels=3)
    item = build_dataset(synthetic, tmp_path / "hq", None, None, train=False)[0]
    assert "bits" not in item
    gt255 = item["gt"].numpy() * 255.0
    np.testing.assert_allclose(gt255, np.rint(gt255), atol=1e-3)  # 8-bit targets, as before
