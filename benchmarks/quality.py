"""Quality benchmark: does the segment prior earn its keep, or do SPT units only add capacity?

The "prior ladder", on real images (train: Set14 + McMaster crops; validation: McMaster 15-18;
test: CBSD68), colour denoising with a backbone "pre-trained" here at one sigma:

  (a) frozen backbone
  (b) + SPT units, prior = classical segmentation of the noisy (LQ) input
  (c) + SPT units, constant prior (same parameters, no information): the control
  (d) + SPT units, prior = the same segmentation of the clean image (oracle)
  (e) full fine-tuning of the backbone for the same steps and batches
  (f) + SPT units, prior = SAM masks of the LQ input (only with --sam-checkpoint)
  (g) + SPT units, distilled prior: a small student (inside the adapter) maps the LQ input to the
      prior; at training time it learns the teacher's map, the segmentation of the *clean* image
      (the oracle's masks), by a distillation loss beside the restoration loss. No segmenter at test.
  (h) the same student + units trained with the restoration loss only (no teacher): the
      equal-parameter, equal-step control of the student's capacity

for each fusion (concat, sft, pool) and several seeds. Every row of a seed sees exactly the same
batches (same crops, noise and augmentation) and the same unit initialisation; only the prior
differs. Tested at the training sigma and at an unseen sigma (out of distribution).

    python benchmarks/quality.py                 # the default run (docs/results.md)
    python benchmarks/quality.py --quick         # a smoke run in well under a minute
    python benchmarks/quality.py --tune          # choose the segmenter on the validation split
    python benchmarks/quality.py --task sr4      # the same ladder for bicubic x4 super-resolution
    python benchmarks/quality.py --task kair --kair-root /path/to/KAIR      # KAIR's pretrained grey DnCNN

With ``--task sr4`` the ladder runs for bicubic x4 SR on the Set5/Set14 protocol: LQ = MATLAB-style
bicubic downsample of the HR image (8-bit), PSNR on the Y channel with a 4-pixel border crop; the
backbone is a small Real-ESRGAN "Compact" network (spandrel's SRVGGNetCompact, pixel-shuffle x4)
pre-trained here on McMaster + CBSD68 crops and cached; tested on Set5 and Set14 (full images).
Prior (b) segments the LQ image; the oracle (d) segments the HR image (region sizes scaled by 16)
and nearest-downsamples the label map to the LQ size.

With ``--task kair`` the backbone is KAIR's pretrained grey DnCNN (``model_zoo/dncnn_25.pth``, 17
layers, trained at sigma 25; published 30.43 dB on Set12): the frozen row is first reproduced with
KAIR's own test protocol, then the unit rows adapt it to ``--kair-degradation`` (sigma 50, or sigma 25
noise after JPEG q=30, a degradation it never saw), trained on grey Set14 + McMaster + CBSD68 and
tested on Set12 (full images).

Settings are chosen with --tune on the validation split, never on the test sets. ``--device cuda``
and ``--jobs N`` (N trainings in parallel processes) are for GPU runs
(``benchmarks/distill_ladder.sh``).


Layout: the tasks in ``_task_denoise.py`` (denoise, cdncnnb), ``_task_sr.py``, ``_task_kair.py`` and
``_task_dncnn.py``; the ladder they share in ``_ladder.py`` (schedules, rows, training, evaluation),
``_report.py`` (tables, JSON) and ``_tune.py`` (``--tune-distill``); backbones in ``_backbones.py``;
data and priors in ``_quality_data.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402
from _backbones import CDNCNN_B, DNCNN_3, KAIR_DEGRADATIONS  # noqa: E402

# the pieces tests and notebooks call as quality.<name>, re-exported (``import x as x``)
from _backbones import build_backbone as build_backbone  # noqa: E402
from _backbones import kair_frozen_psnr as kair_frozen_psnr  # noqa: E402
from _backbones import load_cdncnn_b as load_cdncnn_b  # noqa: E402
from _backbones import load_dncnn_mat as load_dncnn_mat  # noqa: E402
from _backbones import load_kair_dncnn as load_kair_dncnn  # noqa: E402
from _backbones import sr_unit_targets as sr_unit_targets  # noqa: E402
from _backbones import unit_targets as unit_targets  # noqa: E402
from _ladder import DEFAULT_SEGMENTER, FUSIONS, ROWS, TUNE_CANDIDATES  # noqa: E402
from _ladder import ROW_PRIOR as ROW_PRIOR  # noqa: E402
from _ladder import StudentReadsRestored as StudentReadsRestored  # noqa: E402
from _ladder import evaluate as evaluate  # noqa: E402
from _ladder import get_batch as get_batch  # noqa: E402
from _ladder import make_schedule as make_schedule  # noqa: E402
from _ladder import make_spt as make_spt  # noqa: E402
from _ladder import psnr_rgb as psnr_rgb  # noqa: E402
from _ladder import restored_view as restored_view  # noqa: E402
from _ladder import train_model as train_model  # noqa: E402
from _ladder import train_student_alone as train_student_alone  # noqa: E402
from _report import render as render  # noqa: E402
from _task_denoise import main_denoise  # noqa: E402
from _task_dncnn import main_dncnn3  # noqa: E402
from _task_kair import main_kair  # noqa: E402
from _task_sr import main_sr  # noqa: E402
from _task_sr import pretrain_sr_backbone as pretrain_sr_backbone  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--task",
        choices=("denoise", "sr4", "kair", "cdncnnb", "dncnn3bd"),
        default="denoise",
        help="denoise: colour denoising on CBSD68 (default); sr4: bicubic x4 SR on Set5/Set14; kair: "
        "KAIR's pretrained grey DnCNN (sigma 25) adapted to --kair-degradation, tested on Set12; "
        "cdncnnb: cszn/DnCNN's pretrained colour blind CDnCNN-B (sigma 0-55) in place of the "
        "self-trained colour DnCNN (default unit/test sigma 75, outside its range), CBSD68; "
        "dncnn3bd: cszn/DnCNN's DnCNN-3 (SR on the bicubic-upsampled luma) adapted to x4 BD, Set5/Set14",
    )
    p.add_argument(
        "--dncnn-root",
        type=Path,
        default=Path(os.environ["SPT_DNCNN_ROOT"]) if os.environ.get("SPT_DNCNN_ROOT") else None,
        help="cdncnnb, dncnn3bd: a cszn/DnCNN checkout (model/*.mat, Train400); required for those "
        "tasks unless $SPT_DNCNN_ROOT is set",
    )
    p.add_argument(
        "--kair-root",
        type=Path,
        default=Path(os.environ["SPT_KAIR_ROOT"]) if os.environ.get("SPT_KAIR_ROOT") else None,
        help="kair: a KAIR checkout (model_zoo/dncnn_25.pth, testsets/set12); required for --task kair "
        "unless $SPT_KAIR_ROOT is set",
    )
    p.add_argument(
        "--kair-degradation",
        choices=KAIR_DEGRADATIONS,
        default="sigma50",
        help="kair: what the unit rows adapt the sigma-25 DnCNN to: sigma50 (Gaussian noise sigma 50) or "
        "jpeg30-sigma25 (JPEG q=30, then sigma 25 noise: a degradation it never saw)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (trainings and tests of the ladder)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes (on one GPU with cuda)")
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.1,
        help="row g: weight of the distillation BCE beside the restoration loss",
    )
    p.add_argument(
        "--student-steps",
        type=int,
        default=0,
        help="row g: batches on which the student first learns the teacher alone (no backbone, units "
        "untouched); every row's units then train --steps steps on the same batches",
    )
    p.add_argument("--student-width", type=int, default=16, help="rows g/h: student conv width")
    p.add_argument("--student-depth", type=int, default=4, help="rows g/h: student conv layers")
    p.add_argument(
        "--student-input",
        choices=("lq", "restored"),
        default="lq",
        help="rows g/h: what the student reads: the LQ input (default; the adapter's PriorStudent) or "
        "[LQ, the frozen backbone's restoration of it] (one more backbone forward per image)",
    )
    p.add_argument(
        "--tune-distill",
        nargs="+",
        default=None,
        metavar="WEIGHT:STEPS:WIDTH",
        help="choose the distillation settings on the validation split: (g) − (h) and (g) − (c) per "
        "candidate, e.g. 0.1:0:16 1:200:16, and exit",
    )
    p.add_argument("--data", type=Path, default=qd.DATA_DEFAULT, help="folder with Set14/McMaster/CBSD68")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "spt-adapter" / "quality")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds): few steps/images, 1 seed")
    p.add_argument("--tune", action="store_true", help="compare segmenters on the validation split and exit")
    p.add_argument("--tune-candidates", nargs="+", default=list(TUNE_CANDIDATES))
    p.add_argument(
        "--segmenter",
        default=DEFAULT_SEGMENTER,
        help="e.g. slic:region_px=400,compactness=10 or felzenszwalb:scale=3000,min_size=400",
    )
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="adds row (f): SAM masks of the LQ input")
    p.add_argument("--sam-model-type", default="vit_b")
    p.add_argument(
        "--fusions", nargs="+", default=None, choices=FUSIONS, help="default: all three for denoise, concat for sr4"
    )
    p.add_argument("--rows", default="abcde", help="subset of abcdefgh")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sigma", type=float, default=25.0, help="training sigma (backbone and units)")
    p.add_argument(
        "--unit-sigma",
        type=float,
        default=None,
        help="sigma of the data rows (b)-(f) train on (default: --sigma); another value adapts the "
        "backbone to a noise level it never saw",
    )
    p.add_argument("--test-sigmas", type=float, nargs="+", default=[25.0, 50.0])
    p.add_argument("--nc", type=int, default=32)
    p.add_argument("--nb", type=int, default=8)
    p.add_argument("--sr-feat", type=int, default=32, help="sr4: channels of the SRVGGNetCompact backbone")
    p.add_argument("--sr-convs", type=int, default=8, help="sr4: hidden convs of the SRVGGNetCompact backbone")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: 1000 (denoise), 2000 (sr4)")
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of every row (b)-(f); default: 200 (denoise), 1500 (sr4)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--patch",
        type=int,
        default=None,
        help="training patch; for sr4 the LQ patch (HR: 4x). Default: 48 (denoise), 32 (sr4)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the units")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="learning rate of full fine-tuning (e)")
    p.add_argument(
        "--encoding",
        default="label",
        help="prior encoding of the segments: label (default), boundary, onehot:K "
        "(spt_adapter.prior.encode_masks); pool needs label",
    )
    p.add_argument(
        "--segment-input",
        choices=("lq", "restored"),
        default="lq",
        help="denoise: what the LQ prior (b) segments: the noisy input (default) or the frozen "
        "backbone's restoration of it",
    )
    p.add_argument("--units", type=int, default=3, help="SPT units spread through the depth (0: one per hidden conv)")
    p.add_argument(
        "--sr-degradation",
        choices=qd.SR_DEGRADATIONS,
        default="bicubic",
        help="sr4: LQ of the unit rows' training and test data; the backbone is always pre-trained on "
        "bicubic, so 'bd' (7x7 Gaussian blur sigma 1.6, then bicubic) adapts it to an unseen blur",
    )
    p.add_argument(
        "--tune-encodings", nargs="+", default=None, help="--tune: encodings to compare (default: --encoding)"
    )
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--realisations", type=int, default=3, help="fixed noise draws per training image")
    p.add_argument("--n-test", type=int, default=0, help="first N CBSD68 images (0: all 68)")
    p.add_argument(
        "--test-crop",
        type=int,
        default=None,
        help="centre crop of test images (0: full size); default: 160 (denoise), 0 (sr4)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write all per-seed numbers here")
    args = p.parse_args(argv)
    sr = args.task == "sr4"
    kair = args.task == "kair"
    dncnn3 = args.task == "dncnn3bd"
    if args.task in ("cdncnnb", "dncnn3bd") and args.dncnn_root is None:
        p.error(
            f"--task {args.task} needs --dncnn-root PATH (a cszn/DnCNN checkout with model/*.mat) or SPT_DNCNN_ROOT"
        )
    if args.task == "cdncnnb":
        if args.unit_sigma is None:
            args.unit_sigma = 75.0
        if args.test_sigmas == [25.0, 50.0]:  # the parser default: test where the units were trained
            args.test_sigmas = [args.unit_sigma]
    if kair and args.kair_root is None:
        p.error(
            "--task kair needs --kair-root PATH (a KAIR checkout with model_zoo/dncnn_25.pth and testsets/set12) "
            "or SPT_KAIR_ROOT"
        )
    defaults = {
        "fusions": ["concat"] if (sr or kair or args.task in ("cdncnnb", "dncnn3bd")) else list(FUSIONS),
        "pretrain_steps": 2000 if sr else 1000,
        "steps": 1500 if sr else 200,
        "patch": 32 if sr else 48,
        "test_crop": 0 if (sr or kair or dncnn3) else 160,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.pretrain_steps, args.steps, args.seeds = 20, 6, [0]
        args.n_test, args.test_crop, args.realisations = 3, 64, 1
        args.pretrain_batch, args.batch, args.patch = 4, 4, 32
        args.nc, args.nb = 8, 4
        args.tune_candidates = args.tune_candidates[:1]
        args.n_train, args.train_crop = 4, 128
        args.sr_feat, args.sr_convs = 8, 4
        if sr:
            args.n_test, args.patch = 2, 16
    else:
        args.n_train, args.train_crop = 0, 0
    args.in_channels = 1 if (kair or dncnn3) else 3
    if args.task in ("cdncnnb", "dncnn3bd"):
        args.nb = (CDNCNN_B if args.task == "cdncnnb" else DNCNN_3)[1]  # the pretrained depth, whatever --quick says
    if not set(args.rows) <= set(ROWS):
        p.error(f"--rows takes letters from {ROWS!r}, got {args.rows!r}")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.distill_weight < 0 or args.student_steps < 0:
        p.error("--distill-weight and --student-steps must be >= 0")
    try:
        from spt_adapter.core.student import check_student

        check_student({"width": args.student_width, "depth": args.student_depth})
    except Exception as exc:  # ConfigError names the bound
        p.error(str(exc))
    if set(args.rows) & set("gh") and "pool" in args.fusions:
        p.error("rows g/h: the student makes a soft map, not the label map the pool fusion reads")
    if args.tune_distill:
        try:
            args.tune_distill = [parse_distill_candidate(c) for c in args.tune_distill]
        except ValueError as exc:
            p.error(str(exc))
        if sr:
            p.error("--tune-distill runs on a validation split of denoise, kair or dncnn3bd")
    if (sr or kair or dncnn3) and args.tune:
        p.error("--tune chooses the segmenter on the denoising validation split; it has no --task sr4 mode")
    try:
        from spt_adapter.prior.encode import parse_encoding

        for enc in [args.encoding] + list(args.tune_encodings or []):
            parse_encoding(enc)
    except Exception as exc:  # PriorError names the bad encoding
        p.error(str(exc))
    if "pool" in args.fusions and set([args.encoding] + list(args.tune_encodings or [])) != {"label"}:
        p.error("the pool fusion averages features inside the regions of a label map: use --encoding label")
    if args.tune_encodings is None:
        args.tune_encodings = [args.encoding]
    if args.student_input == "restored" and sr:
        p.error("--student-input restored needs a backbone whose output has the input's size (not --task sr4)")
    if args.segment_input != "lq" and sr:
        p.error("--segment-input restored is for denoising (the SR backbone's output is HR-sized)")
    if args.segment_input != "lq" and (kair or dncnn3):
        p.error("--segment-input restored is for the colour denoising task")
    if args.sr_degradation != "bicubic" and not sr:
        p.error("--sr-degradation is for --task sr4")
    if "f" in args.rows and args.sam_checkpoint is None:
        p.error("row f needs --sam-checkpoint")
    if args.sam_checkpoint is not None and "f" not in args.rows:
        args.rows += "f"
    return args


def parse_distill_candidate(text: str) -> tuple[float, int, int]:
    """``WEIGHT:STEPS:WIDTH`` (e.g. ``0.1:200:16``) -> (distill weight, student steps, student width)."""
    parts = text.split(":")
    try:
        weight, steps, width = float(parts[0]), int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"--tune-distill candidate {text!r}: expected WEIGHT:STEPS:WIDTH, e.g. 0.1:200:16") from None
    if len(parts) != 3 or weight < 0 or steps < 0 or not 1 <= width <= 256:
        raise ValueError(f"--tune-distill candidate {text!r}: weight >= 0, steps >= 0, width in [1, 256]")
    return weight, steps, width


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    qd.PRIOR_WORKERS = args.jobs
    t_all = time.time()
    cache = qd.LabelCache(args.cache_dir / "priors")
    if args.task == "sr4":
        return main_sr(args, argv, t_all, cache)
    if args.task == "kair":
        return main_kair(args, argv, t_all, cache)
    if args.task == "dncnn3bd":
        return main_dncnn3(args, argv, t_all, cache)
    return main_denoise(args, argv, t_all, cache)


if __name__ == "__main__":
    raise SystemExit(main())
