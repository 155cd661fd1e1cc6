"""The LoRA unit: peft's own LoRA layer as an adapter kind (``SPTConfig(fusion="lora")``, issue 28 item 4).

On the real networks measured (docs/results.md, result 16) LoRA on every hidden conv was at least as good as
the best SPT unit, and a merged LoRA costs nothing at inference. This module lets a user get it through the
package's own tools (``inject``, delta files, ``restore``, ``eval``, ``export``, the PEFT glue): each target, a
``Conv2d`` or ``Linear``, gets a ``peft.tuners.lora`` layer built around it, so the update is peft's
(``W x + (alpha / r) B A x``, ``B`` zero at start: an exact identity), and so are the weights it merges on
export (``get_delta_weight`` / ``merge``). Nothing of LoRA's arithmetic is written here.

The wrapping :class:`~spt_adapter.core.layer.SPTLayer` owns the target (its ``base_layer``: state dict,
``.to()``, frozen flags); the peft layer holds the same module as a plain attribute, not as a submodule, so
the unit's parameters -- what trains and what a delta file holds -- are ``lora_A`` and ``lora_B`` alone,
never a copy of the backbone's weights. The unit takes the target's call (:attr:`LoraUnit.takes_call`): the
peft layer runs the target and adds its update.

peft is an optional dependency (``pip install 'spt-adapter[peft]'``): it is imported when a LoRA unit is
built, never by ``import spt_adapter``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn as nn

from ..errors import ConfigError, TargetError
from .config import SPTConfig

#: the module types a LoRA unit adapts (peft's LoRA layers for them merge exactly into the weights)
LORA_TARGET_TYPES = (nn.Conv2d, nn.Linear)
#: the name of the one adapter inside each peft layer (the SPT adapter's own name lives in ``spt_units``)
PEFT_ADAPTER = "default"
#: the unit's attribute holding the peft layer (the delta file's keys: ``<target>.spt_unit.lora.lora_A...``)
LORA_ATTR = "lora"


def check_lora_target(name: str, module: nn.Module) -> None:
    """Refuse, in one line naming the target and its type, a module a LoRA unit cannot adapt exactly."""
    if not isinstance(module, LORA_TARGET_TYPES):
        raise TargetError(
            f"fusion='lora' adapts Conv2d and Linear layers; target {name!r} is a {type(module).__name__}: "
            "pick its convolutions or linear layers as targets (e.g. 'body.**' patterns ending at a conv)"
        )
    if isinstance(module, nn.Conv2d):
        odd = {
            "groups": (module.groups, 1),
            "dilation": (tuple(module.dilation), (1, 1)),
            "padding_mode": (module.padding_mode, "zeros"),
        }
        bad = [f"{k}={v!r}" for k, (v, ok) in odd.items() if v != ok]
        if bad or isinstance(module.padding, str):
            what = ", ".join(bad) if bad else f"padding={module.padding!r}"
            raise TargetError(
                f"fusion='lora' cannot adapt target {name!r} (Conv2d with {what}): peft's LoRA conv would not "
                "match it exactly; pick plain convolutions (groups 1, dilation 1, zero padding given as numbers)"
            )


def require_peft() -> None:
    """:class:`ConfigError` when peft cannot be imported (checked before any module is replaced)."""
    try:
        import peft.tuners.lora  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"fusion='lora' builds peft's LoRA layers, and peft is not importable ({exc}): "
            "pip install 'spt-adapter[peft]'"
        ) from None


def lora_parameter_shapes(weight_shape: tuple[int, ...] | list[int], rank: int) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of a LoRA unit of rank ``rank`` on a target whose ``weight``
    has ``weight_shape`` (4-D: a Conv2d; 2-D: a Linear), without building it."""
    shape = tuple(int(d) for d in weight_shape)
    a, b = f"{LORA_ATTR}.lora_A.{PEFT_ADAPTER}.weight", f"{LORA_ATTR}.lora_B.{PEFT_ADAPTER}.weight"
    if len(shape) == 4:
        out, inp, kh, kw = shape
        return {a: (rank, inp, kh, kw), b: (out, rank, 1, 1)}
    if len(shape) == 2:
        out, inp = shape
        return {a: (rank, inp), b: (out, rank)}
    raise ConfigError(f"a LoRA target has a 4-D (Conv2d) or 2-D (Linear) weight, not shape {list(shape)}")


def lora_alpha(config: SPTConfig) -> float:
    """The alpha a LoRA unit of ``config`` uses: the recorded one, else the rank (scale 1)."""
    return float(config.lora_alpha) if config.lora_alpha is not None else float(config.hidden)


class LoraUnit(nn.Module):
    """peft's LoRA layer around one target, as an SPT unit: ``forward`` takes the target's call and
    returns the target's output plus the low-rank update (peft computes both)."""

    #: the unit replaces the target's call (SPTLayer runs it instead of ``base_layer``)
    takes_call = True
    #: LoRA reads no prior
    reads_prior = False

    def __init__(self, base: nn.Module, config: SPTConfig, name: str = "?") -> None:
        super().__init__()
        check_lora_target(name, base)
        require_peft()
        from peft import LoraConfig
        from peft.tuners.lora import layer as lora_layers

        alpha = lora_alpha(config)
        # peft annotates alpha as an int and takes any positive number (its scale is alpha / r)
        sizes: dict[str, Any] = {"r": config.hidden, "lora_alpha": alpha}
        settings = LoraConfig(lora_dropout=0.0, bias="none", **sizes)
        kind = lora_layers.Conv2d if isinstance(base, nn.Conv2d) else lora_layers.Linear
        layer = kind(base, PEFT_ADAPTER, config=settings, **sizes)
        # the SPTLayer owns the target: here it is a plain attribute (peft reads it as `base_layer`), so
        # parameters(), state_dict() and the delta file hold lora_A / lora_B only
        del layer._modules["base_layer"]
        object.__setattr__(layer, "base_layer", base)
        self.lora = layer
        self.channels = int(cast(torch.Tensor, base.weight).shape[0])  # the target's output width (fingerprint)
        self.rank = config.hidden
        self.alpha = alpha

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.lora(*args, **kwargs)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """``alpha / r * B A`` in the target's weight shape (peft's ``get_delta_weight``)."""
        return self.lora.get_delta_weight(PEFT_ADAPTER)

    @torch.no_grad()
    def merge_into_target(self) -> None:
        """Add the update to the target's weights in place (peft's ``merge``); the unit then adds nothing
        more (peft runs only the target while merged). For copies that are exported, never the user's model."""
        self.lora.merge(adapter_names=[PEFT_ADAPTER])

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, no prior"
