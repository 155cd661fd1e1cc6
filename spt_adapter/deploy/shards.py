"""Which inputs a process restores when a run is split over several (no PyTorch: the torch-free
runner shards the same way as `spt-adapter restore`).

The number of shards and this process's index come from ``--num-shards`` / ``--shard-index``, else
from a launcher's ``WORLD_SIZE`` / ``RANK`` (torchrun, SLURM wrappers). An input belongs to shard
``int(sha256(output name)[:16], 16) % num_shards``: its output file's name (``<stem>.png``, unique in
a run) decides, not its position in the list, so an image added to or removed from the inputs between
two shard runs moves no other image to another shard (a split by position left images restored by no
shard, every shard exiting 0).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError

__all__ = ["shard_key", "shard_settings", "split_by_key"]


def shard_settings(
    num_shards: int | None, shard_index: int | None, env: Mapping[str, str] | None = None
) -> tuple[int, int]:
    """(number of shards, this process's index) from the flags, else ``WORLD_SIZE`` / ``RANK``.

    Refused with one line naming where each value came from: a value that is not an integer, fewer
    than one shard, an index outside ``0..N-1``, and ``WORLD_SIZE`` > 1 without ``RANK`` (every
    process would take shard 0: the other shards' images would never be restored)."""
    env = os.environ if env is None else env

    def from_env(name: str) -> int | None:
        raw = env.get(name)
        if raw is None or not str(raw).strip():
            return None
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(
                f"the environment variable {name}={raw!r} is not an integer (a launcher sets it: "
                f"unset it, or pass --num-shards/--shard-index)"
            ) from None

    num_from = "--num-shards"
    if num_shards is None:
        world = from_env("WORLD_SIZE")
        num_shards, num_from = (1, "") if world is None else (world, "WORLD_SIZE")
        if shard_index is None and num_from:
            shard_index = from_env("RANK")
            if shard_index is None and num_shards > 1:
                raise ConfigError(
                    f"WORLD_SIZE={num_shards} says the inputs are split over {num_shards} processes, but RANK "
                    "(this process's index) is not set: start the processes with a launcher that sets both "
                    "(torchrun), set RANK, or pass --num-shards/--shard-index"
                )
            index_from = "RANK"
        else:
            index_from = "--shard-index"
    else:
        index_from = "--shard-index"
    if shard_index is None:
        if num_shards > 1:
            raise ConfigError(
                f"--num-shards {num_shards} needs --shard-index 0..{num_shards - 1} (which shard this process does)"
            )
        shard_index = 0
    if num_shards < 1:
        if num_from == "WORLD_SIZE":
            raise ConfigError(
                f"the environment variable WORLD_SIZE={num_shards} is not a number of processes (at least 1): "
                "unset it, or pass --num-shards/--shard-index"
            )
        raise ConfigError(
            f"--num-shards must be at least 1 (the number of shards the image list is split into), got {num_shards}"
        )
    if not (0 <= shard_index < num_shards):
        where = f"WORLD_SIZE {num_shards}" if num_from == "WORLD_SIZE" else f"--num-shards {num_shards}"
        flag = "RANK" if index_from == "RANK" else "--shard-index"
        raise ConfigError(f"{flag} must be in 0..{num_shards - 1} for {where}, got {shard_index}")
    return num_shards, shard_index


def shard_key(name: str, num_shards: int) -> int:
    """The shard an output named ``name`` belongs to (stable across runs, machines and list orders)."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) % num_shards


def split_by_key(
    paths: list[Path], targets: list[Path], num_shards: int, shard_index: int
) -> tuple[list[Path], list[Path]]:
    """This shard's (inputs, outputs), in the run's order: those whose output name hashes to it."""
    mine = [i for i, t in enumerate(targets) if shard_key(t.name, num_shards) == shard_index]
    return [paths[i] for i in mine], [targets[i] for i in mine]
