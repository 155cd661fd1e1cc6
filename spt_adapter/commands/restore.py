"""`spt-adapter restore`: apply a backbone + SPT adapter to your own degraded images.

    spt-adapter restore photos/ --backbone swinir_x2.pth --adapter runs/swinir_x2_spt --out restored/
    spt-adapter restore "scans/*.tif" --backbone dncnn_25.pth --adapter me/dncnn-spt --out clean/ --tile 512

Images are taken as they are (no synthetic degradation). The prior is computed on each whole image
the way the adapter records (or as ``--provider``/``--provider-checkpoint`` say; ``--prior-cache`` keeps
it), then the network runs on the whole image or on tiles that each get their crop of that prior.
Outputs are PNGs named after the inputs (``photo.jpg`` -> ``OUT/photo.png``; grey for grey
backbones) at the input's depth (a 16-bit PNG/TIFF gives a 16-bit PNG), written atomically; inputs are never overwritten. Everything is checked before the
first image is read. The work is :func:`spt_adapter.inference.restore.restore`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..deploy.outputs import (
    check_existing,
    expand_inputs,
    output_paths,
    png_bytes,
    remove_stale_temporaries,
    unfinished_output,
)
from ..errors import SPTError
from ._args import add_backbone_arguments, add_prior_arguments, add_progress_arguments, nonneg_int, positive_int
from .builders import build_provider, load_backbone_from_args, prior_cache, prior_flags

HELP = "restore your own images with a backbone + SPT adapter (whole or tiled; PNG outputs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (not recursive), globs ('photos/**/*.jpg', quoted) or .txt lists of paths",
    )
    add_backbone_arguments(parser)
    a = parser.add_argument_group("adapter")
    a.add_argument(
        "--adapter",
        metavar="FILE|DIR|HUB_ID",
        help="adapter file, folder holding spt_adapter.safetensors, or a Hub repo id (user/repo)",
    )
    a.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit) for a Hub id")
    a.add_argument("--no-adapter", action="store_true", help="restore with the backbone alone (for comparison)")
    a.add_argument(
        "--no-hash-check",
        action="store_true",
        help="accept an adapter whose recorded backbone weights hash differs (architecture still checked)",
    )
    add_prior_arguments(parser, cache_default="not kept")
    t = parser.add_argument_group("tiling and precision")
    t.add_argument(
        "--tile",
        type=positive_int,
        default=None,
        metavar="N",
        help="run the network on N x N tiles of the input (bounds memory; default: the whole image)",
    )
    t.add_argument(
        "--tile-overlap",
        type=nonneg_int,
        default=None,
        metavar="P",
        help="input pixels shared by neighbouring tiles (default: 32, or a CNN's receptive field when larger)",
    )
    t.add_argument(
        "--tile-blend",
        type=nonneg_int,
        default=None,
        metavar="B",
        help="cross-fade width around each seam (default: as wide as exactness for CNNs allows; "
        "half the overlap for attention backbones)",
    )
    t.add_argument("--half", action="store_true", help="float16 autocast on CUDA (backbones that support it)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", required=True, metavar="DIR", help="output folder (created with its parents)")
    o.add_argument(
        "--skip-existing", action="store_true", help="skip inputs whose output PNG exists (rerun after an interruption)"
    )
    o.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that already exist in --out (default: "
        "refuse before any work; --skip-existing keeps them)",
    )
    o.add_argument(
        "--allow-out-in-input",
        action="store_true",
        help="allow --out to be (inside) a folder given as INPUT or the folder of an input file",
    )
    o.add_argument(
        "--strict",
        action="store_true",
        help="stop with exit status 1 at the first unreadable input (default: skip it and list it at the end)",
    )
    add_progress_arguments(o)
    from ._deploy import add_shard_arguments

    add_shard_arguments(o)


# ---------------------------------------------------------------------------------------------
# inputs and outputs
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def _model(args):
    """(model, descriptor, described, prior source) from the flags."""
    from ..files.format import load_adapter
    from ..files.hub import resolve_adapter_file
    from ..inference.restore import check_channels, resolve_prior_source

    if args.no_adapter and args.adapter:
        raise SPTError("--no-adapter restores with the backbone alone: drop --adapter (or --no-adapter)")
    if not args.no_adapter and not args.adapter:
        raise SPTError("pass --adapter FILE|DIR|HUB_ID, or --no-adapter to restore with the backbone alone")
    adapter_file = None
    provider_args = False
    if args.adapter:
        src = str(args.adapter)
        if Path(src).suffix in (".pth", ".pt", ".ckpt", ".bin") and Path(src).exists():
            raise SPTError(f"--adapter {src} is a pickle checkpoint; SPT adapters are .safetensors files")
        adapter_file = Path(resolve_adapter_file(src, args.revision))
        provider_args = prior_flags(args, adapter_file)  # the recorded provider unless flags name one
    model, _, described = load_backbone_from_args(args, require_targets=False)
    if adapter_file is not None:
        check_adapter_task(adapter_file, args._scale, described)
        model = load_adapter(model, adapter_file, check_backbone_hash=not args.no_hash_check)
        check_channels(model, args._channels, str(adapter_file))
        described += f" + adapter {adapter_file}"
    from ._deploy import default_device

    device = default_device(args)  # cuda:$LOCAL_RANK under torchrun
    model.to(device)
    override = build_provider(args, device=device) if provider_args else None
    cache = prior_cache(args) if args.prior_cache else None
    source = resolve_prior_source(
        model,
        provider=override,
        encoding=args.encoding,
        cache=cache,
        what=str(adapter_file) if adapter_file else "the adapter",
    )
    return model, args._descriptor, described, source, device


def check_adapter_task(adapter_file: Path, backbone_scale: int | None, described: str) -> None:
    """The task the adapter records (its fingerprint's prior record) against the backbone's scale, as
    `eval` checks it: an ``sr:3`` adapter on a x1 backbone is refused before any image is read."""
    from ..files.format import read_adapter_config
    from .builders import check_task_scale

    task = (read_adapter_config(adapter_file).prior or {}).get("task")
    if not task:
        return
    from ..data.datasets import parse_task

    try:
        parse_task(str(task))
    except SPTError:  # a task of a grammar this version cannot parse: restore does not use it
        return
    try:
        check_task_scale(str(task), backbone_scale, described)
    except SPTError as exc:
        raise SPTError(f"{adapter_file} was trained for {task}: {exc}") from None


def _check_tiling(args, model, descriptor, device) -> None:
    from ..inference.restore import check_tile_stride, default_overlap, minimum_tile

    if args.half:
        if not str(device).startswith("cuda"):
            raise SPTError("--half is float16 autocast on CUDA: pass --device cuda (or drop --half)")
        if getattr(descriptor, "supports_half", True) is False:
            arch = getattr(getattr(descriptor, "architecture", None), "name", type(model).__name__)
            raise SPTError(f"--half: {arch} does not run in float16 (spandrel marks it so); drop --half")
    if args.tile is None:
        if args.tile_overlap is not None or args.tile_blend is not None:
            raise SPTError("--tile-overlap/--tile-blend need --tile N")
        return
    least = minimum_tile(model, descriptor)
    if args.tile < least:
        raise SPTError(
            f"--tile {args.tile} is smaller than this backbone needs (its window / size multiple): "
            f"use --tile {least} or more"
        )
    overlap = default_overlap(model) if args.tile_overlap is None else args.tile_overlap
    if args.tile <= overlap:
        raise SPTError(
            f"--tile {args.tile} must be larger than the tile overlap {overlap}: use --tile {overlap + 1} "
            "or more, or a smaller --tile-overlap"
        )
    check_tile_stride(args.tile, overlap, "--tile")
    if overlap == 0:
        print(
            "restore: warning: --tile-overlap 0 leaves visible seams where tiles meet (each tile's border "
            "sees no context); the default overlap avoids them",
            file=sys.stderr,
        )
    if args.tile_blend is not None and args.tile_blend > overlap:
        raise SPTError(f"--tile-blend {args.tile_blend} exceeds the tile overlap {overlap}")


def run(args) -> int:
    from tqdm.auto import tqdm

    from .._io import atomic_write_bytes
    from ..deploy.images import read_image_full_depth
    from ..inference.exported import exported_format, restore_exported
    from ..inference.restore import RestoreInfo, restore

    paths, folders = expand_inputs(args.inputs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} exists and is not a folder")
    targets = output_paths(paths, folders, out, args.allow_out_in_input)
    from ._deploy import check_exported_tiling, exported_model, shard

    # this process's share first: another shard's finished outputs are not this run's to refuse
    paths, targets, shard_note = shard(paths, targets, args)
    check_existing(targets, out, args.skip_existing, args.overwrite)
    if args.backbone and exported_format(args.backbone):  # an `spt-adapter export` file
        model, described, source, device = exported_model(args)
        descriptor, restore = None, restore_exported  # type: ignore[assignment]
        check_exported_tiling(args, model)
        scale = model.scale  # the export's recorded scale: --skip-existing checks sizes with it
    else:
        model, descriptor, described, source, device = _model(args)
        _check_tiling(args, model, descriptor, device)
        scale = getattr(descriptor, "scale", None)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, targets)
    grey = "grey" if args._channels == 1 else "RGB"
    from ..inference.restore import default_overlap

    overlap = args.tile_overlap if args.tile_overlap is not None else default_overlap(model)
    tiling = f"tiles {args.tile} (overlap {overlap})" if args.tile else "whole images"
    print(
        f"restore: {len(paths)} image(s){shard_note} -> {out}; {described}; prior: {source.described}; {grey}; {tiling}; "
        f"{device}",
        file=sys.stderr,
    )
    info = RestoreInfo()
    done, skipped, failed, redone = 0, 0, [], []
    reduced: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), unit="img", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for path, target in zip(paths, targets, strict=True):
            if args.skip_existing and target.is_file():
                reason = unfinished_output(target, path, scale)
                if reason is None:
                    skipped += 1
                    bar.update(1)
                    continue
                redone.append((target, reason))
            try:
                image, note = read_image_full_depth(path, args._channels)
            except SPTError as exc:
                if args.strict:
                    raise SPTError(f"{exc} (--strict stops at the first unreadable input)") from None
                failed.append((path, str(exc)))
                bar.update(1)
                continue
            if note:
                reduced.append((path, note))
            restored = _restore_one(restore, model, image, source, args, descriptor, info)
            atomic_write_bytes(target, png_bytes(restored))
            done += 1
            bar.update(1)
            bar.set_postfix(prior=f"{info.prior_seconds:.1f}s", network=f"{info.network_seconds:.1f}s", refresh=False)
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    print(
        f"restore: {done} restored, {skipped} skipped (output exists), {len(failed)} unreadable in {dt:.1f}s "
        f"(prior {info.prior_seconds:.1f}s, network {info.network_seconds:.1f}s)",
        file=sys.stderr,
    )
    for path, reason in failed:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    for target, reason in redone:
        print(f"  redone (--skip-existing found an unfinished output): {target}: {reason}", file=sys.stderr)
    for path, note in reduced:
        print(f"  written at 8 bits: {path}: {note}", file=sys.stderr)
    return 0


def _restore_one(restore, model, image, source, args, descriptor, info):
    import time as _time

    t = _time.perf_counter()
    prior = source.compute(image)
    info.prior_seconds += _time.perf_counter() - t
    return restore(
        model,
        image,
        prior,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        tile_blend=args.tile_blend,
        half=args.half,
        backbone_only=args.no_adapter,
        descriptor=descriptor,
        info=info,
        channels=args._channels,
    )
