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


class PluginError(SPTError, RuntimeError):
    """A plugin failed to load or misbehaved; the message names the plugin."""
