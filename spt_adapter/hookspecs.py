"""Hook specifications of the ``spt_adapter`` pluggy project.

Plugins are modules or objects with functions decorated by :data:`hookimpl`; they are found
through the ``spt_adapter`` entry-point group (built-in shims included) or registered by hand with
``spt_adapter.plugins.get_plugin_manager().register(obj)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

PROJECT = "spt_adapter"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


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


@hookspec(firstresult=True)
def spt_adapter_claim_model(model: "nn.Module") -> ModelClaim | None:
    """Claim a backbone: return a :class:`ModelClaim` with default targets, or ``None``.

    The first plugin that returns a claim wins (``firstresult``).
    """


@hookspec(firstresult=True)
def spt_adapter_describe_layout(model: "nn.Module", name: str, module: "nn.Module") -> LayoutSpec | None:
    """Describe the output layout of target ``name`` (a module of ``model``), or ``None``.

    Needed for targets whose outputs are tuples, or token sequences whose spatial size is not an
    argument of the call.
    """


@hookspec(firstresult=True)
def spt_adapter_read_checkpoint(path: str) -> dict[str, Any] | None:
    """Read a framework's checkpoint file at ``path`` and return a plain state dict, or ``None``
    if the plugin does not recognise the format. Must not unpickle arbitrary objects."""


@hookspec
def spt_adapter_register_framework() -> list[str] | None:
    """Register framework classes (models, datasets, architectures) with their framework's
    registries when that framework is importable. Return the names registered (for
    ``spt-adapter plugins``) or ``None`` when the framework is absent."""
