"""`spt-adapter eval`: backbone vs backbone + SPT on a folder of clean images.

    spt-adapter eval --backbone swinir_x4.pth --adapter runs/swinir_x4_spt --data Set5/ --task sr:4

PSNR/SSIM as the field reports them (RGB for denoising; Y channel with a ``scale``-pixel border
for SR), per image and mean, written as ``eval.md`` and ``eval.csv`` with comparison crops; the
adapter may be a file, a folder (``spt_adapter.safetensors`` inside) or a Hugging Face Hub id.
The prior is rebuilt with the provider recorded in the adapter unless flags say otherwise; an
adapter with a distilled prior makes its own (its student), so no provider or checkpoint is needed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import SPTError
from ..training.builders import (adapter_needs_provider, build_dataset, build_provider, check_provider_args, image_folder,
                                 load_backbone_from_args, prior_cache, use_recorded_provider)
from ._args import add_backbone_arguments, add_prior_arguments, nonneg_int, positive_int, task_type

HELP = "evaluate backbone vs backbone + SPT (PSNR/SSIM tables, comparison crops)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    parser.add_argument("--adapter", required=True, metavar="FILE|DIR|HUB_ID",
                        help="adapter file, folder holding spt_adapter.safetensors, or a Hub repo id (user/repo)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit) for a Hub id")
    parser.add_argument("--data", required=True, metavar="HQ_DIR", help="folder of clean test images")
    parser.add_argument("--task", default=None, type=task_type,
                        help="denoise:<sigma> or sr:<scale> (default: the task recorded in the adapter)")
    add_prior_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="where to write eval.md/eval.csv/crops (default: "
                        "eval_<data folder name>)")
    parser.add_argument("--save-images", action="store_true", help="also save every backbone and +SPT output")
    parser.add_argument("--crops", type=nonneg_int, default=4, help="comparison crops to write (default: 4)")
    parser.add_argument("--crop-size", type=positive_int, default=96)
    parser.add_argument("--seed", type=nonneg_int, default=0, help="noise seed of the degradation")
    parser.add_argument("--no-hash-check", action="store_true",
                        help="accept an adapter whose recorded backbone weights hash differs (architecture still checked)")
    parser.add_argument("--no-progress", action="store_true")


def _recorded(adapter_file: Path) -> dict:
    from ..files.format import read_adapter_config

    return read_adapter_config(adapter_file).prior or {}


def run(args) -> int:
    from ..files.format import load_adapter
    from ..training.evaluate import evaluate
    from ..files.hub import resolve_adapter_file

    images = image_folder(args.data, "--data")
    src = str(args.adapter)
    if Path(src).suffix in (".pth", ".pt", ".ckpt", ".bin") and Path(src).exists():
        raise SPTError(f"--adapter {src} is a pickle checkpoint; SPT adapters are .safetensors files")
    adapter_file = Path(resolve_adapter_file(src, args.revision))
    recorded = _recorded(adapter_file)
    if args.task is None:
        args.task = recorded.get("task")
        if not args.task:
            raise SPTError(f"{adapter_file} records no task; pass --task denoise:<sigma> or sr:<scale>")
        task_type(args.task)
    with_provider = adapter_needs_provider(adapter_file, args)
    # use the adapter's own prior recipe unless told otherwise
    if with_provider:
        use_recorded_provider(args, recorded.get("provider") or {}, adapter_file)
    if args.encoding is None:
        # "label": adapters that record no encoding were made when label was the only default
        args.encoding = recorded.get("encoding", "label")
    check_provider_args(args)
    model, _, described = load_backbone_from_args(args, require_targets=False)  # targets come from the adapter
    spt = load_adapter(model, adapter_file, check_backbone_hash=not args.no_hash_check)
    if args.device:
        spt.to(args.device)
    provider = build_provider(args) if with_provider else None
    dataset = build_dataset(args, args.data, provider, prior_cache(args), train=False)
    out = Path(args.out) if args.out else Path(f"eval_{Path(args.data).resolve().name}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"backbone: {described}; adapter: {adapter_file}; {len(images)} image(s), task {args.task}")
    result = evaluate(spt, (dataset[i] for i in range(len(dataset))), args.task, out, save_images=args.save_images,
                      crops=args.crops, crop_size=args.crop_size, progress=not args.no_progress, total=len(dataset))
    print(result.table_md.read_text() if result.table_md else "no images")
    print(f"table:     {result.table_md}")
    print(f"table:     {result.table_csv}")
    for p in result.crops:
        print(f"crop:      {p}")
    if args.save_images:
        print(f"images:    {out / 'images'} ({len(result.images)} files)")
    return 0
