"""`spt-adapter train`: train SPT units on a frozen backbone from a folder of clean images.

    spt-adapter train --backbone swinir_x4.pth --data DIV2K_HR/ --task sr:4 --out runs/swinir_x4_spt
    torchrun --nproc_per_node 4 -m spt_adapter.cli train ...      # DistributedDataParallel

Every flag is checked (folders exist and hold images, the backbone loads, targets resolve, the
output folder will not overwrite an earlier run) before any prior is computed or any step runs.

Size: the command's flags, its refusals before anything is written (output folder, resume
consistency, distillation settings) and the run's assembly; the loop is in training/train.py.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.config import DEFAULT_FUSION, DEFAULT_LORA_RANK, FUSIONS, PRIORLESS_FUSIONS
from ..core.planning import input_channels
from ..errors import SPTError
from ._args import (
    add_backbone_arguments,
    add_clip_arguments,
    add_pair_arguments,
    add_prior_arguments,
    add_progress_arguments,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    task_type,
)
from .builders import (
    apply_recorded_prior,
    build_dataset,
    build_provider,
    check_provider_args,
    check_task_scale,
    image_folder,
    load_backbone_from_args,
    paired_task,
    prior_cache,
    resolve_pairs,
)

HELP = "train SPT units on a frozen backbone (writes a safetensors delta, logs, resumable)"
PRIOR_CHOICES = ("none", "lq", "distilled")
DEFAULT_STUDENT_STEPS = 400  # results 11: 400 student-only steps, distill weight 0.1, width 16


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="PATTERN",
        help="modules to adapt (default: the preset of the plugin that claims the backbone)",
    )
    parser.add_argument("--exclude", nargs="+", metavar="PATTERN", help="modules to leave out")
    parser.add_argument(
        "--fusion",
        choices=FUSIONS,
        default=None,
        help=f"unit kind (default: {DEFAULT_FUSION}); lora: peft's LoRA on each target (Conv2d / Linear), "
        "--hidden its rank, merged into the weights on export",
    )
    parser.add_argument(
        "--hidden",
        type=positive_int,
        default=None,
        help="unit width: the prior encoder's and the fusion's hidden channels, the size knob that LoRA calls r "
        f"(default: 16, with --fusion lora the rank {DEFAULT_LORA_RANK}; `spt-adapter inspect CKPT --hidden N` "
        "shows the parameters it gives; --resume keeps the run's)",
    )
    parser.add_argument(
        "--lora-alpha",
        type=positive_float,
        default=None,
        help="--fusion lora only: LoRA's alpha, the update scaled by alpha / rank (default: the rank, scale 1)",
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=None,
        help="conv layers of each unit's prior encoder (default: 2; units with --prior none have no encoder; "
        "--resume keeps the run's)",
    )
    d = parser.add_argument_group("data")
    d.add_argument("--data", required=True, metavar="HQ_DIR", help="folder of clean (ground-truth) images")
    d.add_argument(
        "--task",
        default=None,
        type=task_type,
        help="the synthetic degradation: denoise:<sigma>, sr:<scale>[:bd], jpeg:<q>, blur:gauss:<std>, "
        "poisson-gauss:<a>:<b>, or steps joined by '+' (docs/cli.md); not with --lq, whose files are the degraded images",
    )
    d.add_argument(
        "--degrade-per",
        choices=("step", "image"),
        default="step",
        help="step: a new synthetic degradation for every crop at every step, deterministic in (seed, step), "
        "its prior computed on the fly (as KAIR/BasicSR draw); image: one per image and --seed, priors cached "
        "(what train did before; SAM then runs once per image)",
    )
    add_clip_arguments(d)
    add_pair_arguments(d, val=True)
    d.add_argument("--val", metavar="DIR", help="folder of clean validation images (full-image PSNR/SSIM)")
    d.add_argument(
        "--patch", type=positive_int, default=64, help="training patch size on the ground truth (default: 64)"
    )
    add_prior_arguments(parser)
    dp = parser.add_argument_group("which prior the units read (distilled: no segmenter at inference)")
    dp.add_argument(
        "--prior",
        choices=PRIOR_CHOICES,
        default=None,
        help="none: the units read no prior (no segmenter at training or inference; recorded in the adapter); "
        "lq: the provider segments each LQ input, at inference too; distilled: a small student network inside "
        "the adapter learns the --teacher's prior of the clean images. Default: none, or lq when a provider "
        "flag (--provider, --provider-checkpoint, --provider-set, --segments, --encoding) is given -- on every "
        "real network measured the LQ segment prior added nothing (docs/results.md, results 13-14); --resume: "
        "the run's own",
    )
    dp.add_argument(
        "--teacher",
        default=None,
        metavar="PROVIDER",
        help="with --prior distilled: the mask provider run on the clean training images only (slic, "
        "felzenszwalb, sam/sam2 with --provider-checkpoint, or a plugin provider's name; settings with "
        "--provider-set)",
    )
    dp.add_argument(
        "--distill-weight",
        type=nonneg_float,
        default=0.1,
        help="weight of the distillation loss beside the L1 restoration loss (default: 0.1)",
    )
    dp.add_argument(
        "--student-steps",
        type=nonneg_int,
        default=None,
        help="steps that first train the student alone on the distillation loss, the backbone not run; "
        f"they come in addition to --iters (default: {DEFAULT_STUDENT_STEPS}, the setting "
        "benchmarks/quality.py validated)",
    )
    dp.add_argument("--student-width", type=positive_int, default=16, help="student conv width (default: 16)")
    dp.add_argument("--student-depth", type=positive_int, default=4, help="student conv layers (default: 4)")
    t = parser.add_argument_group("training")
    t.add_argument(
        "--iters",
        type=positive_int,
        default=2000,
        help="training steps of the units (default: 2000; a distilled prior's --student-steps come first)",
    )
    t.add_argument("--batch", type=positive_int, default=8, help="batch per process (global = batch x processes)")
    t.add_argument(
        "--lr",
        type=positive_float,
        default=1e-3,
        help="peak learning rate of the unit parameters (default: 1e-3, what every benchmark trains units at)",
    )
    t.add_argument(
        "--schedule", choices=("cosine", "step", "constant"), default="cosine", help="learning-rate schedule"
    )
    t.add_argument("--warmup", type=nonneg_int, default=0, help="linear warm-up steps")
    t.add_argument("--seed", type=nonneg_int, default=0, help="seed of the crops, noise and initialisation")
    t.add_argument("--save-every", type=nonneg_int, default=500, help="steps between checkpoints (0: only at the end)")
    t.add_argument("--val-every", type=nonneg_int, default=0, help="steps between validations (0: only at the end)")
    t.add_argument("--log-every", type=positive_int, default=10, help="steps between log lines")
    t.add_argument("--workers", type=nonneg_int, default=0, help="DataLoader worker processes")
    t.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (adapter, logs, state)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_progress_arguments(parser)


def _epoch_leftover(n: int, global_batch: int) -> int:
    """Samples an epoch of ``n`` images leaves out (training/train.py's loader drops the last partial
    batch; its shuffle changes which ones every epoch)."""
    import math

    total = n * max(1, math.ceil(global_batch / n))
    return total % global_batch


def _check_pair_flags(args) -> None:
    """``--task`` xor ``--lq``; the pairing flags only with ``--lq``; ``--val-lq`` with ``--val``."""
    if not args.lq:
        given = [
            f
            for f, v in (
                ("--hq-suffix", args.hq_suffix),
                ("--lq-suffix", args.lq_suffix),
                ("--pairs", args.pairs),
                ("--val-lq", args.val_lq),
            )
            if v
        ]
        if given:
            raise SPTError(f"{', '.join(given)} pair(s) clean images with degraded ones: add --lq LQ_DIR")
        if args.task is None:
            raise SPTError("pass --task denoise:<sigma> | sr:<scale>, or --lq LQ_DIR with the degraded partners")
        return
    if args.val and not args.val_lq:
        raise SPTError("--lq trains on paired files, so --val needs its degraded partners too: add --val-lq DIR")
    if args.val_lq and not args.val:
        raise SPTError("--val-lq gives the degraded partners of --val's images: add --val DIR")


def _check_out(args) -> Path:
    from ..files.format import ADAPTER_FILENAME
    from ..training.checkpoint import LOG_CSV, LOG_JSON, is_own_log
    from ..training.train import STATE_FILE

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} exists and is not a folder")
    has_run = (out / ADAPTER_FILENAME).exists()
    if out.is_dir() and not has_run:
        # a run that stopped before its first checkpoint leaves only its state (written before the
        # adapter) and its logs (written as they grow, marked as ours); logs that are not marked, and
        # anything else, are someone's files, which the run's files (README.md above all) would overwrite
        ours = {STATE_FILE} | ({LOG_CSV, LOG_JSON} if is_own_log(out) else set())
        foreign = sorted(
            p.name for p in out.iterdir() if p.name not in ours and not p.name.startswith(f".{ADAPTER_FILENAME}.")
        )
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise SPTError(
                f"--out {out} is not empty and holds no spt-adapter run ({shown}); the run would overwrite "
                "files there: choose a new or empty folder"
            )
    if args.resume and not has_run:
        stopped = " (its run stopped before the first checkpoint: start it again without --resume)"
        raise SPTError(
            f"--resume: {out} holds no {ADAPTER_FILENAME} to resume from" + (stopped if is_own_log(out) else "")
        )
    if has_run and not args.resume:
        raise SPTError(f"{out} already holds a trained adapter; pass --resume to continue it or choose another --out")
    card = out / "README.md"
    if has_run and card.is_file() and not _is_model_card(card):
        raise SPTError(
            f"--resume: {card} is not this run's model card (someone's own README.md); the run would replace "
            "it at the end: move it out of --out first"
        )
    return out


def _is_model_card(path: Path) -> bool:
    """Whether ``path`` is a model card spt-adapter wrote (its front matter names the library)."""
    try:
        head = path.read_bytes()[:4096].decode("utf-8", "replace")
    except OSError:
        return False
    return head.startswith("---") and "library_name: spt-adapter" in head


def _resume_config_check(args, path: Path) -> None:
    """The run in ``path`` continues with its own targets, fusion and prior encoding; a flag that
    asks for another one is refused. Sets ``args.encoding`` to the adapter's."""
    from ..files.format import read_adapter_config
    from ..prior.encode import check_encoding_for_fusion

    cfg = read_adapter_config(path)
    prior = getattr(args, "prior", None) or "lq"
    if not cfg.reads_prior and prior != "none":
        raise SPTError(
            f"--resume: {path} was trained with --prior none (its units read no prior); drop --prior {prior}"
        )
    if cfg.reads_prior and prior == "none":
        raise SPTError(f"--resume: {path} was trained with a prior (its units read one); drop --prior none")
    if cfg.student is not None and prior != "distilled":
        raise SPTError(
            f"--resume: {path} has a distilled prior; pass --prior distilled --teacher (its teacher: "
            f"{_teacher_name(cfg)})"
        )
    if cfg.student is None and prior == "distilled":
        raise SPTError(f"--resume: {path} was trained with an LQ prior, not a distilled one; drop --prior distilled")
    depth = getattr(args, "depth", None)
    if depth is not None and depth != cfg.depth:  # the units exist: their encoder cannot change
        raise SPTError(
            f"--resume: {path} was trained with --depth {cfg.depth}, not {depth}; drop --depth (or start a new run)"
        )
    if not cfg.reads_prior:
        args.encoding = None  # no prior, no encoding
        return
    if args.targets and list(args.targets) != list(cfg.targets):
        raise SPTError(f"--resume: {path} was trained with targets {cfg.targets}, not {args.targets}")
    if args.fusion is not None and args.fusion != cfg.fusion:
        raise SPTError(f"--resume: {path} was trained with fusion {cfg.fusion!r}, not {args.fusion!r}")
    hidden = getattr(args, "hidden", None)
    if hidden is not None and hidden != cfg.hidden:  # the units exist: their width cannot change
        raise SPTError(
            f"--resume: {path} was trained with --hidden {cfg.hidden}, not {hidden}; drop --hidden (or start a new run)"
        )
    # adapters that record no encoding were made when "label" was the only default
    recorded = (cfg.prior or {}).get("encoding") or "label"
    if args.encoding is not None and args.encoding != recorded:
        raise SPTError(f"--resume: {path} was trained with encoding {recorded!r}, not {args.encoding!r}")
    args.encoding = recorded
    check_encoding_for_fusion(args.encoding, cfg.fusion)


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _resume_provenance_check(args, path: Path, provider) -> None:
    """A resumed run continues the same run: the task, data, schedule and prior recorded in the
    adapter must be those asked for now, else the header would describe a run that never happened."""
    import json

    from ..files.format import TRAINING_KEY, read_adapter_config, read_adapter_header

    meta, _ = read_adapter_header(path)
    try:
        done = json.loads(meta.get(TRAINING_KEY) or "{}")
    except ValueError:
        done = {}
    cfg = read_adapter_config(path)
    # --iters may grow (a documented, recorded change: the run is extended and the learning-rate
    # curve is recomputed for the new length from the step reached on); it may not undo steps
    step, planned = done.get("step"), done.get("iters")
    args._iters_changes = list(done.get("iters_changes") or [])
    # the step counts a distilled prior's student-only steps first; runs that record none predate
    # that (their student-only steps were counted inside --iters) or had none
    student_done = done.get("student_steps")
    if student_done is None and cfg.student is not None and int((cfg.prior or {}).get("student_steps") or 0):
        raise SPTError(
            f"--resume: the run in {path.parent} was made by an older spt-adapter that counted the "
            "student-only steps inside --iters; it cannot be continued under the new schedule: start a "
            "new run in another --out"
        )
    student_done = int(student_done or 0)
    if student_done != args.student_steps:
        raise SPTError(
            f"--resume: the run in {path.parent} was trained with --student-steps {student_done}, not "
            f"{args.student_steps}; resume it with --student-steps {student_done}"
        )
    if isinstance(step, int) and args.iters + student_done < step:
        raise SPTError(
            f"--resume: the run in {path.parent} already did {step} steps ({student_done} of them "
            f"student-only); --iters {args.iters} would end it before that (resume with --iters "
            f"{planned} or more)"
        )
    if isinstance(planned, int) and planned != args.iters:
        args._iters_changes.append({"at_step": step, "from": planned, "to": args.iters})
    checks: list[tuple[str, Any, Any, Callable[[Any, Any], bool]]] = [
        ("--task", done.get("task", (cfg.prior or {}).get("task")), args.task, str.__eq__),
        ("--data", done.get("data"), str(args.data), _same_path),
        ("--lr", done.get("lr"), args.lr, float.__eq__),
        ("--schedule", done.get("schedule"), args.schedule, str.__eq__),
        ("--patch", done.get("patch"), args.patch, int.__eq__),
        ("--seed", done.get("seed"), args.seed, int.__eq__),
    ]
    # the samples each step draws depend on the global batch: another --batch (or process count) would
    # continue another run under this one's record
    import os

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    global_batch = done.get("global_batch")
    if isinstance(global_batch, int) and global_batch != args.batch * world:
        raise SPTError(
            f"--resume: the run in {path.parent} was trained with a global batch of {global_batch}, not "
            f"{args.batch * world} (--batch {args.batch} x {world} process(es)); resume it with --batch "
            f"{max(global_batch // world, 1)}, or start a new run in another --out"
        )
    for flag, was, now, same in checks:
        if was is not None and not same(type(now)(was), now):
            raise SPTError(
                f"--resume: the run in {path.parent} was trained with {flag} {was}, not {now}; resume it "
                f"with {flag} {was}, or start a new run in another --out"
            )
    recorded = (cfg.prior or {}).get("provider")
    if isinstance(recorded, dict) and provider is not None:
        now_id = provider.identity()
        for key in ("provider", "method", "model_type", "checkpoint_sha256", "settings"):
            if key in recorded and key in now_id and recorded[key] != now_id[key]:
                raise SPTError(
                    f"--resume: the run in {path.parent} made its priors with {key} {recorded[key]!r}, "
                    f"not {now_id[key]!r}; resume it with the same prior flags, or start a new run"
                )


def _teacher_name(cfg) -> str:
    teacher = (cfg.prior or {}).get("teacher") or {}
    return str(teacher.get("method") or teacher.get("provider") or "unknown")


#: the flags that say how an LQ prior is made: given without --prior, they mean --prior lq
_PROVIDER_FLAGS = (
    ("--provider", "provider"),
    ("--provider-checkpoint", "sam_checkpoint"),
    ("--provider-set", "provider_set"),
    ("--segments", "segments"),
    ("--encoding", "encoding"),
)


def _provider_flags_given(args) -> list[str]:
    return [flag for flag, dest in _PROVIDER_FLAGS if getattr(args, dest, None) not in (None, [], "")]


def unit_fusion(args) -> str | None:
    """The unit kind a run trains: ``--fusion``, else :data:`~spt_adapter.core.config.DEFAULT_FUSION` (the one
    place the default lives) for a fresh run; None for ``--resume`` without ``--fusion`` (the run's own)."""
    if args.fusion is not None:
        return args.fusion
    return None if getattr(args, "resume", False) else DEFAULT_FUSION


def _resolve_prior_choice(args) -> None:
    """``--prior`` when it is not given: a resumed run's own (none, lq or distilled, from its adapter);
    else lq when a provider flag says how to make one, else none (the evidence: docs/prior.md). With
    ``--prior none``, a provider flag is refused (nothing would read its prior)."""
    from ..files.format import ADAPTER_FILENAME, read_adapter_config

    given = _provider_flags_given(args)
    fusion = unit_fusion(args)
    if fusion in PRIORLESS_FUSIONS:  # units that read no prior whatever the flags say
        if args.prior not in (None, "none"):
            raise SPTError(f"--fusion {fusion} units read no prior: drop --prior {args.prior}")
        args.prior = "none"
    if args.lora_alpha is not None and fusion != "lora":
        raise SPTError(f"--lora-alpha is LoRA's scale: it needs --fusion lora (got --fusion {fusion})")
    if args.prior is None:
        path = Path(args.out) / ADAPTER_FILENAME
        if args.resume and path.is_file():
            cfg = read_adapter_config(path)
            args.prior = "none" if not cfg.reads_prior else "distilled" if cfg.student is not None else "lq"
        else:
            args.prior = "lq" if given else "none"
    if args.prior == "none" and given:
        priorless = fusion in PRIORLESS_FUSIONS
        why = f"--fusion {fusion}" if priorless else "--prior none"
        raise SPTError(
            f"{why}: the units read no prior, so {', '.join(given)} would make one nobody reads; drop them"
            + ("" if priorless else ", or pass --prior lq")
        )


def _check_distilled_args(args) -> None:
    """``--prior distilled`` needs ``--teacher`` (and takes no ``--provider``); the teacher becomes
    the provider the dataset runs, on the clean images only."""
    if args.prior != "distilled":
        if args.teacher is not None:
            raise SPTError(
                "--teacher is for --prior distilled (a student learns the teacher's prior of the clean "
                "images); add --prior distilled or drop --teacher"
            )
        if args.student_steps:
            raise SPTError(
                "--student-steps is for --prior distilled (steps that train its student alone); add "
                "--prior distilled or drop --student-steps"
            )
        args.student_steps = 0
        return
    if args.teacher is None:
        raise SPTError("--prior distilled needs --teacher PROVIDER (slic, felzenszwalb, sam, or a plugin provider)")
    if args.provider is not None:
        raise SPTError("--prior distilled takes its provider from --teacher; drop --provider")
    if args.student_steps is None:  # a resumed run keeps its own; a new one gets the validated setting
        recorded = _recorded_student_steps(args) if args.resume else None
        args.student_steps = DEFAULT_STUDENT_STEPS if recorded is None else recorded
    args.provider = args.teacher


def _recorded_student_steps(args) -> int | None:
    """The student-only steps the run in --out records (None: no readable run there, or one that
    records none)."""
    import json

    from ..files.format import ADAPTER_FILENAME, TRAINING_KEY, read_adapter_header

    path = Path(args.out) / ADAPTER_FILENAME
    if not path.is_file():
        return None
    try:
        value = json.loads(read_adapter_header(path)[0].get(TRAINING_KEY) or "{}").get("student_steps")
    except (SPTError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and value >= 0 else None


def _check_teacher_runs(args, provider, data_images) -> None:
    """Run the teacher once on a 64 px corner of the first clean training image: a teacher that
    cannot run (a missing package, a broken plugin, a bad checkpoint) fails here, before any step."""
    from ..data.images import read_image, to_rgb_uint8

    try:
        provider.generate(to_rgb_uint8(read_image(data_images[0]))[:64, :64])
    except Exception as exc:  # a provider's own failure, whatever its type
        raise SPTError(f"--teacher {args.teacher} cannot run on {data_images[0]}: {exc}") from None


def _resolve_encoding(args) -> None:
    """A fresh run: ``--encoding`` or the default for its fusion; ``pool`` needs ``label``."""
    from ..prior.encode import check_encoding_for_fusion, default_encoding

    fusion = args.fusion or DEFAULT_FUSION
    args.encoding = args.encoding or default_encoding(fusion)
    check_encoding_for_fusion(args.encoding, fusion)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Inside this block SIGTERM (``kill``, a scheduler's timeout, ``docker stop``) stops the run as
    Ctrl-C does: the steps since the last checkpoint are saved and the ``--resume`` hint printed.
    (Only the main thread can set handlers; elsewhere nothing changes.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:  # started to ignore it (nohup-like): keep ignoring
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args) -> int:
    with sigterm_as_interrupt():
        return _run(args)


def _run(args) -> int:
    import torch

    from ..core.config import SPTConfig
    from ..core.model import inject
    from ..core.targets import inspect_targets
    from ..files.format import ADAPTER_FILENAME, load_adapter, read_adapter_config
    from ..inference.evaluate import make_val_fn, task_scale
    from ..training.train import TrainSettings, init_distributed, shutdown_distributed, train_units

    # ---- every check before any work -------------------------------------------------------
    _resolve_prior_choice(args)
    _check_distilled_args(args)
    no_prior = args.prior == "none"
    if args.arch and args.targets:
        raise SPTError(f"--preset {args.arch} proposes the targets and --targets names them too: pass one of them")
    if not args.resume and not no_prior:
        _resolve_encoding(args)
    settings = TrainSettings(
        iters=args.iters,
        batch=args.batch,
        lr=args.lr,
        schedule=args.schedule,
        warmup=args.warmup,
        seed=args.seed,
        save_every=args.save_every,
        val_every=args.val_every,
        log_every=args.log_every,
        workers=args.workers,
        amp=not args.no_amp,
        progress=not args.no_progress,
        distill_weight=args.distill_weight,
        student_steps=args.student_steps,
    )
    pairs = val_pairs = None
    _check_pair_flags(args)
    if args.lq:
        pairs = resolve_pairs(args, args.data, args.lq)
        train_images = pairs.hq
        if args.val:
            val_pairs = resolve_pairs(args, args.val, args.val_lq, "--val/--val-lq")
            if val_pairs.scale != pairs.scale:
                raise SPTError(f"--val pairs are x{val_pairs.scale} but --data pairs are x{pairs.scale}")
        args.task = paired_task(args, pairs, None, "")
    else:
        train_images = image_folder(args.data, "--data")
        if args.val:
            image_folder(args.val, "--val")
    scale = task_scale(args.task)
    if args.patch % scale:
        raise SPTError(f"--patch {args.patch} is not divisible by the scale {scale} of --task {args.task}")
    out = _check_out(args)
    if args.resume:
        _resume_config_check(args, out / ADAPTER_FILENAME)
        from ..files.format import read_adapter_config

        # the run's own prior recipe unless flags say otherwise (then the provenance check names it)
        if not no_prior:
            apply_recorded_prior(args, read_adapter_config(out / ADAPTER_FILENAME).prior or {}, out / ADAPTER_FILENAME)
    if not no_prior:
        check_provider_args(args)
    model, default_targets, described = load_backbone_from_args(args, args.targets)
    if pairs is not None:
        paired_task(args, pairs, args._scale, described)
    else:
        check_task_scale(args.task, args._scale, described)
    from ..inference.restore import minimum_tile

    least = minimum_tile(model, getattr(args, "_descriptor", None))
    if args.patch // scale < least:
        raise SPTError(
            f"--patch {args.patch} gives {args.patch // scale}-pixel LQ patches, smaller than this backbone "
            f"takes (its window / size multiple: {least}): use --patch {least * scale} or more"
        )
    targets = list(args.targets) if args.targets else default_targets
    if not args.resume:
        inspect_targets(model, targets, args.exclude)  # a bad pattern fails here, named

    info = init_distributed(args.device)
    try:
        # every provider runs where training runs; --prior none builds none (no segmenter at all)
        provider = None if no_prior else build_provider(args, device=info.device)
        distilled = args.prior == "distilled"
        if distilled:
            assert provider is not None  # the teacher (--prior distilled is never --prior none)
            _check_teacher_runs(args, provider, train_images)
            if args.resume:
                recorded = (read_adapter_config(out / ADAPTER_FILENAME).prior or {}).get("teacher")
                if recorded != provider.identity():
                    raise SPTError(
                        f"--resume: {out / ADAPTER_FILENAME} was distilled from teacher {recorded}, not "
                        f"{provider.identity()}; resume with the same --teacher and settings"
                    )
        if args.resume:
            _resume_provenance_check(args, out / ADAPTER_FILENAME, provider)
        cache = None if no_prior else prior_cache(args)
        if info.distributed and not info.is_main:
            torch.distributed.barrier()  # the main process fills the prior cache first; the others read it
        dataset = build_dataset(
            args, args.data, provider, cache, train=True, patch=args.patch, teacher=distilled, pairs=pairs
        )
        val_set = (
            build_dataset(args, args.val, None if distilled else provider, cache, train=False, pairs=val_pairs)
            if args.val
            else None
        )
        if info.distributed and info.is_main:
            torch.distributed.barrier()
        if len(dataset) == 0:
            raise SPTError(f"--data {args.data}: the dataset is empty")
        if val_set is not None and info.is_main:
            for i in range(len(val_set)):  # decode every validation image now, not after the last step
                val_set.pair(i)
        val_fn = None
        if val_set is not None:
            val_fn = make_val_fn(lambda: (val_set[i] for i in range(len(val_set))), args.task)
        from ..prior.encode import encoding_channels

        if args.resume:
            spt = load_adapter(model, out / ADAPTER_FILENAME)
        else:
            prior_meta: dict[str, Any] = {"kind": "none", "task": args.task}
            if provider is not None:
                prior_meta = {"provider": provider.identity(), "encoding": args.encoding, "task": args.task}
            student = None
            if distilled:  # the provider is the teacher: it never runs at inference
                assert provider is not None
                prior_meta = {
                    "kind": "distilled",
                    "teacher": provider.identity(),
                    "encoding": args.encoding,
                    "task": args.task,
                    "distill_weight": args.distill_weight,
                    "student_steps": args.student_steps,
                }
                student = {
                    "in_channels": input_channels(model),
                    "width": args.student_width,
                    "depth": args.student_depth,
                }
            config = SPTConfig(
                targets=targets,
                exclude=list(args.exclude or []),
                fusion=args.fusion or DEFAULT_FUSION,  # a fresh run: unit_fusion(args)
                hidden=args.hidden or (DEFAULT_LORA_RANK if (args.fusion or DEFAULT_FUSION) == "lora" else 16),
                depth=args.depth or 2,
                lora_alpha=args.lora_alpha,
                prior_channels=0 if no_prior else encoding_channels(args.encoding),
                prior={**prior_meta, "channels": args._channels},
                student=student,
                integration=None if args.targets else args._claim[0],
                preset=None if args.targets else args._claim[1],
            )
            torch.manual_seed(args.seed)
            spt = inject(model, config=config)
        assert spt.active_adapter is not None  # inject / load_adapter made the new adapter active
        if info.is_main:
            print(
                f"backbone: {described}; {len(spt.unit_names())} SPT unit(s) on {spt.spt_config[spt.active_adapter].targets}"
            )
            spt.print_trainable_parameters()
            what = (
                "no prior (--prior none)"
                if no_prior
                else f"distilled prior, teacher {provider!r} on the clean images"
                if distilled
                else f"prior {provider!r}"
            )
            lq = f" paired with {args.lq} ({pairs.alignment})" if pairs is not None else ""
            print(f"data: {len(train_images)} image(s) in {args.data}{lq}, task {args.task}, {what}")
            if distilled and args.student_steps:  # they come on top of --iters: the run's length, said before step 1
                print(
                    f"steps: {args.student_steps + args.iters} in all: {args.student_steps} that train the student "
                    f"alone (--student-steps), then {args.iters} with the units (--iters)"
                )
            leftover = _epoch_leftover(len(dataset), args.batch * info.world_size)
            if leftover:
                print(
                    f"note: an epoch is the full batches of {args.batch * info.world_size} only; the {leftover} "
                    "sample(s) left over change from epoch to epoch with its shuffle (none is left out for good)"
                )
        info_meta: dict[str, Any] = {
            "task": args.task,
            "data": str(args.data),
            **({"lq": str(args.lq)} if args.lq else {}),
            "patch": args.patch,
            "backbone": described,
            "encoding": args.encoding,
            "seed": args.seed,
        }
        if not args.lq:  # how the synthetic degradation was drawn
            info_meta.update({"degrade_per": args.degrade_per, "clip": args.clip})
        if getattr(args, "_iters_changes", None):
            info_meta["iters_changes"] = args._iters_changes  # an extended run says so in its header
        args._interrupt_hint = (
            f"the steps done are saved in {out}: continue with the same command and --resume" if info.is_main else None
        )
        result = train_units(
            spt,
            dataset,
            settings,
            out_dir=out,
            resume=args.resume,
            val_fn=val_fn,
            training_info=info_meta,
            dist_info=info,
        )
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
