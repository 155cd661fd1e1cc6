"""Checks shared by the framework tests of a distilled prior (BasicSR, KAIR, Restormer shims): what
a delta saved after the student-only steps and one saved after joint steps must hold."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import spt_adapter
from spt_adapter.core.keys import FILE_STUDENT_SEGMENT
from spt_adapter.errors import PriorError


def assert_distilled_schedule(
    after_student_steps, after_joint_steps, load: Callable[[object], spt_adapter.SPTModel], example: torch.Tensor
) -> spt_adapter.SPTModel:
    """``after_student_steps``: a delta saved when only student-only steps had run; ``after_joint_steps``:
    one saved later. ``load(path)`` puts a delta on the untouched backbone (sha256 checked).

    - both deltas hold the student (``spt_student.*``) beside the units;
    - after the student-only steps every unit still has its zero-initialised output layer (the units
      got no gradient: an optimizer step would have moved it), and the student has moved by the end;
    - after joint steps those layers are trained (non-zero);
    - the loaded adapter runs with ``model(x)`` (its student makes the prior) and refuses ``prior=``.
    Returns the model of ``after_joint_steps``."""
    for path in (after_student_steps, after_joint_steps):
        _, entries = spt_adapter.read_adapter_header(path)
        assert any(k.startswith(FILE_STUDENT_SEGMENT + ".") for k in entries), f"{path} has no student"
        assert any(".spt_unit." in k for k in entries), f"{path} has no units"
    early, late = load(after_student_steps), load(after_joint_steps)
    e = {k: p.detach() for k, p in early.unit_parameters()}
    l_ = {k: p.detach() for k, p in late.unit_parameters()}
    zero = [k for k, p in e.items() if not k.startswith(FILE_STUDENT_SEGMENT) and float(p.abs().sum()) == 0]
    targets = {k.split(".spt_unit.")[0] for k in e if ".spt_unit." in k}
    assert {k.split(".spt_unit.")[0] for k in zero} == targets, "a unit moved during the student-only steps"
    assert all(float(l_[k].abs().sum()) > 0 for k in zero), "the joint steps did not train the units"
    students = [k for k in e if k.startswith(FILE_STUDENT_SEGMENT + ".")]
    assert any(not torch.equal(e[k], l_[k]) for k in students), "the student did not train"
    with torch.no_grad():
        out = late(example)
        assert out.shape[0] == example.shape[0] and torch.isfinite(out).all()
        with pytest.raises(PriorError, match="distilled prior"):
            late(example, prior=torch.zeros(example.shape[0], 1, *example.shape[-2:]))
    return late
