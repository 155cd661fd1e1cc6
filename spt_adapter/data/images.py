"""Image reading and conversion shared by the prior pipeline, datasets and benchmarks.

Every consumer of pixels in spt-adapter wants the same thing: an ``HxWx3 uint8`` RGB array (or
``HxWx1`` grey for 1-channel backbones, :func:`spt_adapter.pixels.to_uint8_channels`).
:func:`to_rgb_uint8` converts what can be converted without guessing (grey, grey+alpha, RGB,
RGBA; uint8, uint16, bool-free floats in [0, 1]) and refuses everything else with a message that
names the input. :func:`imresize_bicubic` is MATLAB's ``imresize(..., 'bicubic')`` (antialiased
when shrinking), the convention the super-resolution literature uses to make LR images.
"""

from __future__ import annotations

import numpy as np

# reading and listing live in deploy/images.py (NumPy and Pillow only, so the torch-free runner
# shares them); these names stay importable from here
from ..deploy.images import IMAGE_SUFFIXES, _tiff_bits, list_images, read_image, stored_grey  # noqa: F401
from ..errors import ImageError
from ..pixels import to_rgb_uint8, to_uint8_channels  # noqa: F401  (re-exported: the conversions read_image applies)


# ---------------------------------------------------------------- MATLAB-style bicubic resize
def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _contributions(in_len: int, out_len: int, scale: float):
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2)
    p = int(np.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(p, dtype=np.float64)[None, :]  # 1-based, like MATLAB
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if antialias else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])  # symmetric padding
    idx = aux[np.mod(idx.astype(np.int64) - 1, aux.size)]
    keep = np.any(w != 0, axis=0)
    return w[:, keep], idx[:, keep]


def imresize_bicubic(image: np.ndarray, scale: float | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')``: antialiased when shrinking, symmetric borders.

    ``image`` is ``HxW`` or ``HxWxC``; uint8 in -> uint8 out (rounded and clipped like MATLAB),
    float in -> float64 out. Give ``scale`` (output = ceil(input * scale)) or ``size`` (H, W).
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"imresize_bicubic: expected a non-empty HxW or HxWxC image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    if size is None:
        if scale is None or scale <= 0:
            raise ImageError("imresize_bicubic: give a positive scale or an output size")
        out_h, out_w = int(np.ceil(h * scale)), int(np.ceil(w * scale))
        sh = sw = float(scale)
    else:
        out_h, out_w = int(size[0]), int(size[1])
        sh, sw = out_h / h, out_w / w
    if out_h < 1 or out_w < 1:
        raise ImageError(f"imresize_bicubic: output size {out_h}x{out_w} is empty")
    x = arr.astype(np.float64)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    # resize the dimension that shrinks most first, like MATLAB
    order = (0, 1) if sh <= sw else (1, 0)
    for dim in order:
        n_in, n_out, s = (h, out_h, sh) if dim == 0 else (w, out_w, sw)
        if n_in == n_out and s == 1.0:
            continue
        wts, idx = _contributions(n_in, n_out, s)
        if dim == 0:
            x = np.einsum("ok,okwc->owc", wts, x[idx])
        else:
            x = np.einsum("ok,hokc->hoc", wts, x[:, idx])
    if squeeze:
        x = x[:, :, 0]
    if arr.dtype == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x
