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
``--ours-points-per-batch`` gives our generator a larger prompt batch (stock keeps
``--points-per-batch``); ``--encoder-batch N`` (N > 1) adds a row for our generator run over all
images at once with N images per image-encoder call, its masks compared with stock's too.

(c) with ``--sam2``: SAM 2's own automatic mask generator through our ``sam2`` provider (one
    label image per image), its throughput alone (no stock-vs-ours comparison: we run SAM 2's
    generator unchanged). Default model: the tiny random-weight ``tiny_test`` SAM 2
    (tools/make_tiny_sam2.py) -- it times the pipeline, not a real model; ``--sam2-checkpoint``
    takes a real one (e.g. sam2.1_hiera_tiny.pt). ``--sam2-only`` skips (a) and (b).

``--quick`` (the CPU dry run of benchmarks/gpu_suite.sh): our toy ``vit_tiny`` SAM with random
weights instead of vit_b, one 64-px image, 4x4 points, and (c) when SAM 2 is installed; its
numbers mean nothing, it only proves the script runs.

    python benchmarks/prior_speed.py [--device cpu] [--images 2] [--size 128] [--points-per-side 16]
        [--points-per-batch 64] [--ours-points-per-batch 64] [--encoder-batch 0] [--sam2 [--sam2-checkpoint PT]]
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

    from spt_adapter.training.images import imresize_bicubic

    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(n):
        im = srcs[i % len(srcs)]
        s = size / max(im.shape[:2])
        out.append(imresize_bicubic(im, scale=s))
    return out


def _same(a, b) -> bool:
    """Stock's and our mask lists equal field by field (same order, same keys, same values)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if set(x) != set(y) or not np.array_equal(x["segmentation"], y["segmentation"]):
            return False
        for k in x:
            if k != "segmentation" and x[k] != y[k] and not (isinstance(x[k], float) and np.isnan(x[k]) and np.isnan(y[k])):
                return False
    return True


def _sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _sam2(args, images, device, settings) -> tuple[str, list[str]]:
    """(model description, table rows) of SAM 2's generator through the ``sam2`` provider."""
    from spt_adapter.prior import make_provider
    from spt_adapter.prior.sam2 import TINY_TEST_FILE, make_tiny_sam2_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.sam2_checkpoint or make_tiny_sam2_checkpoint(os.path.join(tmp, TINY_TEST_FILE))
        provider = make_provider("sam2", checkpoint=ckpt, device=str(device), points_per_batch=args.points_per_batch,
                                 **settings)
        provider.generate(images[0])  # load the model and warm up (not timed)
        times, counts = [], []
        for im in images:
            _sync(device)
            t = time.perf_counter()
            masks = provider.generate(im)
            _sync(device)
            times.append(time.perf_counter() - t)
            counts.append(len(masks))
            print(f"  SAM 2 image {im.shape[1]}x{im.shape[0]}: {times[-1]:.2f}s ({counts[-1]} regions)", flush=True)
        what = f"SAM 2 {provider.model_type} " + (f"checkpoint {args.sam2_checkpoint}" if args.sam2_checkpoint
                                                 else "random weights (tiny_test, seed 0: times the pipeline only)")
    total = sum(times)
    rows = [f"| (c) SAM 2 automatic masks -> label image, {len(images)} image(s), total | | {total:.2f} s | |",
            f"| (c) SAM 2 per image / images per second | | {total / len(images):.2f} s / {len(images) / total:.2f} img/s | |",
            f"| (c) SAM 2 regions per image (mean) | | {statistics.mean(counts):.1f} | |"]
    return what, rows


def main(argv=None) -> int:
    import torch

    from spt_adapter.prior import FastMaskGenerator, PriorCache, load_sam

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-type", default="vit_b")
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: random weights, seed 0)")
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--size", type=int, default=128, help="long side of the test images")
    p.add_argument("--points-per-side", type=int, default=16)
    p.add_argument("--points-per-batch", type=int, default=64, help="stock generator's prompt batch (SAM's default 64)")
    p.add_argument("--ours-points-per-batch", type=int, default=None, help="our prompt batch (default: --points-per-batch)")
    p.add_argument("--encoder-batch", type=int, default=0,
                   help="N > 1: also run ours over all images with N images per image-encoder call (masks checked too)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.0,
                   help="0.0 keeps about half of a random-weight model's candidates (its IoU head is centred near 0)")
    p.add_argument("--stability-score-thresh", type=float, default=0.0,
                   help="0.0: a random-weight model's masks rarely reach SAM's 0.95, and an empty result proves nothing")
    p.add_argument("--hit-repeats", type=int, default=200)
    p.add_argument("--sam2", action="store_true", help="also time SAM 2's generator through the sam2 provider (c)")
    p.add_argument("--sam2-checkpoint", default=None, help="real SAM 2 checkpoint (default: tiny random-weight tiny_test)")
    p.add_argument("--sam2-only", action="store_true", help="only (c): skip SAM 1 (a) and (b)")
    p.add_argument("--quick", action="store_true",
                   help="CPU dry run: vit_tiny, 1 image of 64 px, 4x4 points, (c) if sam2 is installed")
    args = p.parse_args(argv)
    if args.quick:
        import importlib.util

        args.model_type, args.images, args.size, args.points_per_side, args.hit_repeats = "vit_tiny", 1, 64, 4, 5
        args.sam2 = args.sam2 or importlib.util.find_spec("sam2") is not None

    device = torch.device(args.device)
    settings = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh}
    images = _images(args.images, args.size)
    machine = (f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
               f"{torch.get_num_threads()} threads, device {device}"
               + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    command = f"command: python benchmarks/prior_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    sam2_what, sam2_rows = _sam2(args, images, device, settings) if (args.sam2 or args.sam2_only) else (None, [])
    if args.sam2_only:
        print()
        print(command)
        print(machine)
        print(f"model: {sam2_what}; settings {settings}; {len(images)} image(s), long side {args.size}")
        print()
        print("| measurement | stock / recompute | ours / cache hit | ratio |")
        print("| --- | ---: | ---: | ---: |")
        print("\n".join(sam2_rows))
        return 0
    from segment_anything import SamAutomaticMaskGenerator

    from spt_adapter.prior.sam import _builder

    if args.checkpoint:
        sam = load_sam(args.checkpoint, args.model_type, device)
    else:
        torch.manual_seed(0)
        sam = _builder(args.model_type)(checkpoint=None).to(device).eval()
    stock = SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch, **settings)
    ours_ppb = args.ours_points_per_batch or args.points_per_batch
    fast = FastMaskGenerator(sam, points_per_batch=ours_ppb, **settings)

    rows = []
    identical = True
    t_stock, t_fast = [], []
    stock_masks = []
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
        stock_masks.append(a)
        rows.append((i, im.shape[:2], len(a), t_stock[-1], t_fast[-1], same))
        print(f"  image {i} {im.shape[1]}x{im.shape[0]}: stock {t_stock[-1]:.2f}s ({len(a)} masks), "
              f"ours {t_fast[-1]:.2f}s ({len(b)} masks), identical={same}", flush=True)
    t_batched, identical_batched = None, None
    if args.encoder_batch > 1:
        batched = FastMaskGenerator(sam, points_per_batch=ours_ppb, encoder_batch=args.encoder_batch, **settings)
        _sync(device)
        t = time.perf_counter()
        got = batched.generate_batch(images)
        _sync(device)
        t_batched = time.perf_counter() - t
        identical_batched = all(_same(a, b) for a, b in zip(stock_masks, got))
        print(f"  all images, encoder batch {args.encoder_batch}: ours {t_batched:.2f}s, identical={identical_batched}", flush=True)
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
    print(command)
    print(machine)
    if sam2_what:
        print(f"model (c): {sam2_what}")
    print(f"model: {args.model_type} {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights (seed 0)'}; "
          f"settings {settings}, points_per_batch stock {args.points_per_batch} / ours {ours_ppb}; "
          f"{len(images)} image(s), long side {args.size}")
    print()
    print("| measurement | stock / recompute | ours / cache hit | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| (b) SAM masks, {len(images)} image(s), total | {s_stock:.2f} s | {s_fast:.2f} s | {s_stock / s_fast:.2f}x |")
    print(f"| (b) per image | {s_stock / len(images):.2f} s | {s_fast / len(images):.2f} s | |")
    print(f"| (b) masks identical to stock | | {'yes' if identical else 'NO'} | |")
    if t_batched is not None:
        print(f"| (b) ours, encoder batch {args.encoder_batch}, total | {s_stock:.2f} s | {t_batched:.2f} s | {s_stock / t_batched:.2f}x |")
        print(f"| (b) encoder batch {args.encoder_batch}: masks identical to stock | | {'yes' if identical_batched else 'NO'} | |")
    print(f"| image encoder alone (in both), per image | {t_enc:.2f} s | {t_enc:.2f} s | |")
    print(f"| (b) excluding the shared encoder | {s_stock / len(images) - t_enc:.2f} s | {s_fast / len(images) - t_enc:.2f} s | "
          f"{(s_stock / len(images) - t_enc) / max(s_fast / len(images) - t_enc, 1e-9):.2f}x |")
    print(f"| (a) prior of one image: recompute vs cache hit | {t_miss:.3f} s | {t_hit * 1e3:.2f} ms | {t_miss / t_hit:.0f}x |")
    if sam2_rows:
        print("\n".join(sam2_rows))
    return 0 if identical and identical_batched is not False else 1


if __name__ == "__main__":
    sys.exit(main())
