"""Plugin ``kair``: claims KAIR's architectures (``models.network_*`` classes of a KAIR checkout) and
reads KAIR checkpoints (bare state dicts; ``params`` / ``params_ema`` for SwinIR releases)."""

from __future__ import annotations

import importlib.util

from spt_adapter.backbones.presets import claim_with_presets
from spt_adapter.plugins.hookspecs import hookimpl

NAME = "kair"


def in_kair_checkout() -> bool:
    """A KAIR checkout is importable: top-level ``models.select_network`` with ``define_G``."""
    try:
        spec = importlib.util.find_spec("models.select_network")
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None and "define_G" in open(spec.origin, encoding="utf-8").read()


@hookimpl
def spt_adapter_claim_model(model):
    module = type(model).__module__ or ""
    if not module.startswith("models.network_"):
        return None
    return claim_with_presets(model, NAME)


@hookimpl
def spt_adapter_read_checkpoint(path):
    """KAIR's ``save_network`` writes a bare state dict; released SwinIR files nest it under
    ``params`` / ``params_ema``."""
    from spt_adapter.integrations._checkpoint import CheckpointError, is_state_dict, load_raw, unwrap

    try:
        raw = load_raw(path)
    except CheckpointError:
        return None
    if is_state_dict(raw):
        return unwrap(raw, None, path)
    if isinstance(raw, dict) and ("params" in raw or "params_ema" in raw):
        return unwrap(raw, "params_ema" if "params_ema" in raw else "params", path)
    return None


@hookimpl
def spt_adapter_register_framework():
    if not in_kair_checkout():
        return None
    return ["kair:define_Model('plain')+spt -> SPTModelPlain (via python -m spt_adapter.integrations.kair.train)"]
