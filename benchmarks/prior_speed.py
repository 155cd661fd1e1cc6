#!/usr/bin/env python
"""Prior pipeline speed, side by side in one run:

(a) cache hit vs recompute (our SAM extraction + encoding) per image;
(b) our SAM extraction (spt_adapter.prior.FastMaskGenerator) vs the stock
    segment_anything.SamAutomaticMaskGenerator on the same images and settings, with the masks
    checked identical (segmentation, area, bbox, predicted_iou, stability_score, points, crop box).

Default: random-weight vit_b on CPU, 2 images of 128 px (scikit-image samples), 16x16 points,
pred_iou_thresh 0.0 and stability_score_thresh 0.0 (a random model's IoU head is centred near 0
and its masks are not stable, so SAM's 0.88 / 0.95 would leave no masks to compare).
Same script on a GPU: ``--device cuda``. With ``--checkpoint`` a real SAM checkpoint is used.

    python benchmarks/prior_speed.py [--device cpu] [--images 2] [--size 128] [--points-per-side 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def _images(n: int, size: int):
    from skimage import data

    from spt_adapter.images import imresize_bicubic

    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        im = srcs[i % len(srcs)]
        s = size / max(im.shape[:2])
        out.append(imresize_bicubic(im, scale=s))
    return out


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if not np.array_equal(x["segmentation"], y["segmentation"]):
            return False
        for k in x:
            if k != "segmentation" and x[k] != y[k] and not (isinstance(x[k], float) and np.isnan(x[k]) and np.isnan(y[k])):
                return False
    return True


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    from spt_adapter.prior import FastMaskGenerator, PriorCache, load_sam

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-type", default="vit_b")
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: random weights, seed 0)")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="long side of the test images")
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.0,
                   help="0.0 keeps about half of a random-weight model's candidates (its IoU head is centred near 0)")
    p.add_argument("--stability-score-thresh", type=float, default=0.0,
                   help="0.0: a random-weight model's masks rarely reach SAM's 0.95, and an empty result proves nothing")
    p.add_argument("--hit-repeats", type=int, default=200)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.checkpoint:
        sam = load_sam(args.checkpoint, args.model_type, device)
    else:
        torch.manual_seed(0)
        sam = sam_model_registry[args.model_type]().to(device).eval()
    settings = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh}
    images = _images(args.images, args.size)
    stock = SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch, **settings)
    fast = FastMaskGenerator(sam, points_per_batch=args.points_per_batch, **settings)

    rows = []
    identical = True
    t_stock, t_fast = [], []
    for i, im in enumerate(images):
        _sync(device)
        t = time.perf_counter()
        a = stock.generate(im)
        _sync(device)
        t_stock.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = fast.generate(im)
        _sync(device)
        t_fast.append(time.perf_counter() - t)
        same = _same(a, b)
        identical &= same
        rows.append((i, im.shape[:2], len(a), t_stock[-1], t_fast[-1], same))
        print(f"  image {i} {im.shape[1]}x{im.shape[0]}: stock {t_stock[-1]:.2f}s ({len(a)} masks), "
              f"ours {t_fast[-1]:.2f}s ({len(b)} masks), identical={same}", flush=True)
    # the image encoder alone (a floor both share)
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        fast._encode([images[0]])
    _sync(device)
    t_enc = time.perf_counter() - t

    # (a) cache: recompute (ours + encode + write) vs hit
    with tempfile.TemporaryDirectory() as root:
        class Provider:
            def identity(self):
                return {"provider": "sam-bench", "model_type": args.model_type, "settings": settings}

            def generate(self, image):
                return fast.generate(image)

        cache, prov = PriorCache(root), Provider()
        t = time.perf_counter()
        cache.get_or_compute(images[0], prov)
        t_miss = time.perf_counter() - t
        hits = []
        for _ in range(args.hit_repeats):
            t = time.perf_counter()
            cache.get_or_compute(images[0], prov)
            hits.append(time.perf_counter() - t)
        t_hit = statistics.median(hits)
        assert cache.stats["computed"] == 1

    s_stock, s_fast = sum(t_stock), sum(t_fast)
    print()
    print(f"command: python benchmarks/prior_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"model: {args.model_type} {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights (seed 0)'}; "
          f"settings {settings}, points_per_batch {args.points_per_batch}; {len(images)} image(s), long side {args.size}")
    print()
    print("| measurement | stock / recompute | ours / cache hit | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| (b) SAM masks, {len(images)} image(s), total | {s_stock:.2f} s | {s_fast:.2f} s | {s_stock / s_fast:.2f}x |")
    print(f"| (b) per image | {s_stock / len(images):.2f} s | {s_fast / len(images):.2f} s | |")
    print(f"| (b) masks identical to stock | | {'yes' if identical else 'NO'} | |")
    print(f"| image encoder alone (in both), per image | {t_enc:.2f} s | {t_enc:.2f} s | |")
    print(f"| (b) excluding the shared encoder | {s_stock / len(images) - t_enc:.2f} s | {s_fast / len(images) - t_enc:.2f} s | "
          f"{(s_stock / len(images) - t_enc) / max(s_fast / len(images) - t_enc, 1e-9):.2f}x |")
    print(f"| (a) prior of one image: recompute vs cache hit | {t_miss:.3f} s | {t_hit * 1e3:.2f} ms | {t_miss / t_hit:.0f}x |")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
