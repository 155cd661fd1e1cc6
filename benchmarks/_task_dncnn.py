"""Task ``dncnn3bd``: cszn/DnCNN's DnCNN-3 on the bicubic-upsampled luma, its frozen bicubic x4 row
reproduced first, then adapted to the x4 BD degradation."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import DNCNN_3, SR_SCALE, load_dncnn_mat, log  # noqa: E402
from _ladder import ROWS, _encode_sets, evaluate, run_ladder  # noqa: E402
from _report import _report  # noqa: E402
from _tune import tune_distill_sets  # noqa: E402


def main_dncnn3(args, argv, t_all, cache: qd.LabelCache) -> int:
    """cszn/DnCNN's DnCNN-3 (one grey network for denoising, SR on the bicubic-upsampled luma and JPEG
    deblocking): its frozen bicubic x4 row on Set5/Set14 reproduced first (published 31.40 / 28.04 dB on
    Y), then the ladder adapting it to the BD degradation (blur sigma 1.6, then bicubic x4), which it
    never saw; train Train400 + the Y of McMaster (minus 15-18) + CBSD68, test Set5/Set14 (Y, crop 4)."""
    train400 = (
        None if args.quick else args.dncnn_root / "TrainingCodes" / "DnCNN_TrainingCodes_v1.0" / "data" / "Train400"
    )
    splits = qd.load_y_sr_splits(
        args.data, train400, scale=SR_SCALE, n_test=args.n_test, n_train=args.n_train, train_crop=args.train_crop
    )
    backbone, bb_info = load_dncnn_mat(args.dncnn_root, DNCNN_3, "DnCNN-3")
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone = backbone.to(args.device)
    seg = qd.Segmenter.parse(args.segmenter)
    repro = {
        sub: evaluate(
            backbone,
            qd.build_upsampled_sr_priors(splits[sub], scale=SR_SCALE, seg=seg, cache=cache, want_oracle=False),
            "none",
        )
        for sub in qd.SR_TEST
    }
    log(
        "DnCNN-3 frozen, bicubic x4 (Y, crop 4): "
        + ", ".join(f"{k} {v:.3f}" for k, v in repro.items())
        + " (published Set5 31.40, Set14 28.04)"
    )
    if args.tune_distill:
        tr = qd.build_upsampled_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
        val = qd.build_upsampled_sr_priors(splits["val"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
        tune_distill_sets(
            args,
            backbone,
            qd.apply_encoding(tr, args.encoding),
            qd.apply_encoding(val, args.encoding),
            "McMaster 15-18 Y, x4 BD",
        )
        return 0
    t0 = time.time()
    train_set = qd.build_upsampled_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
    eval_sets = {
        f"{sub} ×{SR_SCALE} BD (Y, crop {SR_SCALE})": qd.build_upsampled_sr_priors(
            splits[sub], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd"
        )
        for sub in qd.SR_TEST
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"data: {len(splits['train'])} Y train images, "
        + ", ".join(f"{k} {len(splits[k])}" for k in qd.SR_TEST)
        + f" test images; priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per "
        "upsampled LQ test image)"
    )
    rows = [r for r in ROWS if r in args.rows]
    res, per_image = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print(
        "\nDnCNN-3 frozen, bicubic ×4 (Y, crop 4): "
        + ", ".join(f"{k} {v:.3f}" for k, v in repro.items())
        + " (published Set5 31.40, Set14 28.04)"
    )
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, DnCNN-3 (bicubic ×{SR_SCALE} on the upsampled luma) → ×{SR_SCALE} BD — "
        f"{seg.label()}, {args.encoding} encoding ({n_regions:.0f} regions per test image, "
        f"{args.units or 'all'} units)",
        {**bb_info, "bicubic_x4_frozen": repro},
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": "bd",
            "regions_per_test_image": n_regions,
            "dncnn3_bicubic_x4_frozen": repro,
        },
        per_image=per_image,
    )
    return 0
