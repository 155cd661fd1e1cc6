"""Pixel-array conversions that every layer needs (priors, datasets, restoration), below them all.

Imports only numpy and :mod:`spt_adapter.errors`, so the prior pipeline can use it without reaching
up into :mod:`spt_adapter.training`.
"""

from __future__ import annotations

import numpy as np

from .errors import ImageError


def to_rgb_uint8(image, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous ``HxWx3 uint8`` RGB array.

    Accepted: ``HxW`` / ``HxWx1`` grey (replicated to 3 channels), ``HxWx2`` grey+alpha and
    ``HxWx4`` RGBA (alpha dropped: the colour is kept as stored), ``HxWx3`` RGB; dtypes uint8,
    uint16 (scaled by 255/65535 and rounded) and float16/32/64 in [0, 1] (scaled by 255 and
    rounded). Refused with :class:`ImageError`: zero-size images, other channel counts, bool,
    signed integers, floats outside [0, 1] or with NaN/Inf, torch tensors in CHW order (convert them
    explicitly).
    """
    if hasattr(image, "detach") and hasattr(image, "numpy"):
        raise ImageError(f"{name}: got a torch tensor; pass an HxWxC numpy array (e.g. t.permute(1, 2, 0).numpy())")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ImageError(f"{name}: expected an HxW or HxWxC image, got an array of shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{name}: the image is empty (shape {arr.shape})")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ImageError(f"{name}: {channels} channels; expected 1 (grey), 2 (grey+alpha), 3 (RGB) or 4 (RGBA)")
    if channels in (2, 4):
        arr = arr[:, :, : channels - 1]
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = np.rint(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ImageError(f"{name}: float image contains NaN or Inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                f"{name}: float images must lie in [0, 1], this one spans [{lo:.4g}, {hi:.4g}] "
                "(divide by 255 if it holds 0-255 values)"
            )
        out = np.rint(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"{name}: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


#: BT.601 luma weights (R, G, B): what OpenCV's ``IMREAD_GRAYSCALE`` / ``COLOR_RGB2GRAY`` and so KAIR's
#: ``imread_uint(path, n_channels=1)`` use to turn colour into grey.
LUMA_BT601 = (0.299, 0.587, 0.114)


def rgb_to_grey_uint8(rgb: np.ndarray) -> np.ndarray:
    """``HxWx3 uint8`` RGB -> ``HxWx1 uint8`` grey: ``round(0.299 R + 0.587 G + 0.114 B)`` (BT.601 luma)."""
    r, g, b = (rgb[:, :, i].astype(np.float64) for i in range(3))
    y = LUMA_BT601[0] * r + LUMA_BT601[1] * g + LUMA_BT601[2] * b
    return np.ascontiguousarray(np.clip(np.rint(y), 0, 255).astype(np.uint8)[:, :, None])


def to_uint8_channels(image, channels: int = 3, name: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous ``HxWxC uint8`` array with ``channels`` 1 (grey) or 3 (RGB).

    Conversions as :func:`to_rgb_uint8` (alpha dropped); for ``channels=1`` a grey image is kept
    as it is and a colour one becomes its BT.601 luma (:func:`rgb_to_grey_uint8`).
    """
    if channels not in (1, 3):
        raise ImageError(f"{name}: images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
    if channels == 3:
        return to_rgb_uint8(image, name=name)
    arr = np.asarray(image) if not (hasattr(image, "detach") and hasattr(image, "numpy")) else image
    grey_stored = isinstance(arr, np.ndarray) and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2)))
    rgb = to_rgb_uint8(arr, name=name)
    return np.ascontiguousarray(rgb[:, :, :1]) if grey_stored else rgb_to_grey_uint8(rgb)


#: ITU-R BT.601 "studio swing" RGB -> Y (MATLAB ``rgb2ycbcr``), for RGB on [0, 1] and Y on 0-255
YCBCR_Y_COEFFS = (65.481, 128.553, 24.966)


def rgb_to_ycbcr_y(rgb: np.ndarray) -> np.ndarray:
    """Y of YCbCr (MATLAB ``rgb2ycbcr`` on a double image) of a float RGB ``HxWx3`` image on [0, 1],
    as float64 ``HxWx1`` on [16/255, 235/255], unrounded (the input of DnCNN-3 / VDSR for SR)."""
    arr = np.asarray(rgb, dtype=np.float64)
    return ((arr @ np.asarray(YCBCR_Y_COEFFS) + 16.0) / 255.0)[..., None]
