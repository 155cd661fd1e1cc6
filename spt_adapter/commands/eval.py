"""`spt-adapter eval`: backbone vs backbone + SPT on a folder of clean images.

    spt-adapter eval --backbone swinir_x4.pth --adapter runs/swinir_x4_spt --data Set5/ --task sr:4
    spt-adapter eval --no-adapter --backbone dncnn_25.pth --data set12 --task denoise:25   # backbone alone

PSNR/SSIM as the field reports them (RGB for denoising; Y channel with a ``scale``-pixel border
for SR), per image and mean, written as ``eval.md`` and ``eval.csv`` with comparison crops; the
adapter may be a file, a folder (``spt_adapter.safetensors`` inside) or a Hugging Face Hub id.
The prior is rebuilt with the provider recorded in the adapter unless flags say otherwise
(:func:`spt_adapter.inference.restore.resolve_prior_source`). 1-channel backbones read grey images.
``--noise kair`` draws the noise as KAIR's ``main_test_dncnn.py`` does (the default for grey
backbones, whose benchmarks are KAIR's); ``--noise spt`` is the training pipeline's noise.

*Pre-upsampled SR* (``--pre-upsampled``, asked for by name): a x1 backbone given ``--task sr:<s>``
(DnCNN-3, VDSR, SRCNN) is scored the way those papers do: the LR image (MATLAB-style bicubic, 8 bits)
is bicubic-upsampled by ``s`` before the x1 network; a grey backbone reads the Y channel of YCbCr and
is scored on it (``Demo_test_DnCNN3.m``'s protocol). Only with ``--no-adapter`` (no adapter can be
trained for it yet). Without the flag a x1 backbone given ``sr:<s>`` is refused (a denoiser given the
wrong task is not silently scored as an upsampler); a backbone of unknown scale is taken to upscale
by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.datasets import NOISE_PROTOCOLS
from ..errors import SPTError
from ._args import (
    add_backbone_arguments,
    add_clip_arguments,
    add_pair_arguments,
    add_prior_arguments,
    add_progress_arguments,
    nonneg_int,
    positive_int,
    task_type,
)
from .builders import (
    build_dataset,
    build_provider,
    check_task_scale,
    image_folder,
    load_backbone_from_args,
    paired_task,
    prior_cache,
    prior_flags,
    resolve_pairs,
)

HELP = "evaluate backbone vs backbone + SPT (PSNR/SSIM tables, comparison crops)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    parser.add_argument(
        "--adapter",
        metavar="FILE|DIR|HUB_ID",
        help="adapter file, folder holding spt_adapter.safetensors, or a Hub repo id (user/repo)",
    )
    parser.add_argument(
        "--no-adapter", action="store_true", help="score the backbone alone (no --adapter, no prior; --task needed)"
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit) for a Hub id")
    parser.add_argument("--data", required=True, metavar="HQ_DIR", help="folder of clean test images")
    parser.add_argument(
        "--task",
        default=None,
        type=task_type,
        help="denoise:<sigma> or sr:<scale> (default: the task recorded in the adapter; none with --lq)",
    )
    add_pair_arguments(parser)
    add_clip_arguments(parser)
    parser.add_argument(
        "--pre-upsampled",
        action="store_true",
        help="with --task sr:<s> and a x1 backbone (DnCNN-3, VDSR, SRCNN): bicubic-upsample the LR image "
        "by s before the network, Y channel for a grey backbone (their papers' protocol; --no-adapter only)",
    )
    add_prior_arguments(parser)
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write eval.md/eval.csv/crops (default: eval_<data folder name>)",
    )
    parser.add_argument("--save-images", action="store_true", help="also save every backbone and +SPT output")
    parser.add_argument("--crops", type=nonneg_int, default=4, help="comparison crops to write (default: 4)")
    parser.add_argument("--crop-size", type=positive_int, default=96, help="side of each comparison crop (pixels)")
    parser.add_argument("--seed", type=nonneg_int, default=0, help="noise seed of the degradation")
    parser.add_argument(
        "--noise",
        choices=NOISE_PROTOCOLS,
        default=None,
        help="denoising noise protocol: spt (per image and seed, clipped to 8 bits: what training "
        "uses) or kair (np.random.seed(seed) per image, unclipped float: KAIR's main_test_dncnn.py); "
        "default: kair for grey backbones, spt for colour",
    )
    parser.add_argument(
        "--no-hash-check",
        action="store_true",
        help="accept an adapter whose recorded backbone weights hash differs (architecture still checked)",
    )
    add_progress_arguments(parser)


def _recorded(adapter_file: Path) -> dict:
    from ..files.format import read_adapter_config

    return read_adapter_config(adapter_file).prior or {}


def _check_scoreable(images: list[Path], task: str) -> None:
    """Every image is large enough to be scored (SSIM's 11x11 window after the SR border crop), checked
    from the file headers before anything is written."""
    from PIL import Image

    from ..inference.metrics import metric_settings

    border = metric_settings(task)["crop_border"]
    least = 11 + 2 * border
    for path in images:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:
            continue  # unreadable: the dataset reports it by name
        if min(w, h) < least:
            raise SPTError(
                f"{path} is {w}x{h} pixels: too small to score (SSIM needs {least}x{least} or more"
                + (f" for {task}, whose {border}-pixel border is cropped" if border else "")
                + "); remove it from --data"
            )


def _foreign_tables(out: Path) -> list[str]:
    """``eval.md`` / ``eval.csv`` in ``out`` that an earlier eval did not write (a user's own notes)."""
    import re

    found = []
    for name, ours in (
        ("eval.md", re.compile(r"[a-z][a-z-]*:\S+: PSNR \(dB\) / SSIM, ")),
        ("eval.csv", re.compile(r"image,backbone_psnr,")),
    ):
        path = out / name
        if path.is_file():
            try:
                head = path.read_bytes()[:200].decode("utf-8", "replace")
            except OSError:
                head = ""
            if not ours.match(head):
                found.append(name)
    return found


def run(args) -> int:
    from ..inference.evaluate import evaluate

    pairs = None
    if args.lq:
        pairs = resolve_pairs(args, args.data, args.lq)
        images = pairs.hq
        args.task = paired_task(args, pairs, None, "")
    else:
        given = [
            f
            for f, v in (("--hq-suffix", args.hq_suffix), ("--lq-suffix", args.lq_suffix), ("--pairs", args.pairs))
            if v
        ]
        if given:
            raise SPTError(f"{', '.join(given)} pair(s) clean images with degraded ones: add --lq LQ_DIR")
        images = image_folder(args.data, "--data")
    out = Path(args.out) if args.out else Path(f"eval_{Path(args.data).resolve().name}")
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} is a file; eval writes a folder (eval.md, eval.csv, crops): pass a folder")
    foreign = _foreign_tables(out)
    if foreign:
        raise SPTError(
            f"--out {out} holds {', '.join(foreign)} that spt-adapter eval did not write; eval would replace "
            "it: choose another --out or move the file"
        )
    if args.no_adapter and args.adapter:
        raise SPTError("--no-adapter scores the backbone alone: drop --adapter (or --no-adapter)")
    if not args.no_adapter and not args.adapter:
        raise SPTError("pass --adapter FILE|DIR|HUB_ID, or --no-adapter to score the backbone alone")
    if args.no_adapter:
        if args.task is None:
            raise SPTError("--no-adapter needs --task denoise:<sigma> or sr:<scale>")
        model, _, described = load_backbone_from_args(args, require_targets=False)
        upsampled = args.pre_upsampled
        if upsampled and pairs is not None:
            raise SPTError("--pre-upsampled makes its own LR images: drop --lq (or --pre-upsampled)")
        if upsampled:
            check_pre_upsampled(args.task, args._scale, described)
        elif pairs is not None:
            paired_task(args, pairs, args._scale, described)
        else:
            check_task_scale_or_hint(args.task, args._scale, described)
        provider = None
        what = "backbone alone"
        if upsampled:
            what += (
                f"; pre-upsampled SR: the LR image is bicubic-upsampled x{task_scale(args.task)} before the x1 "
                "network" + (", which reads the Y channel" if args._channels == 1 else "")
            )
    else:
        if args.pre_upsampled:
            raise SPTError(
                "--pre-upsampled scores a x1 backbone on upsampled input with --no-adapter only (no adapter "
                "is trained on upsampled input yet): add --no-adapter and drop --adapter"
            )
        upsampled = False
        model, provider, described, what = _with_adapter(args)  # provider None: the adapter makes its own prior
    if args.noise is None:
        args.noise = "kair" if args._channels == 1 else "spt"
    if args.device:
        model.to(args.device)
    if provider is None:
        from ..data.datasets import PairedPriorDataset

        # no prior: the dataset's prior_fn is a placeholder that nothing reads
        dataset = PairedPriorDataset(
            pairs.hq if pairs is not None else args.data,
            args.task,
            lq_paths=pairs.lq if pairs is not None else None,
            prior_fn=lambda im: _no_prior(im),
            train=False,
            seed=args.seed,
            channels=args._channels,
            noise=args.noise,
            upsampled=upsampled,
            clip=args.clip,
            full_depth=True,
        )
    else:
        dataset = build_dataset(args, args.data, provider, prior_cache(args), train=False, pairs=pairs, full_depth=True)
    _check_scoreable(images, args.task)
    depth_lines(images, pairs is not None)
    out.mkdir(parents=True, exist_ok=True)
    grey = ", grey" if args._channels == 1 else ""
    noise = f", noise {args.noise} seed {args.seed}" if args.task.startswith("denoise") else ""
    print(f"backbone: {described}; {what}; {len(images)} image(s), task {args.task}{grey}{noise}")
    if pairs is not None:
        how = (
            f"--pairs {args.pairs}"
            if args.pairs
            else "by name" + (f" ({args.hq_suffix or 'no suffix'} / {args.lq_suffix or 'no suffix'})")
        )
        print(f"pairs: {args.data} with {args.lq} matched {how}; sizes: {pairs.alignment}")
    items = (dataset[i] if provider is not None else {**dataset[i], "prior": None} for i in range(len(dataset)))
    from ..inference.restore import size_multiple

    # pad only to what the backbone needs: padding a CNN's input changes its border pixels
    result = evaluate(
        model,
        items,
        args.task,
        out,
        save_images=args.save_images,
        multiple=size_multiple(model, args._descriptor),
        crops=args.crops,
        crop_size=args.crop_size,
        progress=not args.no_progress,
        total=len(dataset),
        backbone_only=args.no_adapter,
        upsampled=upsampled,
    )
    print(result.table_md.read_text() if result.table_md else "no images")
    print(f"table:     {result.table_md}")
    print(f"table:     {result.table_csv}")
    for p in result.crops:
        print(f"crop:      {p}")
    if args.save_images:
        print(f"images:    {out / 'images'} ({len(result.images)} files)")
    return 0


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def depth_lines(images: list[Path], paired: bool) -> None:
    """Say, one line per depth, at which depth the ground truth is scored (only when a 16-bit one is
    among them: an 8-bit folder is scored as it always was, without a word)."""
    from ..deploy.images import read_image_full_depth, sixteen_bit

    deep = [p for p in images if sixteen_bit(p)]
    if not deep:
        return
    whole: list[tuple[str, str | None]] = []
    reduced: list[tuple[str, str | None]] = []
    for p in deep:
        try:
            arr, note = read_image_full_depth(p)
        except SPTError:
            continue  # unreadable: the dataset names it
        (whole if arr.dtype.itemsize == 2 else reduced).append((p.name, note))
    made = "the LQ files, read at their own depth" if paired else "degraded from their 8-bit version, as before"
    if whole:
        print(
            f"eval: {len(whole)} 16-bit ground-truth image(s) ({_shown([n for n, _ in whole])}) scored at 16 bits: "
            f"outputs rounded to 65535 levels against the full-depth GT (inputs {made})",
            file=sys.stderr,
        )
    if reduced:
        print(
            f"eval: {len(reduced)} 16-bit ground-truth image(s) ({_shown([n for n, _ in reduced])}) scored at 8 "
            f"bits: {reduced[0][1]}",
            file=sys.stderr,
        )
    rest = len(images) - len(deep)
    if rest:
        print(f"eval: {rest} 8-bit ground-truth image(s) scored at 8 bits", file=sys.stderr)


def task_scale(task: str) -> int:
    from ..data.datasets import parse_task

    return parse_task(task).scale


def pre_upsampled(task: str, backbone_scale: int | None) -> bool:
    """Whether ``task`` on a backbone of ``backbone_scale`` can be pre-upsampled SR: an ``sr:<s>`` task
    on a backbone recorded as x1. A backbone of unknown scale (None) is taken to upscale by itself."""
    return backbone_scale == 1 and task_scale(task) > 1


def check_pre_upsampled(task: str, backbone_scale: int | None, described: str) -> None:
    """``--pre-upsampled`` needs an ``sr:<s>`` task and a backbone recorded as x1."""
    if not task.startswith("sr:"):
        raise SPTError(f"--pre-upsampled is for --task sr:<scale>, not {task}: drop --pre-upsampled")
    if not pre_upsampled(task, backbone_scale):
        scale = "of unknown scale" if backbone_scale is None else f"x{backbone_scale}"
        raise SPTError(
            f"--pre-upsampled feeds upsampled input to a x1 backbone, but {described} is {scale}: drop "
            "--pre-upsampled (the backbone upscales by itself)"
        )


def check_task_scale_or_hint(task: str, backbone_scale: int | None, described: str) -> None:
    """:func:`check_task_scale`, naming ``--pre-upsampled`` when a x1 backbone is given ``sr:<s>``."""
    if pre_upsampled(task, backbone_scale):
        raise SPTError(
            f"--task {task} needs a x{task_scale(task)} backbone but {described} is x1: add --pre-upsampled "
            "to score it on bicubic-upsampled input (DnCNN-3, VDSR, SRCNN), or use --task denoise:<sigma>"
        )
    check_task_scale(task, backbone_scale, described)


def _no_prior(image):
    import numpy as np

    return np.zeros((1,) + image.shape[:2], dtype=np.float32)


def _with_adapter(args):
    """Backbone + adapter, the mask provider (the adapter's recorded one unless flags say otherwise)."""
    from ..files.format import load_adapter
    from ..files.hub import resolve_adapter_file
    from ..inference.restore import check_channels, resolve_prior_source

    src = str(args.adapter)
    if Path(src).suffix in (".pth", ".pt", ".ckpt", ".bin") and Path(src).exists():
        raise SPTError(f"--adapter {src} is a pickle checkpoint; SPT adapters are .safetensors files")
    adapter_file = Path(resolve_adapter_file(src, args.revision))
    recorded = _recorded(adapter_file)
    if args.task is None and str(recorded.get("task") or "").startswith("paired:"):
        raise SPTError(
            f"{adapter_file} was trained on paired files (task {recorded['task']}): pass --lq LQ_DIR with the "
            "degraded partners of --data's images, or --task denoise:<sigma> | sr:<scale> for a synthetic one"
        )
    if args.task is None:
        args.task = recorded.get("task")
        if not args.task:
            raise SPTError(f"{adapter_file} records no task; pass --task denoise:<sigma> or sr:<scale>")
        task_type(args.task)
    provider_args = prior_flags(args, adapter_file)
    model, _, described = load_backbone_from_args(args, require_targets=False)  # targets come from the adapter
    if pre_upsampled(args.task, args._scale):
        raise SPTError(
            f"--task {args.task} needs a x{task_scale(args.task)} backbone but {described} is x1; "
            "pre-upsampled SR of a x1 backbone is scored with --no-adapter --pre-upsampled only (no "
            "adapter is trained on upsampled input yet): drop --adapter, or use a x"
            f"{task_scale(args.task)} backbone"
        )
    check_task_scale(args.task, args._scale, described)
    spt = load_adapter(model, adapter_file, check_backbone_hash=not args.no_hash_check)
    check_channels(spt, args._channels, str(adapter_file))
    override = build_provider(args) if provider_args else None
    source = resolve_prior_source(spt, provider=override, encoding=args.encoding, what=str(adapter_file))
    args.encoding = source.encoding
    return spt, source.provider, described, f"adapter: {adapter_file}"
