#!/usr/bin/env python
"""Peak memory of the prior path (tracemalloc), side by side with the segmentation call alone.

For SLIC with ~2,500 regions on a 512x512 image (scikit-image's astronaut), it measures:
(1) ``ClassicalMaskProvider.segment`` alone (skimage's SLIC: the floor any provider pays);
(2) the whole path on an empty cache: generate (label image + region records) + encode + cache
    write, i.e. ``PriorCache.get_or_compute``, for each encoding.
Target (issue 11): (2) <= 2x (1). The former one-boolean-array-per-region format needed
``regions x H x W`` bytes for the masks alone (printed for reference).

    python benchmarks/prior_memory.py [--size 512] [--segments 2500] [--encodings boundary label onehot:8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import tracemalloc

import numpy as np


def image(size: int) -> np.ndarray:
    from skimage import data

    from spt_adapter.data.images import imresize_bicubic

    img = data.astronaut()  # 512x512 RGB
    return img if size == img.shape[0] else imresize_bicubic(img, scale=size / img.shape[0])


def peak(fn) -> tuple[int, object]:
    """(peak bytes traced while ``fn()`` ran, its result)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        before = tracemalloc.get_traced_memory()[0]
        out = fn()
        return tracemalloc.get_traced_memory()[1] - before, out
    finally:
        tracemalloc.stop()


def measure(size: int = 512, segments: int = 2500, encodings=("boundary",)) -> dict:
    """{"segment": bytes, "regions": n, encoding: bytes of the whole path, ...}."""
    from spt_adapter.prior import PriorCache, make_provider

    img = image(size)
    provider = make_provider("slic", n_segments=segments)
    with tempfile.TemporaryDirectory() as root:  # warm up: imports and first-call caches are not the path's memory
        PriorCache(root).get_or_compute(img[:64, :64], provider, encodings[0])
        provider.segment(img)
    seg_peak, labels = peak(lambda: provider.segment(img))
    out = {"segment": seg_peak, "regions": int(len(np.unique(labels))), "shape": img.shape[:2]}
    del labels
    for enc in encodings:
        with tempfile.TemporaryDirectory() as root:
            cache = PriorCache(root)
            out[enc], prior = peak(lambda cache=cache, enc=enc: cache.get_or_compute(img, provider, enc))
            assert cache.stats["computed"] == 1 and prior.shape[1:] == img.shape[:2]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--segments", type=int, default=2500)
    p.add_argument("--encodings", nargs="+", default=["boundary", "label", "onehot:8"])
    args = p.parse_args(argv)
    r = measure(args.size, args.segments, args.encodings)
    h, w = r["shape"]
    mb = 1 / 2**20
    print(f"command: python benchmarks/prior_memory.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), numpy {np.__version__}")
    print(f"image: astronaut {h}x{w}, SLIC n_segments={args.segments} -> {r['regions']} regions")
    print()
    print("| path | peak (tracemalloc) | vs segmentation alone |")
    print("| --- | ---: | ---: |")
    print(f"| skimage SLIC alone (provider.segment) | {r['segment'] * mb:.1f} MiB | 1.00x |")
    worst = 0.0
    for enc in args.encodings:
        ratio = r[enc] / r["segment"]
        worst = max(worst, ratio)
        print(f"| generate + encode `{enc}` + cache write (get_or_compute) | {r[enc] * mb:.1f} MiB | {ratio:.2f}x |")
    print(
        f"| former format: one bool array per region, masks alone | {r['regions'] * h * w * mb:.1f} MiB | "
        f"{r['regions'] * h * w / r['segment']:.0f}x |"
    )
    print()
    print(f"target <= 2x: {'met' if worst <= 2 else 'NOT met'} (worst {worst:.2f}x)")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
