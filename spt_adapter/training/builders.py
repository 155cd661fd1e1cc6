"""What the command line assembles from its arguments: backbone, provider, prior cache, datasets.

The commands (`train`, `eval`, `masks`, `restore`) and the demo share these builders; each takes the
parsed arguments (or plain values) and raises :class:`SPTError` with one line naming the flag at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SPTError
from .images import IMAGE_SUFFIXES, list_images


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
    provider = args.provider or ("sam" if args.sam_checkpoint else "slic")
    if provider == "sam":
        if not args.sam_checkpoint:
            raise SPTError("--provider sam needs --sam-checkpoint PATH (a segment-anything checkpoint)")
        if not Path(args.sam_checkpoint).is_file():
            raise SPTError(f"SAM checkpoint {args.sam_checkpoint} does not exist")
    elif args.sam_checkpoint:
        raise SPTError(f"--sam-checkpoint was given with --provider {provider}; drop one of them")
    if args.segments is not None and provider != "slic":
        raise SPTError("--segments applies to --provider slic only")
    from ..prior.encode import default_encoding, parse_encoding

    parse_encoding(args.encoding or default_encoding(getattr(args, "fusion", None)))
    return provider


def build_provider(args, device=None):
    from ..prior import make_provider

    provider = check_provider_args(args)
    if provider == "sam":
        return make_provider("sam", args.sam_checkpoint, model_type=args.sam_model_type, device=device)
    settings = dict(getattr(args, "provider_settings", None) or {})
    if provider == "slic" and args.segments:
        settings["n_segments"] = args.segments
    return make_provider(provider, **settings)


def prior_cache(args):
    from ..prior.cache import PriorCache

    root = Path(args.prior_cache) if args.prior_cache else default_cache_root() / "priors"
    root.mkdir(parents=True, exist_ok=True)
    return PriorCache(root)


def load_backbone_from_args(args, targets: list[str] | None = None, require_targets: bool = True):
    """(model, default_targets, description) from --backbone or --arch/--weights."""
    from ..plugins.backbones import load_backbone

    if args.backbone and args.weights:
        raise SPTError("give either --backbone CKPT or --arch PRESET --weights PATH, not both")
    if args.weights and not args.arch:
        raise SPTError("--weights needs --arch PRESET (or pass the checkpoint as --backbone)")
    path = args.backbone or args.weights
    if not path:
        raise SPTError("no backbone: pass --backbone CKPT (or --arch PRESET --weights PATH)")
    if not Path(path).is_file():
        raise SPTError(f"backbone checkpoint {path} does not exist")
    bb = load_backbone(path)
    model, default = bb.model, list(bb.targets)
    args._claim = (bb.integration, bb.preset)
    arch = getattr(getattr(bb.descriptor, "architecture", None), "name", type(model).__name__)
    if args.arch:
        from ..plugins.presets import PRESETS

        named = [p for p in PRESETS if p.name == args.arch]
        if not named:
            raise SPTError(f"unknown --arch {args.arch!r}; presets: {sorted({p.name for p in PRESETS})}")
        if bb.preset != args.arch:
            fit = next((p for p in named if type(model).__name__ in p.classes and p.detect(model)), None)
            if fit is None:
                raise SPTError(f"--weights {path} hold a {arch} ({type(model).__name__}), not a {args.arch!r} network")
            default = list(fit.targets(model))
            args._claim = ("presets", fit.name)
    if require_targets and not targets and not default:
        raise SPTError(
            f"no plugin claims the {arch} backbone in {path} ({type(model).__name__}), so there are no default "
            "targets: pass --targets PATTERN (see `spt-adapter plugins` for the architectures with presets)"
        )
    return model, default, f"{arch} from {path}"


def make_dataset(folder, task: str, provider, cache, *, encoding: str | None = None, train: bool,
                 patch: int | None = None, seed: int = 0):
    """``spt_adapter.training.data.PairedPriorDataset`` over ``folder``: random ``patch`` x ``patch`` GT
    patches (LQ patches of ``patch / scale``) with flips for training, whole images for evaluation.
    The degradation is fixed per image and ``seed``; the prior is computed on the LQ image once,
    through ``cache``, with ``encoding`` (default: ``spt_adapter.prior.DEFAULT_ENCODING``)."""
    from ..prior.encode import DEFAULT_ENCODING

    from . import data

    task_ = data.parse_task(task)
    scale = task_.scale if task_.kind == "sr" else 1
    lq_patch = None if (patch is None or not train) else patch // scale
    return data.PairedPriorDataset(folder, task, cache=cache, provider=provider, encoding=encoding or DEFAULT_ENCODING,
                                   patch_size=lq_patch, train=train, seed=seed)


def build_dataset(args, folder, provider, cache, *, train: bool, patch: int | None = None):
    return make_dataset(folder, args.task, provider, cache, encoding=args.encoding, train=train, patch=patch,
                        seed=getattr(args, "seed", 0))
