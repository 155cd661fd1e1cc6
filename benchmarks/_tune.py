"""``--tune-distill``: the distillation settings (weight, student-only steps, student width) chosen on
a validation split, never on a test set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import log  # noqa: E402
from _ladder import ROW_PRIOR, evaluate, make_schedule, make_spt, train_model  # noqa: E402


def tune_distill(args, splits: qd.Splits, backbone, cache: qd.LabelCache, *, sigma: float, jpeg: int = 0) -> None:
    """Choose the distillation settings (weight, student-only steps, student width) on the validation
    split, never on the test set: (g) − (h) and (g) − (c) per candidate and fusion, in dB."""
    seg = qd.Segmenter.parse(args.segmenter)
    tr = qd.apply_encoding(
        qd.build_priors(
            splits.train, sigma=sigma, realisations=args.realisations, noise_base=1, seg=seg, cache=cache, jpeg=jpeg
        ),
        args.encoding,
    )
    val = qd.apply_encoding(
        qd.build_priors(splits.val, sigma=sigma, realisations=1, noise_base=2, seg=seg, cache=cache, jpeg=jpeg),
        args.encoding,
    )
    tune_distill_sets(
        args,
        backbone,
        tr,
        val,
        f"McMaster 15-18; σ={sigma:g}{f', JPEG q={jpeg}' if jpeg else ''}",
        {"sigma": sigma, "jpeg": jpeg},
    )


def tune_distill_sets(args, backbone, tr: qd.PriorSet, val: qd.PriorSet, title: str, extra: dict | None = None) -> None:
    """The ``--tune-distill`` comparison on encoded training and validation sets (see :func:`tune_distill`)."""
    backbone = backbone.to(args.device)
    lines, scored = [], []
    base: dict[tuple[int, str, str, int], float] = {}
    for weight, steps, width in args.tune_distill:
        cells, worst = [], []
        for fusion in args.fusions:
            d_h, d_c = [], []
            for seed in args.seeds:
                sched = make_schedule(seed, args.steps, args.batch, args.patch, tr)
                a = argparse.Namespace(**{**vars(args), "student_width": width})
                for row in ("c", "h"):
                    key = (seed, fusion, row, width if row == "h" else 0)
                    if key not in base:
                        m = make_spt(backbone, fusion, a, seed, tr.prior_channels, student=row == "h")
                        train_model(m, sched, tr, ROW_PRIOR[row], args.lr, args.patch, device=args.device)
                        base[key] = evaluate(m, val, ROW_PRIOR[row])
                m = make_spt(backbone, fusion, a, seed, tr.prior_channels, student=True)
                train_model(
                    m,
                    sched,
                    tr,
                    "student",
                    args.lr,
                    args.patch,
                    distill_weight=weight,
                    student_steps=steps,
                    device=args.device,
                )
                g = evaluate(m, val, "student")
                d_h.append(g - base[(seed, fusion, "h", width)])
                d_c.append(g - base[(seed, fusion, "c", 0)])
            cells.append(f"{np.mean(d_h):+.3f} / {np.mean(d_c):+.3f}")
            worst.append(min(np.mean(d_h), np.mean(d_c)))
        scored.append(
            {
                "candidate": f"{weight:g}:{steps}:{width}",
                "weight": weight,
                "student_steps": steps,
                "student_width": width,
                "score": float(np.mean(worst)),
            }
        )
        lines.append(f"| {weight:g} | {steps} | {width} | " + " | ".join(cells) + " |")
        log(f"tune-distill {weight:g}:{steps}:{width}: {lines[-1]}")
    print(f"\n### Distillation settings on validation ({title}): (g) − (h) / (g) − (c), dB\n")
    print("| distill weight | student-only steps | student width | " + " | ".join(args.fusions) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.fusions))
    print("\n".join(lines))
    # the choice: the candidate whose smaller margin (over h and over c), averaged over fusions, is largest
    best = max(scored, key=lambda c: c["score"])
    print(
        f"\nchosen on validation: {best['candidate']} (weight:student-steps:width; min(g − h, g − c) "
        f"{best['score']:+.3f} dB)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "tune_distill": scored,
                    "best": best,
                    **(extra or {}),
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                },
                indent=1,
                sort_keys=True,
            )
        )
