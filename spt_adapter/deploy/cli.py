"""``python -m spt_adapter.deploy restore``: restore images through an exported ONNX file with
onnxruntime, NumPy and Pillow only (PyTorch need not be installed).

    python -m spt_adapter.deploy restore photos/ --backbone dncnn_spt.onnx --out restored/ --tile 256

The inputs, outputs, refusals and tiling flags are those of ``spt-adapter restore --backbone
FILE.onnx``, and so are the output bytes (one code path: :mod:`spt_adapter.deploy.tiling`). Exit
status: 0 done, 1 an error named on one line (nothing written when it is found before the first
image), 2 a usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .._io import atomic_write_bytes
from ..errors import SPTError
from ..version import __version__

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _count(kind: str, least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spt_adapter.deploy",
        description="Run files written by `spt-adapter export` without PyTorch (onnxruntime, NumPy, Pillow).",
    )
    parser.add_argument("--version", action="version", version=f"spt-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser(
        "restore",
        help="restore images through an exported .onnx file (whole or tiled; PNG outputs)",
        description="Restore images through an exported .onnx file (whole or tiled; PNG outputs).",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image files, folders (not recursive; other files are skipped), globs or .txt lists of paths",
    )
    p.add_argument("--input", action="append", default=[], metavar="PATH", help="one more INPUT (repeatable)")
    p.add_argument("--backbone", required=True, metavar="FILE.onnx", help="a file written by `spt-adapter export`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created with its parents)")
    p.add_argument("--tile", type=_count("a positive number", 1), default=None, metavar="N", help="N x N tiles")
    p.add_argument(
        "--tile-overlap",
        type=_count("0 or more", 0),
        default=None,
        metavar="P",
        help="input pixels shared by neighbouring tiles (default: 32, or the file's receptive field when larger)",
    )
    p.add_argument(
        "--tile-blend",
        type=_count("0 or more", 0),
        default=None,
        metavar="B",
        help="cross-fade width around each seam (default as `spt-adapter restore`)",
    )
    p.add_argument(
        "--num-shards",
        type=_count("a positive number", 1),
        default=None,
        metavar="N",
        help="split the inputs in N shards by a hash of each output's name (default: $WORLD_SIZE or 1)",
    )
    p.add_argument(
        "--shard-index",
        type=_count("0 or more", 0),
        default=None,
        metavar="I",
        help="which shard this process restores (default: $RANK or 0)",
    )
    p.add_argument("--threads", type=_count("a positive number", 1), default=None, help="onnxruntime threads")
    p.add_argument("--skip-existing", action="store_true", help="keep outputs that exist (redo unfinished ones)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that exist (default: refuse)")
    p.add_argument("--allow-out-in-input", action="store_true", help="allow --out inside an input folder")
    p.add_argument("--strict", action="store_true", help="stop with status 1 at the first unreadable input")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument(
        "--progress",
        "--no-progress",
        dest="progress",
        action="store_const",
        const=None,
        help="accepted as `spt-adapter restore` takes them; this runner draws no bar",
    )
    return parser


def restore(args: argparse.Namespace) -> int:
    from .images import read_image_full_depth
    from .onnx_restore import check_torch_free, default_threads, load_onnx, restore_image
    from .outputs import (
        check_existing,
        expand_inputs,
        output_paths,
        png_bytes,
        remove_stale_temporaries,
        unfinished_output,
    )
    from .shards import shard_settings, split_by_key
    from .tiling import check_tiling

    items = list(args.inputs) + list(args.input)
    if not items:
        raise SPTError("give at least one INPUT (an image, a folder, a glob or a .txt list)")
    if Path(args.backbone).suffix.lower() != ".onnx":
        raise SPTError(
            f"--backbone {args.backbone}: the torch-free runner reads .onnx exports only (checkpoints and "
            "TorchScript files need PyTorch)"
        )
    paths, folders = expand_inputs(items)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SPTError(f"--out {out} exists and is not a folder")
    targets = output_paths(paths, folders, out, args.allow_out_in_input)
    # this process's share first: another shard's finished outputs are not this run's to refuse
    num, index = shard_settings(args.num_shards, args.shard_index)
    shard_note = ""
    if num > 1:
        total = len(paths)
        paths, targets = split_by_key(paths, targets, num, index)
        shard_note = f" (shard {index}/{num}: {len(paths)} of {total} inputs, by output name)"
    check_existing(targets, out, args.skip_existing, args.overwrite)
    net = load_onnx(args.backbone, threads=args.threads or default_threads())
    check_torch_free(net)
    check_tiling(args.tile, args.tile_overlap, args.tile_blend, minimum=net.minimum_tile, radius=net.receptive_radius)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, targets)
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    tiling = f"tiles {args.tile}" if args.tile else "whole images"
    say(f"restore: {len(paths)} image(s){shard_note} -> {out}; exported onnx {args.backbone} ({net.kind}); {tiling}")
    done, skipped, failed, redone = 0, 0, [], []
    reduced: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    for path, target in zip(paths, targets, strict=True):
        if args.skip_existing and target.is_file():
            reason = unfinished_output(target, path, net.scale)
            if reason is None:
                skipped += 1
                continue
            redone.append((target, reason))
        try:
            image, note = read_image_full_depth(path, net.channels)
        except SPTError as exc:
            if args.strict:
                raise SPTError(f"{exc} (--strict stops at the first unreadable input)") from None
            failed.append((path, str(exc)))
            continue
        if note:
            reduced.append((path, note))
        restored = restore_image(net, image, tile=args.tile, tile_overlap=args.tile_overlap, tile_blend=args.tile_blend)
        atomic_write_bytes(target, png_bytes(restored))
        done += 1
    say(
        f"restore: {done} restored, {skipped} skipped (output exists), {len(failed)} unreadable "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    for path, reason in failed:
        say(f"  unreadable: {path}: {reason}")
    for target, reason in redone:
        say(f"  redone (--skip-existing found an unfinished output): {target}: {reason}")
    for path, note in reduced:
        say(f"  written at 8 bits: {path}: {note}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "restore":
        parser.print_help()
        return EXIT_USAGE
    try:
        return restore(args)
    except SPTError as exc:
        print(f"spt-adapter deploy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file system error no check foresaw: still one line, naming the file
        what = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        print(f"spt-adapter deploy {args.command}: error: {what}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
