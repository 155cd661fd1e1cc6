"""Plugin ``spandrel``: claims spandrel's architectures (and, last of all plugins, anything the
preset table recognises), and reads any checkpoint spandrel's loader reads."""

from __future__ import annotations

import importlib.util

from spt_adapter.backbones.load import install_extra_arches
from spt_adapter.backbones.presets import claim_with_presets
from spt_adapter.plugins.hookspecs import hookimpl

NAME = "spandrel"
_MODULES = ("spandrel.", "spandrel_extra_arches.")


def available() -> bool:
    return importlib.util.find_spec("spandrel") is not None


@hookimpl(trylast=True)
def spt_adapter_claim_model(model):
    module = type(model).__module__ or ""
    integration = NAME if module.startswith(_MODULES) else "presets"
    return claim_with_presets(model, integration)


@hookimpl(trylast=True)
def spt_adapter_read_checkpoint(path):
    """The fallback reader: spandrel's own (``.pth`` through its restricted unpickler,
    ``.safetensors``, TorchScript ``.pt``), canonicalised (``params_ema``/``params`` unwrapped)."""
    if not available():
        return None
    from spandrel import ModelLoader

    try:
        return ModelLoader(device="cpu").load_state_dict_from_file(path)
    except ValueError:
        return None  # an extension spandrel does not read


@hookimpl
def spt_adapter_register_framework():
    if not available():
        return None
    names = ["spandrel:ModelLoader"]
    if install_extra_arches():
        names.append("spandrel:spandrel_extra_arches")
    return names
