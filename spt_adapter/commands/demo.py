"""`spt-adapter demo`: the whole workflow on scikit-image's images, no downloads (a few minutes on CPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.config import DEFAULT_FUSION, FUSIONS
from ..errors import SPTError
from ._args import add_device_argument, add_progress_arguments, alias, nonneg_int, positive_int

HELP = "run the whole workflow on scikit-image's sample images: backbone, priors, SPT units, table, pictures"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="spt_demo", metavar="DIR", help="output folder (default: ./spt_demo)")
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where the demo backbone and priors are cached (default: ~/.cache/spt-adapter, or $SPT_ADAPTER_CACHE)",
    )
    parser.add_argument(
        "--provider-checkpoint",
        dest="sam_checkpoint",
        metavar="PTH",
        help="a SAM checkpoint (sam_vit_b_01ec64.pth): SAM masks instead of SLIC superpixels",
    )
    alias(parser, "--sam-checkpoint", "--checkpoint", dest="sam_checkpoint")
    parser.add_argument("--iters", type=positive_int, default=None, help="SPT training steps (default: 150)")
    parser.add_argument(
        "--backbone-iters", type=positive_int, default=None, help="backbone pretraining steps (default: 150)"
    )
    parser.add_argument("--fusion", choices=FUSIONS, default=DEFAULT_FUSION, help="unit fusion")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="seed of the data, noise and initialisation")
    add_device_argument(parser)
    parser.add_argument("--retrain-backbone", action="store_true", help="ignore the cached demo backbone")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (seconds; for tests): the numbers mean nothing"
    )
    add_progress_arguments(parser)


def run(args) -> int:
    import torch

    from ..demo import DemoSettings, run_demo

    if args.sam_checkpoint and not Path(args.sam_checkpoint).is_file():
        raise SPTError(f"SAM checkpoint {args.sam_checkpoint} does not exist")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} exists and is not a folder")
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SPTError(f"--device {args.device}: CUDA is not available")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SPTError("the demo draws its training curve with matplotlib: pip install 'spt-adapter[demo]'") from None
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.seed = args.seed
    settings.fusion = args.fusion
    if args.iters:
        settings.spt_iters = args.iters
    if args.backbone_iters:
        settings.backbone_iters = args.backbone_iters
    device = args.device or ("cuda" if torch.cuda.is_available() else None)  # as every subcommand: cuda when present
    result = run_demo(
        out,
        args.cache_dir,
        settings,
        sam_checkpoint=args.sam_checkpoint,
        device=device,
        progress=not args.no_progress,
        retrain_backbone=args.retrain_backbone,
    )
    prior = "SAM masks" if args.sam_checkpoint else "SLIC superpixels"
    print()
    print(
        f"Colour denoising, sigma 25, on {len(result.table.splitlines()) - 3} held-out scikit-image pictures "
        f"(PSNR dB / SSIM, RGB); prior: {prior}."
    )
    print(result.table)
    d = result.mean["spt_psnr"] - result.mean["backbone_psnr"]
    print(
        f"The frozen backbone + SPT units: {d:+.2f} dB. This is a demo on a few small images with minutes of CPU "
        "training: the units add parameters as well as the prior, and the backbone was itself trained briefly; "
        "see benchmarks/quality.py (docs/results.md) for the controlled comparison."
    )
    if args.quick:
        print("(--quick: tiny sizes, the numbers mean nothing)")
    print()
    print(f"finished in {result.seconds:.0f} s" + (" (backbone from the cache)" if result.backbone_cached else ""))
    width = max(len(k) for k in result.paths)
    for key, path in result.paths.items():
        print(f"  {key:<{width}}  {path}")
    return 0
