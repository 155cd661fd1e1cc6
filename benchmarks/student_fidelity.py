"""How well a distilled prior's student reproduces its teacher, on a task's VALIDATION split.

    python benchmarks/student_fidelity.py --task cdncnnb --dncnn-root <cszn/DnCNN>          # sigma 75
    python benchmarks/student_fidelity.py --task dncnn3bd --dncnn-root <cszn/DnCNN>
    python benchmarks/student_fidelity.py --task kair --kair-root <KAIR> --kair-degradation jpeg30-sigma25
    python benchmarks/student_fidelity.py --task cdncnnb --students 4x16:400 6x24:4000 --json out.json

The ladder's rows g/h (``quality.py``) train the student alone on the teacher's map (the ``boundary``
encoding of segments of the CLEAN image) for ``--student-steps`` batches before the units train. This
script measures that first phase alone, cheaply (no backbone in the loop), on the split every setting is
chosen on (McMaster 15-18, as in ``quality.py``; never a test set): for each student ``DEPTHxWIDTH:STEPS``
it trains on the ladder's training batches (``_ladder.make_schedule``, seed 0) with the ladder's loss
(``spt_adapter.training.train.distill_loss``) and learning rate, then prints

* **AP**: the average precision of the student's map against the teacher's boundary pixels on the
  validation images (a constant map scores the base rate; 1 is perfect);
* **BCE**: the distillation loss on the same images;
* the student's forward FLOPs as a share of the backbone's (the issue's budget: 10 %).

Two reference rows need no training: the gradient magnitude of the frozen backbone's own output (what
the units can already compute from the network's features, roughly) and of the clean image. A student
whose AP is near the base rate carries nothing of the teacher into the units, whatever the ladder then
measures; a student below the backbone's own output hands the units less than they already have.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import DNCNN_3, kair_degradation, load_cdncnn_b, load_dncnn_mat, load_kair_dncnn  # noqa: E402
from _ladder import get_batch, make_schedule  # noqa: E402
from spt_adapter.core.student import PriorStudent  # noqa: E402
from spt_adapter.training.train import distill_loss  # noqa: E402

SEGMENTER = "felzenszwalb:scale=300,sigma=0.8,min_size=50"  # quality.py's default (result 6)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("cdncnnb", "dncnn3bd", "kair"), required=True)
    p.add_argument("--dncnn-root", type=Path, default=None, help="cdncnnb, dncnn3bd: a cszn/DnCNN checkout")
    p.add_argument("--kair-root", type=Path, default=None, help="kair: a KAIR checkout")
    p.add_argument("--kair-degradation", choices=("sigma50", "jpeg30-sigma25"), default="sigma50")
    p.add_argument("--sigma", type=float, default=75.0, help="cdncnnb: the noise the units adapt to")
    p.add_argument("--data", type=Path, default=qd.DATA_DEFAULT, help="folder with Set14/McMaster/CBSD68")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "spt-adapter" / "quality")
    p.add_argument(
        "--students",
        nargs="+",
        default=["4x16:400", "4x16:4000", "6x24:4000"],
        metavar="DEPTHxWIDTH:STEPS",
        help="students to train alone on the teacher (default: the result-11 setting and two longer ones)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--lr", type=float, default=1e-3, help="the ladder's learning rate (--lr of quality.py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 training images, 2 validation images")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    for spec in args.students:
        try:
            shape, steps = spec.split(":")
            depth, width = (int(v) for v in shape.split("x"))
            int(steps)
        except ValueError:
            p.error(f"--students takes DEPTHxWIDTH:STEPS (e.g. 6x24:4000), got {spec!r}")
    if args.task in ("cdncnnb", "dncnn3bd") and args.dncnn_root is None:
        p.error(f"--task {args.task} needs --dncnn-root (a cszn/DnCNN checkout)")
    if args.task == "kair" and args.kair_root is None:
        p.error("--task kair needs --kair-root (a KAIR checkout)")
    return args


def validation_sets(args):
    """(train PriorSet, validation PriorSet, frozen backbone, input channels), boundary-encoded, as
    ``quality.py`` builds them for the task."""
    seg = qd.Segmenter.parse(SEGMENTER)
    cache = qd.LabelCache(args.cache_dir)
    n = 2 if args.quick else 0
    if args.task == "dncnn3bd":
        train400 = None if args.quick else args.dncnn_root / "TrainingCodes" / "DnCNN_TrainingCodes_v1.0" / "data"
        splits = qd.load_y_sr_splits(
            args.data,
            None if train400 is None else train400 / "Train400",
            scale=4,
            n_train=n,
            train_crop=128 if n else 0,
        )
        sets = [
            qd.build_upsampled_sr_priors(splits[k], scale=4, seg=seg, cache=cache, degradation="bd")
            for k in ("train", "val")
        ]
        backbone, _ = load_dncnn_mat(args.dncnn_root, DNCNN_3, "DnCNN-3")
        channels = 1
    else:
        if args.task == "kair":
            splits = qd.load_grey_splits(
                args.data, args.kair_root / "testsets" / "set12", n_train=n, train_crop=128 if n else 0
            )
            sigma, jpeg = kair_degradation(args.kair_degradation)
            backbone, channels = load_kair_dncnn(args.kair_root / "model_zoo" / "dncnn_25.pth"), 1
        else:
            splits = qd.load_splits(args.data, n_train=n, train_crop=128 if n else 0)
            sigma, jpeg = args.sigma, 0
            backbone, channels = load_cdncnn_b(args.dncnn_root)[0], 3
        sets = [
            qd.build_priors(images, sigma=sigma, realisations=r, noise_base=base, seg=seg, cache=cache, jpeg=jpeg)
            for images, r, base in ((splits.train, 3, 1), (splits.val, 1, 2))
        ]
    train, val = (qd.apply_encoding(s, "boundary") for s in sets)
    if n:
        val.clean[:], val.noisy[:], val.oracle_prior[:] = val.clean[:n], val.noisy[:n], val.oracle_prior[:n]
    for param in backbone.parameters():
        param.requires_grad_(False)
    return train, val, backbone.eval(), channels


def average_precision(score: np.ndarray, target: np.ndarray) -> float:
    """Average precision of a per-pixel score against the 0/1 map ``target > 0.5`` (ties broken by
    order; a constant score gives the base rate)."""
    t = (target.ravel() > 0.5)[np.argsort(-score.ravel(), kind="stable")]
    if not t.any():
        return float("nan")
    precision = np.cumsum(t) / np.arange(1, t.size + 1)
    return float(precision[t].mean())


def gradient_magnitude(image_chw: np.ndarray) -> np.ndarray:
    g = image_chw.mean(0)
    return np.abs(np.diff(g, axis=0, append=g[-1:])) + np.abs(np.diff(g, axis=1, append=g[:, -1:]))


def _chw(a: np.ndarray) -> np.ndarray:
    return (a[..., None] if a.ndim == 2 else a).transpose(2, 0, 1)


def _teacher(m: np.ndarray) -> np.ndarray:
    return m[..., 0] if m.ndim == 3 else m


def flops_share(student: torch.nn.Module, backbone: torch.nn.Module, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, channels, 64, 64)
    counts = []
    for net in (student, backbone):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        counts.append(counter.get_total_flops())
    return counts[0] / counts[1]


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_all = time.time()
    train, val, backbone, channels = validation_sets(args)
    teachers = [_teacher(np.asarray(m)) for m in val.oracle_prior]
    inputs = [torch.from_numpy(np.ascontiguousarray(_chw(n[0])))[None] for n in val.noisy]
    base = float(np.mean(np.concatenate([t.ravel() for t in teachers]) > 0.5))
    with torch.no_grad():
        restored = [backbone(x)[0].clamp(0, 1).numpy() for x in inputs]
    rows = [
        {"what": "constant map (the base rate)", "ap": base},
        {
            "what": "gradient magnitude of the frozen backbone's output",
            "ap": float(
                np.mean([average_precision(gradient_magnitude(r), t) for r, t in zip(restored, teachers, strict=True)])
            ),
        },
        {
            "what": "gradient magnitude of the clean image (reference)",
            "ap": float(
                np.mean(
                    [
                        average_precision(gradient_magnitude(_chw(c)), t)
                        for c, t in zip(val.clean, teachers, strict=True)
                    ]
                )
            ),
        },
    ]
    for spec in args.students:
        shape, steps_text = spec.split(":")
        depth, width = (int(v) for v in shape.split("x"))
        steps = int(steps_text)
        torch.manual_seed(0)
        student = PriorStudent(1, channels, width, depth)
        opt = torch.optim.Adam(student.parameters(), lr=args.lr)
        sched = make_schedule(0, steps, args.batch, args.patch, train)
        t0 = time.time()
        for step in range(steps):
            lq, _, teacher = get_batch(sched[step], args.patch, train, "oracle")
            loss = distill_loss(student.logits(lq), teacher)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logits = [student.logits(x)[0, 0] for x in inputs]
        aps = [average_precision(torch.sigmoid(lo).numpy(), t) for lo, t in zip(logits, teachers, strict=True)]
        bces = [
            float(distill_loss(lo, torch.from_numpy(t.astype(np.float32))))
            for lo, t in zip(logits, teachers, strict=True)
        ]
        rows.append(
            {
                "what": f"student {depth}x{width}, {steps} steps alone",
                "ap": float(np.mean(aps)),
                "bce": float(np.mean(bces)),
                "flops_share": flops_share(student, backbone, channels),
                "seconds": time.time() - t0,
            }
        )
        print(f"[{time.strftime('%H:%M:%S')}] {rows[-1]['what']}: AP {rows[-1]['ap']:.3f}", file=sys.stderr)
    print(
        f"### Student fidelity, task {args.task}"
        + (f" ({args.kair_degradation})" if args.task == "kair" else "")
        + (f" σ {args.sigma:g}" if args.task == "cdncnnb" else "")
        + f": {len(teachers)} validation images, boundary teacher ({SEGMENTER} on the clean image)\n"
    )
    print(f"command: `python benchmarks/student_fidelity.py {' '.join(sys.argv[1:] if argv is None else argv)}`  ")
    print(f"wall time {time.time() - t_all:.0f} s, {args.threads} thread(s)\n")
    print("| map | AP vs teacher | BCE | FLOPs / backbone | train s |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        share = f"{100 * r['flops_share']:.1f} %" if "flops_share" in r else "–"
        bce = f"{r['bce']:.4f}" if "bce" in r else "–"
        secs = f"{r['seconds']:.0f}" if "seconds" in r else "–"
        print(f"| {r['what']} | {r['ap']:.3f} | {bce} | {share} | {secs} |")
    if args.json:
        args.json.write_text(json.dumps({"task": args.task, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
