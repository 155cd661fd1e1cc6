"""Architecture presets: where SPT units go by default, and how wide each target is.

A preset recognises an architecture from its *structure* (class name plus the sub-modules the
targets need), so one preset serves the same network whichever code base built it: spandrel's,
BasicSR's, KAIR's or Restormer's copy of the class. The integrations' ``spt_adapter_claim_model``
hooks call :func:`find_preset` for the classes of their own framework and turn the result into a
:class:`~spt_adapter.plugins.hookspecs.ModelClaim`.

Framework-free: nothing here imports spandrel, BasicSR, KAIR or Restormer.

=========  ==============================================  =============================================
preset     recognised classes                              default targets (one unit after each)
=========  ==============================================  =============================================
swinir     SwinIR (spandrel, BasicSR, KAIR)                ``layers.*`` (every RSTB; tokens, x_size)
hat        HAT (spandrel, HAT repo)                        ``layers.*`` (every RHAG; tokens, x_size)
dat        DAT (spandrel, DAT repo)                        ``layers.*`` (every ResidualGroup; tokens)
rrdb       RRDBNet, spandrel naming                        ``model.1.sub.N`` for every RRDB block N
                                                           (not the trunk conv that ends ``sub``)
rrdb       RRDBNet, BasicSR naming                         ``body.*`` (every RRDB)
rrdb       RRDBNet, KAIR naming                            ``RRDB_trunk.*`` (every RRDB)
nafnet     NAFNet (spandrel, BasicSR/NAFNet repo)          ``encoders.*``, ``middle_blks``, ``decoders.*``
scunet     SCUNet (spandrel, KAIR)                         ``m_down1..3``, ``m_body``, ``m_up3..1``
drunet     DRUNet / UNetRes (spandrel, KAIR)               ``m_down1..3``, ``m_body``, ``m_up3..1``
restormer  Restormer (spandrel-extra-arches, Restormer)    ``encoder_level1..3``, ``latent``,
                                                           ``decoder_level3..1``, ``refinement``
dncnn      DnCNN / FDnCNN (spandrel, KAIR; cszn/DnCNN's     every hidden conv ``model.N`` (all convs but
           MatConvNet models converted by                  the first and the last), on its output before
           ``tools/convert_dncnn_mat.py``)                 the activation
dncnn-     the same                                        three hidden convs, at 1/4, 1/2 and the end of
light                                                      the depth (where ``benchmarks/quality.py`` puts
                                                           its units); pick it with ``--preset dncnn-light``
=========  ==============================================  =============================================

When several presets recognise a network, the first registered is the default (``dncnn`` before
``dncnn-light``); the others ride along in the claim (``ModelClaim.alternatives``), and
``spt_adapter.inject(model, preset="dncnn-light")``, ``load_backbone(path, preset=...)`` and
``spt-adapter train --preset NAME`` pick one by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from ..core.keys import find_logical_module, see_through
from ..errors import LayoutError
from ..plugins.types import ModelClaim

__all__ = [
    "Preset",
    "PRESETS",
    "register_preset",
    "find_preset",
    "find_presets",
    "preset_default_unit",
    "claim_with_presets",
    "preset_table",
]


@dataclass(frozen=True)
class Preset:
    """One architecture preset.

    name: preset name recorded in adapter files (``"swinir"``).
    classes: class names this preset may recognise (checked before ``detect``).
    detect: ``model -> bool``, the structural check (the sub-modules the targets need exist).
    targets: ``model -> list[str]``, the default target patterns for this instance.
    channels: optional ``(model, names) -> {name: width}`` when widths are known without a probe.
    naming: which naming convention this entry covers (documentation only).
    default_unit: the unit ``spt-adapter train`` builds on this preset's targets when no unit flag and no
        prior is given (``{"fusion": "lora", "hidden": 1}``: what won on validation, docs/results.md result 17);
        ``None``: the package default (:data:`~spt_adapter.core.config.DEFAULT_FUSION`).
    """

    name: str
    classes: tuple[str, ...]
    detect: Callable[[nn.Module], bool]
    targets: Callable[[nn.Module], list[str]]
    channels: Callable[[nn.Module, list[str]], dict[str, int]] | None = None
    naming: str = ""
    default_unit: dict[str, Any] | None = field(default=None, compare=False)


_lock = threading.Lock()
PRESETS: list[Preset] = []


def register_preset(preset: Preset) -> Preset:
    """Add a preset; a (name, naming) pair may be registered once."""
    with _lock:
        for p in PRESETS:
            if p.name == preset.name and p.naming == preset.naming:
                raise ValueError(f"preset {preset.name!r} ({preset.naming or 'default naming'}) is already registered")
        PRESETS.append(preset)
    return preset


def find_preset(model: nn.Module) -> Preset | None:
    """The first preset that recognises ``model``, or ``None``."""
    found = find_presets(model)
    return found[0] if found else None


def find_presets(model: nn.Module) -> list[Preset]:
    """Every preset that recognises ``model``, in registration order (the first is the default); one
    entry per name."""
    cls = type(model).__name__
    out: list[Preset] = []
    for preset in list(PRESETS):
        if preset.name not in {p.name for p in out} and cls in preset.classes and preset.detect(model):
            out.append(preset)
    return out


def _claim(model: nn.Module, preset: Preset, integration: str) -> ModelClaim:
    targets = preset.targets(model)
    names = _expand(model, targets)
    channels = {}
    if preset.channels is not None:
        try:
            channels = {n: int(c) for n, c in preset.channels(model, names).items()}
        except (AttributeError, IndexError, KeyError, TypeError):
            channels = {}  # an unusual variant: let the core probe
    return ModelClaim(integration=integration, preset=preset.name, targets=targets, channels=channels)


def claim_with_presets(model: nn.Module, integration: str) -> ModelClaim | None:
    """A :class:`ModelClaim` for ``model`` from the preset table, or ``None``: the first preset that
    recognises it, with every other one that does in ``alternatives`` (``inject(model, preset=NAME)``)."""
    found = find_presets(model)
    if not found:
        return None
    claim = _claim(model, found[0], integration)
    claim.alternatives = {p.name: _claim(model, p, integration) for p in found[1:]}
    return claim


def preset_table() -> list[tuple[str, str, str]]:
    """(preset, naming, classes) rows, for ``spt-adapter plugins`` and the docs."""
    return [(p.name, p.naming, ", ".join(p.classes)) for p in PRESETS]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _expand(model: nn.Module, targets: list[str]) -> list[str]:
    from ..core.targets import inspect_targets

    return inspect_targets(model, targets)


def _has(*names: str) -> Callable[[nn.Module], bool]:
    return lambda model: all(find_logical_module(model, n) is not None for n in names)


def _module(model: nn.Module, name: str) -> Any:
    """The module at ``name``, which the preset's detector has seen (typed ``Any``: presets read
    architecture-specific attributes such as ``out_channels`` or iterate containers)."""
    module = find_logical_module(model, name)
    if module is None:
        raise LayoutError(f"the preset expected a module {name!r} in {type(model).__name__}, which has none")
    return see_through(module)  # a target that already has units: the module it wraps


def _conv_out(model: nn.Module, name: str) -> int:
    return int(_module(model, name).out_channels)


def _children(model: nn.Module, name: str) -> list[str]:
    parent = find_logical_module(model, name)
    return [f"{name}.{k}" for k in parent._modules] if parent is not None else []


# -- token-sequence transformers: one unit per residual group, width embed_dim -------------------
def _groups_detect(model: nn.Module) -> bool:
    layers = find_logical_module(model, "layers")
    return (
        isinstance(layers, nn.ModuleList) and len(layers) > 0 and find_logical_module(model, "conv_first") is not None
    )


def _groups_channels(model: nn.Module, names: list[str]) -> dict[str, int]:
    width = _conv_out(model, "conv_first")
    return {n: width for n in names}


for _name, _classes in (("swinir", ("SwinIR",)), ("hat", ("HAT",)), ("dat", ("DAT",))):
    register_preset(Preset(_name, _classes, _groups_detect, lambda m: ["layers.*"], _groups_channels))


# -- RRDB (ESRGAN): three namings of the same network ----------------------------------------
def _spandrel_rrdb_detect(model: nn.Module) -> bool:
    sub = find_logical_module(model, "model.1.sub")
    return isinstance(sub, nn.Sequential) and any(type(m).__name__ == "RRDB" for m in sub)


def _spandrel_rrdb_targets(model: nn.Module) -> list[str]:
    sub = _module(model, "model.1.sub")
    return [f"model.1.sub.{k}" for k, m in sub._modules.items() if type(m).__name__ == "RRDB"]


register_preset(
    Preset(
        "rrdb",
        ("RRDBNet",),
        _spandrel_rrdb_detect,
        _spandrel_rrdb_targets,
        lambda m, names: {n: _conv_out(m, "model.0") for n in names},
        naming="spandrel model.1.sub.N",
    )
)
register_preset(
    Preset(
        "rrdb",
        ("RRDBNet",),
        lambda m: (
            _has("conv_first", "body", "conv_body")(m) and all(type(b).__name__ == "RRDB" for b in _module(m, "body"))
        ),
        lambda m: ["body.*"],
        lambda m, names: {n: _conv_out(m, "conv_first") for n in names},
        naming="BasicSR body.N",
    )
)
register_preset(
    Preset(
        "rrdb",
        ("RRDBNet", "RRDBNet_x2"),
        _has("conv_first", "RRDB_trunk", "trunk_conv"),
        lambda m: ["RRDB_trunk.*"],
        lambda m, names: {n: _conv_out(m, "conv_first") for n in names},
        naming="KAIR RRDB_trunk.N",
    )
)


# -- NAFNet --------------------------------------------------------------------------------------
def _nafnet_channels(model: nn.Module, names: list[str]) -> dict[str, int]:
    width = _conv_out(model, "intro")
    depth = len(_module(model, "encoders"))
    out = {}
    for n in names:
        if n.startswith("encoders."):
            out[n] = width * 2 ** int(n.split(".")[1])
        elif n == "middle_blks":
            out[n] = width * 2**depth
        elif n.startswith("decoders."):
            out[n] = width * 2 ** (depth - 1 - int(n.split(".")[1]))
    return out


register_preset(
    Preset(
        "nafnet",
        ("NAFNet", "NAFNetLocal"),
        _has("intro", "encoders", "middle_blks", "decoders", "ending"),
        lambda m: (
            (["encoders.*"] if len(_module(m, "encoders")) else [])
            + ["middle_blks"]
            + (["decoders.*"] if len(_module(m, "decoders")) else [])
        ),
        _nafnet_channels,
    )
)


# -- U-shaped nets with m_down/m_body/m_up stages (KAIR's SCUNet and DRUNet/UNetRes) ----------
_UNET_STAGES = ["m_down1", "m_down2", "m_down3", "m_body", "m_up3", "m_up2", "m_up1"]
register_preset(Preset("scunet", ("SCUNet",), _has(*_UNET_STAGES, "m_head", "m_tail"), lambda m: list(_UNET_STAGES)))
register_preset(
    Preset("drunet", ("DRUNet", "UNetRes"), _has(*_UNET_STAGES, "m_head", "m_tail"), lambda m: list(_UNET_STAGES))
)


# -- Restormer -----------------------------------------------------------------------------------
_RESTORMER_STAGES = [
    "encoder_level1",
    "encoder_level2",
    "encoder_level3",
    "latent",
    "decoder_level3",
    "decoder_level2",
    "decoder_level1",
    "refinement",
]
_RESTORMER_WIDTH = {
    "encoder_level1": 1,
    "encoder_level2": 2,
    "encoder_level3": 4,
    "latent": 8,
    "decoder_level3": 4,
    "decoder_level2": 2,
    "decoder_level1": 2,
    "refinement": 2,
}


register_preset(
    Preset(
        "restormer",
        ("Restormer",),
        _has(*_RESTORMER_STAGES, "patch_embed.proj", "output"),
        lambda m: list(_RESTORMER_STAGES),
        lambda m, names: {n: _conv_out(m, "patch_embed.proj") * _RESTORMER_WIDTH[n] for n in names},
    )
)


# -- DnCNN (a flat Sequential of convs and activations, KAIR's and spandrel's) -------------------
_DNCNN_LAYERS = (nn.Conv2d, nn.ReLU, nn.LeakyReLU, nn.BatchNorm2d, nn.InstanceNorm2d)


def _dncnn_convs(model: nn.Module) -> list[str]:
    seq = find_logical_module(model, "model")
    if not isinstance(seq, nn.Sequential):
        return []
    # see_through: a model that already carries units (a second adapter) is recognised the same way
    return [f"model.{k}" for k, m in seq._modules.items() if m is not None and isinstance(see_through(m), nn.Conv2d)]


def _dncnn_detect(model: nn.Module) -> bool:
    seq = find_logical_module(model, "model")
    return (
        isinstance(seq, nn.Sequential)
        and all(isinstance(see_through(m), _DNCNN_LAYERS) for m in seq)
        and len(_dncnn_convs(model)) >= 3
    )


def _dncnn_hidden(model: nn.Module) -> list[str]:
    return _dncnn_convs(model)[1:-1]


def _dncnn_light(model: nn.Module) -> list[str]:
    hidden = _dncnn_hidden(model)
    picks = sorted({len(hidden) // 4, len(hidden) // 2, len(hidden) - 1})
    return [hidden[i] for i in picks]


def _dncnn_channels(model: nn.Module, names: list[str]) -> dict[str, int]:
    return {n: _conv_out(model, n) for n in names}


#: LoRA (peft's layer, rank 1) on the hidden convs: at <= 3 % of a real DnCNN's parameters it beat the best SPT
#: unit on 3 of 5 tasks' validation sets and costs nothing at inference once merged (docs/results.md, result 17)
DNCNN_DEFAULT_UNIT = {"fusion": "lora", "hidden": 1}
register_preset(
    Preset(
        "dncnn",
        ("DnCNN", "FDnCNN"),
        _dncnn_detect,
        _dncnn_hidden,
        _dncnn_channels,
        naming="every hidden conv",
        default_unit=DNCNN_DEFAULT_UNIT,
    )
)
register_preset(
    Preset(
        "dncnn-light",
        ("DnCNN", "FDnCNN"),
        _dncnn_detect,
        _dncnn_light,
        _dncnn_channels,
        naming="three hidden convs",
        default_unit=DNCNN_DEFAULT_UNIT,
    )
)


def preset_default_unit(name: str | None) -> dict[str, Any] | None:
    """The unit ``spt-adapter train`` builds on preset ``name``'s targets when given no unit flag and no
    prior (``Preset.default_unit``), or ``None``."""
    for preset in list(PRESETS):
        if preset.name == name and preset.default_unit is not None:
            return dict(preset.default_unit)
    return None
