"""Task ``denoise`` (the self-trained colour DnCNN, CBSD68) and ``cdncnnb`` (cszn/DnCNN's CDnCNN-B):
the ladder, and ``--tune`` (the segmenter and encoding chosen on validation)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import load_cdncnn_b, log, pretrain_backbone  # noqa: E402
from _ladder import (  # noqa: E402
    ROWS,
    _encode_sets,
    _make_sam,
    evaluate,
    make_schedule,
    make_spt,
    restored_view,
    run_ladder,
    train_model,
)
from _report import _report  # noqa: E402
from _tune import tune_distill  # noqa: E402


def main_denoise(args, argv, t_all, cache: qd.LabelCache) -> int:
    """The ladder of the colour denoising tasks (``denoise``, ``cdncnnb``), or ``--tune`` / ``--tune-distill``
    on their validation split."""
    splits = qd.load_splits(
        args.data, n_test=args.n_test, test_crop=args.test_crop, n_train=args.n_train, train_crop=args.train_crop
    )
    log(
        f"data: {len(splits.train)} train images, {len(splits.val)} val crops, {len(splits.test)} test images "
        f"(crop {args.test_crop or 'full'}); prior code path: {qd.prior_code_path()}"
    )
    if args.task == "cdncnnb":
        backbone, bb_info = load_cdncnn_b(args.dncnn_root)
    else:
        backbone, bb_info = pretrain_backbone(args, splits.train, args.cache_dir)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if args.tune:
        tune(args, splits, backbone, cache)
        log(f"total wall time {time.time() - t_all:.0f}s")
        return 0
    if args.tune_distill:
        tune_distill(args, splits, backbone, cache, sigma=args.sigma if args.unit_sigma is None else args.unit_sigma)
        log(f"total wall time {time.time() - t_all:.0f}s")
        return 0
    sam = _make_sam(args)
    seg = qd.Segmenter.parse(args.segmenter)
    t0 = time.time()
    unit_sigma = args.sigma if args.unit_sigma is None else args.unit_sigma
    view = restored_view(backbone) if args.segment_input == "restored" else None
    train_set = qd.build_priors(
        splits.train,
        sigma=unit_sigma,
        realisations=args.realisations,
        noise_base=1,
        seg=seg,
        cache=cache,
        sam=sam,
        segment_view=view,
    )
    eval_sets = {
        f"CBSD68 σ={s:g}" + ("" if s == unit_sigma else " (unseen)"): qd.build_priors(
            splits.test, sigma=s, realisations=1, noise_base=0, seg=seg, cache=cache, sam=sam, segment_view=view
        )
        for s in args.test_sigmas
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per test image; "
        f"encoding {args.encoding})"
    )
    rows = [r for r in ROWS if r in args.rows]
    res, per_image = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder — {seg.label()}, {args.encoding} encoding ({n_regions:.0f} regions per "
        f"test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "segment_input": args.segment_input,
            "regions_per_test_image": n_regions,
            "dropped_near_duplicates": splits.dropped,
        },
        per_image=per_image,
    )
    return 0


def tune(args, splits: qd.Splits, backbone, cache: qd.LabelCache) -> None:
    """Choose the segmenter and the encoding on the validation split (McMaster 15-18), never on
    the test set: (b) − (c) and the oracle's (d) − (c) per fusion, units trained at the unit sigma."""
    names = [f"val σ={s:g}" for s in args.test_sigmas]
    unit_sigma = args.sigma if args.unit_sigma is None else args.unit_sigma
    rows_out = []
    for text in args.tune_candidates:
        seg = qd.Segmenter.parse(text)
        view = restored_view(backbone) if args.segment_input == "restored" else None
        tr0 = qd.build_priors(
            splits.train,
            sigma=unit_sigma,
            realisations=args.realisations,
            noise_base=1,
            seg=seg,
            cache=cache,
            segment_view=view,
        )
        vals0 = {
            n: qd.build_priors(
                splits.val, sigma=s, realisations=1, noise_base=2, seg=seg, cache=cache, segment_view=view
            )
            for n, s in zip(names, args.test_sigmas, strict=True)
        }
        n_regions = float(np.mean([len(np.unique(p[0])) for p in vals0[names[0]].lq_prior]))
        for encoding in args.tune_encodings:
            t0 = time.time()
            tr = qd.apply_encoding(tr0, encoding)
            vals = {n: qd.apply_encoding(v, encoding) for n, v in vals0.items()}
            cells = []
            for fusion in args.fusions:
                d = {(k, n): [] for k in ("lq", "oracle") for n in names}
                for seed in args.seeds:
                    sched = make_schedule(seed, args.steps, args.batch, args.patch, tr)
                    sc = {}
                    for prior in ("lq", "const", "oracle"):
                        m = make_spt(backbone, fusion, args, seed, tr.prior_channels)
                        train_model(m, sched, tr, prior, args.lr, args.patch)
                        sc[prior] = {n: evaluate(m, es, prior) for n, es in vals.items()}
                    for k in ("lq", "oracle"):
                        for n in names:
                            d[(k, n)].append(sc[k][n] - sc["const"][n])
                cells.append(
                    " / ".join(f"{np.mean(d[('lq', n)]):+.3f} ({np.mean(d[('oracle', n)]):+.3f})" for n in names)
                )
            rows_out.append(f"| {seg.label()} | {encoding} | {n_regions:.0f} | " + " | ".join(cells) + " |")
            log(f"tune {seg.label()} {encoding}: {rows_out[-1]} ({time.time() - t0:.0f}s)")
    print(
        f"\n### Validation (McMaster 15-18, 256 px centre crops; units trained at σ={unit_sigma:g}): "
        "(b) − (c), in brackets the oracle's (d) − (c), in dB, " + " / ".join(names) + "\n"
    )
    print("| segmenter | encoding | regions per val crop | " + " | ".join(args.fusions) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.fusions))
    print("\n".join(rows_out))
