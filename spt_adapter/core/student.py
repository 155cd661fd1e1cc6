"""The prior student: a small conv net that maps the LQ input to a prior, so an adapter needs no
segmenter at inference.

It is trained (``spt_adapter.training.train``) to reproduce a *teacher*: any mask provider run on
the clean (HQ) image at training time, encoded like every prior. Its output has the teacher
encoding's channels and lies in [0, 1], as every encoding does (``label``, ``boundary``,
``onehot``); the distillation loss reads its logits (:meth:`PriorStudent.logits`).

Its settings live in ``SPTConfig.student`` (a small dict, validated by :func:`check_student`), so the
student is rebuilt from an adapter file's config and its tensors travel in the same delta as the
units (``spt_adapter.core.keys.student_file_key``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, PriorError

#: the settings a ``student`` dict may hold, with their default and inclusive bounds
STUDENT_FIELDS: dict[str, tuple[int, int, int]] = {
    "in_channels": (3, 1, 16),  # channels of the LQ input (3 colour, 1 grey)
    "width": (16, 1, 256),  # channels of the hidden convs
    "depth": (4, 2, 16),  # conv layers, the output conv included
}


def check_student(student: Any) -> dict[str, int] | None:
    """The validated ``student`` dict of an SPTConfig (missing keys get their defaults), or None.

    Raises :class:`ConfigError` naming the bad key or value and the allowed range."""
    if student is None:
        return None
    if not isinstance(student, dict):
        raise ConfigError(f"student must be a dict of {sorted(STUDENT_FIELDS)} or None, got {type(student).__name__}")
    unknown = sorted(set(student) - set(STUDENT_FIELDS))
    if unknown:
        raise ConfigError(f"unknown student setting(s) {unknown}; known: {sorted(STUDENT_FIELDS)}")
    out = {}
    for name, (default, low, high) in STUDENT_FIELDS.items():
        value = student.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"student {name} must be an integer in [{low}, {high}], got {value!r}")
        out[name] = value
    return out


def student_parameter_shapes(student: dict[str, Any], prior_channels: int) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of the :class:`PriorStudent` a config describes, without building it (so an
    adapter header can be checked against them before any module exists)."""
    settings = check_student(student)
    assert settings is not None
    widths = [settings["in_channels"]] + [settings["width"]] * (settings["depth"] - 1) + [prior_channels]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(settings["depth"]):
        index = 2 * i  # each conv but the last is followed by its activation in ``body``
        shapes[f"body.{index}.weight"] = (widths[i + 1], widths[i], 3, 3)
        shapes[f"body.{index}.bias"] = (widths[i + 1],)
    return shapes


def teacher_at_lq_size(prior, scale: int, lq_shape: tuple[int, int] | None = None):
    """A teacher's map of the GT image, ``(C, H*scale, W*scale)`` (numpy array or tensor; a leading
    batch axis is allowed), brought to the LQ grid the student works on: each LQ pixel takes the GT
    pixel nearest its centre (``scale // 2`` within its ``scale x scale`` block; no blending, so a
    boundary map stays 0/1). ``lq_shape`` trims a GT size that is not a multiple of ``scale``."""
    if scale < 1:
        raise ConfigError(f"scale must be >= 1, got {scale}")
    if scale > 1:
        prior = prior[..., scale // 2 :: scale, scale // 2 :: scale]
    if lq_shape is not None:
        prior = prior[..., : lq_shape[0], : lq_shape[1]]
    return prior


class PriorStudent(nn.Module):
    """``depth`` 3x3 convs (``width`` channels, LeakyReLU) from the LQ input to ``out_channels``
    prior channels; :meth:`forward` gives the prior in [0, 1] (a sigmoid of :meth:`logits`).

    Full resolution, no down-sampling: the prior keeps the input's size and each unit resizes it to
    its features, as it does a provider's prior. Cost per pixel: 9 x (in x width + (depth-2) x
    width^2 + width x out) multiply-adds (``benchmarks/overhead.py`` prints it beside the backbone's).
    """

    def __init__(self, out_channels: int, in_channels: int = 3, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        settings = check_student({"in_channels": in_channels, "width": width, "depth": depth})
        assert settings is not None
        self.in_channels, self.out_channels = in_channels, out_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
        layers.append(nn.Conv2d(width, out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, student: dict[str, Any], prior_channels: int) -> PriorStudent:
        settings = check_student(student)
        assert settings is not None
        return cls(prior_channels, **settings)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid output (B, C_p, H, W): what the distillation loss compares to the teacher."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise PriorError(
                f"the prior student reads (B, {self.in_channels}, H, W) inputs, got shape {tuple(x.shape)}"
            )
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
