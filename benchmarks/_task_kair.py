"""Task ``kair``: KAIR's pretrained grey DnCNN (sigma 25), its frozen Set12 row reproduced first, then
adapted to ``--kair-degradation``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import kair_degradation, kair_frozen_psnr, load_kair_dncnn, log  # noqa: E402
from _ladder import ROWS, _encode_sets, run_ladder  # noqa: E402
from _report import _report  # noqa: E402
from _tune import tune_distill  # noqa: E402


def main_kair(args, argv, t_all, cache: qd.LabelCache) -> int:
    """KAIR's grey DnCNN (sigma 25): reproduce its frozen Set12 row, then the ladder adapting it to
    ``--kair-degradation`` (train: grey Set14 + McMaster + CBSD68; test: Set12, full images)."""
    splits = qd.load_grey_splits(
        args.data,
        args.kair_root / "testsets" / "set12",
        n_test=args.n_test,
        n_train=args.n_train,
        train_crop=args.train_crop,
    )
    backbone = load_kair_dncnn(args.kair_root / "model_zoo" / "dncnn_25.pth")
    for p in backbone.parameters():
        p.requires_grad_(False)
    repro, per_image = kair_frozen_psnr(backbone, splits.test, 25.0, args.device)
    log(
        f"KAIR dncnn_25 frozen, Set12 sigma 25 (KAIR protocol): {repro:.3f} dB (published 30.43); per image "
        + " ".join(f"{v:.2f}" for v in per_image)
    )
    sigma, jpeg = kair_degradation(args.kair_degradation)
    seg = qd.Segmenter.parse(args.segmenter)
    if args.tune_distill:
        tune_distill(args, splits, backbone, cache, sigma=sigma, jpeg=jpeg)
        return 0
    t0 = time.time()
    train_set = qd.build_priors(
        splits.train, sigma=sigma, realisations=args.realisations, noise_base=1, seg=seg, cache=cache, jpeg=jpeg
    )
    tag = f"Set12 {args.kair_degradation} (grey)"
    eval_sets = {
        tag: qd.build_priors(splits.test, sigma=sigma, realisations=1, noise_base=0, seg=seg, cache=cache, jpeg=jpeg)
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"data: {len(splits.train)} grey train images, {len(splits.test)} Set12 images; priors ready in "
        f"{time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per test image)"
    )
    rows = [r for r in ROWS if r in args.rows]
    res, per_image = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print(f"\nKAIR dncnn_25 frozen, Set12 σ=25, KAIR's protocol: {repro:.3f} dB (published 30.43)")
    bb_info = {
        "cached": True,
        "path": str(args.kair_root / "model_zoo" / "dncnn_25.pth"),
        "arch": "KAIR DnCNN",
        "kair_set12_sigma25": repro,
        "kair_set12_sigma25_per_image": per_image,
    }
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, KAIR DnCNN σ=25 → {args.kair_degradation} — {seg.label()}, "
        f"{args.encoding} encoding ({n_regions:.0f} regions per test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": args.kair_degradation,
            "regions_per_test_image": n_regions,
            "kair_frozen_sigma25": repro,
            "dropped_near_duplicates": splits.dropped,
        },
        per_image=per_image,
    )
    return 0
