"""Reading image files and listing a folder's images, with NumPy and Pillow only (no PyTorch).

:func:`read_image` gives ``HxWx3 uint8`` RGB or ``HxWx1`` grey (EXIF orientation applied, 16-bit
files scaled, 32-bit integer TIFFs and float files refused with a message naming them, alpha
dropped); :func:`read_image_full_depth` keeps a 16-bit file's 16 bits (uint16) for restoring it; :func:`list_images` expands files, folders (non-recursive, image suffixes only: other
files are skipped), globs and ``.txt`` lists. :mod:`spt_adapter.data.images` re-exports them
for the datasets; they live here so that :mod:`spt_adapter.deploy` can read images without torch.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from .._io import why_not_a_file
from ..errors import ImageError
from ..pixels import LUMA_BT601, to_uint8_channels

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_image", "read_image_full_depth", "stored_grey", "to_uint16_channels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Read an image file as ``HxWx3 uint8`` RGB, or ``HxWx1`` grey with ``channels=1`` (a colour file
    becomes its BT.601 luma, as KAIR's ``imread_uint(path, n_channels=1)``; a grey file is kept as it
    is). 16-bit files are scaled, not truncated; alpha is dropped. An EXIF orientation tag is applied
    (the image reads as viewers show it, not sideways). :func:`read_image_full_depth` keeps 16 bits."""
    arr, _ = _read_array(Path(path), full_depth=False)
    return to_uint8_channels(arr, channels, name=str(path))


def read_image_full_depth(path: str | os.PathLike, channels: int = 3) -> tuple[np.ndarray, str | None]:
    """(image, note): an 8-bit file as :func:`read_image` reads it; a 16-bit PNG or TIFF as ``HxWx3`` /
    ``HxWx1`` **uint16** (white 65535), so that restoring it loses none of its bits. ``note`` says, for
    a message, why a 16-bit file was read at 8 bits (Pillow reads 16-bit colour PNG/TIFF as 8 bits:
    OpenCV, or tifffile for TIFF, reads them whole when installed), else None."""
    arr, note = _read_array(Path(path), full_depth=True)
    if arr.dtype != np.uint16:
        return to_uint8_channels(arr, channels, name=str(path)), note
    return to_uint16_channels(arr, channels), note


def to_uint16_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """A uint16 ``HxW`` / ``HxWxC`` image (C 1-4, alpha dropped) as ``HxWx3`` or ``HxWx1`` uint16; a
    colour one becomes its BT.601 luma for ``channels=1``, a grey one is repeated for ``channels=3``."""
    a = arr[:, :, None] if arr.ndim == 2 else arr
    if a.shape[2] in (2, 4):
        a = a[:, :, : a.shape[2] - 1]
    if channels == 1 and a.shape[2] == 3:
        y = a.astype(np.float64) @ np.asarray(LUMA_BT601)
        a = np.clip(np.rint(y), 0, 65535).astype(np.uint16)[:, :, None]
    elif channels == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a, dtype=np.uint16)


def sixteen_bit(path: str | os.PathLike) -> bool:
    """Whether an image file stores 16 bits per sample (a 16-bit PNG or TIFF, grey or colour), read
    from its header; False for anything unreadable (its reader says why)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode.startswith("I;16") or _file_bits(Path(path), im) == 16
    except Exception:
        return False


def _file_bits(path: Path, im) -> int | None:
    """The bits per sample a PNG (its IHDR) or TIFF (BitsPerSample) declares, else None."""
    bits = _tiff_bits(im)
    if bits is not None:
        return bits
    if im.format == "PNG":
        with open(path, "rb") as fh:
            head = fh.read(26)
        if len(head) == 26 and head[12:16] == b"IHDR":
            return head[24]
    return None


def _read_array(path: Path, full_depth: bool) -> tuple[np.ndarray, str | None]:
    """The file's pixels as Pillow gives them (uint8, or uint16 for 16-bit grey), oriented; with
    ``full_depth`` a 16-bit colour PNG/TIFF is read whole by OpenCV or tifffile when one is installed
    (else as Pillow reads it, 8 bits, with a note saying so)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    why = why_not_a_file(path)
    if why == "does not exist":
        raise ImageError(f"{path}: no such image file")
    if why is not None:
        why = why.replace("checkpoints are files", "images are files")
        raise ImageError(f"{path} {why}")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")
    note = None
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
                if full_depth and im.mode in ("RGB", "RGBA") and _file_bits(path, opened) == 16:
                    whole = _read_colour16(path, opened.getexif().get(0x0112))
                    if whole is not None:
                        arr = whole
                    else:
                        note = (
                            f"16-bit colour {opened.format} read at 8 bits (Pillow reads such files as 8 bits; "
                            "install opencv-python-headless, or tifffile for TIFF, to keep 16)"
                        )
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
    return arr, note


def _read_colour16(path: Path, orientation: int | None) -> np.ndarray | None:
    """A 16-bit colour PNG/TIFF as ``HxWx3`` (or x4) uint16 RGB(A), EXIF orientation applied, read by
    OpenCV (or tifffile for TIFF); None when neither is installed or it cannot read the file."""
    arr = None
    try:
        import cv2

        got = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if got is not None and got.dtype == np.uint16 and got.ndim == 3 and got.shape[2] in (3, 4):
            arr = got[:, :, [2, 1, 0, 3][: got.shape[2]]]  # BGR(A) -> RGB(A)
    except ImportError:
        pass
    if arr is None and path.suffix.lower() in (".tif", ".tiff"):
        try:
            import tifffile

            got = tifffile.imread(str(path))
            if got.dtype == np.uint16 and got.ndim == 3 and got.shape[2] in (3, 4):
                arr = got
        except (ImportError, ValueError, OSError):
            pass
    if arr is None:
        return None
    return np.ascontiguousarray(orient(arr, orientation))


def orient(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """``arr`` turned as an EXIF orientation tag says (the transforms of Pillow's ``exif_transpose``)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


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
