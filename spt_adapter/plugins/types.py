"""Data types that hooks return: what a plugin says about a backbone or a target's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class ModelClaim:
    """A plugin's answer to "I know this backbone".

    integration: name of the integration (``"spandrel"``, ``"basicsr"``, ...).
    preset: name of the architecture preset (``"swinir"``, ``"rrdb"``, ...).
    targets: default target patterns for the backbone.
    channels: optional known output width per matched module name (skips the probe pass).
    example_input: optional callable returning a small input for the probe forward pass.
    """

    integration: str
    preset: str
    targets: list[str]
    channels: dict[str, int] = field(default_factory=dict)
    example_input: Callable[[], Any] | None = None


@dataclass
class LayoutSpec:
    """How to read one target's output.

    kind: ``"map"`` for (B,C,H,W) or ``"tokens"`` for (B,L,C).
    tuple_index: for targets returning a tuple/list, which element holds the features.
    spatial_size: for tokens, a callable ``(args, kwargs, features) -> (H, W)``.
    """

    kind: str | None = None
    tuple_index: int | None = None
    spatial_size: Callable[[tuple, dict, Any], tuple[int, int]] | None = None
