"""What `spt-adapter restore` adds for deployment: running an exported file (``--backbone
model.onnx`` / a TorchScript export) and sharding the inputs over processes (``torchrun``'s
RANK / WORLD_SIZE, or ``--num-shards`` / ``--shard-index`` as `masks` takes them)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import SPTError


def add_shard_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--num-shards",
        type=int,
        default=None,
        help="split the inputs in N shards, one per process, by a hash of each output's name "
        "(default: $WORLD_SIZE or 1)",
    )
    group.add_argument(
        "--shard-index", type=int, default=None, help="which shard this process restores (default: $RANK or 0)"
    )


def shard(paths: list[Path], targets: list[Path], args) -> tuple[list[Path], list[Path], str]:
    """This process's inputs and outputs: those whose output name hashes to its shard
    (:mod:`spt_adapter.deploy.shards`; the name checks ran over the whole list first, so shards never
    share an output). Returns a note for the log line ("" for one shard)."""
    from ..deploy.shards import shard_settings, split_by_key

    num, index = shard_settings(args.num_shards, args.shard_index)
    if num == 1:
        return paths, targets, ""
    mine, mine_targets = split_by_key(paths, targets, num, index)
    return mine, mine_targets, f" (shard {index}/{num}: {len(mine)} of {len(paths)} inputs, by output name)"


def default_device(args) -> str:
    """--device, else cuda:$LOCAL_RANK under torchrun, else cuda when available, else cpu."""
    import torch

    if args.device:
        return args.device
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local) % max(torch.cuda.device_count(), 1)}" if local not in (None, "") else "cuda"
    return "cpu"


def exported_model(args):
    """(runner, described, prior source, device) for ``--backbone`` naming an exported file; refuses
    the flags that do not apply to one. Sets ``args._channels``."""
    from ..inference.exported import load_exported, prior_source_of
    from .builders import build_provider, check_provider_args, prior_cache, use_recorded_provider

    path = Path(args.backbone)
    for flag, given in (
        ("--adapter", args.adapter),
        ("--no-adapter", args.no_adapter),
        ("--half", args.half),
        ("--arch/--weights", args.arch or args.weights),
    ):
        if given:
            raise SPTError(f"{flag} does not apply to an exported file ({path}: backbone and adapter are inside it)")
    device = args.device or "cpu"
    runner = load_exported(path, device=device, threads=_threads())
    args._channels = runner.channels
    override = None
    if runner.kind == "prior":
        use_recorded_provider(args, dict(runner.prior.get("provider") or {}), path)
        if args.provider is not None or args.sam_checkpoint:
            check_provider_args(args)
            override = build_provider(args, device=None if device == "cpu" else device)
    elif runner.kind == "student" and (args.provider is not None or args.sam_checkpoint):
        raise SPTError(f"{path} carries a distilled prior (its student is inside the file): drop the provider flags")
    elif runner.kind == "no-prior" and (args.provider is not None or args.sam_checkpoint):
        raise SPTError(f"{path} reads no prior (its adapter was trained with prior 'none'): drop the provider flags")
    cache = prior_cache(args) if args.prior_cache else None
    source = prior_source_of(runner, provider=override, encoding=args.encoding, cache=cache)
    described = f"exported {runner.format} {path} ({runner.meta.get('backbone_class', '?')}, {runner.kind})"
    if runner.note:
        described += f"; {runner.note}"
    return runner, described, source, device if runner.format == "torchscript" else "cpu (onnxruntime)"


def _threads() -> int | None:
    from ..deploy.onnx_restore import default_threads

    return default_threads()


def check_exported_tiling(args, runner) -> None:
    """The tiling flags against what the exported file records (its size multiple, its receptive field):
    :func:`spt_adapter.deploy.tiling.check_tiling`, the check the torch-free runner makes."""
    from ..deploy.tiling import check_tiling

    check_tiling(
        args.tile, args.tile_overlap, args.tile_blend, minimum=runner.minimum_tile, radius=runner.receptive_radius
    )
