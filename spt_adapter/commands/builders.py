"""What the command line assembles from its arguments: backbone, provider, prior cache, datasets.

The commands (`train`, `eval`, `masks`, `restore`) and the demo share these builders; each takes the
parsed arguments (or plain values) and raises :class:`SPTError` with one line naming the flag at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.images import IMAGE_SUFFIXES, list_images
from ..errors import SPTError


def image_folder(folder: str | os.PathLike, what: str) -> list[Path]:
    """The images in ``folder`` exactly as the datasets read them (:func:`images.list_images`:
    non-recursive, :data:`images.IMAGE_SUFFIXES`); a missing, non-folder or empty folder is refused
    naming ``what`` (the flag)."""
    path = Path(folder)
    if not path.exists():
        raise SPTError(f"{what} folder {path} does not exist")
    if not path.is_dir():
        raise SPTError(f"{what} {path} is not a folder")
    found = list_images(path)
    if not found:
        nested = any(q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES for q in path.rglob("*"))
        where = " (only in subfolders, which are not read: point at the folder that holds them)" if nested else ""
        raise SPTError(f"{what} folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}){where}")
    return found


def default_cache_root() -> Path:
    env = os.environ.get("SPT_ADAPTER_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spt-adapter"


def check_provider_args(args) -> str:
    """The provider the flags name (default: sam with --provider-checkpoint, else slic), checked before any
    image is read: it is installed, its checkpoint exists if it needs one, and its settings (from
    ``args.provider_settings``, ``--provider-set`` and ``--segments``) pass its schema. Stores the
    typed settings in ``args.provider_settings``; returns the provider's name."""
    from ..prior.encode import default_encoding, parse_encoding
    from ..prior.registry import get_provider_spec

    provider = args.provider or ("sam" if args.sam_checkpoint else "slic")
    spec = get_provider_spec(provider)
    if spec.needs_checkpoint:
        if not args.sam_checkpoint:
            raise SPTError(f"--provider {provider} needs --provider-checkpoint PATH ({spec.description})")
        if not Path(args.sam_checkpoint).is_file():
            raise SPTError(f"{provider} checkpoint {args.sam_checkpoint} does not exist")
    elif args.sam_checkpoint:
        raise SPTError(
            f"--provider-checkpoint was given with --provider {provider}, which takes no checkpoint; drop one of them"
        )
    if args.segments is not None and provider != "slic":
        raise SPTError("--segments applies to --provider slic only")
    settings = dict(getattr(args, "provider_settings", None) or {})
    settings.update(parse_settings(getattr(args, "provider_set", None) or []))
    if args.segments is not None:
        settings["n_segments"] = args.segments
    args.provider_settings = spec.validate(settings)
    parse_encoding(args.encoding or default_encoding(getattr(args, "fusion", None)))
    return provider


def parse_settings(items) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--set`` / ``--provider-set``) -> ``{key: "VALUE"}``; the provider's
    settings schema converts and checks the values (:meth:`ProviderSpec.validate`)."""
    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--provider-set expects KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = val.strip()
    return out


#: how the commands say that an adapter reads no prior (trained with prior "none")
_NO_PRIOR = "reads no prior (it was trained with prior 'none'; nothing is computed beside the image)"


def adapter_needs_provider(adapter_file, args) -> bool:
    """Whether running the adapter in ``adapter_file`` needs a mask provider: False for a distilled
    prior (its student makes the prior from the input; no segmenter or checkpoint) and for an adapter
    that reads no prior, where a provider
    flag (``--provider``, ``--provider-checkpoint``, ``--provider-set``, ``--segments``) is refused; True otherwise. `eval`
    and `restore` build their provider only when this says so."""
    from ..files.format import read_adapter_config

    cfg = read_adapter_config(adapter_file)
    if cfg.student is None and cfg.reads_prior:
        return True
    what = "has a distilled prior (a student network makes it from the input)" if cfg.reads_prior else _NO_PRIOR
    given = [
        f
        for f, v in (
            ("--provider", getattr(args, "provider", None)),
            ("--provider-checkpoint", getattr(args, "sam_checkpoint", None)),
            ("--provider-set", getattr(args, "provider_set", None)),
            ("--segments", getattr(args, "segments", None)),
        )
        if v
    ]
    if given:
        raise SPTError(f"{adapter_file} {what}: drop {', '.join(given)}")
    return False


def build_provider(args, device=None):
    """The provider :func:`check_provider_args` checked, built with its validated settings."""
    from ..prior import make_provider

    provider = check_provider_args(args)
    model_type = None if args.sam_model_type in (None, "auto") else args.sam_model_type
    return make_provider(
        provider, checkpoint=args.sam_checkpoint or None, model_type=model_type, device=device, **args.provider_settings
    )


def use_recorded_provider(args, ident: dict, where) -> None:
    """`eval`: rebuild the prior with the provider an adapter records (``ident``: its identity),
    unless the flags name one. A provider that needs a checkpoint must be given one; a provider
    that is not installed is named."""
    if args.provider is not None or args.sam_checkpoint or not ident:
        return
    from ..prior.registry import check_recorded_provider

    name = check_recorded_provider(ident, str(where))
    if ident.get("provider") == "classical":
        args.provider = name
        if args.segments is None and not getattr(args, "provider_set", None):
            args.provider_settings = dict(ident.get("settings") or {})  # the exact recorded recipe
        return
    args.provider = name
    if not getattr(args, "provider_set", None):
        args.provider_settings = dict(ident.get("settings") or {})


def prior_flags(args, adapter_file) -> bool:
    """`eval` / `restore` with an adapter: unless flags name a provider (or the adapter carries a
    distilled prior student, or reads no prior: neither needs one), take the provider the adapter records
    (:func:`use_recorded_provider`); check the result. True when a provider is to be built from the
    flags (:func:`build_provider`), False when :func:`spt_adapter.inference.restore.resolve_prior_source`
    decides alone (a student; no prior; nothing recorded)."""
    from ..files.format import read_adapter_config

    cfg = read_adapter_config(adapter_file)
    named = (
        args.provider is not None
        or bool(args.sam_checkpoint)
        or args.segments is not None
        or bool(getattr(args, "provider_set", None))
    )
    if getattr(cfg, "student", None) is not None or not cfg.reads_prior:
        if named and not cfg.reads_prior:
            raise SPTError(f"{adapter_file} {_NO_PRIOR}: drop the provider flags")
        if named:  # the student makes the prior; a provider's prior would be refused at the first image
            given = [
                f
                for f, on in (
                    ("--provider", args.provider is not None),
                    ("--sam-checkpoint", args.sam_checkpoint),
                    ("--segments", args.segments is not None),
                    ("--set", getattr(args, "provider_set", None)),
                )
                if on
            ]
            raise SPTError(
                f"{adapter_file} carries a distilled prior (its student makes the prior from each input), so "
                f"it takes no mask provider: drop {', '.join(given)}"
            )
        return False
    use_recorded_provider(args, (cfg.prior or {}).get("provider") or {}, adapter_file)
    if args.provider is None and not args.sam_checkpoint and not named:
        return False
    check_provider_args(args)
    return True


def open_prior_cache(root: str | os.PathLike, what: str = "--prior-cache"):
    """A :class:`PriorCache` at ``root``, refused with one line (naming ``what``, the flag) when the
    folder cannot be made or written: a cache that can store no prior would recompute every prior
    and lose every result."""
    import tempfile

    from ..prior.cache import PriorCache

    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise SPTError(f"{what} {root} is a file, not a folder; pass a folder for the prior cache")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".spt_write_check_"):
            pass
    except OSError as exc:
        raise SPTError(
            f"{what} {root} cannot be written ({exc.strerror or exc}); the prior cache must be a "
            "writable folder: fix its permissions or pass another folder"
        ) from None
    return PriorCache(root)


def prior_cache(args):
    return open_prior_cache(args.prior_cache if args.prior_cache else default_cache_root() / "priors")


def check_task_scale(task: str, backbone_scale: int | None, described: str) -> None:
    """Refuse a task whose scale is not the backbone's (``sr:2`` on a x1 denoiser scored a crop)."""
    from ..data.datasets import parse_task

    if backbone_scale is None:
        return
    t = parse_task(task)
    want = t.scale
    if want != backbone_scale:
        fix = f"use --task sr:{backbone_scale}" if backbone_scale > 1 else "use --task denoise:<sigma>"
        raise SPTError(
            f"--task {task} needs a x{want} backbone but {described} is x{backbone_scale}: {fix} or another backbone"
        )


def apply_recorded_prior(args, recorded: dict, source) -> None:
    """Rebuild the prior an adapter records (``files.format.prior_record``'s schema) unless flags say
    otherwise: its provider (:func:`use_recorded_provider`) and its encoding."""
    ident = recorded.get("provider")
    use_recorded_provider(args, ident if isinstance(ident, dict) else {}, source)
    if args.encoding is None:
        # "label": adapters that record no encoding were made when label was the only default
        args.encoding = recorded.get("encoding", "label")


def load_backbone_from_args(args, targets: list[str] | None = None, require_targets: bool = True):
    """(model, default_targets, description) from --backbone (or --weights) and --preset (the targets of
    that preset instead of the default one; a preset that does not recognise the backbone is refused,
    naming those that do). Also sets
    ``args._channels`` (the image channels the backbone takes: grey backbones read grey images) and
    ``args._descriptor`` (spandrel's descriptor: size requirements, half-precision support)."""
    from ..backbones.load import load_backbone
    from ..backbones.presets import PRESETS
    from ..inference.restore import input_channels

    if args.backbone and args.weights:
        raise SPTError("give either --backbone CKPT or --preset PRESET --weights PATH, not both")
    if args.weights and not args.arch:
        raise SPTError("--weights needs --preset PRESET (or pass the checkpoint as --backbone)")
    path = args.backbone or args.weights
    if not path:
        raise SPTError("no backbone: pass --backbone CKPT (optionally with --preset PRESET)")
    if args.arch and args.arch not in {p.name for p in PRESETS}:
        raise SPTError(f"unknown --preset {args.arch!r}; presets: {', '.join(sorted({p.name for p in PRESETS}))}")
    from .._io import why_not_a_file

    why = why_not_a_file(path)
    if why:
        raise SPTError(f"backbone checkpoint {path} {why}")
    bb = load_backbone(path)
    if args.arch:  # the preset asked for, among those that recognise the network
        picked = bb.claim.pick(args.arch) if bb.claim is not None else None
        if picked is None:
            arch = getattr(getattr(bb.descriptor, "architecture", None), "name", type(bb.model).__name__)
            fits = bb.claim.presets if bb.claim is not None else []
            raise SPTError(
                f"--preset {args.arch!r}: {path} holds a {arch} ({type(bb.model).__name__}), not a {args.arch!r} "
                "network; "
                + (f"the presets that recognise it: {', '.join(fits)}" if fits else "no preset does: pass --targets")
            )
        bb.claim = picked
    model, default = bb.model, list(bb.claim.targets) if bb.claim is not None else []
    args._claim = (bb.integration, bb.preset)
    args._descriptor = bb.descriptor
    args._channels = input_channels(model, bb.descriptor)
    if args._channels not in (1, 3):
        raise SPTError(
            f"the backbone in {path} takes {args._channels}-channel input; images are read as 1 (grey) or "
            "3 (RGB) channels"
        )
    scale = getattr(bb.descriptor, "scale", None)
    args._scale = int(scale) if isinstance(scale, int) and scale >= 1 else None
    arch = getattr(getattr(bb.descriptor, "architecture", None), "name", type(model).__name__)
    if require_targets and not targets and not default:
        raise SPTError(
            f"no plugin claims the {arch} backbone in {path} ({type(model).__name__}), so there are no default "
            "targets: pass --targets PATTERN (see `spt-adapter plugins` for the architectures with presets)"
        )
    return model, default, f"{arch} from {path}"


def make_dataset(
    folder,
    task: str,
    provider,
    cache,
    *,
    encoding: str | None = None,
    train: bool,
    patch: int | None = None,
    seed: int = 0,
    teacher: bool = False,
    channels: int = 3,
    noise: str = "spt",
    lq_paths=None,
    clip: bool = True,
    fresh: bool = False,
    full_depth: bool = False,
):
    """``spt_adapter.data.datasets.PairedPriorDataset`` over ``folder``: random ``patch`` x ``patch`` GT
    patches (LQ patches of ``patch / scale``) with flips for training, whole images for evaluation.
    The degradation is fixed per image and ``seed`` (``noise``: the protocol, see ``data``); the
    prior is computed on the LQ image once, through ``cache``, with ``encoding`` (default:
    ``spt_adapter.prior.DEFAULT_ENCODING``). ``channels=1`` reads grey images (1-channel backbones).
    ``teacher=True``: ``provider`` is a distilled prior's teacher and segments the clean images only
    (items hold ``teacher_prior``); ``provider=None``: items hold no prior (an adapter whose student
    makes its own). ``lq_paths``: the degraded partners of the images in ``folder`` (a list of
    paths, same order; task ``paired:<scale>``), read instead of degrading. ``clip=False``: the
    network reads unclipped noise (the prior still sees the clipped 8-bit image). ``fresh=True``
    (training): a new degradation is drawn for every item, deterministic in (seed, step).
    ``full_depth``: 16-bit files are read at 16 bits (the dataset's ``full_depth``)."""
    from ..data import datasets as data
    from ..prior.encode import DEFAULT_ENCODING

    task_ = data.parse_task(task)
    scale = task_.scale
    lq_patch = None if (patch is None or not train) else patch // scale
    return data.PairedPriorDataset(
        folder,
        task,
        cache=cache,
        provider=None if teacher else provider,
        encoding=encoding or DEFAULT_ENCODING,
        patch_size=lq_patch,
        train=train,
        seed=seed,
        teacher=provider if teacher else None,
        with_prior=provider is not None,
        channels=channels,
        noise=noise,
        lq_paths=lq_paths,
        clip=clip,
        fresh=fresh and train,
        full_depth=full_depth,
    )


def resolve_pairs(args, hq, lq, what: str = "--data"):
    """The checked pairs of ``hq`` / ``lq`` under the flags' rules (``--hq-suffix``, ``--lq-suffix``,
    ``--pairs``): a :class:`spt_adapter.data.pairs.PairSet`; every error names the file, before any
    pixel is read. ``what`` names the pair of flags in messages."""
    from ..data.pairs import load_pairs

    pairs_file = getattr(args, "pairs", None) if what == "--data" else None
    try:
        return load_pairs(
            hq,
            lq,
            hq_suffix=getattr(args, "hq_suffix", "") or "",
            lq_suffix=getattr(args, "lq_suffix", "") or "",
            pairs_file=pairs_file,
        )
    except SPTError as exc:
        raise SPTError(f"{what}: {exc}" if what != "--data" else str(exc)) from None


def paired_task(args, pairset, backbone_scale: int | None, described: str) -> str:
    """``paired:<scale>`` for checked pairs, refused when the backbone's scale is another one (or
    when ``--task`` names a different task)."""
    task = f"paired:{pairset.scale}"
    given = getattr(args, "task", None)
    if given is not None and given != task:
        raise SPTError(
            f"--lq gives the degraded images themselves (HQ = {pairset.scale} x LQ here, task {task}): "
            f"drop --task {given}"
        )
    if backbone_scale is not None and backbone_scale != pairset.scale:
        first = pairset.pairs[0]
        raise SPTError(
            f"the pairs are x{pairset.scale} (e.g. {first.lq.name} -> {first.hq.name}) but {described} is "
            f"x{backbone_scale}: use pairs whose clean image is {backbone_scale} x the degraded one, or another "
            "backbone"
        )
    return task


def build_dataset(
    args,
    folder,
    provider,
    cache,
    *,
    train: bool,
    patch: int | None = None,
    teacher: bool = False,
    pairs=None,
    full_depth: bool | None = None,
):
    """The dataset the flags describe; ``pairs`` (a checked PairSet) reads its LQ files instead of
    degrading ``folder``'s images. ``full_depth`` (default: with ``pairs``): 16-bit files are read
    at 16 bits -- paired training learns float targets of all 16 bits."""
    return make_dataset(
        pairs.hq if pairs is not None else folder,
        args.task,
        provider,
        cache,
        encoding=args.encoding,
        train=train,
        patch=patch,
        seed=getattr(args, "seed", 0),
        teacher=teacher,
        channels=getattr(args, "_channels", 3),
        noise=getattr(args, "noise", None) or "spt",
        lq_paths=pairs.lq if pairs is not None else None,
        clip=getattr(args, "clip", True),
        fresh=train and pairs is None and getattr(args, "degrade_per", "image") == "step",
        full_depth=pairs is not None if full_depth is None else full_depth,
    )
