"""Paired folders: which degraded (LQ) file belongs to which clean (HQ) file, checked before step 1.

    from spt_adapter.data.pairs import load_pairs
    ps = load_pairs("polyu/train/hq", "polyu/train/lq", hq_suffix="_mean", lq_suffix="_real")
    ps.scale, ps.alignment, ps.pairs[0].hq, ps.pairs[0].lq

Two ways to say which files pair up:

- **by name** (:func:`match_pairs`): a file's *key* is its name without the extension and without
  the folder's suffix (``--hq-suffix`` / ``--lq-suffix``): ``chair_11_mean.JPG`` with ``_mean`` and
  ``chair_11_real.JPG`` with ``_real`` both have the key ``chair_11``; DIV2K's ``0001x4.png`` with
  ``--lq-suffix x4`` pairs with ``0001.png``. A folder given a suffix reads only the files whose name
  ends with it, so one folder holding both halves (PolyU's ``CroppedImages``) can be both
  ``--data`` and ``--lq``. Extensions need not agree (``.png`` clean, ``.jpg`` degraded).
- **by a list** (:func:`read_pairs_file`, ``--pairs FILE``): one pair a line, ``HQ LQ`` (two names
  separated by a tab, a comma or spaces; ``#`` starts a comment), relative to the HQ and LQ folders.

:func:`check_sizes` then reads every file's header (not its pixels): each LQ image must be the HQ
image divided by one integer scale, the same for every pair (1 for denoising / deblurring / JPEG;
an HQ side up to ``scale - 1`` pixels too large is mod-cropped, as BasicSR's ``mod_crop`` does, and
said so). A missing partner, a duplicate key, a size that fits no scale, a scale other than the
backbone's: one :class:`~spt_adapter.errors.DataError` naming the file.

Pixels are read through :func:`spt_adapter.deploy.images.read_image` (8-bit result; 16-bit files
are scaled to 8 bits there) and given to the network as float ``/ 255``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

__all__ = ["ImagePair", "PairSet", "match_pairs", "read_pairs_file", "check_sizes", "load_pairs", "image_size"]


@dataclass(frozen=True)
class ImagePair:
    """One clean image and its degraded partner; ``key`` is the name they share."""

    key: str
    hq: Path
    lq: Path


@dataclass(frozen=True)
class PairSet:
    """Checked pairs: every LQ is its HQ divided by ``scale``; ``cropped`` names the pairs whose HQ
    is mod-cropped to ``scale`` x LQ (HQ a few pixels larger than that)."""

    pairs: list[ImagePair]
    scale: int
    cropped: list[str] = field(default_factory=list)

    @property
    def hq(self) -> list[Path]:
        return [p.hq for p in self.pairs]

    @property
    def lq(self) -> list[Path]:
        return [p.lq for p in self.pairs]

    @property
    def alignment(self) -> str:
        """One line saying how the sizes were aligned (``eval`` prints it)."""
        how = "same size" if self.scale == 1 else f"HQ = {self.scale} x LQ"
        if not self.cropped:
            return f"{len(self.pairs)} pair(s), {how}, no cropping"
        shown = ", ".join(self.cropped[:3]) + (f" and {len(self.cropped) - 3} more" if len(self.cropped) > 3 else "")
        return (
            f"{len(self.pairs)} pair(s), {how}; {len(self.cropped)} HQ image(s) cropped at the bottom/right to "
            f"{self.scale} x their LQ size ({shown})"
        )


def _images(folder: Path, what: str) -> list[Path]:
    from ..deploy.images import IMAGE_SUFFIXES

    if not folder.exists():
        raise DataError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{what} {folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _keyed(files: list[Path], suffix: str, what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        stem = path.stem
        if suffix:
            if not stem.endswith(suffix) or stem == suffix:
                continue  # not this side's file (the other half of a shared folder, or a stray image)
            stem = stem[: -len(suffix)]
        if stem in out:
            raise DataError(
                f"{what}: {out[stem].name} and {path.name} both have the name {stem!r}"
                + (f" (after removing {suffix!r})" if suffix else "")
                + ": one of them has to go, or be renamed"
            )
        out[stem] = path
    return out


def match_pairs(hq_dir, lq_dir, *, hq_suffix: str = "", lq_suffix: str = "") -> list[ImagePair]:
    """Pairs of ``hq_dir`` / ``lq_dir`` files by key (name without extension and suffix), in key order.

    A file on one side without a partner on the other, two files with one key, or a folder with no
    (suffixed) image: :class:`DataError` naming the file."""
    hq_dir, lq_dir = Path(hq_dir), Path(lq_dir)
    same = hq_dir.exists() and lq_dir.exists() and hq_dir.resolve() == lq_dir.resolve()
    if same and hq_suffix == lq_suffix:
        raise DataError(
            f"--data and --lq are the same folder {hq_dir}: tell the halves apart with --hq-suffix and "
            "--lq-suffix (e.g. _mean / _real)"
        )
    hq = _keyed(_images(hq_dir, "--data"), hq_suffix, f"--data {hq_dir}")
    lq = _keyed(_images(lq_dir, "--lq"), lq_suffix, f"--lq {lq_dir}")
    for keyed, folder, suffix, flag in ((hq, hq_dir, hq_suffix, "--data"), (lq, lq_dir, lq_suffix, "--lq")):
        if not keyed:
            ends = f" whose name ends with {suffix!r}" if suffix else ""
            raise DataError(f"{flag} folder {folder} holds no image{ends}")
    for key, path in hq.items():
        if key not in lq:
            want = f"{key}{lq_suffix}.<ext>"
            raise DataError(f"{path} has no degraded partner: no {want} in --lq {lq_dir}")
    for key, path in lq.items():
        if key not in hq:
            want = f"{key}{hq_suffix}.<ext>"
            raise DataError(f"{path} has no clean partner: no {want} in --data {hq_dir}")
    return [ImagePair(key, hq[key], lq[key]) for key in sorted(hq)]


def read_pairs_file(path, hq_dir=None, lq_dir=None) -> list[ImagePair]:
    """The pairs a list file names, one ``HQ LQ`` pair a line (tab, comma or spaces between them;
    blank lines and ``#`` comments skipped); relative names are taken from ``hq_dir`` / ``lq_dir``
    (default: the list's own folder). A missing file, a line that is not two names, a file listed
    twice: :class:`DataError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--pairs {path}: no such file")
    base = path.parent
    hq_base, lq_base = Path(hq_dir) if hq_dir else base, Path(lq_dir) if lq_dir else base
    out: list[ImagePair] = []
    seen: dict[Path, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("\t" if "\t" in line else "," if "," in line else None)]
        fields = [f for f in fields if f]
        where = f"--pairs {path} line {number}"
        if len(fields) != 2:
            raise DataError(f"{where}: expected two names (HQ LQ), got {len(fields)}: {raw.strip()!r}")
        hq, lq = (b / f if not os.path.isabs(f) else Path(f) for b, f in zip((hq_base, lq_base), fields, strict=True))
        for p, side in ((hq, "HQ"), (lq, "LQ")):
            if not p.is_file():
                raise DataError(f"{where}: the {side} image {p} does not exist")
            key = p.resolve()
            if key in seen:
                raise DataError(f"{where}: {p} is listed twice (first on line {seen[key]})")
            seen[key] = number
        out.append(ImagePair(Path(fields[0]).stem, hq, lq))
    if not out:
        raise DataError(f"--pairs {path} lists no pair")
    return out


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file as :func:`read_image` will return it (EXIF rotation
    applied), from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as an image ({exc})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_sizes(pairs: list[ImagePair], scale: int | None = None) -> PairSet:
    """Every pair's sizes fit one integer scale (``scale``, or the first pair's when None): LQ =
    HQ // scale on both sides. The first pair that does not: :class:`DataError` naming both files."""
    checked: list[str] = []
    for pair in pairs:
        (H, W), (h, w) = image_size(pair.hq), image_size(pair.lq)
        if scale is None:
            s = max(H // max(h, 1), 1)
            if H // s != h or W // s != w:
                raise DataError(
                    f"{pair.lq} is {w}x{h} pixels and its clean partner {pair.hq} is {W}x{H}: the clean image "
                    "must be the degraded one times an integer scale (1 for denoising)"
                )
            scale = s
        if H // scale != h or W // scale != w:
            raise DataError(
                f"{pair.lq} is {w}x{h} pixels but its clean partner {pair.hq} is {W}x{H}: at scale {scale} the "
                f"degraded image must be {W // scale}x{H // scale}"
            )
        if (H, W) != (h * scale, w * scale):
            checked.append(pair.key)
    return PairSet(list(pairs), int(scale or 1), checked)


def load_pairs(
    hq_dir,
    lq_dir,
    *,
    hq_suffix: str = "",
    lq_suffix: str = "",
    pairs_file=None,
    scale: int | None = None,
) -> PairSet:
    """:func:`match_pairs` (or :func:`read_pairs_file` when ``pairs_file`` is given) then
    :func:`check_sizes`: the checked pairs, every error raised before any pixel is read."""
    if pairs_file is not None:
        if hq_suffix or lq_suffix:
            raise DataError("--pairs lists the pairs itself: drop --hq-suffix / --lq-suffix")
        pairs = read_pairs_file(pairs_file, hq_dir, lq_dir)
    else:
        pairs = match_pairs(hq_dir, lq_dir, hq_suffix=hq_suffix, lq_suffix=lq_suffix)
    return check_sizes(pairs, scale)
