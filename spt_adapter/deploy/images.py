"""Reading image files and listing a folder's images, with NumPy and Pillow only (no PyTorch).

:func:`read_image` gives ``HxWx3 uint8`` RGB or ``HxWx1`` grey (EXIF orientation applied, 16-bit
files scaled, 32-bit integer TIFFs and float files refused with a message naming them, alpha
dropped); :func:`list_images` expands files, folders (non-recursive, image suffixes only: other
files are skipped), globs and ``.txt`` lists. :mod:`spt_adapter.data.images` re-exports them
for the datasets; they live here so that :mod:`spt_adapter.deploy` can read images without torch.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from ..errors import ImageError
from ..pixels import to_uint8_channels

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_image", "stored_grey"]

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
