"""One vocabulary across the subcommands: the same flag means the same thing everywhere, old
spellings still parse but are not shown, defaults are shown in --help, and progress bars only go
to a terminal unless --progress asks for them."""

from __future__ import annotations

import argparse

import pytest
from PIL import Image

from _data import DATA
from spt_adapter.cli import build_parser, main

PRIOR_FLAGS = ("--provider", "--provider-checkpoint", "--provider-model-type", "--provider-set", "--prior-cache")
OLD_SPELLINGS = ("--sam-checkpoint", "--checkpoint", "--sam-model-type", "--model-type", "--set", "--cache")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in p._actions if a.help is not argparse.SUPPRESS for s in a.option_strings}


def test_shared_flags_mean_the_same_in_every_subcommand():
    subs = _subparsers()
    seen: dict[str, tuple] = {}
    for name in ("masks", "train", "eval", "restore"):
        flags = _visible(subs[name])
        for flag in PRIOR_FLAGS:
            assert flag in flags, f"{name} lacks {flag}"
        assert flags["--provider"].default is None, f"{name} --provider has a default: {flags['--provider'].default}"
    for name, p in subs.items():
        flags = _visible(p)
        for old in OLD_SPELLINGS:
            assert old not in flags, f"`{name} --help` shows the old spelling {old}"
        for flag in (*PRIOR_FLAGS, "--device", "--progress", "--no-progress", "--encoding", "--fusion"):
            if flag not in flags:
                continue
            a = flags[flag]
            key = (
                a.type.__name__ if callable(a.type) and hasattr(a.type, "__name__") else a.type,
                a.nargs,
                type(a).__name__,
                None if flag in ("--prior-cache", "--encoding", "--fusion") else a.default,
            )
            if flag == "--provider-checkpoint":
                key = key[:3]
            assert seen.setdefault(flag, key) == key, f"{name} {flag}: {key} differs from {seen[flag]}"
    for name in ("demo", "train", "eval", "restore", "masks"):
        flags = _visible(subs[name])
        assert "--progress" in flags and "--no-progress" in flags, name
        assert flags["--device"].default is None, f"{name} --device must default to cuda-when-present (None)"


def test_old_spellings_parse_to_the_same_values():
    parse = build_parser().parse_args
    new = parse(
        [
            "masks",
            "x.png",
            "--provider-checkpoint",
            "s.pth",
            "--provider-model-type",
            "vit_b",
            "--provider-set",
            "a=1",
            "--prior-cache",
            "c",
        ]
    )
    old = parse(["masks", "x.png", "--checkpoint", "s.pth", "--model-type", "vit_b", "--set", "a=1", "--cache", "c"])
    assert vars(new) == vars(old)
    train = ["train", "--data", "d", "--task", "sr:2", "--out", "o"]
    new = parse([*train, "--provider-checkpoint", "s.pth", "--provider-model-type", "vit_b"])
    old = parse([*train, "--sam-checkpoint", "s.pth", "--sam-model-type", "vit_b"])
    assert vars(new) == vars(old)
    assert parse(["demo", "--sam-checkpoint", "s.pth"]).sam_checkpoint == "s.pth"


def test_help_shows_the_defaults(capsys):
    subs = _subparsers()
    # (help lines wrap at hyphens too: join them back)
    text = {name: " ".join(p.format_help().split()).replace("- ", "-") for name, p in subs.items()}
    assert "--iters ITERS training steps of the units (default: 2000;" in text["train"]
    assert "--lr LR peak learning rate of the unit parameters (default: 1e-3," in text["train"]
    assert "(default: 96)" in text["eval"] and "--batch BATCH images per provider call (default: 1)" in text["masks"]
    assert "folder of cached priors (default: not kept)" in text["restore"]
    assert "(default: ~/.cache/spt-adapter/priors)" in text["train"]
    assert "--seed SEED" in text["demo"] and "(default: 0)" in text["demo"]
    assert "(default: False)" not in " ".join(text.values())  # on/off flags say nothing about a default


def _folder(tmp_path, n=2):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((DATA / "Set5").glob("*.png"))[:n]:
        Image.open(p).convert("RGB").crop((0, 0, 40, 40)).save(folder / p.name)
    return folder


def test_masks_defaults_to_slic_without_a_checkpoint_and_takes_globs(tmp_path, capsys):
    folder = _folder(tmp_path, 3)
    assert main(["masks", str(folder / "b*.png"), "--prior-cache", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "masks: 3 image(s), slic" in err and "computed 3" in err
    assert main(["masks", str(folder / "z*.png"), "--prior-cache", str(tmp_path / "c")]) == 1
    assert "matches no image file" in capsys.readouterr().err


def test_progress_bars_only_on_a_terminal_unless_forced(tmp_path, capsys, monkeypatch):
    """capsys' stderr is not a terminal: no carriage-return updates; --progress forces the bar; the one
    terminal check (commands._args.stderr_is_terminal) turns it on by itself."""
    folder = _folder(tmp_path)
    argv = ["masks", str(folder), "--provider", "slic", "--prior-cache", str(tmp_path / "c")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "computed 2" in err
    assert main(argv + ["--progress"]) == 0
    assert "\r" in capsys.readouterr().err
    import spt_adapter.commands._args as args_module

    monkeypatch.setattr(args_module, "stderr_is_terminal", lambda: True)
    assert main(argv) == 0
    assert "\r" in capsys.readouterr().err
    assert main(argv + ["--no-progress"]) == 0
    assert "\r" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv + ["--progress", "--no-progress"])
