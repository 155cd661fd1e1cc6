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

from . import _moved
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

_moved.install()  # the old import paths of moved modules keep working for one release

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


#: the names that need PyTorch: loaded on first use (:func:`_torch_api`), so that `import spt_adapter`
#: (and so the torch-free runner, spt_adapter.deploy) imports no torch
_LAZY = (
    "SCHEMA_VERSION",
    "SPTConfig",
    "SPTLayer",
    "SPTModel",
    "inject",
    "inspect_targets",
    "SPTUnit",
    "backbone_sha256",
    "load_adapter",
    "read_adapter_config",
    "read_adapter_header",
    "save_adapter",
)


def _torch_api() -> dict:
    from . import files  # noqa: F401  (gives SPTModel its file methods: core.model.register_file_operations)
    from .core.config import SCHEMA_VERSION, SPTConfig
    from .core.layer import SPTLayer
    from .core.model import SPTModel, inject
    from .core.targets import inspect_targets
    from .core.unit import SPTUnit
    from .files.fingerprint import backbone_sha256
    from .files.format import load_adapter, read_adapter_config, read_adapter_header, save_adapter

    api = {
        "SCHEMA_VERSION": SCHEMA_VERSION,
        "SPTConfig": SPTConfig,
        "SPTLayer": SPTLayer,
        "SPTModel": SPTModel,
        "inject": inject,
        "inspect_targets": inspect_targets,
        "SPTUnit": SPTUnit,
        "backbone_sha256": backbone_sha256,
        "load_adapter": load_adapter,
        "read_adapter_config": read_adapter_config,
        "read_adapter_header": read_adapter_header,
        "save_adapter": save_adapter,
    }
    assert set(api) == set(_LAZY)
    return api


def __getattr__(name: str):
    # everything that needs torch loads lazily so that `import spt_adapter` stays light and framework-free
    if name in _LAZY:
        api = _torch_api()
        globals().update(api)
        return api[name]
    if name == "load_backbone":
        from .backbones.load import load_backbone

        return load_backbone
    if name == "restore":
        from .inference.restore import restore

        return restore
    if name == "export":
        from .inference.export import export

        return export
    if name == "load_exported":
        from .inference.exported import load_exported

        return load_exported
    if name in ("from_pretrained", "push_to_hub", "save_pretrained"):
        from .files import hub

        return getattr(hub, name)
    raise AttributeError(f"module 'spt_adapter' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
