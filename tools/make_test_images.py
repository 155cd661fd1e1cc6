"""Write the small test images committed under tests/data/ (crops of the public test sets).

    python tools/make_test_images.py ../shared/data tests/data

Each image is a centre crop (lossless PNG, same folder and file names as the full sets) so the tests
run on a bare clone; the full sets stay what the benchmarks read. Sizes are the smallest the tests
need (Set5/baby: a 171x165 box is cut from it; CBSD68/0003: a 130 px centre crop).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

#: set -> (image stems, crop side); a stem given as (stem, side) overrides the side
CHOSEN = {
    "Set5": (["baby", "bird", "butterfly", "head", "woman"], 96),
    "Set14": (["baboon", "barbara", "bridge", "coastguard", "comic"], 96),
    "CBSD68": (["0000", "0001", "0002", "0003", "0004", "0005"], 96),
    "McMaster": (["1", "15", "16"], 96),
}
LARGER = {("Set5", "baby"): 176, ("CBSD68", "0003"): 136}


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    for sub, (stems, side) in CHOSEN.items():
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            img = Image.open(src / sub / f"{stem}.png")
            s = LARGER.get((sub, stem), side)
            w, h = img.size
            left, top = (w - s) // 2, (h - s) // 2
            img.crop((left, top, left + s, top + s)).save(dst / sub / f"{stem}.png", optimize=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
