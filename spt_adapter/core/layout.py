"""Feature layouts: (B,C,H,W) maps and (B,L,C) token sequences."""

from __future__ import annotations

from typing import Any

import torch


def find_spatial_size(args: tuple, kwargs: dict, length: int) -> tuple[int, int] | None:
    """Find the (H, W) of a token sequence of ``length`` tokens among a call's arguments.

    Looks for a 2-int tuple/list/``torch.Size`` argument (positional first, then keyword) whose
    product is ``length``, as SwinIR/HAT pass ``x_size``.
    """
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
            h, w = value
            if _is_int(h) and _is_int(w) and int(h) * int(w) == length:
                # under torch.jit.trace (and the ONNX exporter) sizes are 0-dim tensors: keep them, so
                # the reshape follows the input's size instead of freezing the traced one
                return (h, w) if torch.jit.is_tracing() else (int(h), int(w))
    return None


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return torch.is_tensor(value) and value.dim() == 0 and not value.is_floating_point()


def describe_call(args: tuple, kwargs: dict) -> str:
    """A short description of a call's arguments for error messages."""

    def one(v: Any) -> str:
        if torch.is_tensor(v):
            return f"Tensor{tuple(v.shape)}"
        if isinstance(v, (tuple, list)):
            return f"{type(v).__name__}[{', '.join(one(x) for x in v[:4])}{', ...' if len(v) > 4 else ''}]"
        if isinstance(v, dict):
            return "dict{" + ", ".join(f"{k}: {one(x)}" for k, x in list(v.items())[:4]) + "}"
        return repr(v) if isinstance(v, (int, float, str, type(None))) else type(v).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def tokens_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, L, C) -> (B, C, H, W)."""
    b, length, c = x.shape
    h, w = size
    return x.transpose(1, 2).reshape(b, c, h, w)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, C)."""
    return x.flatten(2).transpose(1, 2)
