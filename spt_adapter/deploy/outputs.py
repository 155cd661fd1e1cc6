"""Inputs and outputs of a restore run, with no PyTorch: shared by `spt-adapter restore` and the
torch-free runner (:mod:`spt_adapter.deploy`).

Inputs are files, folders (not recursive; files that are not images are skipped), globs and
``.txt`` lists; every input is written to ``OUT/<stem>.png`` (atomically: a temporary file in
``OUT``, then a rename), at the input's depth: 8-bit PNG for 8-bit inputs, 16-bit PNG for 16-bit
PNG/TIFF inputs. Outputs that exist are refused before any work unless
``--skip-existing`` (keep them; an unfinished one is redone) or ``--overwrite`` (replace them);
inputs are never overwritten, and ``OUT`` inside an input folder is refused.
"""

from __future__ import annotations

import glob
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import RestoreError, SPTError
from .images import list_images

__all__ = [
    "check_existing",
    "expand_inputs",
    "output_paths",
    "png_bytes",
    "remove_stale_temporaries",
    "unfinished_output",
]


def expand_inputs(items: list[str]) -> tuple[list[Path], list[Path]]:
    """(image paths in order, folders given) from files, folders, globs and .txt lists."""
    paths: list[Path] = []
    folders: list[Path] = []
    for item in items:
        if glob.has_magic(item) and not Path(item).exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise RestoreError(f"INPUT {item!r} matches no file")
            paths += [Path(m) for m in matches if Path(m).is_file()]
            continue
        p = Path(item)
        if not p.exists():
            raise RestoreError(f"INPUT {item}: no such file or folder")
        if p.is_dir():
            folders.append(p)
        paths += list_images(p)
    seen: set[Path] = set()
    unique = []
    for p in paths:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    if not unique:
        raise RestoreError(f"no images in {' '.join(items)} (folders are read without subfolders)")
    return unique, folders


def output_paths(paths: list[Path], folders: list[Path], out: Path, allow_in_input: bool) -> list[Path]:
    """``out/<stem>.png`` for every input; refuses two inputs with one output name, an output that
    would replace an input, and ``out`` inside an input folder (unless ``allow_in_input``)."""
    out_r = out.resolve()
    if not allow_in_input:
        for f in folders + sorted({p.parent for p in paths}):
            fr = f.resolve()
            given = f in folders
            if out_r == fr or (given and fr in out_r.parents):
                raise RestoreError(
                    f"--out {out} is {'inside ' if out_r != fr else ''}the input folder {f}: its outputs "
                    "would mix with the inputs; choose another --out or pass --allow-out-in-input"
                )
    inputs = {p.resolve(): p for p in paths}
    targets: dict[Path, Path] = {}
    result = []
    for p in paths:
        target = out / f"{p.stem}.png"
        if target.resolve() in inputs:
            raise RestoreError(
                f"the output {target} would overwrite the input {inputs[target.resolve()]}; choose another --out"
            )
        if target in targets:
            raise RestoreError(
                f"{targets[target]} and {p} would both be written to {target}; restore them into separate --out folders"
            )
        targets[target] = p
        result.append(target)
    return result


def remove_stale_temporaries(out: Path, targets: list[Path]) -> None:
    """Temporary files of an atomic write cut short by kill -9 (``.<name>.png.*.tmp``) are removed."""
    names = {t.name for t in targets}
    for tmp in out.glob(".*.png.*.tmp"):
        if tmp.name[1:].split(".png.", 1)[0] + ".png" in names:
            tmp.unlink(missing_ok=True)


def png_bytes(image) -> bytes:
    """A PNG of ``image``: ``HxW`` / ``HxWx3`` uint8 (Pillow), or uint16, written as a 16-bit PNG (grey
    or RGB: Pillow writes no 16-bit colour PNG, so the file is encoded here)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        return png16_bytes(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def png16_bytes(image: np.ndarray) -> bytes:
    """A 16-bit PNG (grey or RGB) of a uint16 ``HxW`` / ``HxWx1`` / ``HxWx3`` array, with the "Up"
    filter on every row (vectorised; any PNG reader decodes it)."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    h, w = arr.shape[:2]
    colour = 0 if arr.ndim == 2 else 2
    rows = np.ascontiguousarray(arr, dtype=">u2").view(np.uint8).reshape(h, -1)
    up = rows.copy()
    up[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter is defined
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def unfinished_output(target: Path, source: Path, scale: int | None) -> str | None:
    """Why an existing output cannot count as finished (it does not decode, or is not the input's size
    times ``scale`` when that is known), or None when it can be skipped."""
    from PIL import Image

    try:
        with Image.open(target) as im:
            im.load()
            got = im.size
    except Exception as exc:  # truncated, empty, not an image
        return f"it does not decode ({type(exc).__name__}: {exc})"
    if not scale:
        return None
    try:
        with Image.open(source) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # read_image turns these by 90 degrees
                w, h = h, w
    except Exception:
        return None  # the input itself is unreadable: it is reported as such when read
    want = (w * int(scale), h * int(scale))
    if got != want:
        return f"it is {got[0]}x{got[1]}, not the {want[0]}x{want[1]} the input restores to"
    return None


def check_existing(targets: list[Path], out: Path, skip_existing: bool, overwrite: bool) -> None:
    """Refuse, before any work, outputs that already exist unless ``skip_existing`` or ``overwrite``
    (not both: one keeps them, the other replaces them)."""
    if skip_existing and overwrite:
        raise SPTError("--skip-existing keeps existing outputs, --overwrite replaces them: pass one of them")
    existing = [t.name for t in targets if t.exists()]
    if existing and not (skip_existing or overwrite):
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise SPTError(
            f"--out {out} already holds {len(existing)} of the outputs ({shown}); pass --skip-existing to "
            "keep them, --overwrite to replace them, or choose another --out"
        )
