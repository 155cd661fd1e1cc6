"""spt_adapter.inference.metrics against BasicSR's own metric functions on real images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from _data import DATA  # small crops of the test sets, committed (tests/data)
from spt_adapter.inference import metrics

basicsr_metrics = pytest.importorskip("basicsr.metrics.psnr_ssim")
basicsr_color = pytest.importorskip("basicsr.utils.color_util")


def _load(rel: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / rel).convert("RGB"))


def _bicubic_x(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(cropped HR, bicubic-downscaled-then-upscaled image), both uint8 RGB."""
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    hr = hr[:h, :w]
    lr = Image.fromarray(hr).resize((w // scale, h // scale), Image.BICUBIC)
    sr = np.asarray(lr.resize((w, h), Image.BICUBIC))
    return hr, sr


def _noisy(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("rel", ["CBSD68/0000.png", "McMaster/1.png"])
def test_rgb_psnr_ssim_match_basicsr_on_denoising(rel):
    gt = _load(rel)
    out = _noisy(gt, 25)
    ours_p = metrics.psnr(out, gt)
    ours_s = metrics.ssim(out, gt)
    # BasicSR reads with OpenCV (BGR); the RGB metrics are symmetric in channel order
    ref_p = basicsr_metrics.calculate_psnr(out[..., ::-1], gt[..., ::-1], crop_border=0)
    ref_s = basicsr_metrics.calculate_ssim(out[..., ::-1].copy(), gt[..., ::-1].copy(), crop_border=0)
    assert abs(ours_p - ref_p) <= 1e-3, (ours_p, ref_p)
    assert abs(ours_s - ref_s) <= 1e-5, (ours_s, ref_s)
    assert 18 < ours_p < 30 and 0.05 < ours_s < 0.95  # sigma-25 noise on 8-bit images


@pytest.mark.parametrize("rel,scale", [("Set5/baby.png", 4), ("Set14/comic.png", 2), ("Set14/bridge.png", 4)])
def test_y_channel_psnr_ssim_with_border_crop_match_basicsr(rel, scale):
    hr, sr = _bicubic_x(_load(rel), scale)
    ours_p = metrics.psnr(sr, hr, crop_border=scale, test_y_channel=True)
    ours_s = metrics.ssim(sr, hr, crop_border=scale, test_y_channel=True)
    ref_p = basicsr_metrics.calculate_psnr(sr[..., ::-1], hr[..., ::-1], crop_border=scale, test_y_channel=True)
    ref_s = basicsr_metrics.calculate_ssim(sr[..., ::-1], hr[..., ::-1], crop_border=scale, test_y_channel=True)
    assert abs(ours_p - ref_p) <= 1e-3, (ours_p, ref_p)
    assert abs(ours_s - ref_s) <= 1e-5, (ours_s, ref_s)
    # Y-channel and border crop matter: the RGB, uncropped number is a different one
    assert abs(metrics.psnr(sr, hr) - ours_p) > 0.05


def test_float_and_tensor_inputs_agree_with_uint8():
    gt = _load("CBSD68/0001.png")
    out = _noisy(gt, 15, seed=3)
    ref = metrics.psnr(out, gt, crop_border=2, test_y_channel=True)
    as_float = metrics.psnr(
        out.astype(np.float32) / 255, gt.astype(np.float32) / 255, crop_border=2, test_y_channel=True
    )
    t_out = torch.from_numpy(out).permute(2, 0, 1).float() / 255
    t_gt = torch.from_numpy(gt).permute(2, 0, 1).float()[None] / 255
    as_tensor = metrics.psnr(t_out, t_gt, crop_border=2, test_y_channel=True)
    assert abs(ref - as_float) < 1e-4 and abs(ref - as_tensor) < 1e-4
    s_ref = metrics.ssim(out, gt)
    assert abs(metrics.ssim(t_out, t_gt) - s_ref) < 1e-6
    assert np.array_equal(metrics.to_uint8(t_out), out)


def test_rgb_to_y_is_basicsr_rgb2ycbcr():
    img = _load("Set5/bird.png")
    ours = metrics.rgb_to_y(img)[..., 0]
    ref = basicsr_color.rgb2ycbcr(img.astype(np.float32) / 255, y_only=True) * 255
    assert np.abs(ours - ref).max() < 1e-3
    assert 16 - 1e-9 <= ours.min() and ours.max() <= 235 + 1e-9


def test_identical_images_and_bad_inputs():
    img = _load("CBSD68/0003.png")
    assert math.isinf(metrics.psnr(img, img))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(img, img[1:])
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr(img[:8, :8], img[:8, :8], crop_border=4)
    with pytest.raises(ValueError, match="batch"):
        metrics.psnr(torch.zeros(2, 3, 16, 16), torch.zeros(2, 3, 16, 16))
    assert metrics.metric_settings("sr:4") == {"crop_border": 4, "test_y_channel": True}
    assert metrics.metric_settings("denoise:50") == {"crop_border": 0, "test_y_channel": False}
