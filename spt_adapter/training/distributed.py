"""Distributed training: the process group (:func:`init_distributed`, gloo on CPU, nccl on GPU, from
``torchrun``'s environment) and per-sample seeding that does not depend on the number of processes
(:class:`SeededSamples`, :class:`EpochSampler`)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from ..errors import SPTError


# ---------------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int, low: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise SPTError(
            f"environment variable {name}={os.environ[name]!r} is not an integer >= {low}; "
            "torchrun sets it (unset it for a one-process run)"
        )
    return value


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

    Without those variables (a plain ``python``/``spt-adapter`` call) it returns a one-process
    :class:`DistInfo`. Backend: nccl when CUDA is used, gloo otherwise.
    """
    world = _env_int("WORLD_SIZE", 1, 1)
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise SPTError(f"RANK={rank} is not below WORLD_SIZE={world}; launch with torchrun, which sets both")
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    info = DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:  # torch would raise a ValueError traceback (env:// rendezvous)
            raise SPTError(
                f"WORLD_SIZE={world} asks for distributed training but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set: launch with torchrun (which sets them), "
                "or unset WORLD_SIZE/RANK for one process"
            )
        _join_process_group(dev, rank, world)
        info.initialized_here = True
    elif dist.is_initialized():
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info


#: seconds a process waits for the others of its WORLD_SIZE to join (torch's own default is 30 minutes)
DEFAULT_JOIN_TIMEOUT = 300.0


def join_timeout() -> float:
    """``$SPT_DIST_TIMEOUT`` (seconds, > 0), else :data:`DEFAULT_JOIN_TIMEOUT`."""
    text = os.environ.get("SPT_DIST_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_JOIN_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SPTError(f"environment variable SPT_DIST_TIMEOUT={text!r} is not a positive number of seconds")
    return value


def _join_process_group(dev: torch.device, rank: int, world: int) -> None:
    """``init_process_group`` with a bounded wait, said on one line. While the processes meet, torch
    waits inside C++ where a Python signal handler never runs: SIGTERM and SIGINT get their default
    action (stop the process at once: nothing is trained yet, nothing is lost) unless the process was
    started to ignore them, and the handlers are put back once the group is formed."""
    import signal
    import sys
    import threading
    from datetime import timedelta

    timeout = join_timeout()
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    print(
        f"train: process {rank} of {world} waits at {where} for the other {world - 1} process(es) to join "
        f"(at most {timeout:g} s; SPT_DIST_TIMEOUT sets it)",
        file=sys.stderr,
        flush=True,
    )
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                saved[sig] = signal.signal(sig, signal.SIG_DFL)
    try:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout))
    except Exception as exc:  # torch's DistStoreError / RuntimeError after the timeout
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise SPTError(
            f"the other {world - 1} process(es) of WORLD_SIZE={world} did not join at {where} within "
            f"{timeout:g} s ({type(exc).__name__}: {first}); start them all (torchrun does), or raise "
            "SPT_DIST_TIMEOUT"
        ) from None
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# data: per-sample seeding that does not depend on the number of processes
# ---------------------------------------------------------------------------------------------
def _sample_seed(seed: int, virtual_index: int) -> int:
    return (seed * 1_000_003 + virtual_index * 7_919 + 12_345) % (2**31 - 1)


class SeededSamples(Dataset):
    """``base`` repeated ``repeat`` times; sample ``v`` (a *virtual* index ``epoch * len + i``, from
    :class:`EpochSampler`) runs ``base[i % len(base)]`` with Python's, NumPy's and torch's global
    random generators seeded from ``(seed, v)`` (and restored afterwards)."""

    def __init__(self, base: Dataset, seed: int = 0, repeat: int = 1) -> None:
        self.base, self.seed, self.repeat = base, seed, max(int(repeat), 1)
        self.n = len(base)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.n * self.repeat

    def __getitem__(self, virtual_index: int):
        s = _sample_seed(self.seed, int(virtual_index))
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(s)
        np.random.seed(s)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                return self.base[int(virtual_index) % self.n]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochSampler(DistributedSampler):
    """DistributedSampler that yields virtual indices ``epoch * len(dataset) + i`` and can skip the
    first ``skip`` samples of an epoch (to resume mid-epoch)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)  # type: ignore[arg-type]
        for k, i in enumerate(super().__iter__()):
            if k >= self.skip:
                yield offset + i


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
