"""A run's files: the optimiser state (step and Adam moments as tensors, nothing pickled), the logs,
the resume point, and :class:`_Checkpointer`, which writes state then delta then logs atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_write_bytes
from ..core.model import SPTModel
from ..errors import SPTError
from ..files.format import (
    ADAPTER_FILENAME,  # the same name as save_pretrained: a run folder is shareable
    TRAINING_KEY,
    read_adapter_header,
)
from .distributed import DistInfo
from .settings import TrainSettings

STATE_FILE = "train_state.safetensors"
LOG_CSV = "train_log.csv"
LOG_JSON = "train_log.json"
#: what train_log.json says it was written by: a folder holding only such logs is a run that stopped
#: before its first checkpoint (not a user's files), which a new run may replace
LOG_WRITER = "spt-adapter train"
STATE_FORMAT = "spt-adapter-train-state"


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
    p_json = atomic_write_bytes(
        out / LOG_JSON, json.dumps({"written_by": LOG_WRITER, **header, "history": history}, indent=1).encode()
    )
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

    def log(self, history: list[dict[str, Any]]) -> None:
        """Write the logs as they grow (every ``log_every`` steps), so a run's folder shows its progress
        before the first checkpoint and a kill -9 loses at most the rows since the last log line. A
        write that fails (disk full) is left to the next checkpoint to report."""
        if self.out is None or not self.info.is_main:
            return
        with contextlib.suppress(OSError):
            _write_logs(self.out, history, self.header)

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


def is_own_log(out: Path) -> bool:
    """Whether ``out/train_log.json`` was written by ``spt-adapter train`` (:data:`LOG_WRITER`)."""
    try:
        data = json.loads((out / LOG_JSON).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == LOG_WRITER
