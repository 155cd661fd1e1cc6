"""spt-adapter: SAM prior tuning (SPT) units for frozen image-restoration backbones.

import spt_adapter
model = spt_adapter.inject(backbone, targets="layers.*.residual_group")
out = model(lq, prior=prior)
spt_adapter.save_adapter(model, "swinir_spt.safetensors")
model = spt_adapter.load_adapter(untouched_backbone, "swinir_spt.safetensors")
restored = spt_adapter.restore(model, image_hwc_uint8, tile=256)   # prior as the adapter records
spt_adapter.export(model, "swinir_spt.onnx")                      # one file: backbone + units (+ student)
"""

from typing import TYPE_CHECKING

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
from .version import __version__

if TYPE_CHECKING:
    from .core.config import SCHEMA_VERSION, SPTConfig
    from .core.layer import SPTLayer
    from .core.model import SPTModel, inject
    from .core.targets import inspect_targets
    from .core.unit import SPTUnit
    from .files.fingerprint import backbone_sha256
    from .files.format import load_adapter, read_adapter_config, read_adapter_header, save_adapter

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
    "inspect_targets",
    "load_adapter",
    "read_adapter_config",
    "read_adapter_header",
    "save_adapter",
]


#: the names that need PyTorch, and where they live: loaded on first use, so that `import spt_adapter`
#: (and so the torch-free runner, spt_adapter.deploy) imports no torch
_LAZY = {
    "SCHEMA_VERSION": "core.config",
    "SPTConfig": "core.config",
    "SPTLayer": "core.layer",
    "SPTModel": "core.model",
    "inject": "core.model",
    "inspect_targets": "core.targets",
    "SPTUnit": "core.unit",
    "backbone_sha256": "files.fingerprint",
    "load_adapter": "files.format",
    "read_adapter_config": "files.format",
    "read_adapter_header": "files.format",
    "save_adapter": "files.format",
}


def __getattr__(name: str):
    # everything that needs torch loads lazily so that `import spt_adapter` stays light and framework-free
    if name in _LAZY:
        import importlib

        importlib.import_module(".files", __name__)  # gives SPTModel its file methods (register_file_operations)
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if name == "load_backbone":
        from .backbones.load import load_backbone

        return load_backbone
    if name == "restore":
        from .training.restore import restore

        return restore
    if name == "export":
        from .training.export import export

        return export
    if name == "load_exported":
        from .training.exported import load_exported

        return load_exported
    if name in ("from_pretrained", "push_to_hub", "save_pretrained"):
        from .files import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'spt_adapter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
