"""`spt-adapter masks`: compute and cache the prior of every image (resumable, shardable).

    spt-adapter masks photos/ --prior-cache priors                      # priors of the images themselves
    spt-adapter masks --data HQ --lq LQ --lq-suffix _real --prior-cache priors   # of paired LQ files

With ``--data``/``--lq`` the images are the degraded files the pairs rules match (the ones `train`
and `eval --lq` compute their priors on); ``--degrade`` makes the LQ images of a synthetic task
instead (one per image and ``--seed``: what ``train --degrade-per image`` and ``eval`` look up).
"""

from __future__ import annotations

import os
import sys
import time

from ..deploy.shards import shard_key
from ..prior.encode import DEFAULT_ENCODING
from ._args import (
    add_pair_arguments,
    add_progress_arguments,
    add_provider_checkpoint_arguments,
    alias,
    device_type,
    nonneg_int,
    provider_name,
)

HELP = "precompute masks + priors for images into a cache (SAM, SAM 2, a classical segmenter or a plugin's provider)"


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (not recursive), globs (quote them; ** recurses) or .txt lists of paths "
        "(or --data/--lq paired folders)",
    )
    parser.add_argument(
        "--data", metavar="HQ_DIR", default=None, help="with --lq: the clean folder the degraded files pair with"
    )
    add_pair_arguments(parser)
    parser.add_argument(
        "--provider",
        type=provider_name,
        default=None,
        metavar="NAME",
        help="mask provider: sam, sam2, slic, felzenszwalb, or one a plugin installs (`spt-adapter "
        "plugins` lists them; default: sam with --provider-checkpoint, else slic)",
    )
    add_provider_checkpoint_arguments(parser, dest="checkpoint", model_type_dest="model_type")
    parser.add_argument(
        "--device",
        default=None,
        type=device_type,
        help="torch device for SAM / SAM 2 (default: cuda[:LOCAL_RANK] when available, else cpu)",
    )
    cache = parser.add_mutually_exclusive_group(required=True)  # required: the spelling or its old alias
    cache.add_argument(
        "--prior-cache",
        dest="cache",
        metavar="DIR",
        help="folder of cached priors (what train/eval/restore --prior-cache read)",
    )
    alias(cache, "--cache", dest="cache")
    parser.add_argument(
        "--encoding",
        default=DEFAULT_ENCODING,
        help=f"label | onehot[:K] | boundary (default: {DEFAULT_ENCODING}, what `train` uses; "
        "label for units with --fusion pool)",
    )
    parser.add_argument(
        "--degrade",
        default=None,
        metavar="TASK",
        help="compute priors on the LQ image a PairedPriorDataset makes (one per image and --seed): "
        "denoise:<sigma>, sr:<scale> or any --task of docs/cli.md",
    )
    parser.add_argument(
        "--seed", type=nonneg_int, default=0, help="noise seed for --degrade denoise (same as the dataset's seed)"
    )
    parser.add_argument(
        "--grey",
        action="store_true",
        help="read images as grey (BT.601 luma), as train/eval/restore do for a 1-channel backbone, "
        "so the cached priors are the ones they look up",
    )
    parser.add_argument(
        "--noise",
        choices=("spt", "kair"),
        default="spt",
        help="--degrade denoise: spt (default) or kair (KAIR's draw; `eval`'s default for grey backbones)",
    )
    parser.add_argument(
        "--provider-set",
        dest="set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider setting, repeatable (e.g. points_per_side=16, pred_iou_thresh=0.8, n_segments=100); "
        "checked by name and type before any image is read (`spt-adapter plugins --providers`)",
    )
    alias(parser, "--set", dest="set", action="append")
    parser.add_argument("--batch", type=int, default=1, help="images per provider call")
    parser.add_argument(
        "--num-shards", type=int, default=None, help="split the image list in N shards (default: $WORLD_SIZE or 1)"
    )
    parser.add_argument(
        "--shard-index", type=int, default=None, help="which shard this process does (default: $RANK or 0)"
    )
    parser.add_argument("--strict", action="store_true", help="exit with status 1 if any image failed")
    add_progress_arguments(parser)


def shard_of(n_items: int, num_shards: int | None, shard_index: int | None, env=None) -> tuple[int, int]:
    """(number of shards, this process's index): :func:`spt_adapter.deploy.shards.shard_settings`."""
    from ..deploy.shards import shard_settings

    return shard_settings(num_shards, shard_index, env)


def _paired_inputs(args):
    """The LQ files of ``--data``/``--lq`` (checked pairs), or None without ``--lq``; the pairing
    flags and inputs that do not go together are refused."""
    from ..errors import ConfigError
    from .builders import resolve_pairs

    if args.lq is None:
        given = [
            f
            for f, v in (("--data", args.data), ("--hq-suffix", args.hq_suffix), ("--lq-suffix", args.lq_suffix),
                         ("--pairs", args.pairs))
            if v
        ]  # fmt: skip
        if given:
            raise ConfigError(f"{', '.join(given)} pair(s) clean images with degraded ones: add --lq LQ_DIR")
        if not args.inputs:
            raise ConfigError("give the images (files, folders, globs, .txt lists), or --data HQ_DIR --lq LQ_DIR")
        return None
    if args.data is None:
        raise ConfigError("--lq needs --data HQ_DIR (the clean partners its files are matched with)")
    if args.inputs:
        raise ConfigError("--data/--lq name the images: drop the INPUT arguments (or --data/--lq)")
    if args.degrade:
        raise ConfigError("--lq files are the degraded images already: drop --degrade")
    return resolve_pairs(args, args.data, args.lq).lq


def run(args) -> int:
    from tqdm import tqdm

    from ..data.datasets import degrade, parse_task
    from ..data.images import list_images, read_image
    from ..errors import ConfigError, ProviderRunError, SPTError
    from ..prior import get_provider_spec, make_provider, parse_encoding
    from .builders import open_prior_cache, parse_settings

    parse_encoding(args.encoding)
    lq_paths = _paired_inputs(args)
    task = parse_task(args.degrade) if args.degrade else None
    if args.noise == "kair" and (task is None or task.kind != "denoise"):
        raise ConfigError("--noise kair draws denoising noise: add --degrade denoise:SIGMA")
    if args.batch < 1:
        raise ConfigError("--batch must be >= 1")
    if args.provider is None:  # as train/eval/restore: SAM when a checkpoint is given, else SLIC
        args.provider = "sam" if args.checkpoint else "slic"
    settings = parse_settings(args.set)
    spec = get_provider_spec(args.provider)
    spec.validate(settings)  # by name and type, before anything is loaded or read
    if args.checkpoint and not spec.needs_checkpoint:
        raise ConfigError(
            f"--provider-checkpoint was given with --provider {args.provider}, which takes no checkpoint; "
            "drop one of them"
        )
    device = args.device
    if spec.needs_checkpoint and device is None and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model_type = None if args.model_type in (None, "auto") else args.model_type
    provider = make_provider(
        args.provider, checkpoint=args.checkpoint, model_type=model_type, device=device, **settings
    )
    paths = lq_paths if lq_paths is not None else list_images(args.inputs)
    num_shards, shard_index = shard_of(len(paths), args.num_shards, args.shard_index)
    # by a hash of each file's name, not its position: a file added between two shard runs moves no other
    # image to another shard (restore shards its outputs the same way)
    mine = [p for p in paths if shard_key(p.name, num_shards) == shard_index]
    cache = open_prior_cache(args.cache, "--prior-cache")  # a file or a read-only folder: refused by name
    # what a run killed mid-write (kill -9) left behind; a minute's margin spares concurrent shards' writes
    stale = cache.remove_stale_temporaries(time.time() - 60)
    if stale:
        print(f"masks: removed {stale} temporary file(s) left by an interrupted run", file=sys.stderr)
    kind = getattr(provider, "model_type", None)
    what = f"{args.provider}" + (f" {kind}" if kind else "") + f", encoding {args.encoding}"
    if args.grey:
        what += ", grey"
    if task:
        what += f", on LQ of {task} (seed {args.seed}{', KAIR noise' if args.noise == 'kair' else ''})"
    shard = f" (shard {shard_index}/{num_shards}: {len(mine)} of {len(paths)} images)" if num_shards > 1 else ""
    print(f"masks: {len(mine)} image(s){shard}, {what} -> {cache.root}", file=sys.stderr)

    counts = {"computed": 0, "reused": 0, "re-encoded": 0, "failed": 0, "provider": 0}
    failures: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(mine), unit="img", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr)

    def flush(batch):
        if not batch:
            return
        status: list[str] = []
        try:
            cache.get_or_compute_many([img for _, img in batch], provider, args.encoding, status=status)
        except SPTError as exc:
            if not isinstance(exc, ProviderRunError):
                raise  # bad settings, masks of the wrong size, ...: the same for every image
            if len(batch) > 1:
                for one in batch:
                    flush([one])
                return
            counts["failed"] += 1
            counts["provider"] += 1
            failures.append((str(batch[0][0]), str(exc)))
            bar.update(1)
            return
        except OSError as exc:  # full disk, a cache folder gone: no image's fault, the same for every image
            raise SPTError(
                f"cannot write the prior cache {cache.root}: {exc.strerror or exc} ({counts['computed']} "
                "computed before it are kept; free space, then rerun to continue)"
            ) from None
        except Exception as exc:  # one bad image in a batch: retry one by one to isolate it
            if len(batch) > 1:
                for one in batch:
                    flush([one])
                return
            counts["failed"] += 1
            counts["provider"] += 1
            failures.append((str(batch[0][0]), f"{type(exc).__name__}: {exc}"))
            bar.update(1)
            return
        for s in status:
            counts["computed" if s == "computed" else "reused"] += 1
            counts["re-encoded"] += s == "masks"
        bar.update(len(batch))
        bar.set_postfix(computed=counts["computed"], reused=counts["reused"], failed=counts["failed"], refresh=False)

    channels = 1 if args.grey else 3  # what train/eval/restore read for a 1-channel backbone
    pending = []
    for path in mine:
        try:
            img = read_image(path, channels=channels)
            if task is not None:
                _, img = degrade(img, task, args.seed, channels=channels, noise=args.noise)
        except SPTError as exc:
            counts["failed"] += 1
            failures.append((str(path), str(exc)))
            bar.update(1)
            continue
        pending.append((path, img))
        if len(pending) >= args.batch:
            flush(pending)
            pending = []
    flush(pending)
    bar.close()
    dt = time.perf_counter() - t0
    print(
        f"masks: computed {counts['computed']}, reused {counts['reused']}"
        + (f" ({counts['re-encoded']} encoded from cached masks)" if counts["re-encoded"] else "")
        + f", failed {counts['failed']} in {dt:.1f}s",
        file=sys.stderr,
    )
    for failed, reason in failures:
        print(f"  failed: {failed}: {reason}", file=sys.stderr)
    if cache.stats["corrupt"]:
        print(f"  {cache.stats['corrupt']} corrupt cache entr(y/ies) were recomputed", file=sys.stderr)
    if cache.stats["old_format"]:
        print(
            f"  {cache.stats['old_format']} cache entr(y/ies) of an older cache format were recomputed", file=sys.stderr
        )
    if counts["provider"] and not (counts["computed"] or counts["reused"]):
        # the provider failed on every image it was given: its settings or installation, not the images
        print(
            f"masks: error: the provider failed on every image it ran on ({counts['provider']} of "
            f"{counts['provider']}): its settings or installation fail, not the images (exit 1)",
            file=sys.stderr,
        )
        return 1
    return 1 if (args.strict and failures) else 0
