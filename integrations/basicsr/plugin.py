"""Plugin ``basicsr``: claims BasicSR's architectures, reads BasicSR checkpoints (``params`` /
``params_ema``), registers ``SPTSRModel`` and ``SPTPairedImageDataset`` when BasicSR is importable."""

from __future__ import annotations

import importlib.util
import sys

from spt_adapter.backbones.presets import claim_with_presets
from spt_adapter.plugins.hookspecs import hookimpl

NAME = "basicsr"


def basicsr_importable() -> bool:
    """True for the real BasicSR package (basicsr-fixed / a BasicSR checkout), which has registries;
    Restormer's vendored fork is also called ``basicsr`` but has none."""
    try:
        return (
            importlib.util.find_spec("basicsr") is not None
            and importlib.util.find_spec("basicsr.utils.registry") is not None
        )
    except (ImportError, ValueError):
        return False


@hookimpl
def spt_adapter_claim_model(model):
    module = type(model).__module__ or ""
    if not module.startswith("basicsr.archs."):
        return None
    return claim_with_presets(model, NAME)


@hookimpl
def spt_adapter_read_checkpoint(path):
    """BasicSR's ``save_network`` format: ``{"params": sd}`` or ``{"params": sd, "params_ema": sd}``
    (``params_ema`` preferred, as BasicSR's EMA network is the one it validates and releases)."""
    from spt_adapter.integrations._checkpoint import CheckpointError, load_raw, unwrap

    try:
        raw = load_raw(path)
    except CheckpointError:
        return None
    if isinstance(raw, dict) and ("params" in raw or "params_ema" in raw):
        return unwrap(raw, "params_ema" if "params_ema" in raw else "params", path)
    return None


@hookimpl
def spt_adapter_register_framework():
    if not basicsr_importable():
        return None
    from . import register

    return register()


# a process that already imported BasicSR gets the classes as soon as the plugin loads
if "basicsr.models" in sys.modules and basicsr_importable():  # pragma: no cover - depends on import order
    try:
        from . import register as _register

        _register()
    except Exception:  # registration is retried by the hook, which reports errors by plugin name
        pass
