"""Typed errors. Every error a user can cause derives from :class:`SPTError` and names its cause."""

from __future__ import annotations


class SPTError(Exception):
    """Base class of every error raised on purpose by spt-adapter."""


class ConfigError(SPTError, ValueError):
    """An SPTConfig (or its JSON) is invalid."""


class TargetError(SPTError, ValueError):
    """A target/exclude pattern is invalid, matched nothing, or the match cannot be adapted."""


class LayoutError(SPTError, ValueError):
    """A target's output cannot be read as a feature map or token sequence."""


class PriorError(SPTError, ValueError):
    """The prior tensor is missing or does not fit the input."""


class AdapterFileError(SPTError, ValueError):
    """An adapter file is missing, foreign, corrupt, or written by an unknown schema."""


class FingerprintMismatchError(AdapterFileError):
    """An adapter was made for another backbone."""


class BackboneHashMismatchError(FingerprintMismatchError):
    """The backbone has the adapter's architecture but not the weights it was trained on.

    ``override`` says how to load it anyway; the API names ``check_backbone_hash=False`` and the
    command line swaps in its own flag (:meth:`with_override`)."""

    def __init__(self, detail: str, override: str = "pass check_backbone_hash=False to load it anyway") -> None:
        self.detail, self.override = detail, override
        super().__init__(f"{detail}; {override}")

    def with_override(self, override: str) -> BackboneHashMismatchError:
        return type(self)(self.detail, override)


class PluginError(SPTError, RuntimeError):
    """A plugin failed to load or misbehaved; the message names the plugin."""


class BackboneError(SPTError, ValueError):
    """A checkpoint cannot be loaded as a backbone, or does not fit the backbone it is loaded onto."""


class CheckpointError(SPTError, ValueError):
    """A checkpoint file cannot be read as weights (foreign format, pickle with code, truncated)."""


class ImageError(SPTError, ValueError):
    """An image cannot be read or converted to the layout the backbone needs."""


class DataError(SPTError, ValueError):
    """A dataset option or file is invalid."""


class SamUnavailableError(SPTError, ImportError):
    """segment-anything (or torchvision) is not installed."""


class SamCheckpointError(SPTError, ValueError):
    """A SAM checkpoint is missing, unreadable, or does not fit the model type."""


class ProviderError(PriorError):
    """A mask provider is unknown, failed to build, or returned masks that do not fit the image."""


class ProviderSettingError(ProviderError, ConfigError):
    """A mask-provider setting is unknown, of the wrong type, or out of range (names the setting)."""


class ProviderRunError(ProviderError):
    """A mask provider raised while segmenting one image (the message names the provider and its plugin)."""


class CorruptEntry(SPTError):
    """A prior-cache entry is truncated or fails its checksum (internal: the cache recomputes it)."""


class RestoreError(SPTError, ValueError):
    """Restoring user images: a tile that cannot work, an adapter for another channel count, an output
    that would overwrite an input."""


class ExportError(SPTError, ValueError):
    """Exporting a model to ONNX / TorchScript: a part that cannot be exported (named), a missing
    exporter, an exported file that does not reproduce the PyTorch model. Nothing is written."""
