"""Hook specifications of the ``spt_adapter`` pluggy project (specs only; their data types are in
:mod:`spt_adapter.plugins.types`).

Plugins are modules or objects with functions decorated by :data:`hookimpl`; they are found
through the ``spt_adapter`` entry-point group (built-in shims included) or registered by hand with
``spt_adapter.plugins.manager.get_plugin_manager().register(obj)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

from .types import LayoutSpec, ModelClaim, ProviderSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

PROJECT = "spt_adapter"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def spt_adapter_claim_model(model: nn.Module) -> ModelClaim | None:
    """Claim a backbone: return a :class:`ModelClaim` with default targets, or ``None``.

    The first plugin that returns a claim wins (``firstresult``).
    """


@hookspec(firstresult=True)
def spt_adapter_describe_layout(model: nn.Module, name: str, module: nn.Module) -> LayoutSpec | None:
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


@hookspec
def spt_adapter_mask_providers() -> list[ProviderSpec] | None:
    """Offer mask providers: return a list of :class:`ProviderSpec` (name, factory, settings schema,
    identity fields), or ``None``. Every plugin's list is collected; the built-in ``sam``, ``sam2``,
    ``slic`` and ``felzenszwalb`` come through this hook too (``spt_adapter.prior.providers``).
    Names must be unique across plugins; ``spt_adapter.prior.make_provider(name, ...)`` builds one,
    ``spt-adapter masks/train/eval --provider NAME`` use it and ``spt-adapter plugins`` lists them.
    A plugin whose hook raises is reported by name and the other plugins' providers stay usable."""
