"""A distilled prior trained inside a framework's own loop (the BasicSR, KAIR and Restormer shims).

The schedule is ``spt-adapter train --prior distilled``'s (:mod:`spt_adapter.training.train`): the
first ``distill.student_steps`` iterations train the student alone on the teacher's map (the
backbone does not run, the units get no gradient), then every iteration is the framework's own
step -- its losses, gradient clipping, logging, EMA -- with ``distill.weight x BCE(student logits,
teacher map)`` added to its pixel loss. The addition is made by wrapping the framework's pixel-loss
attribute (``cri_pix``, KAIR's ``G_lossfn``) for the duration of that one step and reading the
student's logits from a forward hook, so none of the framework's code is copied here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from spt_adapter.core.model import SPTModel
from spt_adapter.errors import ConfigError, SPTError
from spt_adapter.training.train import distill_loss

from ._options import DATASET_TEACHER_KEY, DistillSpec


def student_of(net: SPTModel):
    student = net.student()
    if student is None:
        raise SPTError("internal error: the distilled step runs on a network whose active adapter has no student")
    return student


def student_only_step(net: SPTModel, lq: torch.Tensor, teacher: torch.Tensor, optimizer) -> float:
    """One optimizer step of the student alone on the distillation loss (units untouched: they get
    no gradient, so the optimizer skips them). Returns the loss."""
    optimizer.zero_grad()
    loss = distill_loss(student_of(net).logits(lq), teacher)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@contextmanager
def distilling(net: SPTModel, owner: Any, loss_attr: str, teacher: torch.Tensor, weight: float) -> Iterator[dict]:
    """Inside the block, ``owner.<loss_attr>(out, gt)`` returns the framework's loss plus ``weight x``
    the distillation loss of the student's logits in the forward that made ``out``. Yields a dict
    that holds ``"distill"`` (the last distillation loss, detached) after the step."""
    captured: list[torch.Tensor] = []
    hook = student_of(net).body.register_forward_hook(lambda module, args, out: captured.append(out))
    original = getattr(owner, loss_attr)
    if original is None:
        hook.remove()
        raise ConfigError(
            "a distilled prior adds its loss to the pixel loss: configure one (BasicSR/Restormer "
            "`pixel_opt`, KAIR `G_lossfn_type`)"
        )
    parts: dict[str, torch.Tensor] = {}

    def with_distillation(out, gt, *args, **kwargs):
        loss = original(out, gt, *args, **kwargs)
        if not captured:
            raise SPTError("internal error: the pixel loss ran before the student made a prior")
        parts["distill"] = distill = distill_loss(captured[-1], teacher)
        return loss + weight * distill

    setattr(owner, loss_attr, with_distillation)
    try:
        yield parts
    finally:
        setattr(owner, loss_attr, original)
        hook.remove()


def distilled_iteration(
    net: SPTModel,
    spec: DistillSpec,
    current_iter: int,
    lq: torch.Tensor,
    teacher: torch.Tensor | None,
    optimizer,
    owner: Any,
    loss_attr: str,
    framework_step: Callable[[], None],
    loss_scale: float = 1.0,
) -> tuple[bool, float | None]:
    """One training iteration of a distilled prior (``current_iter`` counts from 1, as the
    frameworks count). Returns ``(student_only, distillation loss)``; after a student-only step the
    caller runs its EMA and sets its log itself. ``loss_scale``: a factor the framework multiplies its
    pixel loss by (KAIR's ``G_lossfn_weight``), divided out so the distillation weight is ``spec.weight``."""
    if teacher is None:
        if current_iter <= spec.student_steps or spec.weight > 0:
            raise ConfigError(
                f"the batch has no 'teacher_prior': give the train dataset `{DATASET_TEACHER_KEY}:` "
                "(the teacher, same keys as spt.prior; it runs on the GT images only), or set "
                "spt.distill to {weight: 0, student_steps: 0} to train the student by the restoration "
                "loss alone"
            )
        framework_step()
        return False, None
    if current_iter <= spec.student_steps:
        return True, student_only_step(net, lq, teacher, optimizer)
    with distilling(net, owner, loss_attr, teacher, spec.weight / loss_scale) as parts:
        framework_step()
    return False, float(parts["distill"].detach()) if "distill" in parts else None
