"""What the test files share besides networks (those are in tests/_archs.py): the command line as one
call (an argument list from keywords, a run that returns the exit code and both streams), a module's
weights saved as a checkpoint, small folders of the committed test images, and child Python processes
(the integration scripts, code under a signal or a limit). A test imports them as
``from _helpers import cli, run_cli`` (tests/conftest.py puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"


def cli(*args: object, **flags: object) -> list[str]:
    """A command-line argument list: ``args`` as given (the command, positionals, flags already spelled),
    then each keyword as its flag, ``prior_cache=p`` -> ``--prior-cache p``: ``True`` gives the bare flag,
    ``None`` or ``False`` leaves it out, a list or tuple gives the flag then each item. Lists add up:
    ``cli("train", backbone=p) + cli(iters=3)``."""
    argv = [str(a) for a in args]
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run the command line in this process: (exit code, stdout, stderr)."""
    from spt_adapter.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    """The one line a refused command wrote (no traceback, nothing else)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def save_safetensors(model: torch.nn.Module, path: Path) -> Path:
    """``model``'s state dict as a safetensors checkpoint at ``path``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def image_folder(test_set: str, folder: Path, n: int, box: tuple[int, int, int, int]) -> Path:
    """The first ``n`` images of a committed test set (tests/data/<test_set>), RGB, cropped to ``box``,
    as PNGs in ``folder`` (made)."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted((DATA / test_set).glob("*.png"))[:n]:
        Image.open(p).convert("RGB").crop(box).save(folder / p.name)
    return folder


def randomise(params, seed: int = 1, scale: float = 0.1) -> None:
    """Give ``params`` seeded normal values times ``scale``, as training would (a fresh unit, and LoRA's B,
    start at zero: an exact identity that many checks could not tell from no adapter)."""
    randomise_with(torch.Generator().manual_seed(seed), params, scale)


def randomise_with(g: torch.Generator, params, scale: float = 0.1) -> None:
    """:func:`randomise` drawing from ``g`` (a test that draws more from the same generator afterwards)."""
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def small_train_argv(ckpt, data, out, *extra: str, iters: int = 3) -> list[str]:
    """``spt-adapter train`` of a test: ``ckpt`` on the images in ``data`` at sigma 25, 16-px patches, batch 2,
    ``iters`` steps on the CPU, into ``out``; ``extra`` flags last (argparse takes the last of a repeated flag)."""
    argv = cli("train", backbone=ckpt, data=data, task="denoise:25", out=out, patch=16, batch=2, iters=iters)
    return argv + cli(no_progress=True, device="cpu") + list(extra)


def run_python(
    *args: str, timeout: int, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (``-m MODULE ...`` or ``-c CODE``) in a child process, output captured as text; ``env``
    adds to (or overrides) this process's environment."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
