"""SPT's PEFT layer: a core SPTLayer that PEFT manages as a ``BaseTunerLayer``."""

from __future__ import annotations

import torch.nn as nn
from peft.tuners.tuners_utils import BaseTunerLayer

from ..core.config import SPTConfig
from ..core.layer import PriorState, SPTLayer, make_unit
from ..errors import SPTError


# ---------------------------------------------------------------------------------------------
# layer
# ---------------------------------------------------------------------------------------------
class SPTPeftLayer(SPTLayer, BaseTunerLayer):
    """A core SPT layer that PEFT manages: ``base_layer`` runs unchanged, then each active
    adapter's unit corrects the output (in order)."""

    adapter_layer_names = ("spt_units",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, name: str, state: PriorState, layout, adapter_name: str) -> None:
        SPTLayer.__init__(self, base_layer, name, state, layout)
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = adapter_name

    def update_layer(self, adapter_name: str, channels: int, config: SPTConfig) -> None:
        self.spt_units[adapter_name] = make_unit(channels, config, self.base_layer)
        self.set_adapter(self.active_adapters)

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise SPTError(
            "SPT units are non-linear and read a prior at run time: they cannot be merged into the "
            "backbone's weights (use unload() to get the backbone back)"
        )

    def unmerge(self) -> None:
        return None

    prior_hint = "call peft_model(x, spt_prior=p) or run inside `with peft_model.use_prior(p):`"

    def active_unit_names(self) -> list[str]:
        """PEFT's active adapters (several may be active; they run in order)."""
        if self.disable_adapters or self._spt_state.disabled:
            return []
        return [a for a in self.active_adapters if a in self.spt_units]

    def __repr__(self) -> str:
        return "spt." + super().__repr__()
