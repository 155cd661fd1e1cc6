"""Task ``sr4``: SRVGGNetCompact x4, pre-trained on bicubic LQ here, the unit rows on
``--sr-degradation``; Set5 / Set14 on Y."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import SR_SCALE, _cached_backbone, _pretrain, build_sr_backbone, log  # noqa: E402
from _ladder import ROWS, _make_sam, get_batch, make_schedule, run_ladder  # noqa: E402
from _report import _report  # noqa: E402


def main_sr(args, argv, t_all, cache: qd.LabelCache) -> int:
    """The prior ladder for x4 SR: train McMaster + CBSD68, test Set5 and Set14. The backbone is
    pre-trained on bicubic LQ; the unit rows train and test on ``--sr-degradation``."""
    splits = qd.load_sr_splits(
        args.data,
        scale=SR_SCALE,
        n_test=args.n_test,
        test_crop=args.test_crop,
        n_train=args.n_train,
        train_crop=args.train_crop,
    )
    seg = qd.Segmenter.parse(args.segmenter)
    sam = _make_sam(args)
    t0 = time.time()
    deg = args.sr_degradation
    train_set = qd.build_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, sam=sam, degradation=deg)
    tag = "" if deg == "bicubic" else f" {deg.upper()}"
    eval_sets = {
        f"{k} ×{SR_SCALE}{tag} (Y, crop {SR_SCALE})": qd.build_sr_priors(
            splits[k], scale=SR_SCALE, seg=seg, cache=cache, sam=sam, degradation=deg
        )
        for k in qd.SR_TEST
    }
    lq_priors = [p[0] for es in eval_sets.values() for p in es.lq_prior]
    n_regions = float(np.mean([len(np.unique(p)) for p in lq_priors]))
    log(
        f"data: {len(splits['train'])} train images, "
        + ", ".join(f"{k} {len(splits[k])}" for k in qd.SR_TEST)
        + f" test images; priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per "
        f"LQ test image; prior code path: {qd.prior_code_path()})"
    )
    bicubic = {k: qd.bicubic_upsample_psnr(es) for k, es in eval_sets.items()}
    log("bicubic upsampling (reference): " + ", ".join(f"{k} {v:.3f}" for k, v in bicubic.items()))
    pretrain_set = (
        train_set
        if deg == "bicubic"
        else qd.build_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, want_oracle=False)
    )
    backbone, bb_info = pretrain_sr_backbone(args, [n for n, _ in splits["train"]], pretrain_set, args.cache_dir)
    train_set = qd.apply_encoding(train_set, args.encoding)
    eval_sets = {k: qd.apply_encoding(v, args.encoding) for k, v in eval_sets.items()}
    for p in backbone.parameters():
        p.requires_grad_(False)
    rows = [r for r in ROWS if r in args.rows]
    res, per_image = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print("\nbicubic upsampling (reference): " + ", ".join(f"{k} {v:.3f}" for k, v in bicubic.items()))
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, SR ×{SR_SCALE}{tag} — {seg.label()}, {args.encoding} encoding "
        f"({n_regions:.0f} regions per LQ test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": deg,
            "regions_per_test_image": n_regions,
            "bicubic_upsampling": bicubic,
            "oracle": "segment HR (area settings x16), nearest-downsample the label map",
        },
        per_image=per_image,
    )
    return 0


def pretrain_sr_backbone(args, names: list[str], pset: qd.PriorSet, cache_dir: Path) -> tuple[nn.Module, dict]:
    """Train the SR backbone from scratch on aligned (bicubic LQ, HR) crops of the training images;
    cached by its settings. ``--patch`` is the LQ patch size (the HR patch is 4x it)."""
    spec = {
        "arch": "SRVGGNetCompact",
        "nf": args.sr_feat,
        "nconv": args.sr_convs,
        "scale": SR_SCALE,
        "steps": args.pretrain_steps,
        "batch": args.pretrain_batch,
        "patch": args.patch,
        "lr": args.pretrain_lr,
        "train": names,
        "version": 2,
    }
    net, path, hit = _cached_backbone(
        spec, f"backbone_srvgg_x{SR_SCALE}", cache_dir, lambda: build_sr_backbone(args.sr_feat, args.sr_convs)
    )
    if hit:
        return net, {"cached": True, "path": str(path), **spec}
    torch.manual_seed(1234)
    sched = make_schedule(1234, args.pretrain_steps, args.pretrain_batch, args.patch, pset)

    def batch(step: int):
        lq, gt, _ = get_batch(sched[step], args.patch, pset, "none")
        return lq, gt

    l1 = lambda out, gt: torch.mean(torch.abs(out - gt))  # noqa: E731 -- L1, as SR networks are trained
    return _pretrain(net, batch, l1, args, path, spec)
