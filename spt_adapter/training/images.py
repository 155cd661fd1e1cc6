"""Image reading and conversion shared by the prior pipeline, datasets and benchmarks.

Every consumer of pixels in spt-adapter wants the same thing: an ``HxWx3 uint8`` RGB array (or
``HxWx1`` grey for 1-channel backbones, :func:`spt_adapter.pixels.to_uint8_channels`).
:func:`to_rgb_uint8` converts what can be converted without guessing (grey, grey+alpha, RGB,
RGBA; uint8, uint16, bool-free floats in [0, 1]) and refuses everything else with a message that
names the input. :func:`imresize_bicubic` is MATLAB's ``imresize(..., 'bicubic')`` (antialiased
when shrinking), the convention the super-resolution literature uses to make LR images.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from ..errors import ImageError
from ..pixels import to_rgb_uint8, to_uint8_channels  # noqa: F401  (re-exported: the conversions read_image applies)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image file as ``HxWx3 uint8`` RGB, or ``HxWx1`` grey with ``channels=1`` (a colour file
    becomes its BT.601 luma, as KAIR's ``imread_uint(path, n_channels=1)``; a grey file is kept as it
    is). 16-bit files are scaled, not truncated; alpha is dropped. An EXIF orientation tag is applied
    (the image reads as viewers show it, not sideways)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as opened:
            opened.load()
            im = ImageOps.exif_transpose(opened)  # a copy, turned as the EXIF orientation says
            bits = _tiff_bits(opened)  # the file's tags (exif_transpose returns a plain copy)
            if im.mode == "I" and bits is not None and bits > 16:
                # 32-bit integers: white is 2**32 - 1, not 65535; scaling them as 16-bit read a 32-bit scan
                # as black (or a dark one as bright), without a word
                raise ImageError(
                    f"{path}: {bits}-bit integer image: its white is {2**bits - 1}, not the 8- or "
                    "16-bit white spt-adapter reads; convert it to an 8- or 16-bit image first"
                )
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # "I": 16-bit PNGs of older Pillow
                arr = np.asarray(im).astype(np.uint16 if im.mode.startswith("I;16") else np.int64)
                if arr.dtype != np.uint16:
                    if arr.min() < 0 or arr.max() > 65535:
                        raise ImageError(f"{path}: 32-bit integer image with values outside 0..65535")
                    arr = arr.astype(np.uint16)
            elif im.mode in ("L", "LA", "RGB", "RGBA"):
                arr = np.asarray(im)
            elif im.mode == "F":
                raise ImageError(f"{path}: 32-bit float image files are not supported; save as 8- or 16-bit")
            else:
                arr = np.asarray(im.convert("RGBA" if "A" in im.mode else "RGB"))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # a tiny file whose header claims billions of pixels
        raise ImageError(f"{path}: refused, {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot be read as an image ({exc})") from exc
    return to_uint8_channels(arr, channels, name=str(path))


def stored_grey(path: str | os.PathLike) -> bool:
    """Whether the image file stores one grey channel (PIL modes 1, L, LA, I, I;16*): MATLAB's
    ``imread`` then gives an HxW array, and protocols such as ``Demo_test_DnCNN3.m`` skip
    ``rgb2ycbcr`` for it. A colour file whose channels happen to be equal is not grey here."""
    from PIL import Image

    with Image.open(path) as im:
        return im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L")


def _tiff_bits(im) -> int | None:
    """A TIFF's BitsPerSample (the first sample's), or None for other formats."""
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    bits = tags.get(258)
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) else None


def list_images(inputs) -> list[Path]:
    """Expand files, folders (non-recursive, sorted), globs (``**`` recurses; image files only) and
    ``.txt`` file lists into image paths.

    A ``.txt`` input holds one path per line (relative paths are taken from the list's folder;
    blank lines and ``#`` comments are skipped). Order is kept; duplicates are dropped.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)

    for item in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
        p = Path(item)
        if glob.has_magic(str(item)) and not p.exists():
            matches = [Path(m) for m in sorted(glob.glob(str(item), recursive=True))]
            images = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise ImageError(f"{item}: the pattern matches no image file")
            for m in images:
                add(m)
        elif p.is_dir():
            for child in sorted(p.iterdir()):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    add(child)
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    q = Path(line)
                    add(q if q.is_absolute() else p.parent / q)
        elif p.exists() or p.suffix:
            add(p)  # a missing file is reported by whoever reads it
        else:
            raise ImageError(f"{p}: no such file or folder")
    return out


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
