"""The minimal trainer behind ``spt-adapter train``: only the SPT units learn.

    from spt_adapter.training.train import TrainSettings, train_units
    spt = spt_adapter.inject(backbone, targets)
    result = train_units(spt, dataset, TrainSettings(iters=2000, batch=8, lr=1e-3), out_dir="runs/x")

* Adam on the active adapter's unit parameters, L1 loss, cosine / step / constant learning-rate
  schedule (computed from the step, so a resumed run continues the same curve);
* priors are fed with ``model(lq, prior=p)``; the dataset yields dicts with ``lq``, ``gt``,
  ``prior`` (``spt_adapter.data.datasets.PairedPriorDataset`` does);
* an adapter that reads no prior (``SPTConfig.prior_channels`` 0): the dataset yields no ``prior``
  (``PairedPriorDataset(with_prior=False)``) and ``model(lq)`` runs;
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
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from ..core.layer import iter_layers
from ..core.model import SPTModel
from ..errors import SPTError
from ..files.format import (
    ADAPTER_FILENAME,  # the same name as save_pretrained: a run folder is shareable
)
from .checkpoint import LOG_CSV, LOG_JSON, STATE_FILE, _Checkpointer, _resume_point, adapter_step
from .distributed import DistInfo, EpochSampler, SeededSamples, init_distributed, shutdown_distributed
from .settings import TrainResult, TrainSettings, lr_at

# the loop lives here; its settings, process group and run files in settings.py, distributed.py and
# checkpoint.py, re-exported so that ``from spt_adapter.training.train import ...`` keeps working
__all__ = [
    "TrainSettings",
    "TrainResult",
    "DistInfo",
    "init_distributed",
    "shutdown_distributed",
    "lr_at",
    "train_units",
    "distill_loss",
    "adapter_step",
    "ADAPTER_FILENAME",
    "STATE_FILE",
    "LOG_CSV",
    "LOG_JSON",
]


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


def _to(batch: dict[str, Any], device: torch.device, distilled: bool = False, reads_prior: bool = True):
    """(lq, gt, prior or the teacher's map) on ``device``. A distilled adapter reads
    ``teacher_prior`` (None if the dataset has none: restoration loss only), one that reads no prior
    (``reads_prior`` False) nothing (a ``prior`` the dataset yields is refused), the others ``prior``."""
    key = "teacher_prior" if distilled else "prior"
    try:
        lq, gt = batch["lq"], batch["gt"]
        prior = batch[key] if (not distilled and reads_prior) else batch.get(key)
    except KeyError as exc:
        raise SPTError(f"the training dataset must yield dicts with 'lq', 'gt' and 'prior'; {exc} is missing") from None
    if not reads_prior and prior is not None:
        raise SPTError(
            "the adapter reads no prior (prior 'none') but the dataset yields a 'prior': build it with "
            "with_prior=False (PairedPriorDataset), which computes none"
        )
    if distilled and "prior" in batch:
        raise SPTError(
            "the adapter has a distilled prior (a student) but the dataset yields an LQ 'prior': build it "
            "with teacher=PROVIDER (PairedPriorDataset), which segments the clean images only"
        )
    nb = device.type == "cuda"
    prior = None if prior is None else prior.to(device, non_blocking=nb)
    return lq.to(device, non_blocking=nb), gt.to(device, non_blocking=nb), prior


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


@contextlib.contextmanager
def _interrupts_after_the_step() -> Iterator[None]:
    """Ctrl-C or SIGTERM inside the block takes effect when it ends: a signal landing between the
    optimizer's update and the step counter would leave a checkpoint that says step N but holds N+1
    updates. A second signal inside the block interrupts at once (a step that does not end). A signal
    the process was started to ignore (``nohup``, a background job of a non-interactive shell) stays
    ignored. Only the main thread can set handlers; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, frame):
        if pending:  # asked twice: do not wait for the step
            raise KeyboardInterrupt(f"signal {signum}")
        pending.append(signum)

    previous = {
        sig: signal.signal(sig, hold)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            signal.raise_signal(pending[0])  # delivered to the handler the caller had (KeyboardInterrupt)


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
    reads_prior = model.spt_config[adapter].reads_prior
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
                lq, gt, prior = _to(batch, device, distilled, reads_prior)
                if distilled and settings.student_steps and step == settings.student_steps:
                    optimizer.state.clear()  # the joint steps start with fresh Adam moments
                lr = lr_at(step, settings)
                with _interrupts_after_the_step():  # an update is never applied without being counted
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
                    checkpoints.log(history)  # the log follows the run, not only its checkpoints
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
