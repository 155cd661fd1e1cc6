"""Plugin ``restormer``: claims Restormer (Restormer's fork and spandrel-extra-arches), registers
``SPTImageCleanModel`` with a Restormer checkout's model scan when one is importable."""

from __future__ import annotations

import importlib.util

from spt_adapter.backbones.presets import claim_with_presets
from spt_adapter.plugins.hookspecs import hookimpl

NAME = "restormer"


def in_restormer_checkout() -> bool:
    """The importable ``basicsr`` is Restormer's fork (it has ``models/image_restoration_model.py``
    with ``ImageCleanModel`` and no registries)."""
    try:
        spec = importlib.util.find_spec("basicsr.models.image_restoration_model")
    except (ImportError, ValueError):
        return False
    if spec is None or spec.origin is None:
        return False
    with open(spec.origin, encoding="utf-8") as fh:
        return "class ImageCleanModel" in fh.read()


@hookimpl
def spt_adapter_claim_model(model):
    module = type(model).__module__ or ""
    if type(model).__name__ == "Restormer" or module.startswith("basicsr.models.archs."):
        return claim_with_presets(model, NAME)
    return None


@hookimpl
def spt_adapter_register_framework():
    if not in_restormer_checkout():
        return None
    from .model import register

    return register()
