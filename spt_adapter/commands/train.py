"""`spt-adapter train`: train SPT units on a frozen backbone from a folder of clean images.

    spt-adapter train --backbone swinir_x4.pth --data DIV2K_HR/ --task sr:4 --out runs/swinir_x4_spt
    torchrun --nproc_per_node 4 -m spt_adapter.cli train ...      # DistributedDataParallel

Every flag is checked (folders exist and hold images, the backbone loads, targets resolve, the
output folder will not overwrite an earlier run) before any prior is computed or any step runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import DEFAULT_FUSION, FUSIONS
from ..errors import SPTError

HELP = "train SPT units on a frozen backbone (writes a safetensors delta, logs, resumable)"

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# ---------------------------------------------------------------------------------------------
# argument types shared with `eval` and `demo`
# ---------------------------------------------------------------------------------------------
def _number(convert, accept, what: str):
    """An argparse type: ``convert`` the text, then require ``accept(value)``; else say ``what``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")


def task_type(text: str) -> str:
    kind, sep, value = text.partition(":")
    try:
        number = float(value) if kind == "denoise" else int(value)
    except ValueError:
        number = None
    if not sep or kind not in ("denoise", "sr") or number is None or number <= 0 or (kind == "sr" and number < 2):
        raise argparse.ArgumentTypeError(f"task must be denoise:<sigma> (e.g. denoise:25) or sr:<scale> (sr:2, sr:4), got {text!r}")
    return text


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--backbone", metavar="CKPT", help="backbone checkpoint (.pth/.safetensors of any architecture "
                   "spandrel detects: SwinIR, HAT, RRDB, NAFNet, Restormer, ...; BasicSR/KAIR files too)")
    g.add_argument("--arch", metavar="PRESET", help="architecture preset to use for the weights given with --weights "
                   "(see `spt-adapter plugins`); checks the weights really are that architecture")
    g.add_argument("--weights", metavar="PATH", help="weights for --arch")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    from ..prior.encode import DEFAULT_ENCODING

    g = parser.add_argument_group("prior")
    g.add_argument("--prior-cache", metavar="DIR", default=None,
                   help="folder of cached priors (default: ~/.cache/spt-adapter/priors); SAM never runs twice per image")
    g.add_argument("--provider", choices=("slic", "felzenszwalb", "sam"), default=None,
                   help="mask provider (default: sam with --sam-checkpoint, else slic)")
    g.add_argument("--sam-checkpoint", metavar="PTH", help="segment-anything checkpoint (sam_vit_b_01ec64.pth, ...)")
    g.add_argument("--sam-model-type", default="auto", choices=("auto", "vit_b", "vit_l", "vit_h", "vit_tiny"),
                   help="SAM variant (default: auto, read from the checkpoint)")
    g.add_argument("--segments", type=positive_int, default=None, help="SLIC: number of segments")
    g.add_argument("--encoding", default=None,
                   help=f"prior encoding: label, onehot[:K], boundary (default: {DEFAULT_ENCODING}, label with --fusion pool; "
                        "eval and train --resume: the adapter's)")


# ---------------------------------------------------------------------------------------------
# checks and builders (shared with eval/demo)
# ---------------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike, what: str) -> list[Path]:
    path = Path(folder)
    if not path.exists():
        raise SPTError(f"{what} folder {path} does not exist")
    if not path.is_dir():
        raise SPTError(f"{what} {path} is not a folder")
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise SPTError(f"{what} folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return images


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
    from ..backbones import load_backbone

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
        from ..presets import PRESETS

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


def load_dataset_module():
    try:
        from .. import data
    except ImportError as exc:  # pragma: no cover - the data module ships with the package
        raise SPTError(f"spt_adapter.data is unavailable: {exc}") from None
    return data


def make_dataset(folder, task: str, provider, cache, *, encoding: str | None = None, train: bool,
                 patch: int | None = None, seed: int = 0):
    """``spt_adapter.data.PairedPriorDataset`` over ``folder``: random ``patch`` x ``patch`` GT
    patches (LQ patches of ``patch / scale``) with flips for training, whole images for evaluation.
    The degradation is fixed per image and ``seed``; the prior is computed on the LQ image once,
    through ``cache``, with ``encoding`` (default: ``spt_adapter.prior.DEFAULT_ENCODING``)."""
    from ..prior.encode import DEFAULT_ENCODING

    data = load_dataset_module()
    task_ = data.parse_task(task)
    scale = task_.scale if task_.kind == "sr" else 1
    lq_patch = None if (patch is None or not train) else patch // scale
    return data.PairedPriorDataset(folder, task, cache=cache, provider=provider, encoding=encoding or DEFAULT_ENCODING,
                                   patch_size=lq_patch, train=train, seed=seed)


def build_dataset(args, folder, provider, cache, *, train: bool, patch: int | None = None):
    return make_dataset(folder, args.task, provider, cache, encoding=args.encoding, train=train, patch=patch,
                        seed=getattr(args, "seed", 0))


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    parser.add_argument("--targets", nargs="+", metavar="PATTERN",
                        help="modules to adapt (default: the preset of the plugin that claims the backbone)")
    parser.add_argument("--exclude", nargs="+", metavar="PATTERN", help="modules to leave out")
    parser.add_argument("--fusion", choices=FUSIONS, default=None, help=f"unit fusion (default: {DEFAULT_FUSION})")
    parser.add_argument("--hidden", type=positive_int, default=16, help="prior-encoder width (default: 16)")
    d = parser.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="HQ_DIR", help="folder of clean (ground-truth) images")
    d.add_argument("--task", required=True, type=task_type, help="denoise:<sigma> or sr:<scale>")
    d.add_argument("--val", metavar="DIR", help="folder of clean validation images (full-image PSNR/SSIM)")
    d.add_argument("--patch", type=positive_int, default=64, help="training patch size on the ground truth (default: 64)")
    add_prior_arguments(parser)
    t = parser.add_argument_group("training")
    t.add_argument("--iters", type=positive_int, default=2000)
    t.add_argument("--batch", type=positive_int, default=8, help="batch per process (global = batch x processes)")
    t.add_argument("--lr", type=positive_float, default=2e-4)
    t.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    t.add_argument("--warmup", type=nonneg_int, default=0)
    t.add_argument("--seed", type=nonneg_int, default=0)
    t.add_argument("--save-every", type=nonneg_int, default=500, help="steps between checkpoints (0: only at the end)")
    t.add_argument("--val-every", type=nonneg_int, default=0, help="steps between validations (0: only at the end)")
    t.add_argument("--log-every", type=positive_int, default=10)
    t.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes")
    t.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (adapter, logs, state)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check_out(args) -> Path:
    from ..train import ADAPTER_FILE

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} exists and is not a folder")
    has_run = (out / ADAPTER_FILE).exists()
    if args.resume and not has_run:
        raise SPTError(f"--resume: {out} holds no {ADAPTER_FILE} to resume from")
    if has_run and not args.resume:
        raise SPTError(f"{out} already holds a trained adapter; pass --resume to continue it or choose another --out")
    return out


def _resume_config_check(args, path: Path) -> None:
    """The run in ``path`` continues with its own targets, fusion and prior encoding; a flag that
    asks for another one is refused. Sets ``args.encoding`` to the adapter's."""
    from ..delta import read_adapter_config
    from ..prior.encode import check_encoding_for_fusion

    cfg = read_adapter_config(path)
    if args.targets and list(args.targets) != list(cfg.targets):
        raise SPTError(f"--resume: {path} was trained with targets {cfg.targets}, not {args.targets}")
    if args.fusion is not None and args.fusion != cfg.fusion:
        raise SPTError(f"--resume: {path} was trained with fusion {cfg.fusion!r}, not {args.fusion!r}")
    # adapters that record no encoding were made when "label" was the only default
    recorded = (cfg.prior or {}).get("encoding") or "label"
    if args.encoding is not None and args.encoding != recorded:
        raise SPTError(f"--resume: {path} was trained with encoding {recorded!r}, not {args.encoding!r}")
    args.encoding = recorded
    check_encoding_for_fusion(args.encoding, cfg.fusion)


def _resolve_encoding(args) -> None:
    """A fresh run: ``--encoding`` or the default for its fusion; ``pool`` needs ``label``."""
    from ..prior.encode import check_encoding_for_fusion, default_encoding

    fusion = args.fusion or DEFAULT_FUSION
    args.encoding = args.encoding or default_encoding(fusion)
    check_encoding_for_fusion(args.encoding, fusion)


def run(args) -> int:
    import torch

    import spt_adapter
    from ..config import SPTConfig
    from ..evaluate import make_val_fn
    from ..train import ADAPTER_FILE, TrainSettings, init_distributed, shutdown_distributed, train_units

    # ---- every check before any work -------------------------------------------------------
    if not args.resume:
        _resolve_encoding(args)
    settings = TrainSettings(iters=args.iters, batch=args.batch, lr=args.lr, schedule=args.schedule,
                             warmup=args.warmup, seed=args.seed, save_every=args.save_every,
                             val_every=args.val_every, log_every=args.log_every, workers=args.workers,
                             amp=not args.no_amp, progress=not args.no_progress)
    kind, _, value = args.task.partition(":")
    if kind == "sr" and args.patch % int(value):
        raise SPTError(f"--patch {args.patch} is not divisible by the scale {value} of --task {args.task}")
    train_images = list_images(args.data, "--data")
    if args.val:
        list_images(args.val, "--val")
    out = _check_out(args)
    if args.resume:
        _resume_config_check(args, out / ADAPTER_FILE)
    check_provider_args(args)
    model, default_targets, described = load_backbone_from_args(args, args.targets)
    targets = list(args.targets) if args.targets else default_targets
    if not args.resume:
        spt_adapter.inspect_targets(model, targets, args.exclude)  # a bad pattern fails here, named

    info = init_distributed(args.device)
    try:
        provider = build_provider(args, device=info.device if args.provider == "sam" else None)
        cache = prior_cache(args)
        if info.distributed and not info.is_main:
            torch.distributed.barrier()  # the main process fills the prior cache first; the others read it
        dataset = build_dataset(args, args.data, provider, cache, train=True, patch=args.patch)
        val_set = build_dataset(args, args.val, provider, cache, train=False) if args.val else None
        if info.distributed and info.is_main:
            torch.distributed.barrier()
        if len(dataset) == 0:
            raise SPTError(f"--data {args.data}: the dataset is empty")
        val_fn = None
        if val_set is not None:
            val_fn = make_val_fn(lambda: (val_set[i] for i in range(len(val_set))), args.task)
        from ..prior.encode import encoding_channels

        if args.resume:
            spt = spt_adapter.load_adapter(model, out / ADAPTER_FILE)
        else:
            config = SPTConfig(
                targets=targets, exclude=list(args.exclude or []), fusion=args.fusion or DEFAULT_FUSION, hidden=args.hidden,
                prior_channels=encoding_channels(args.encoding),
                prior={"provider": provider.identity(), "encoding": args.encoding, "task": args.task},
                integration=None if args.targets else args._claim[0], preset=None if args.targets else args._claim[1],
            )
            torch.manual_seed(args.seed)
            spt = spt_adapter.inject(model, config=config)
        if info.is_main:
            print(f"backbone: {described}; {len(spt.unit_names())} SPT unit(s) on {spt.spt_config[spt.active_adapter].targets}")
            spt.print_trainable_parameters()
            print(f"data: {len(train_images)} image(s) in {args.data}, task {args.task}, prior {provider!r}")
        info_meta: dict[str, Any] = {"task": args.task, "data": str(args.data), "patch": args.patch,
                                     "backbone": described, "encoding": args.encoding}
        result = train_units(spt, dataset, settings, out_dir=out, resume=args.resume, val_fn=val_fn,
                             training_info=info_meta, dist_info=info)
    finally:
        shutdown_distributed(info)
    if info.is_main:
        if result.val:
            print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.val.items()))
        print(f"adapter:   {result.adapter_path}")
        print(f"state:     {result.state_path}")
        print(f"log:       {result.log_csv}")
        print(f"log:       {result.log_json}")
        print(f"card:      {out / 'README.md'}")
    return 0
