"""PSNR and SSIM computed the way the image-restoration field reports them.

Conventions (those of BasicSR's ``calculate_psnr``/``calculate_ssim``, which match the MATLAB code
of the SSIM paper and the numbers published for SwinIR, Restormer, HAT, ...):

* images are compared on the 0-255 scale, in float64;
* colour denoising: all three RGB channels (``test_y_channel=False``, ``crop_border=0``);
* super-resolution: the Y channel of YCbCr (ITU-R BT.601, Y in [16, 235]) with ``scale`` pixels
  cropped from every edge (``test_y_channel=True, crop_border=scale``);
* SSIM: 11x11 Gaussian window, sigma 1.5, "valid" filtering, per channel then averaged.

Inputs: a NumPy array ``(H, W)`` or ``(H, W, C)`` (``uint8`` on 0-255, or float on [0, 1]), or a
torch tensor ``(C, H, W)`` / ``(1, C, H, W)`` (uint8 on 0-255, or float on [0, 1]). Colour images are
RGB (the BasicSR functions take OpenCV's BGR; pass ``img[..., ::-1]`` to compare).

Reported numbers should be computed on the images a user would save: :func:`to_uint8` rounds a
float output to 8 bits exactly as BasicSR's ``tensor2img`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "rgb_to_y", "to_uint8", "metric_settings"]

# ITU-R BT.601 "studio swing" RGB -> Y coefficients on [0, 1] input, output on 0-255 (MATLAB rgb2ycbcr)
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64)


def metric_settings(task: str) -> dict:
    """Keyword arguments for :func:`psnr`/:func:`ssim` for a task string (``denoise:25``, ``sr:4``)."""
    from ..data.datasets import parse_task

    parsed = parse_task(task)
    if parsed.scale > 1:  # sr:<s>, paired:<s>
        return {"crop_border": parsed.scale, "test_y_channel": True}
    return {"crop_border": 0, "test_y_channel": False}


def _to_hwc_255(img) -> np.ndarray:
    """An image as a float64 ``(H, W, C)`` array on the 0-255 scale."""
    if torch.is_tensor(img):
        t = img.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"metrics take one image; got a batch of shape {tuple(t.shape)}")
            t = t[0]
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"an image tensor must be (C, H, W) or (1, C, H, W), got {tuple(img.shape)}")
        is_uint8 = t.dtype == torch.uint8
        arr = t.permute(1, 2, 0).to(torch.float64).numpy()
    else:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3:
            raise ValueError(f"an image array must be (H, W) or (H, W, C), got shape {arr.shape}")
        is_uint8 = arr.dtype == np.uint8
        if not (is_uint8 or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"image arrays must be uint8 (0-255) or float (0-1), got {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr if is_uint8 else arr * 255.0


def rgb_to_y(img) -> np.ndarray:
    """Y channel of YCbCr (BT.601, MATLAB ``rgb2ycbcr``), as float64 ``(H, W, 1)`` on 0-255.

    Y lies in [16, 235]; this is BasicSR's ``rgb2ycbcr(..., y_only=True)`` (``bgr2ycbcr`` on a BGR
    image) scaled to 0-255 without rounding. A one-channel image is returned unchanged.
    """
    arr = _to_hwc_255(img)
    if arr.shape[2] == 1:
        return arr
    if arr.shape[2] != 3:
        raise ValueError(f"rgb_to_y needs a 3-channel RGB image, got {arr.shape[2]} channels")
    return ((arr / 255.0) @ _Y_COEFFS + 16.0)[..., None]


def _prepare(a, b, crop_border: int, test_y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    x = rgb_to_y(a) if test_y_channel else _to_hwc_255(a)
    y = rgb_to_y(b) if test_y_channel else _to_hwc_255(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border:
        if 2 * crop_border >= min(x.shape[:2]):
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {x.shape[0]}x{x.shape[1]} image")
        x = x[crop_border:-crop_border, crop_border:-crop_border]
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return x, y


def psnr(a, b, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """Peak signal-to-noise ratio in dB (peak 255); ``inf`` for identical images."""
    x, y = _prepare(a, b, crop_border, test_y_channel)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return torch.from_numpy(g / g.sum())


def ssim(a, b, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """Structural similarity (Wang et al. 2004), mean over channels; 1.0 for identical images."""
    x, y = _prepare(a, b, crop_border, test_y_channel)
    if min(x.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after cropping, got {x.shape[0]}x{x.shape[1]}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[:, None]  # (C, 1, H, W)
    yt = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[:, None]
    g = _gaussian_1d()
    gh, gv = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        # the 11x11 window is the outer product of two 1-D Gaussians: filter rows, then columns;
        # valid mode, like BasicSR's filter2D(...)[5:-5, 5:-5]
        return F.conv2d(F.conv2d(t, gh), gv)

    mu1, mu2 = filt(xt), filt(yt)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = filt(xt * xt) - mu1_sq
    s2 = filt(yt * yt) - mu2_sq
    s12 = filt(xt * yt) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


def to_uint8(img) -> np.ndarray:
    """A float image on [0, 1] (tensor ``(C,H,W)``/``(1,C,H,W)`` or array ``(H,W,C)``) as a uint8
    ``(H, W, C)`` array: clamp, scale by 255, round (BasicSR's ``tensor2img``)."""
    arr = _to_hwc_255(img)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)
