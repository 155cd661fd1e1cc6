"""The wrapper layer: the original module kept as ``base_layer``, the active unit applied to its output.

:class:`SPTLayer` is the one layer forward (the PEFT layer subclasses it and changes only which
adapters are active); :func:`apply_to_output` finds the feature map in whatever the target returns
(maps, token sequences, tuples); :func:`wrap`/:func:`unwrap` put a layer in and take it out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LayoutError, PriorError, TargetError
from ..plugins.types import LayoutSpec
from .keys import get_logical_module, logical_named_modules, see_through
from .layout import describe_call, find_spatial_size, map_to_tokens, tokens_to_map
from .unit import SPTUnit


# ---------------------------------------------------------------------------------------------
# the wrapping layer
# ---------------------------------------------------------------------------------------------
class PriorState:
    """State shared by an SPTModel and its layers: the current prior and the active adapter."""

    def __init__(self) -> None:
        self.prior: torch.Tensor | None = None
        self.active: str | None = None
        self.disabled = False

    def set_prior(self, prior: torch.Tensor | None) -> None:
        self.prior = prior

    @contextlib.contextmanager
    def using(self, prior: torch.Tensor | None) -> Iterator[None]:
        """Set ``prior`` for the block, then put back the one before (also after an error)."""
        previous = self.prior
        self.set_prior(prior)
        try:
            yield
        finally:
            self.set_prior(previous)


@contextlib.contextmanager
def prior_follows_padding(net: nn.Module, state: PriorState) -> Iterator[None]:
    """While ``net`` runs, pad the prior as ``net`` pads its input. A backbone that pads an input to
    its window or size multiple itself (``check_image_size``: spandrel's SwinIR, HAT, Swin2SR,
    SRFormer, NAFNet, SCUNet, ...) runs its layers on the padded grid; a prior of the unpadded image
    resized onto that grid would be stretched over the padding, every region off the pixels it
    describes (up to 3 8-bit levels on a SwinIR at 21x27). The prior is padded at the bottom and right
    by the same amount (edge values, as :func:`spt_adapter.restore` pads it), so ``model(x, prior=p)``
    puts it where ``restore``, ``eval`` and an export do."""
    original = getattr(net, "check_image_size", None)
    if not callable(original) or "check_image_size" in vars(net):
        yield
        return

    def check_image_size(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = original(x, *args, **kwargs)
        prior = state.prior
        if prior is None or not torch.is_tensor(y) or y.dim() != 4 or x.dim() != 4:
            return y
        (h, w), (hp, wp) = x.shape[-2:], y.shape[-2:]
        if (hp, wp) != (h, w) and hp >= h and wp >= w:
            ph = round((hp - h) * prior.shape[-2] / h)
            pw = round((wp - w) * prior.shape[-1] / w)
            state.set_prior(F.pad(prior, (0, pw, 0, ph), mode="replicate"))
        return y

    # an instance attribute shadows the method (object.__setattr__: nn.Module's would treat it as a module)
    object.__setattr__(net, "check_image_size", check_image_size)
    try:
        yield
    finally:
        object.__delattr__(net, "check_image_size")


class SPTLayer(nn.Module):
    """Wraps one target module: ``base_layer`` runs unchanged, then the active SPT unit corrects
    its output."""

    def __init__(self, base_layer: nn.Module, name: str, state: PriorState, layout: LayoutSpec | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.spt_units = nn.ModuleDict()
        self.spt_target_name = name
        self._spt_state = state
        self._spt_layout = layout

    #: how the message for a missing prior tells the user to pass one
    prior_hint = "call model(x, prior=p) or run inside `with model.use_prior(p):`"

    def active_unit_names(self) -> list[str]:
        """The adapters whose units run, in order (core: the one active adapter)."""
        state = self._spt_state
        if state.disabled or state.active is None or state.active not in self.spt_units:
            return []
        return [state.active]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The one layer forward: ``base_layer`` unchanged, then each active unit corrects the output.
        A unit that takes the call (a LoRA unit, :mod:`spt_adapter.core.lora`) runs ``base_layer`` itself
        and adds its update; at most one such unit may be active on a layer."""
        active = self.active_unit_names()
        if not active:
            return self.base_layer(*args, **kwargs)
        callers = [n for n in active if getattr(self.spt_units[n], "takes_call", False)]
        if len(callers) > 1:
            raise TargetError(
                f"SPT layer {self.spt_target_name!r}: LoRA adapters {callers} are active together; each one "
                "replaces the layer's call, so activate one of them"
            )
        out = self.spt_units[callers[0]](*args, **kwargs) if callers else self.base_layer(*args, **kwargs)
        prior = self._spt_state.prior
        for name in active:
            if name in callers:
                continue
            unit = self.spt_units[name]
            if prior is None and getattr(unit, "reads_prior", True):
                raise PriorError(f"SPT layer {self.spt_target_name!r} needs a prior: {self.prior_hint}")
            out = apply_to_output(self.spt_target_name, self._spt_layout, out, args, kwargs, _with_prior(unit, prior))
        return out

    def extra_repr(self) -> str:
        return f"target={self.spt_target_name!r}"


def _with_prior(unit: nn.Module, prior: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``unit`` as a function of the features alone (this layer's prior bound)."""
    return lambda feats: unit(feats, prior)


def apply_to_output(
    name: str, layout: LayoutSpec | None, out, args: tuple, kwargs: dict, fn: Callable[[torch.Tensor], torch.Tensor]
):
    """Apply ``fn`` (on a (B,C,H,W) map) to a target's output, whatever its layout."""
    if isinstance(out, (tuple, list)):
        index = layout.tuple_index if layout is not None else None
        if index is None:
            raise LayoutError(
                f"target {name!r} returns a {type(out).__name__} of {len(out)} elements "
                f"({describe_call(tuple(out), {})}); a plugin must say which element to adapt "
                "(hook spt_adapter_describe_layout, LayoutSpec.tuple_index), or target a submodule"
            )
        assert layout is not None  # index came from it
        items = list(out)
        items[index] = apply_to_output(
            name, LayoutSpec(kind=layout.kind, spatial_size=layout.spatial_size), items[index], args, kwargs, fn
        )
        return type(out)(items) if isinstance(out, tuple) else items
    if not torch.is_tensor(out):
        raise LayoutError(f"target {name!r} returns {type(out).__name__}, not a tensor; cannot adapt it")
    kind = (
        layout.kind
        if layout is not None and layout.kind
        else ("map" if out.dim() == 4 else "tokens" if out.dim() == 3 else None)
    )
    if kind == "map" and out.dim() == 4:
        return fn(out)
    if kind == "tokens" and out.dim() == 3:
        size: tuple[int, int] | None = None
        if layout is not None and layout.spatial_size is not None:
            h, w = layout.spatial_size(args, kwargs, out)
            size = (h, w)
        if size is None:
            size = find_spatial_size(args, kwargs, out.shape[1])
        if size is None:
            raise LayoutError(
                f"target {name!r} returns tokens of shape {tuple(out.shape)} but its spatial size is "
                f"unknown: no 2-int argument with product L={out.shape[1]} in the call "
                f"{describe_call(args, kwargs)}; a plugin can supply it (hook spt_adapter_describe_layout)"
            )
        return map_to_tokens(fn(tokens_to_map(out, size)))
    raise LayoutError(
        f"target {name!r} returns a tensor of shape {tuple(out.shape)}; SPT units adapt (B,C,H,W) maps "
        "and (B,L,C) token sequences"
    )


# ---------------------------------------------------------------------------------------------
# wrapping, unwrapping
# ---------------------------------------------------------------------------------------------
def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        parent_name, attr = name.rsplit(".", 1)
        return get_logical_module(root, parent_name), attr
    return root, name


def wrap(root: nn.Module, name: str, state: PriorState, layout: LayoutSpec | None) -> SPTLayer:
    """Replace module ``name`` by an :class:`SPTLayer` around it (or return the existing one)."""
    parent, attr = _parent_and_attr(root, name)
    if isinstance(parent, SPTLayer):
        parent = parent.base_layer
    current = parent._modules[attr]
    if isinstance(current, SPTLayer):
        return current
    if current is None:
        raise TargetError(f"{name!r} is an empty module slot (None): there is nothing to adapt")
    layer = SPTLayer(current, name, state, layout)
    setattr(parent, attr, layer)
    return layer


def unwrap(root: nn.Module, name: str) -> None:
    """Put the original module back at ``name``."""
    parent, attr = _parent_and_attr(root, name)
    if isinstance(parent, SPTLayer):
        parent = parent.base_layer
    current = parent._modules[attr]
    if isinstance(current, SPTLayer):
        setattr(parent, attr, current.base_layer)


def iter_layers(root: nn.Module) -> Iterator[tuple[str, SPTLayer]]:
    for name, module in logical_named_modules(root):
        if isinstance(module, SPTLayer):
            yield name, module


def make_unit(channels: int, config, like: nn.Module, name: str = "?") -> nn.Module:
    """A new unit on the device and dtype of the module it adapts (``name``: the target, for messages);
    ``fusion="lora"``: peft's LoRA layer around that module (:class:`~spt_adapter.core.lora.LoraUnit`)."""
    unit: nn.Module
    if config.fusion == "lora":
        from .lora import LoraUnit

        unit = LoraUnit(see_through(like), config, name)
    else:
        unit = SPTUnit(channels, config)
    ref: torch.Tensor | None = next(like.parameters(), None)
    if ref is None:
        ref = next(like.buffers(), None)
    if ref is not None:
        unit = unit.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    return unit
