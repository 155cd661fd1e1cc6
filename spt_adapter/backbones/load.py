"""``load_backbone(path)``: a model-zoo checkpoint -> (nn.Module, default SPT targets).

The checkpoint is read by the plugins (hook ``spt_adapter_read_checkpoint``: BasicSR/Restormer
``params``/``params_ema`` files, KAIR bare state dicts, and spandrel's own reader as the fallback:
``.pth`` through its restricted unpickler, ``.safetensors``); spandrel detects the architecture
from the state dict; the plugin that claims the model (hook ``spt_adapter_claim_model``) proposes
the default targets.

    model, targets = spt_adapter.load_backbone("001_classicalSR_DF2K_s64w8_SwinIR-M_x2.pth")
    spt = spt_adapter.inject(model, targets)
    model, targets = load_backbone("dncnn_25.pth", preset="dncnn-light")   # another preset by name
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..core.planning import claim_model, pick_preset
from ..errors import BackboneError, TargetError
from ..plugins.types import ModelClaim


class _BackboneFields(NamedTuple):
    model: nn.Module
    targets: list[str]


class Backbone(_BackboneFields):
    """``(model, targets)``; also ``.claim`` (the ModelClaim, or None) and ``.descriptor`` (spandrel's
    ModelDescriptor: ``.architecture``, ``.scale``, ``.input_channels``, ...)."""

    claim: ModelClaim | None
    descriptor: Any

    @property
    def integration(self) -> str | None:
        return self.claim.integration if self.claim else None

    @property
    def preset(self) -> str | None:
        return self.claim.preset if self.claim else None


def install_extra_arches() -> bool:
    """Add spandrel-extra-arches (Restormer, ...) to spandrel's registry when it is installed."""
    if importlib.util.find_spec("spandrel_extra_arches") is None:
        return False
    import spandrel_extra_arches

    spandrel_extra_arches.install(ignore_duplicates=True)
    return True


def load_backbone(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    claim: bool = True,
    *,
    preset: str | None = None,
) -> Backbone:
    """Load the backbone in ``path`` and the default targets the claiming plugin proposes.

    ``preset``: the targets of that preset instead of the default one (``"dncnn-light"`` for a DnCNN;
    a preset that does not recognise the network is refused, naming those that do). ``targets`` is
    empty when no plugin claims the architecture (pass your own to ``inject``). The model is in eval
    mode; its weights are exactly the file's.
    """
    if preset is not None and not claim:
        raise BackboneError(f"preset={preset!r} picks the targets of a claim: it needs claim=True")
    from .._io import why_not_a_file
    from ..plugins.manager import call_hook

    path = Path(path)
    why = why_not_a_file(path)
    if why:
        raise BackboneError(f"backbone checkpoint {path} {why}")
    try:
        from spandrel import ModelLoader, UnsupportedModelError
    except ImportError:
        raise BackboneError("load_backbone needs spandrel: pip install 'spt-adapter[spandrel]'") from None
    install_extra_arches()
    state = call_hook("spt_adapter_read_checkpoint", path=str(path))
    if state is None:
        raise BackboneError(f"no plugin can read {path} (suffix {path.suffix!r}); see `spt-adapter plugins`")
    try:
        descriptor = ModelLoader(device="cpu").load_from_state_dict(state)
    except UnsupportedModelError:
        raise BackboneError(
            f"spandrel does not recognise the architecture in {path} ({len(state)} tensors, first keys "
            f"{list(state)[:3]}); build the model yourself and pass it to spt_adapter.inject"
        ) from None
    except RuntimeError as exc:  # spandrel sized the network from some tensors; others do not fit it
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        if not any("state_dict" in ln for ln in lines[:1]):
            raise
        detail = lines[1] if len(lines) > 1 else lines[0]
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise BackboneError(
            f"backbone checkpoint {path}: its tensors do not fit the network spandrel sized from it: "
            f"{detail[:240]}{more}; the checkpoint is damaged, or an architecture variant spandrel cannot "
            "size: build the model yourself and pass it to spt_adapter.inject"
        ) from None
    model = descriptor.model
    check_finite_weights(model, str(path))
    if device is not None:
        model = model.to(device)
    model.eval()
    found = _claim(model) if claim else None
    if preset is not None:
        try:
            found = pick_preset(found, preset, f"the {type(model).__name__} in {path}")
        except TargetError as exc:
            raise BackboneError(str(exc)) from None
    result = Backbone(model, list(found.targets) if found else [])
    result.claim = found
    result.descriptor = descriptor
    return result


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a backbone with NaN or Inf in its weights (a damaged checkpoint, a conversion gone wrong):
    it would restore every image to black without an error. The message names the first such tensor."""
    for name, param in model.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            bad = int((~torch.isfinite(param)).sum())
            raise BackboneError(
                f"backbone checkpoint {source}: weight {name!r} holds {bad} NaN or Inf value(s); the "
                "checkpoint is damaged (or was saved after training diverged)"
            )


def _claim(model: nn.Module) -> ModelClaim | None:
    return claim_model(model)
