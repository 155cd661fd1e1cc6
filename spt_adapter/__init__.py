"""spt-adapter: SAM prior tuning (SPT) units for frozen image-restoration backbones.

    import spt_adapter
    model = spt_adapter.inject(backbone, targets="layers.*.residual_group")
    out = model(lq, prior=prior)
    spt_adapter.save_adapter(model, "swinir_spt.safetensors")
    model = spt_adapter.load_adapter(untouched_backbone, "swinir_spt.safetensors")
"""

from .config import SCHEMA_VERSION, SPTConfig
from .delta import backbone_sha256, load_adapter, read_adapter_config, read_adapter_header, save_adapter
from .errors import (
    AdapterFileError,
    ConfigError,
    FingerprintMismatchError,
    LayoutError,
    PluginError,
    PriorError,
    SPTError,
    TargetError,
)
from .inject import SPTLayer, inspect_targets, match_targets
from .model import SPTModel, inject
from .unit import SPTUnit
from .version import __version__

inspect = inspect_targets  # the name used in DESIGN.md

__all__ = [
    "SCHEMA_VERSION",
    "AdapterFileError",
    "ConfigError",
    "FingerprintMismatchError",
    "LayoutError",
    "PluginError",
    "PriorError",
    "SPTConfig",
    "SPTError",
    "SPTLayer",
    "SPTModel",
    "SPTUnit",
    "TargetError",
    "__version__",
    "backbone_sha256",
    "inject",
    "inspect",
    "inspect_targets",
    "load_adapter",
    "match_targets",
    "read_adapter_config",
    "read_adapter_header",
    "save_adapter",
]


def __getattr__(name: str):
    # optional parts load lazily so that `import spt_adapter` stays light and framework-free
    if name == "load_backbone":
        from .backbones import load_backbone

        return load_backbone
    if name in ("from_pretrained", "push_to_hub", "save_pretrained"):
        from . import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'spt_adapter' has no attribute {name!r}")
