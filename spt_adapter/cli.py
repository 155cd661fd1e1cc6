"""The `spt-adapter` command. Each subcommand lives in ``spt_adapter/commands/<name>.py``, is listed in
:func:`commands`, and exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
(``commands/builders.py`` and the ``_``-modules are shared helpers, not subcommands)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from types import ModuleType

from .commands._args import HelpFormatter
from .errors import BackboneHashMismatchError, SPTError
from .version import __version__

#: exit codes (docs/cli.md): 0 success, 1 an error named on one line, 2 a usage error (argparse),
#: 130 interrupted (Ctrl-C)
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def commands() -> dict[str, ModuleType]:
    """Every subcommand, in the order `spt-adapter --help` lists them. Imported here, not at the top:
    some need torch, and `spt-adapter restore x.onnx` must run without it (:func:`_main_without_torch`)."""
    from .commands import demo, eval, export, inspect, masks, plugins, restore, train

    return {
        "demo": demo,
        "eval": eval,
        "export": export,
        "inspect": inspect,
        "masks": masks,
        "plugins": plugins,
        "restore": restore,
        "train": train,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spt-adapter", description="SAM prior tuning units for frozen restoration backbones."
    )
    parser.add_argument("--version", action="version", version=f"spt-adapter {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in commands().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _torch_missing() -> bool:
    try:
        return importlib.util.find_spec("torch") is None
    except (ImportError, ValueError):  # an import hook refusing torch, a broken install
        return True


def _main_without_torch(argv: list[str]) -> int:
    """PyTorch is not installed: ``restore`` of an exported ``.onnx`` file runs through the torch-free
    runner (:mod:`spt_adapter.deploy`); everything else says in one line what is missing."""
    if argv[:1] == ["restore"]:
        from .deploy.cli import main as deploy_main

        return deploy_main(argv)
    if argv[:1] == ["--version"]:
        print(f"spt-adapter {__version__}")
        return EXIT_OK
    where = f"spt-adapter {argv[0]}" if argv and not argv[0].startswith("-") else "spt-adapter"
    print(
        f"{where}: error: PyTorch is not installed (pip install torch); without it only "
        "`spt-adapter restore INPUT --backbone FILE.onnx --out DIR` runs (python -m spt_adapter.deploy restore)",
        file=sys.stderr,
    )
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    if _torch_missing():  # a torch-free install (README "Export and deploy")
        return _main_without_torch(list(sys.argv[1:] if argv is None else argv))
    # third-party architecture code (basicsr, spandrel) calls torch.jit.script at import time; its
    # deprecation notice says nothing to a user of this command
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args._run(args) or 0)
    except BackboneHashMismatchError as exc:
        fix = (
            "pass --no-hash-check to use it anyway"
            if hasattr(args, "no_hash_check")
            else "pass the backbone checkpoint the adapter was trained on"
        )
        print(f"spt-adapter {args.command}: error: {exc.with_override(fix)}", file=sys.stderr)
        return EXIT_ERROR
    except SPTError as exc:
        print(f"spt-adapter {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # a file system error no check foresaw: still one line, naming the file
        what = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else str(exc)
        print(f"spt-adapter {args.command}: error: {what}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        hint = getattr(args, "_interrupt_hint", None)
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
