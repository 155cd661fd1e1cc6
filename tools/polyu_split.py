"""Lay PolyU's real noisy / clean pairs out as train / val / test folders, split by camera.

    python tools/polyu_split.py PolyU-Real-World-Noisy-Images-Dataset/CroppedImages polyu_split
    spt-adapter train --data polyu_split/train/hq --lq polyu_split/train/lq --hq-suffix _mean --lq-suffix _real \\
        --val polyu_split/val/hq --val-lq polyu_split/val/lq ...

``CroppedImages`` (csjunxu/PolyU-Real-World-Noisy-Images-Dataset) holds 100 pairs of 512x512 crops,
``<camera>_<settings>_<scene>_<n>_real.JPG`` (noisy) and ``..._mean.JPG`` (the mean of many shots:
clean). The split, so that the test camera's scenes are never seen in training:

- camera = the name up to its first ``_``; scene = the name without ``_<n>_real.JPG`` / ``_<n>_mean.JPG``;
- **test**: every pair of camera ``Canon80D``;
- **val**: for each training camera (``Canon5D2``, ``NikonD800``), every pair of its last scene in
  name order among the scenes with at least 3 crops (whole scenes, so no validation crop shares a
  scene with a training crop): ``Canon5D2_5_200_3200_toy`` (5) and ``NikonD800_8_100_6400_bulletin``
  (4) -- the rule ``benchmarks/compare.py``'s ``polyu_split`` uses too;
- **train**: the other ``Canon5D2`` and ``NikonD800`` pairs. ``Canon600D`` and ``Sony`` are left out.

Each part becomes ``OUT/<part>/hq`` (the ``_mean`` files) and ``OUT/<part>/lq`` (the ``_real``
files), under their original names: symbolic links by default, copies with ``--copy``. ``OUT`` must
not exist yet or be empty; a listing of the split is written to ``OUT/split.txt``.

``--crop N`` writes the val and test images as their centre N x N crops instead (PNG, lossless, the
same names with ``.png``): full 512x512 images cost a CPU minutes per pass, and
``benchmarks/compare.py --task polyu`` scores the same centre crops (its ``--test-crop``, default 256).
Training images stay whole.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

TRAIN_CAMERAS = ("Canon5D2", "NikonD800")
TEST_CAMERA = "Canon80D"
_NAME = re.compile(r"^(?P<scene>(?P<camera>[^_]+)_.+)_(?P<n>\d+)_(?P<half>real|mean)\.jpg$", re.IGNORECASE)


def scan(folder: Path) -> dict[str, tuple[str, str, Path, Path]]:
    """``{pair name: (camera, scene, mean file, real file)}``; a file without its partner is refused."""
    halves: dict[str, dict[str, Path]] = {}
    info: dict[str, tuple[str, str]] = {}
    for path in sorted(folder.iterdir()):
        m = _NAME.match(path.name)
        if not m:
            continue
        key = f"{m['scene']}_{m['n']}"
        halves.setdefault(key, {})[m["half"].lower()] = path
        info[key] = (m["camera"], m["scene"])
    out = {}
    for key, pair in halves.items():
        if set(pair) != {"mean", "real"}:
            missing = ({"mean", "real"} - set(pair)).pop()
            raise SystemExit(f"{next(iter(pair.values()))} has no _{missing} partner in {folder}")
        out[key] = (*info[key], pair["mean"], pair["real"])
    if not out:
        raise SystemExit(f"{folder} holds no <name>_real.JPG / <name>_mean.JPG pairs (is it PolyU's CroppedImages?)")
    return out


def split(pairs: dict[str, tuple[str, str, Path, Path]]) -> dict[str, list[str]]:
    """The rule of the module docstring: ``{"train": [...], "val": [...], "test": [...]}`` of pair names."""
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    crops: dict[str, dict[str, int]] = {}
    for camera, scene, *_ in pairs.values():
        crops.setdefault(camera, {}).setdefault(scene, 0)
        crops[camera][scene] += 1
    held = {}
    for cam in TRAIN_CAMERAS:
        big = sorted(scene for scene, n in crops.get(cam, {}).items() if n >= 3)
        if not big:
            raise SystemExit(f"camera {cam} has no scene with 3 or more crops: is this PolyU's CroppedImages?")
        held[cam] = big[-1]
    for key in sorted(pairs):
        camera, scene = pairs[key][:2]
        if camera == TEST_CAMERA:
            parts["test"].append(key)
        elif camera in TRAIN_CAMERAS:
            parts["val" if scene == held[camera] else "train"].append(key)
    for part, keys in parts.items():
        if not keys:
            raise SystemExit(f"the {part} part is empty: is this the whole PolyU CroppedImages folder?")
    return parts


def _centre_crop(src: Path, dst: Path, size: int) -> None:
    from PIL import Image

    with Image.open(src) as im:
        w, h = im.size
        if size > min(w, h):
            raise SystemExit(f"--crop {size} is larger than {src} ({w}x{h})")
        left, top = (w - size) // 2, (h - size) // 2
        im.convert("RGB").crop((left, top, left + size, top + size)).save(dst)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("polyu", type=Path, help="PolyU's CroppedImages folder")
    ap.add_argument("out", type=Path, help="folder to create (train/ val/ test/, each with hq/ and lq/)")
    ap.add_argument("--copy", action="store_true", help="copy the files instead of linking them")
    ap.add_argument("--crop", type=int, default=0, metavar="N", help="val/test as centre N x N crops (PNG)")
    args = ap.parse_args(argv)
    if not args.polyu.is_dir():
        raise SystemExit(f"{args.polyu} is not a folder")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise SystemExit(f"{args.out} exists and is not an empty folder; choose a new one")
    pairs = scan(args.polyu)
    parts = split(pairs)
    lines = []
    for part, keys in parts.items():
        for side in ("hq", "lq"):
            (args.out / part / side).mkdir(parents=True, exist_ok=True)
        for key in keys:
            _, _, mean, real = pairs[key]
            for side, src in (("hq", mean), ("lq", real)):
                dst = args.out / part / side / src.name
                if args.crop and part != "train":
                    _centre_crop(src, dst.with_suffix(".png"), args.crop)
                elif args.copy:
                    shutil.copy2(src, dst)
                else:
                    dst.symlink_to(src.resolve())
            lines.append(f"{part}\t{key}")
        print(f"{part}: {len(keys)} pair(s)")
    (args.out / "split.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
