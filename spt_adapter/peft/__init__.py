"""SPT as a PEFT method (extra ``peft``): ``peft.get_peft_model(model, SPTPeftConfig(...))``.

    import peft, spt_adapter.peft as spt_peft
    pm = peft.get_peft_model(backbone, spt_peft.SPTPeftConfig(target_modules=r"layers\\.\\d+\\.residual_group"))
    out = pm(lq, spt_prior=prior)                  # or: with pm.use_prior(prior): pm(lq)
    # a distilled adapter (SPTConfig.student) makes its own prior: pm(lq), no spt_prior
    pm.save_pretrained("swinir_spt_peft")           # adapter_config.json + adapter_model.safetensors
    pm = peft.PeftModel.from_pretrained(untouched_backbone, "swinir_spt_peft")
    with pm.disable_adapter(): base = pm(lq)        # the backbone's exact output

Importing this module registers SPT with PEFT, once, here and nowhere else. PEFT's
``PeftType`` is a closed enum, so registration adds the member ``SPT`` to it and fills PEFT's
four mapping tables (through ``peft.utils.register_peft_method`` where it exists); it is guarded by
the installed PEFT version (:data:`PEFT_SUPPORTED`, ``peft>=0.21,<0.22``) and fails with a clear
message outside it.

The layers reuse the core: each target is wrapped by :class:`SPTPeftLayer`, a core
:class:`~spt_adapter.core.layer.SPTLayer` (``base_layer`` + ``spt_units``) that is also a PEFT
``BaseTunerLayer``; unit widths come from the core probe pass and are recorded in the config
(``unit_channels``), feature layouts (maps, SwinIR-style tokens) from the core's
:func:`~spt_adapter.core.layer.apply_to_output` and the plugins' layout hook.

A distilled adapter (``student=``, a :class:`~spt_adapter.core.student.PriorStudent`) keeps its
student on the tuner (``SPTPeftModel.spt_students[<adapter>]``, a module of the PeftModel, not of
the backbone): the forward pre-hook runs it on the call's first tensor and feeds its prior to the
units, exactly as :class:`~spt_adapter.SPTModel` does.

File layouts: PEFT keys ``base_model.model.<target>.spt_units.<param>`` (and, for a distilled
adapter, ``base_model.spt_students.<param>``) in ``adapter_model.safetensors``; spt-adapter keys
``<target>.spt_unit.<param>`` (and ``spt_student.<param>``) in a delta file.
:func:`spt_to_peft` and :func:`peft_to_spt` convert between the two; :func:`load_peft_adapter`
loads a PEFT folder as an :class:`~spt_adapter.SPTModel`.

Laid out as peft lays out its own tuners: ``config.py`` (the version guard, ``PeftType.SPT``,
:class:`SPTPeftConfig`), ``layer.py`` (:class:`SPTPeftLayer`), ``model.py`` (the tuner
:class:`SPTPeftModel` and the registration) and ``convert.py`` (PEFT folders <-> delta files).
"""

from __future__ import annotations

# config first: importing it checks the installed peft version before any PEFT class is imported
from .config import PEFT_SUPPORTED, SPTPeftConfig, check_peft_version  # isort: skip
from .config import _add_peft_type_member as _add_peft_type_member  # the tests check it is idempotent
from .convert import core_key_to_peft, load_peft_adapter, peft_key_to_core, peft_to_spt, read_peft_folder, spt_to_peft
from .layer import SPTPeftLayer
from .model import SPTPeftModel
from .model import _register as _register  # once, at import (and idempotent)

_register()

__all__ = [
    "PEFT_SUPPORTED",
    "SPTPeftConfig",
    "SPTPeftLayer",
    "SPTPeftModel",
    "check_peft_version",
    "core_key_to_peft",
    "load_peft_adapter",
    "peft_key_to_core",
    "peft_to_spt",
    "read_peft_folder",
    "spt_to_peft",
]
