"""What a training run is asked to do: :class:`TrainSettings` (checked on construction), its
:class:`TrainResult`, and the learning-rate curve :func:`lr_at` (computed from the step, so a resumed
run continues the same curve)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

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
