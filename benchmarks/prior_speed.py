#!/usr/bin/env python
"""Prior pipeline speed, side by side in one run:

(a) cache hit vs recompute (our SAM extraction + encoding) per image;
(b) our SAM extraction (spt_adapter.prior.FastMaskGenerator) vs the stock
    segment_anything.SamAutomaticMaskGenerator on the same images and settings, with the masks
    checked identical (segmentation, area, bbox, predicted_iou, stability_score, points, crop box).

(d) with ``--precision bf16``: our generator with ``precision="bf16"`` (image encoder and mask
    decoder under bf16 autocast, encoder attention through SDPA) over all images at once, vs stock
    in fp32: throughput ratio and the mean / min IoU of its masks against stock's, matched one to
    one per image by greedy best IoU (see :func:`match_mask_iou`).

Default: random-weight vit_b on CPU, 2 images of 128 px (scikit-image samples), 16x16 points,
pred_iou_thresh 0.0 and stability_score_thresh 0.0 (a random model's IoU head is centred near 0
and its masks are not stable, so SAM's 0.88 / 0.95 would leave no masks to compare).
With ``--checkpoint`` a real SAM checkpoint is used.
``--ours-points-per-batch`` gives our generator a larger prompt batch (stock keeps
``--points-per-batch``); ``--encoder-batch N`` (N > 1) adds a row for our generator run over all
images at once with N images per image-encoder call, its masks compared with stock's too.

(c) with ``--sam2``: SAM 2's own automatic mask generator through our ``sam2`` provider (one
    label image per image), its throughput alone (no stock-vs-ours comparison: we run SAM 2's
    generator unchanged). Default model: the tiny random-weight ``tiny_test`` SAM 2
    (tools/make_tiny_sam2.py) -- it times the pipeline, not a real model; ``--sam2-checkpoint``
    takes a real one (e.g. sam2.1_hiera_tiny.pt). ``--sam2-only`` skips (a), (b) and (d).

``--device cuda`` changes the defaults to a GPU measurement of issue 11's target (ours >= 8x stock
with bf16, mean mask IoU >= 0.95): 4 images of 1024 px, 32x32 points, stock 64 prompts per batch,
ours 256, encoder batch 4, ``--precision bf16``; each generator is warmed up on a 2x2-point grid
first and the timings are fenced with ``torch.cuda.synchronize``. ``--quick`` is the CPU dry run
of benchmarks/gpu_suite.sh, in seconds (our toy vit_tiny SAM with random weights, 2 images of 64 px,
4x4 points, encoder batch 2, the fp32 and bf16 rows, and (c) when SAM 2 is installed): its numbers
mean nothing, it proves the script runs. The last line printed is one JSON object with every
number (``--json PATH`` writes it to a file as well).

    python benchmarks/prior_speed.py [--device cpu] [--images 2] [--size 128] [--points-per-side 16]
        [--points-per-batch 64] [--ours-points-per-batch 64] [--encoder-batch 0] [--precision fp32]
        [--sam2 [--sam2-checkpoint PT]]
    python benchmarks/prior_speed.py --device cuda            # GPU defaults, bf16 row
    python benchmarks/prior_speed.py --quick                  # CPU smoke run

Size: three side-by-side measurements (cache, stock vs fast generator with a mask check, bf16)
that share one image set and one report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def _images(n: int, size: int):
    from skimage import data

    from spt_adapter.data.images import imresize_bicubic

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
    for x, y in zip(a, b, strict=True):
        if set(x) != set(y) or not np.array_equal(x["segmentation"], y["segmentation"]):
            return False
        for k in x:
            if (
                k != "segmentation"
                and x[k] != y[k]
                and not (isinstance(x[k], float) and np.isnan(x[k]) and np.isnan(y[k]))
            ):
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
        provider = make_provider(
            "sam2", checkpoint=ckpt, device=str(device), points_per_batch=args.points_per_batch, **settings
        )
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
        what = f"SAM 2 {provider.model_type} " + (
            f"checkpoint {args.sam2_checkpoint}"
            if args.sam2_checkpoint
            else "random weights (tiny_test, seed 0: times the pipeline only)"
        )
    total = sum(times)
    rows = [
        f"| (c) SAM 2 automatic masks -> label image, {len(images)} image(s), total | | {total:.2f} s | |",
        f"| (c) SAM 2 per image / images per second | | {total / len(images):.2f} s / {len(images) / total:.2f} img/s | |",
        f"| (c) SAM 2 regions per image (mean) | | {statistics.mean(counts):.1f} | |",
    ]
    return what, rows


# ------------------------------------------------------------------ defaults per mode (--quick, --device cuda)
CPU_DEFAULTS = {
    "model_type": "vit_b",
    "images": 2,
    "size": 128,
    "points_per_side": 16,
    "points_per_batch": 64,
    "ours_points_per_batch": None,
    "encoder_batch": 0,
    "precision": "fp32",
    "hit_repeats": 200,
}
QUICK_DEFAULTS = {
    **CPU_DEFAULTS,
    "model_type": "vit_tiny",
    "size": 64,
    "points_per_side": 4,
    "encoder_batch": 2,
    "precision": "bf16",
    "hit_repeats": 5,
}
GPU_DEFAULTS = {
    **CPU_DEFAULTS,
    "images": 4,
    "size": 1024,
    "points_per_side": 32,
    "ours_points_per_batch": 256,
    "encoder_batch": 4,
    "precision": "bf16",
    "hit_repeats": 20,
}


def _fill_defaults(args) -> dict:
    """Options left unset take the defaults of the mode: --quick, else --device cuda*, else CPU."""
    mode = QUICK_DEFAULTS if args.quick else GPU_DEFAULTS if str(args.device).startswith("cuda") else CPU_DEFAULTS
    for k, v in mode.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return mode


def _build_sam(model_type: str, checkpoint, device):
    import torch

    from spt_adapter.prior import load_sam

    if checkpoint:
        return load_sam(checkpoint, model_type, device)
    from spt_adapter.prior.sam import _builder

    torch.manual_seed(0)
    return _builder(model_type)(checkpoint=None).to(device).eval()


def _warm_up(sam, images, settings, args, device) -> None:
    """On a GPU (and in --quick), run every generator once on a 2x2-point grid (CUDA context,
    cuBLAS/cuDNN handles and kernel choices for the 1024-px encoder input, lazy imports) so that
    no row pays for it. Skipped for the CPU default run, where it would cost three vit_b encodes."""
    if device.type != "cuda" and not args.quick:
        return
    from segment_anything import SamAutomaticMaskGenerator

    from spt_adapter.prior import FastMaskGenerator

    small = {**settings, "points_per_side": 2}
    SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch, **small).generate(images[0])
    FastMaskGenerator(sam, points_per_batch=args.ours_points_per_batch, **small).generate(images[0])
    if args.precision == "bf16":
        FastMaskGenerator(
            sam,
            points_per_batch=args.ours_points_per_batch,
            encoder_batch=max(args.encoder_batch, 1),
            precision="bf16",
            **small,
        ).generate_batch(images[: max(args.encoder_batch, 1)])
    _sync(device)


# ------------------------------------------------------------------ bf16 row: speed and mask IoU vs stock fp32
def match_mask_iou(stock: list, ours: list, device="cpu") -> list[float]:
    """One IoU per mask of either list after a one-to-one matching of one image's masks.

    Matching: all (stock, ours) pairs are taken in order of decreasing IoU (greedy best IoU), a
    pair is kept when neither mask is matched yet and its IoU is > 0; every mask left unmatched on
    either side counts as IoU 0. So a mask that bf16 drops or adds lowers the mean, and the list
    has ``max(len(stock), len(ours))`` entries plus the unmatched surplus of the shorter list.
    Prompt points are not used for matching: NMS may keep a neighbouring prompt's mask instead.
    """
    import torch

    if not stock or not ours:
        return [0.0] * (len(stock) + len(ours))
    a = torch.as_tensor(np.stack([m["segmentation"].reshape(-1) for m in stock]), device=device).float()
    b = torch.as_tensor(np.stack([m["segmentation"].reshape(-1) for m in ours]), device=device).float()
    # pixel counts < 2**24 are exact in float32 sums (TF32 is off for matmul by default)
    inter = (a @ b.T).double()
    union = a.sum(1, dtype=torch.float64)[:, None] + b.sum(1, dtype=torch.float64)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter)).cpu().numpy()
    used_a, used_b, out = set(), set(), []
    order = np.argsort(-iou, axis=None, kind="stable")
    for flat in order:
        i, j = divmod(int(flat), iou.shape[1])
        if iou[i, j] <= 0:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append(float(iou[i, j]))
    out.extend([0.0] * (len(stock) - len(used_a) + len(ours) - len(used_b)))
    return out


def bf16_row(sam, images, settings, stock_masks, args, device) -> dict:
    """Ours with precision="bf16" over all images (encoder batch ``args.encoder_batch``, at least 1):
    total time, the image encoder's share, and the matched mask IoUs against stock's fp32 masks."""
    import torch

    from spt_adapter.prior import FastMaskGenerator

    n_enc = max(args.encoder_batch, 1)
    gen = FastMaskGenerator(
        sam, points_per_batch=args.ours_points_per_batch, encoder_batch=n_enc, precision="bf16", **settings
    )
    _sync(device)
    t = time.perf_counter()
    got = gen.generate_batch(images)
    _sync(device)
    seconds = time.perf_counter() - t
    t = time.perf_counter()
    with torch.inference_mode():
        gen._encode(images[:n_enc])
    _sync(device)
    enc_per_image = (time.perf_counter() - t) / len(images[:n_enc])
    ious = [x for a, b in zip(stock_masks, got, strict=True) for x in match_mask_iou(a, b, device)]
    return {
        "seconds": seconds,
        "encoder_batch": n_enc,
        "encoder_per_image_s": enc_per_image,
        "masks_stock": sum(len(a) for a in stock_masks),
        "masks_ours": sum(len(b) for b in got),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "min_iou": float(np.min(ious)) if ious else float("nan"),
    }


def _print_bf16_rows(r: dict, s_stock: float, dry_run: bool) -> None:
    ratio = s_stock / r["seconds"]
    print(
        f"| (d) ours bf16 + SDPA, encoder batch {r['encoder_batch']}, total | {s_stock:.2f} s (fp32) | "
        f"{r['seconds']:.2f} s | {ratio:.2f}x |"
    )
    print(f"| (d) bf16: image encoder alone, per image | | {r['encoder_per_image_s']:.3f} s | |")
    print(
        f"| (d) bf16: masks (stock / ours), mask IoU vs stock mean / min | {r['masks_stock']} | {r['masks_ours']} | "
        f"{r['mean_iou']:.4f} / {r['min_iou']:.4f} |"
    )
    print(
        f"`targets (issue 11): ours bf16 >= 8x stock: {'met' if ratio >= 8 else 'NOT met'} ({ratio:.2f}x), "
        f"mean mask IoU >= 0.95: {'met' if r['mean_iou'] >= 0.95 else 'NOT met'} ({r['mean_iou']:.4f})`"
        + (" (--quick: a toy model on a CPU, the numbers mean nothing)" if dry_run else "")
    )


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from spt_adapter.prior import FastMaskGenerator, PriorCache

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--quick", action="store_true", help="CPU smoke run in seconds: vit_tiny, 2 images of 64 px, 4x4 points"
    )
    p.add_argument("--model-type", default=None, help="vit_b (default), vit_l, vit_h or vit_tiny")
    p.add_argument("--checkpoint", default=None, help="real checkpoint (default: random weights, seed 0)")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="long side of the test images")
    p.add_argument("--points-per-side", type=int, default=None)
    p.add_argument(
        "--points-per-batch", type=int, default=None, help="stock generator's prompt batch (SAM's default 64)"
    )
    p.add_argument(
        "--ours-points-per-batch", type=int, default=None, help="our prompt batch (default: --points-per-batch)"
    )
    p.add_argument(
        "--encoder-batch",
        type=int,
        default=None,
        help="N > 1: also run ours over all images with N images per image-encoder call (masks checked too); "
        "also the encoder batch of the bf16 row",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default=None,
        help="bf16: add row (c), ours in bf16 + SDPA vs stock fp32 with mask IoUs (default on cuda and --quick)",
    )
    p.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.0,
        help="0.0 keeps about half of a random-weight model's candidates (its IoU head is centred near 0)",
    )
    p.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.0,
        help="0.0: a random-weight model's masks rarely reach SAM's 0.95, and an empty result proves nothing",
    )
    p.add_argument("--hit-repeats", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the JSON line (the last line printed) to this file")
    p.add_argument("--sam2", action="store_true", help="also time SAM 2's generator through the sam2 provider (c)")
    p.add_argument(
        "--sam2-checkpoint", default=None, help="real SAM 2 checkpoint (default: tiny random-weight tiny_test)"
    )
    p.add_argument("--sam2-only", action="store_true", help="only (c): skip SAM 1 (a), (b) and (d)")
    args = p.parse_args(argv)
    _fill_defaults(args)
    args.ours_points_per_batch = args.ours_points_per_batch or args.points_per_batch
    if args.quick:
        import importlib.util

        args.sam2 = args.sam2 or importlib.util.find_spec("sam2") is not None

    device = torch.device(args.device)
    settings = {
        "points_per_side": args.points_per_side,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
    }
    images = _images(args.images, args.size)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    machine = (
        f"machine: {platform.machine()}, {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {device}" + (f" ({device_name})" if device_name else "")
    )
    command = f"python benchmarks/prior_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    sam2_what, sam2_rows = _sam2(args, images, device, settings) if (args.sam2 or args.sam2_only) else (None, [])
    if args.sam2_only:
        print()
        print(f"command: {command}")
        print(machine)
        print(f"model: {sam2_what}; settings {settings}; {len(images)} image(s), long side {args.size}")
        print()
        print("| measurement | stock / recompute | ours / cache hit | ratio |")
        print("| --- | ---: | ---: | ---: |")
        print("\n".join(sam2_rows))
        return 0
    sam = _build_sam(args.model_type, args.checkpoint, device)
    stock = SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch, **settings)
    ours_ppb = args.ours_points_per_batch
    fast = FastMaskGenerator(sam, points_per_batch=ours_ppb, **settings)
    _warm_up(sam, images, settings, args, device)

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
        print(
            f"  image {i} {im.shape[1]}x{im.shape[0]}: stock {t_stock[-1]:.2f}s ({len(a)} masks), "
            f"ours {t_fast[-1]:.2f}s ({len(b)} masks), identical={same}",
            flush=True,
        )
    t_batched, identical_batched, iou_batched = None, None, []
    if args.encoder_batch > 1:
        batched = FastMaskGenerator(sam, points_per_batch=ours_ppb, encoder_batch=args.encoder_batch, **settings)
        _sync(device)
        t = time.perf_counter()
        got = batched.generate_batch(images)
        _sync(device)
        t_batched = time.perf_counter() - t
        identical_batched = all(_same(a, b) for a, b in zip(stock_masks, got, strict=True))
        iou_batched = [x for a, b in zip(stock_masks, got, strict=True) for x in match_mask_iou(a, b, device)]
        print(
            f"  all images, encoder batch {args.encoder_batch}: ours {t_batched:.2f}s, identical={identical_batched}, "
            f"mask IoU vs stock min {min(iou_batched, default=1.0):.4f}",
            flush=True,
        )
    bf16 = bf16_row(sam, images, settings, stock_masks, args, device) if args.precision == "bf16" else None
    if bf16 is not None:
        print(
            f"  all images, bf16 + SDPA, encoder batch {bf16['encoder_batch']}: ours {bf16['seconds']:.2f}s, "
            f"mask IoU vs stock mean {bf16['mean_iou']:.4f} min {bf16['min_iou']:.4f}",
            flush=True,
        )
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
    print(f"command: {command}")
    print(machine)
    if sam2_what:
        print(f"model (c): {sam2_what}")
    print(
        f"model: {args.model_type} {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights (seed 0)'}; "
        f"settings {settings}, points_per_batch stock {args.points_per_batch} / ours {ours_ppb}; "
        f"{len(images)} image(s), long side {args.size}"
    )
    print()
    print("| measurement | stock / recompute | ours / cache hit | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| (b) SAM masks, {len(images)} image(s), total | {s_stock:.2f} s | {s_fast:.2f} s | {s_stock / s_fast:.2f}x |"
    )
    print(f"| (b) per image | {s_stock / len(images):.2f} s | {s_fast / len(images):.2f} s | |")
    print(f"| (b) masks identical to stock | | {'yes' if identical else 'NO'} | |")
    if t_batched is not None:
        print(
            f"| (b) ours, encoder batch {args.encoder_batch}, total | {s_stock:.2f} s | {t_batched:.2f} s | {s_stock / t_batched:.2f}x |"
        )
        print(
            f"| (b) encoder batch {args.encoder_batch}: masks identical to stock | | "
            f"{'yes' if identical_batched else 'no (batched GEMMs: last-bit differences)'} | "
            f"IoU min {min(iou_batched, default=1.0):.4f} |"
        )
    print(f"| image encoder alone (in both), per image | {t_enc:.2f} s | {t_enc:.2f} s | |")
    print(
        f"| (b) excluding the shared encoder | {s_stock / len(images) - t_enc:.2f} s | {s_fast / len(images) - t_enc:.2f} s | "
        f"{(s_stock / len(images) - t_enc) / max(s_fast / len(images) - t_enc, 1e-9):.2f}x |"
    )
    if bf16 is not None:
        _print_bf16_rows(bf16, s_stock, args.quick)
    print(
        f"| (a) prior of one image: recompute vs cache hit | {t_miss:.3f} s | {t_hit * 1e3:.2f} ms | {t_miss / t_hit:.0f}x |"
    )
    if sam2_rows:
        print("\n".join(sam2_rows))
    ok = identical  # the per-image fp32 row is the exactness claim; encoder batching is reported, not required
    result = {
        "benchmark": "prior_speed",
        "command": command,
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "model_type": args.model_type,
        "checkpoint": args.checkpoint,
        "images": len(images),
        "size": args.size,
        "settings": settings,
        "points_per_batch": {"stock": args.points_per_batch, "ours": ours_ppb},
        "stock_s": s_stock,
        "ours_fp32_s": s_fast,
        "ours_fp32_ratio": s_stock / s_fast,
        "identical": identical,
        "encoder_batch": args.encoder_batch,
        "ours_fp32_batched_s": t_batched,
        "identical_batched": identical_batched,
        "batched_min_iou": min(iou_batched, default=None),
        "encoder_per_image_s": t_enc,
        "cache_miss_s": t_miss,
        "cache_hit_s": t_hit,
        "bf16": None if bf16 is None else {**bf16, "ratio": s_stock / bf16["seconds"]},
        "sam2": sam2_what,
        "ok": ok,
    }
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(line + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
