"""Argument types and argument groups shared by the `spt-adapter` subcommands."""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` of every subcommand: each option that takes a value shows its default (unless the
    help already says it or there is none); on/off flags are off unless given."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.nargs == 0
            or default in (None, argparse.SUPPRESS, [], "")
            or "default" in text
            or not action.option_strings
        ):
            return text
        return text + " (default: %(default)s)"


def alias(parser, *flags: str, dest: str, **kwargs) -> None:
    """Old spellings of an option, still accepted, not shown in ``--help`` (one vocabulary across the
    subcommands: tests/test_cli_vocabulary.py)."""
    parser.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kwargs)


def stderr_is_terminal() -> bool:
    """Whether progress bars go to a terminal (the one place that decides it)."""
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def add_progress_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--progress`` / ``--no-progress`` (dest ``no_progress``): bars are drawn when stderr is a terminal,
    not into a log file or a pipe; ``--progress`` forces them, ``--no-progress`` turns them off."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="no_progress",
        action="store_false",
        help="draw progress bars even when stderr is not a terminal (default: only on a terminal)",
    )
    g.add_argument("--no-progress", dest="no_progress", action="store_true", help="no progress bars")
    parser.set_defaults(no_progress=not stderr_is_terminal())


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
nonneg_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")


def task_type(text: str) -> str:
    """An argparse type for ``--task``: parsed by :func:`spt_adapter.data.datasets.parse_task`."""
    from ..data.datasets import parse_task
    from ..errors import DataError

    try:
        task = parse_task(text)
    except DataError as exc:
        raise argparse.ArgumentTypeError(
            f"task must be a degradation of docs/cli.md (denoise:25, sr:4, jpeg:30, ...): {exc}"
        ) from None
    if task.kind == "paired":
        raise argparse.ArgumentTypeError(f"{text}: paired data is given with --lq LQ_DIR, not --task")
    return text


def provider_name(text: str) -> str:
    """An argparse type: the name of an installed mask provider (built-in or a plugin's)."""
    from ..errors import SPTError
    from ..prior.registry import get_provider_spec

    try:
        return get_provider_spec(text).name
    except SPTError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def device_type(text: str) -> str:
    """An argparse type for ``--device``: a device torch knows, and one this machine has."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:1, got {text!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine (use --device cpu)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: spt-adapter runs on cpu, cuda or mps")
    return text


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument(
        "--backbone",
        metavar="CKPT",
        help="backbone checkpoint (.pth/.safetensors of any architecture "
        "spandrel detects: SwinIR, HAT, RRDB, NAFNet, Restormer, ...; BasicSR/KAIR files too)",
    )
    g.add_argument(
        "--preset",
        dest="arch",
        metavar="PRESET",
        help="architecture preset whose targets get units (default: the first preset that recognises the "
        "backbone; `spt-adapter inspect CKPT` lists those that do, with their parameter counts); refused "
        "when it does not recognise the backbone",
    )
    alias(g, "--arch", dest="arch", metavar="PRESET")  # its first name, kept: --arch PRESET --weights PATH
    g.add_argument("--weights", metavar="PATH", help="the backbone checkpoint, with --preset (as --backbone)")
    add_device_argument(g)


def add_device_argument(parser, what: str = "") -> None:
    parser.add_argument(
        "--device",
        default=None,
        type=device_type,
        help=f"cpu, cuda, cuda:1{what} (default: cuda when available, else cpu)",
    )


def add_prior_arguments(parser: argparse.ArgumentParser, cache_default: str = "~/.cache/spt-adapter/priors") -> None:
    from ..prior.encode import DEFAULT_ENCODING

    g = parser.add_argument_group("prior")
    g.add_argument(
        "--prior-cache",
        metavar="DIR",
        default=None,
        help=f"folder of cached priors (default: {cache_default}); SAM never runs twice per image",
    )
    g.add_argument(
        "--provider",
        type=provider_name,
        default=None,
        metavar="NAME",
        help="mask provider: sam, sam2, slic, felzenszwalb or a plugin's (see `spt-adapter plugins`; "
        "default: sam with --provider-checkpoint, else slic)",
    )
    add_provider_checkpoint_arguments(g, dest="sam_checkpoint", model_type_dest="sam_model_type")
    g.add_argument(
        "--provider-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="provider setting, repeatable (e.g. n_segments=100, points_per_side=16); checked by name and "
        "type before any image is read",
    )
    g.add_argument("--segments", type=positive_int, default=None, help="SLIC: number of segments")
    g.add_argument(
        "--encoding",
        default=None,
        help=f"prior encoding: label, onehot[:K], boundary (default: {DEFAULT_ENCODING}, label with --fusion pool; "
        "eval and train --resume: the adapter's)",
    )


def add_provider_checkpoint_arguments(parser, *, dest: str, model_type_dest: str) -> None:
    """``--provider-checkpoint`` and ``--provider-model-type`` (old spellings ``--sam-checkpoint``,
    ``--checkpoint``, ``--sam-model-type``, ``--model-type`` still accepted)."""
    parser.add_argument(
        "--provider-checkpoint",
        dest=dest,
        metavar="PTH",
        help="checkpoint of a provider that needs one (SAM: sam_vit_b_01ec64.pth, SAM 2: "
        "sam2.1_hiera_tiny.pt, ...); with it the provider defaults to sam",
    )
    alias(parser, "--sam-checkpoint", "--checkpoint", dest=dest)
    parser.add_argument(
        "--provider-model-type",
        dest=model_type_dest,
        default="auto",
        metavar="TYPE",
        help="SAM: vit_b, vit_l, vit_h, vit_tiny (tools/make_tiny_sam.py); SAM 2: sam2.1_hiera_tiny, "
        "..., tiny_test (tools/make_tiny_sam2.py); auto: from the checkpoint",
    )
    alias(parser, "--sam-model-type", "--model-type", dest=model_type_dest)


def add_pair_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, val: bool = False) -> None:
    """``--lq`` and the rules that pair its files with ``--data``'s (:mod:`spt_adapter.data.pairs`);
    ``val=True`` adds ``--val-lq`` (train's validation pairs, matched by the same rules)."""
    parser.add_argument(
        "--lq",
        metavar="LQ_DIR",
        default=None,
        help="folder of degraded images paired by name with --data's clean ones (real noise, your own "
        "degradation): no --task; the scale comes from the sizes",
    )
    parser.add_argument(
        "--hq-suffix", default="", metavar="TEXT", help="--data files' names end with this before the extension"
    )
    parser.add_argument(
        "--lq-suffix",
        default="",
        metavar="TEXT",
        help="--lq files' names end with this before the extension (_real, x4 for DIV2K's 0001x4.png)",
    )
    parser.add_argument(
        "--pairs",
        metavar="FILE",
        default=None,
        help="a list of pairs instead of name matching: one 'HQ LQ' line each, relative to --data / --lq",
    )
    if val:
        parser.add_argument(
            "--val-lq", metavar="DIR", default=None, help="degraded partners of --val's images (same suffixes)"
        )


def add_clip_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--clip`` / ``--no-clip`` (dest ``clip``): whether synthetic noise is clipped to [0, 1] and
    rounded to 8 bits before the network reads it."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--clip",
        dest="clip",
        action="store_true",
        help="clip synthetic noise to [0, 1] and round it to 8 bits, as a saved image (the default)",
    )
    g.add_argument(
        "--no-clip",
        dest="clip",
        action="store_false",
        help="the network reads unclipped float noise (how CDnCNN-B and KAIR's DnCNN were trained); "
        "priors still see the clipped 8-bit image",
    )
    parser.set_defaults(clip=True)
