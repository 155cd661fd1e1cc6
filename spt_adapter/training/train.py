"""The minimal trainer behind ``spt-adapter train``: only the SPT units learn.

    from spt_adapter.training.train import TrainSettings, train_units
    spt = spt_adapter.inject(backbone, targets)
    result = train_units(spt, dataset, TrainSettings(iters=2000, batch=8, lr=1e-3), out_dir="runs/x")

* Adam on the active adapter's unit parameters, L1 loss, cosine / step / constant learning-rate
  schedule (computed from the step, so a resumed run continues the same curve);
* priors are fed with ``model(lq, prior=p)``; the dataset yields dicts with ``lq``, ``gt``,
  ``prior`` (``spt_adapter.training.data.PairedPriorDataset`` does);
* a distilled prior (the adapter has a student, ``SPTConfig.student``): the dataset yields
  ``teacher_prior`` (the teacher provider's encoded map of the clean image) instead of ``prior``;
  the student makes the prior from ``lq``. Schedule: ``student_steps`` steps first train the
  student alone on the distillation loss (BCE between its logits and the teacher's map; only the
  student runs: no backbone forward, the units get no gradient), with their own learning-rate curve
  over those steps; then ``iters`` steps train student and units jointly on
  ``L1(out, gt) + distill_weight x BCE`` with fresh Adam moments (as ``benchmarks/quality.py`` does).
  The student-only steps come in addition to ``iters``: a run takes ``student_steps + iters`` steps,
  and its step counter (logs, checkpoints, ``stop_at``, resume) counts both.
  Without ``teacher_prior`` (``distill_weight`` 0) the student learns from the restoration loss alone;
* the backbone runs as at inference (dropout / stochastic depth off, norm statistics fixed);
  only the units are in training mode;
* automatic mixed precision on CUDA (bfloat16 where supported, else float16 with a GradScaler);
* under ``torchrun`` it runs DistributedDataParallel (gloo on CPU, nccl on GPU) with a
  DistributedSampler; the global batch is ``batch`` x world size;
* writes ``spt_adapter.safetensors`` (the delta, atomically, every ``save_every`` steps and at the
  end), ``train_state.safetensors`` (step and Adam moments as tensors: nothing is pickled),
  ``train_log.csv`` / ``train_log.json`` and the adapter's model card ``README.md``;
* ``resume=True`` continues from the last delta and its state file.

Every random choice a sample makes (crop, flip, noise) is seeded from ``(seed, epoch, index)``,
so the samples seen at a step do not depend on the number of processes or data-loader workers:
a 2-process run with ``batch=b`` sees exactly the samples of a 1-process run with ``batch=2b``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._io import atomic_write_bytes
from ..core.layer import iter_layers
from ..core.model import SPTModel
from ..errors import ConfigError, SPTError
from ..files.format import (
    ADAPTER_FILENAME,  # the same name as save_pretrained: a run folder is shareable
    TRAINING_KEY,
    read_adapter_header,
)

__all__ = [
    "TrainSettings",
    "TrainResult",
    "DistInfo",
    "init_distributed",
    "lr_at",
    "train_units",
    "ADAPTER_FILENAME",
    "STATE_FILE",
]

STATE_FILE = "train_state.safetensors"
LOG_CSV = "train_log.csv"
LOG_JSON = "train_log.json"
STATE_FORMAT = "spt-adapter-train-state"
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainSettings:
    """Hyper-parameters of one unit-training run.

    iters: optimizer steps. batch: samples per step *per process*. lr: peak learning rate.
    schedule: ``cosine`` (to ``lr * min_lr_ratio`` at the end), ``step`` (x ``gamma`` at 50 % and
    75 % of the run, BasicSR's MultiStepLR habit) or ``constant``; ``warmup`` linear steps first.
    amp: mixed precision on CUDA (ignored on CPU). save_every / log_every / val_every: in steps
    (0 = only at the end). workers: DataLoader worker processes. distill_weight / student_steps: a
    distilled prior's schedule (module docstring); the ``student_steps`` come before and in addition
    to ``iters`` (``total_steps``).
    """

    iters: int = 1000
    batch: int = 8
    lr: float = 1e-3  # what every benchmark trains units at (benchmarks/quality.py --lr)
    schedule: str = "cosine"
    warmup: int = 0
    min_lr_ratio: float = 0.01
    gamma: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float | None = None
    amp: bool = True
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    val_every: int = 0
    workers: int = 0
    progress: bool = True
    distill_weight: float = 0.1
    student_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("iters", "batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("warmup", "log_every", "save_every", "val_every", "workers", "seed", "student_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.gamma <= 1:
            raise ConfigError("min_lr_ratio must lie in [0, 1] and gamma in (0, 1]")
        if not (
            isinstance(self.distill_weight, (int, float))
            and math.isfinite(self.distill_weight)
            and self.distill_weight >= 0
        ):
            raise ConfigError(f"distill_weight must be a number >= 0, got {self.distill_weight!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip!r}")

    @property
    def total_steps(self) -> int:
        """Steps of the whole run: the student-only steps, then ``iters`` joint steps."""
        return self.student_steps + self.iters


@dataclass
class TrainResult:
    adapter_path: Path | None
    state_path: Path | None
    log_csv: Path | None
    log_json: Path | None
    step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    val: dict[str, float] | None = None


def lr_at(step: int, settings: TrainSettings) -> float:
    """Learning rate for optimizer step ``step`` (0-based, counting the student-only steps first):
    the schedule runs over the ``student_steps`` student-only steps (no warmup), then afresh over the
    ``iters`` joint steps."""
    base = settings.lr
    iters, warmup = settings.iters, settings.warmup
    if step < settings.student_steps:
        iters, warmup = settings.student_steps, 0
    else:
        step -= settings.student_steps
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    if settings.schedule == "constant":
        return base
    span = max(iters - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    if settings.schedule == "cosine":
        low = base * settings.min_lr_ratio
        return low + 0.5 * (base - low) * (1 + math.cos(math.pi * t))
    factor = 1.0
    for milestone in (0.5, 0.75):
        if t >= milestone:
            factor *= settings.gamma
    return base * factor


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
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        info.initialized_here = True
    elif dist.is_initialized():
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info


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


# ---------------------------------------------------------------------------------------------
# state files
# ---------------------------------------------------------------------------------------------
def _optimizer_tensors(optimizer: torch.optim.Optimizer, keys: dict[int, str]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if torch.is_tensor(value):
                    out[f"{keys[id(p)]}::{name}"] = value.detach().to("cpu").contiguous().clone()
                else:
                    out[f"{keys[id(p)]}::{name}"] = torch.tensor(float(value), dtype=torch.float64)
    return out


def save_state(
    path: Path,
    optimizer: torch.optim.Optimizer,
    keys: dict[int, str],
    step: int,
    settings: TrainSettings,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the optimizer moments and the step as a safetensors file (no pickle), atomically."""
    from safetensors.torch import save as st_save

    # parameters that have taken no step yet (the units during a distilled run's student-only steps)
    stateless = sorted(
        k
        for g in optimizer.param_groups
        for p in g["params"]
        if not optimizer.state.get(p) and (k := keys.get(id(p))) is not None
    )
    meta = {
        "format": STATE_FORMAT,
        "step": str(step),
        "settings": json.dumps(asdict(settings), sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
        "stateless": json.dumps(stateless),
    }
    return atomic_write_bytes(path, st_save(_optimizer_tensors(optimizer, keys), metadata=meta))


def _check_moment(path: Path, name: str, field_name: str, value: torch.Tensor, param: torch.Tensor) -> None:
    """An optimizer-state tensor must fit its parameter and be finite: a corrupt state file is named
    as such, instead of surfacing steps later as a diverging loss."""
    fix = f"delete {path.name} to resume with fresh optimizer moments (the adapter's weights are kept)"
    if field_name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") and tuple(value.shape) != tuple(param.shape):
        raise SPTError(
            f"cannot resume: {path} holds {name} of shape {tuple(value.shape)} for a parameter of "
            f"shape {tuple(param.shape)}; {fix}"
        )
    if (
        not value.is_floating_point()
        or not bool(torch.isfinite(value).all())
        or (field_name == "exp_avg_sq" and bool((value < 0).any()))
    ):
        raise SPTError(f"cannot resume: {path} is corrupt ({name} holds NaN, Inf or impossible values); {fix}")


def load_state(path: Path, optimizer: torch.optim.Optimizer, keys: dict[int, str]) -> dict[str, Any]:
    """Restore Adam moments from :func:`save_state`'s file; returns its metadata (step, settings)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise SPTError(f"cannot resume: {path} is not a readable training-state file ({exc})") from None
    if meta.get("format") != STATE_FORMAT:
        raise SPTError(f"cannot resume: {path} is not an spt-adapter training-state file")
    by_key = {v: k for k, v in keys.items()}
    params = {id(p): p for g in optimizer.param_groups for p in g["params"]}
    loaded: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        key, _, field_name = name.rpartition("::")
        if key not in by_key:
            raise SPTError(f"cannot resume: {path} holds optimizer state for {key!r}, which the adapter does not have")
        p = params[by_key[key]]
        _check_moment(path, name, field_name, value, p)
        v = value.to(p.device)
        loaded.setdefault(id(p), {})[field_name] = v if field_name != "step" else v.to(torch.float32)
    stateless = set(json.loads(meta.get("stateless", "[]")))
    missing = [keys[i] for i in params if i not in loaded and keys[i] not in stateless]
    if missing and loaded:
        raise SPTError(f"cannot resume: {path} lacks optimizer state for {missing[:3]}")
    for pid, state in loaded.items():
        optimizer.state[params[pid]] = state
    return {
        "step": int(meta.get("step", "0")),
        "settings": json.loads(meta.get("settings", "{}")),
        "extra": json.loads(meta.get("extra", "{}")),
    }


def adapter_step(path: Path) -> int | None:
    """The training step recorded in an adapter written by this trainer (header only)."""
    meta, _ = read_adapter_header(path)
    try:
        return int(json.loads(meta.get(TRAINING_KEY, "{}")).get("step"))
    except (TypeError, ValueError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def _train_mode(model: SPTModel) -> None:
    """Units in training mode, the frozen backbone as at inference: its dropout and stochastic
    depth off (spandrel builds SwinIR/HAT with drop_path_rate=0.1) and normalisation statistics
    fixed. The units then learn to correct the features the backbone gives at test time, and a
    step is a deterministic function of the weights and the batch (so resuming is exact)."""
    model.eval()
    for _, layer in iter_layers(model.base_model):
        for unit in layer.spt_units.values():
            unit.train()
    model.spt_students.train()


def _to(batch: dict[str, Any], device: torch.device, distilled: bool = False):
    """(lq, gt, prior or the teacher's map) on ``device``. A distilled adapter reads
    ``teacher_prior`` (None if the dataset has none: restoration loss only), the others ``prior``."""
    key = "teacher_prior" if distilled else "prior"
    try:
        lq, gt = batch["lq"], batch["gt"]
        prior = batch[key] if not distilled else batch.get(key)
    except KeyError as exc:
        raise SPTError(f"the training dataset must yield dicts with 'lq', 'gt' and 'prior'; {exc} is missing") from None
    if distilled and "prior" in batch:
        raise SPTError(
            "the adapter has a distilled prior (a student) but the dataset yields an LQ 'prior': build it "
            "with teacher=PROVIDER (PairedPriorDataset), which segments the clean images only"
        )
    nb = device.type == "cuda"
    prior = None if prior is None else prior.to(device, non_blocking=nb)
    return lq.to(device, non_blocking=nb), gt.to(device, non_blocking=nb), prior


def _write_logs(out: Path, history: list[dict[str, Any]], header: dict[str, Any]) -> tuple[Path, Path]:
    keys: list[str] = []
    for row in history:
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    p_csv = atomic_write_bytes(out / LOG_CSV, buf.getvalue().encode())
    p_json = atomic_write_bytes(out / LOG_JSON, json.dumps({**header, "history": history}, indent=1).encode())
    return p_csv, p_json


def _read_history(out: Path, up_to: int) -> list[dict[str, Any]]:
    try:
        data = json.loads((out / LOG_JSON).read_text())
        return [row for row in data.get("history", []) if int(row.get("step", 0)) <= up_to]
    except (OSError, ValueError, TypeError):
        return []


def _resume_point(out: Path | None, optimizer: torch.optim.Optimizer, keys: dict[int, str]) -> tuple[int, list[dict]]:
    """Where an earlier run in ``out`` stopped: (step, history up to it); loads Adam's moments."""
    if out is None:
        raise SPTError("resume needs the output folder of the earlier run")
    state_path = out / STATE_FILE
    step_in_adapter = adapter_step(out / ADAPTER_FILENAME) if (out / ADAPTER_FILENAME).exists() else None
    start = 0
    if state_path.exists():
        meta = load_state(state_path, optimizer, keys)
        start = meta["step"]
        if step_in_adapter is not None and step_in_adapter != start:
            # the two files were written at different steps (a crash in between): keep the
            # delta's weights, restart the optimizer moments
            optimizer.state.clear()
            start = step_in_adapter
    elif step_in_adapter is not None:
        start = step_in_adapter  # weights only: Adam restarts (documented)
    return start, _read_history(out, start)


def _make_loader(dataset: Dataset, settings: TrainSettings, info: DistInfo) -> tuple[DataLoader, EpochSampler, int]:
    """(loader, sampler, batches per epoch): seeded samples, sharded over the processes."""
    n = len(dataset)  # type: ignore[arg-type]
    world = info.world_size
    repeat = max(1, math.ceil(settings.batch * world / n))
    samples = SeededSamples(dataset, seed=settings.seed, repeat=repeat)
    sampler = EpochSampler(samples, num_replicas=world, rank=info.rank, seed=settings.seed)
    per_epoch = len(sampler) // settings.batch
    if per_epoch < 1:
        raise SPTError(f"{n} training samples give no full batch of {settings.batch} per process")
    loader = DataLoader(
        samples,
        batch_size=settings.batch,
        sampler=sampler,
        drop_last=True,
        num_workers=settings.workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=False,
    )
    return loader, sampler, per_epoch


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The distillation loss: binary cross-entropy between the student's logits and the teacher's
    encoded map (every encoding lies in [0, 1]: a soft target where it is not 0/1)."""
    if tuple(logits.shape) != tuple(teacher.shape):
        raise SPTError(
            f"the teacher's prior has shape {tuple(teacher.shape)} but the student makes "
            f"{tuple(logits.shape)}: the teacher's encoding must have the adapter's prior_channels"
        )
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), teacher.float())


def _batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The loader's batches; an error reading a sample (in this process or a DataLoader worker,
    whose re-raised error carries the worker's whole traceback) becomes one line naming it."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise SPTError(f"reading the training data failed: {_last_line(exc)}") from None
        yield batch


def _last_line(exc: BaseException) -> str:
    """The original error of a DataLoader worker (the last line of the traceback it carries)."""
    text = str(exc)
    if "Traceback" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        last = lines[-1] if lines else text
        name, sep, rest = last.partition(": ")
        return f"{name.rsplit('.', 1)[-1]}: {rest}" if sep and " " not in name else last
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, SPTError) else text


class _Stepper:
    """One optimisation step of the units: forward under autocast on CUDA, L1 loss, backward, Adam.
    With a prior student: the distillation loss of the student alone (the backbone does not run)
    for the first ``student_steps``, then ``L1 + distill_weight x distillation``."""

    def __init__(
        self,
        net: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        params: list,
        settings: TrainSettings,
        device: torch.device,
        distilled: bool = False,
    ) -> None:
        self.net, self.optimizer, self.params, self.settings = net, optimizer, params, settings
        self.distilled = distilled
        self.last_parts: dict[str, float] = {}
        self.use_amp = settings.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def __call__(self, lq: torch.Tensor, gt: torch.Tensor, prior: torch.Tensor, step: int, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.distilled and step < self.settings.student_steps:
            if prior is None:
                raise SPTError(
                    "student_steps train the student on the teacher's prior, but the dataset yields no 'teacher_prior'"
                )
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.use_amp):
                logits = self.net(lq, prior_logits_only=True)  # the student alone: no backbone forward
            loss = distill_loss(logits, prior)
            self.last_parts = {"distill": float(loss.detach())}
            return self._backward(loss, step)
        with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.use_amp):
            if self.distilled:
                pred, logits = self.net(lq, return_prior_logits=True)
            else:
                pred = self.net(lq, prior=prior)
        loss = torch.nn.functional.l1_loss(pred.float(), gt)
        if self.distilled:
            teacher = prior  # the teacher's map for a distilled adapter (None: restoration loss only)
            distill = distill_loss(logits, teacher) if teacher is not None else None
            self.last_parts = {"restoration": float(loss.detach())}
            if distill is not None:
                self.last_parts["distill"] = float(distill.detach())
                loss = loss + self.settings.distill_weight * distill
        return self._backward(loss, step)

    def _backward(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        if not torch.isfinite(loss):
            raise SPTError(f"the loss became {loss.item()} at step {step}; lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


class _Checkpointer:
    """Writes the optimizer state, the delta (with the training metadata), the logs and, at the
    end, the model card into ``out`` (main process only)."""

    def __init__(
        self,
        out: Path | None,
        model: SPTModel,
        adapter: str,
        optimizer: torch.optim.Optimizer,
        keys: dict[int, str],
        settings: TrainSettings,
        info: DistInfo,
        training_info: dict[str, Any] | None,
        header: dict[str, Any],
        backbone_hash: bool,
    ) -> None:
        self.out, self.model, self.adapter, self.optimizer, self.keys = out, model, adapter, optimizer, keys
        self.settings, self.info, self.training_info, self.header = settings, info, training_info, header
        self.backbone_hash = backbone_hash
        self.saved: int | None = None

    def save_on_error(self, step: int, history: list[dict[str, Any]]) -> None:
        """On an interrupt or error mid-run: keep the steps done since the last checkpoint, if any.
        A failure to save here is not raised over the error that stopped the run."""
        if step > 0 and self.saved != step:
            with contextlib.suppress(SPTError, OSError):
                self.save(step, history)

    def save(self, step: int, history: list[dict[str, Any]], final: bool = False) -> None:
        if self.out is None or not self.info.is_main:
            return
        from ..files.format import save_adapter

        settings = self.settings
        train_meta = dict(self.training_info or {})
        train_meta.update(
            {
                "step": step,
                "iters": settings.iters,
                "lr": settings.lr,
                "schedule": settings.schedule,
                "global_batch": settings.batch * self.info.world_size,
                # the step counts these first (a resumed run knows how many it did)
                "student_steps": settings.student_steps,
            }
        )
        # state first, then the delta: a crash in between leaves an older delta whose step differs,
        # which resume detects
        previous: int | str | None = None
        if (self.out / ADAPTER_FILENAME).is_file():
            try:
                previous = adapter_step(self.out / ADAPTER_FILENAME)
            except SPTError:
                previous = "?"
        try:
            save_state(
                self.out / STATE_FILE, self.optimizer, self.keys, step, settings, {"world_size": self.info.world_size}
            )
            save_adapter(
                self.model,
                self.out / ADAPTER_FILENAME,
                adapter_name=self.adapter,
                backbone_hash=self.backbone_hash,
                metadata={TRAINING_KEY: json.dumps(train_meta, sort_keys=True)},
                task=train_meta.get("task"),
            )
            _write_logs(self.out, history, self.header)
        except OSError as exc:  # disk full, folder gone or read-only: every file is written atomically
            if previous is None:  # nothing to resume from: say so rather than promise a checkpoint
                raise SPTError(
                    f"cannot write the checkpoint of step {step} in {self.out}: {exc.strerror or exc}; no "
                    "earlier checkpoint exists there, so the run cannot be resumed: free space, then "
                    "start it again"
                ) from None
            raise SPTError(
                f"cannot write the checkpoint of step {step} in {self.out}: {exc.strerror or exc}; the "
                f"previous checkpoint there (step {previous}) is intact (free space, then continue with "
                "--resume)"
            ) from None
        self.saved = step
        if final:
            with contextlib.suppress(Exception):  # the card is a courtesy; the delta is what matters
                from ..files.model_card import write_model_card

                write_model_card(self.out)


def train_units(
    model: SPTModel,
    dataset: Dataset,
    settings: TrainSettings,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    val_fn: Callable[[SPTModel], dict[str, float]] | None = None,
    training_info: dict[str, Any] | None = None,
    dist_info: DistInfo | None = None,
    backbone_hash: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train the active adapter's units of ``model`` on ``dataset``; see the module docstring.

    ``model`` is an SPTModel (already carrying the adapter; for ``resume`` load the adapter from
    ``out_dir`` first, as `spt-adapter train --resume` does). ``val_fn(model) -> {"psnr": ..}``
    runs on the main process every ``val_every`` steps and at the end. ``training_info`` (JSON-able)
    is recorded in the adapter file with the step. ``stop_at`` ends this call after that step (the
    schedule still runs to ``settings.total_steps``), as a time-sliced job would; ``resume`` continues.
    """
    if not isinstance(model, SPTModel):
        raise SPTError(f"train_units needs an SPTModel (from spt_adapter.inject), got {type(model).__name__}")
    info = dist_info or init_distributed()
    device = info.device
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise SPTError("the training dataset is empty")

    adapter = model.active_adapter
    if adapter is None:
        raise SPTError("the model has no adapter to train: add_adapter() or inject() first")
    distilled = model.student(adapter) is not None
    named = list(model.unit_parameters(adapter))
    keys = {id(p): k for k, p in named}
    params = [p for _, p in named]
    if not params:
        raise SPTError("the model has no trainable unit parameters")
    model.to(device)
    _train_mode(model)

    optimizer = torch.optim.Adam(params, lr=lr_at(0, settings), weight_decay=settings.weight_decay)
    start, history = _resume_point(out, optimizer, keys) if resume else (0, [])
    loader, sampler, per_epoch = _make_loader(dataset, settings, info)
    world = info.world_size

    net: torch.nn.Module = model
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # the student-only steps leave the units without gradients
        net = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=distilled and settings.student_steps > 0,
        )
    stepper = _Stepper(net, optimizer, params, settings, device, distilled=distilled)
    header = {
        "settings": asdict(settings),
        "world_size": world,
        "adapter": adapter,
        "training": training_info or {},
        "trainable_parameters": sum(p.numel() for p in params),
    }
    checkpoints = _Checkpointer(
        out, model, adapter, optimizer, keys, settings, info, training_info, header, backbone_hash
    )
    checkpoints.saved = start  # nothing new to keep before the first step of this call

    bar = None
    if settings.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.total_steps, initial=start, desc="train SPT units", unit="step", dynamic_ncols=True)

    step = start
    # the log's "seconds" continue across resumes (training time so far, not time since this call)
    done = [r["seconds"] for r in history if isinstance(r.get("seconds"), (int, float))]
    t0 = time.time() - (done[-1] if done else 0.0)
    running, count = 0.0, 0
    val: dict[str, float] | None = None
    epoch = step // per_epoch
    sampler.skip = (step % per_epoch) * settings.batch
    end = settings.total_steps if stop_at is None else min(settings.total_steps, max(int(stop_at), step))
    try:
        while step < end:
            sampler.set_epoch(epoch)
            for batch in _batches(loader):
                if step >= end:
                    break
                lq, gt, prior = _to(batch, device, distilled)
                if distilled and settings.student_steps and step == settings.student_steps:
                    optimizer.state.clear()  # the joint steps start with fresh Adam moments
                lr = lr_at(step, settings)
                loss = stepper(lq, gt, prior, step, lr)
                step += 1
                running += float(loss)
                count += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                last = step == end
                if settings.log_every and (step % settings.log_every == 0 or last) or (last and count):
                    mean_loss = running / max(count, 1)
                    if info.distributed:  # the log shows the loss over the global batch
                        t = torch.tensor([mean_loss], device=device)
                        dist.all_reduce(t)
                        mean_loss = float(t) / world
                    history.append(
                        {
                            "step": step,
                            "loss": mean_loss,
                            "lr": lr,
                            "seconds": round(time.time() - t0, 3),
                            **{f"{k}_loss": v for k, v in stepper.last_parts.items()},
                        }
                    )
                    running, count = 0.0, 0
                if (
                    val_fn is not None
                    and info.is_main
                    and ((settings.val_every and step % settings.val_every == 0) or last)
                ):
                    if last:
                        checkpoints.save(step, history)  # the run is kept even if validation fails
                    model.eval()
                    with torch.no_grad():
                        val = {k: float(v) for k, v in val_fn(model).items()}
                    _train_mode(model)
                    if history and history[-1]["step"] == step:
                        history[-1].update({f"val_{k}": v for k, v in val.items()})
                    else:
                        history.append({"step": step, **{f"val_{k}": v for k, v in val.items()}})
                    if bar is not None:
                        bar.write(f"step {step}: " + ", ".join(f"val {k} {v:.4f}" for k, v in val.items()))
                if settings.save_every and step % settings.save_every == 0 and not last:
                    checkpoints.save(step, history)
            epoch += 1
            sampler.skip = 0
    except BaseException:  # an interrupt, a bad image, a failed validation: keep the steps done
        checkpoints.save_on_error(step, history)
        raise
    finally:
        if bar is not None:
            bar.close()
    checkpoints.save(step, history, final=True)
    if info.distributed:
        dist.barrier()
    model.eval()
    return TrainResult(
        adapter_path=out / ADAPTER_FILENAME if out is not None else None,
        state_path=out / STATE_FILE if out is not None else None,
        log_csv=out / LOG_CSV if out is not None else None,
        log_json=out / LOG_JSON if out is not None else None,
        step=step,
        history=history,
        val=val,
    )


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
