"""`spt-adapter export`: write a backbone + SPT adapter as one ONNX or TorchScript file.

    spt-adapter export --backbone swinir_x2.pth --adapter runs/swinir_x2_spt --out swinir_spt.onnx
    spt-adapter export --backbone dncnn_25.pth --adapter me/dncnn-spt --format torchscript --out dncnn_spt.pt

The file holds the backbone, the adapter's units and its prior student (a distilled adapter:
``image -> image``); an adapter that reads a provider's prior exports as ``(image, prior) -> image``
with the provider and encoding in its metadata. Dynamic height, width and batch; float32 unless
``--half``. What cannot be exported is refused by name before anything is written, and the file is
checked against the PyTorch model at two other sizes first (:func:`spt_adapter.inference.export.export`).
``spt-adapter restore --backbone FILE`` runs it (onnxruntime for ONNX).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import SPTError
from ._args import add_backbone_arguments, task_type

HELP = "export backbone + adapter as one ONNX or TorchScript file (dynamic size; restore runs it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_backbone_arguments(parser)
    parser.add_argument(
        "--adapter",
        metavar="FILE|DIR|HUB_ID",
        help="adapter file, folder holding spt_adapter.safetensors, or a Hub repo id (user/repo)",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit) for a Hub id")
    parser.add_argument("--no-adapter", action="store_true", help="export the backbone alone")
    parser.add_argument(
        "--no-hash-check",
        action="store_true",
        help="accept an adapter whose recorded backbone weights hash differs (architecture still checked)",
    )
    parser.add_argument(
        "--format",
        choices=("onnx", "torchscript"),
        default=None,
        help="file format (default: from --out: .onnx, else .pt/.ts for TorchScript)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the file to write (atomically); an existing file is refused unless --overwrite, and the "
        "--backbone/--weights/--adapter file always",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists (default: refuse)")
    parser.add_argument(
        "--half",
        action="store_true",
        help="float16 weights and inputs, traced and checked (within 1e-2 of float32) on the model's device, CPU or CUDA",
    )
    parser.add_argument(
        "--task",
        default=None,
        type=task_type,
        help="task to record when the adapter records none (sr:4, denoise:25); checked against the backbone's scale",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the exported file against the PyTorch model before writing it",
    )


def check_out(args, adapter_file: Path | None = None) -> None:
    """Refuse ``--out`` before anything is loaded: a folder; an input of this export (the
    ``--backbone``/``--weights``/``--adapter`` file, also through a symlink or a hard link: always);
    an existing file unless ``--overwrite``."""
    from .._io import same_file

    out = Path(args.out)
    if out.is_dir():
        raise SPTError(f"--out {out} is a folder; export writes one file")
    for flag, given in (("--backbone", args.backbone), ("--weights", args.weights), ("--adapter", adapter_file)):
        if given and same_file(out, given):
            raise SPTError(
                f"--out {out} is the {flag} file {given} this export reads (the same file"
                f"{'' if Path(given).resolve() == out.resolve() else ', through a link'}); write the export elsewhere"
            )
    if os.path.lexists(out) and not args.overwrite:
        raise SPTError(f"--out {out} already exists; pass --overwrite to replace it, or choose another --out")


def run(args) -> int:
    from ..files.format import load_adapter
    from ..files.hub import resolve_adapter_file
    from ..inference.export import export, format_of
    from .builders import load_backbone_from_args

    fmt = format_of(args.out, args.format)  # refuse a bad name before loading anything
    check_out(args)
    if args.no_adapter and args.adapter:
        raise SPTError("--no-adapter exports the backbone alone: drop --adapter (or --no-adapter)")
    if not args.no_adapter and not args.adapter:
        raise SPTError("pass --adapter FILE|DIR|HUB_ID, or --no-adapter to export the backbone alone")
    adapter_file = None
    if args.adapter:
        src = str(args.adapter)
        if Path(src).suffix in (".pth", ".pt", ".ckpt", ".bin") and Path(src).exists():
            raise SPTError(f"--adapter {src} is a pickle checkpoint; SPT adapters are .safetensors files")
        adapter_file = Path(resolve_adapter_file(src, args.revision))
        check_out(args, adapter_file)
    model, _, described = load_backbone_from_args(args, require_targets=False)
    if args.task:
        from .builders import check_task_scale

        check_task_scale(args.task, args._scale, described)
    if adapter_file is not None:
        from .restore import check_adapter_task

        check_adapter_task(adapter_file, args._scale, described)
        model = load_adapter(model, adapter_file, check_backbone_hash=not args.no_hash_check)
        described += f" + adapter {adapter_file}"
    if args.device:
        model.to(args.device)
    out = export(
        model,
        args.out,
        format=fmt,
        half=args.half,
        descriptor=args._descriptor,
        task=args.task,
        scale=args._scale,
        check=not args.no_check,
        overwrite=args.overwrite,
    )
    from ..inference.export import _kind

    inputs = "image, prior" if _kind(model) == "prior" else "image"
    print(f"export: {described} -> {out} ({fmt}, inputs: {inputs}, {out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0
