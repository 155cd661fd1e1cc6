"""The plugin manager: built-in shims and third-party plugins, all through entry points."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from ..errors import PluginError
from . import hookspecs

ENTRY_POINT_GROUP = "spt_adapter"
DISABLE_ENV = "SPT_ADAPTER_DISABLE_PLUGINS"


@dataclass
class PluginReport:
    """What the last entry-point load did: loaded plugin names and failures (name -> reason)."""

    loaded: dict[str, str] = field(default_factory=dict)  # name -> "module (distribution version)"
    failed: dict[str, str] = field(default_factory=dict)
    disabled: bool = False
    registered: dict[str, list[str]] = field(default_factory=dict)  # filled by register_frameworks()
    register_failed: dict[str, str] = field(default_factory=dict)


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_report = PluginReport()


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _load_entry_points(pm: pluggy.PluginManager, report: PluginReport) -> None:
    """Load every entry point of the group; a plugin that fails is recorded by name, not fatal."""
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        origin = f"{ep.value} ({dist.name} {dist.version})" if dist is not None else ep.value
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            report.failed[ep.name] = f"{origin}: {type(exc).__name__}: {exc}"
            continue
        report.loaded[ep.name] = origin
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"a plugin implements an unknown spt_adapter hook: {exc}") from None


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use (unless disabled)."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            report = PluginReport(disabled=_autoload_disabled())
            if not report.disabled:
                _load_entry_points(pm, report)
            _report.__dict__.update(report.__dict__)
            _pm = pm
        return _pm


def plugin_report() -> PluginReport:
    """Loaded and failed plugins of the current manager."""
    get_plugin_manager()
    return _report


def reset_plugin_manager() -> None:
    """Forget the current manager; the next :func:`get_plugin_manager` reloads entry points."""
    global _pm
    with _lock:
        _pm = None
        _report.__dict__.update(PluginReport().__dict__)


def call_hook(hook_name: str, /, **kwargs):
    """Call hook ``hook_name``; an exception inside a plugin is re-raised naming that plugin."""
    pm = get_plugin_manager()
    hook = getattr(pm.hook, hook_name)
    try:
        return hook(**kwargs)
    except Exception as exc:
        culprit = _culprit(pm, hook_name, exc)
        raise PluginError(f"plugin {culprit!r} failed in hook {hook_name}: {type(exc).__name__}: {exc}") from exc


def register_frameworks(raise_errors: bool = False) -> dict[str, list[str]]:
    """Call every plugin's ``spt_adapter_register_framework`` hook, one plugin at a time.

    Returns ``{plugin name: [registered names]}`` for the plugins whose framework is importable. A
    plugin that raises is recorded in ``plugin_report().register_failed`` by name (or raises
    :class:`PluginError` naming it with ``raise_errors=True``); the others still register.
    """
    pm = get_plugin_manager()
    done: dict[str, list[str]] = {}
    for impl in reversed(pm.hook.spt_adapter_register_framework.get_hookimpls()):
        try:
            result: Any = impl.function()  # the names it registered (hookspecs: a list of str)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            _report.register_failed[impl.plugin_name] = message
            if raise_errors:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in hook spt_adapter_register_framework: {message}"
                ) from exc
            continue
        if result:
            done[impl.plugin_name] = list(result)
    _report.registered.update(done)
    return done


def _culprit(pm: pluggy.PluginManager, hook_name: str, exc: BaseException) -> str:
    """Name the plugin whose hook implementation raised ``exc`` (from the traceback)."""
    impls = {impl.function.__code__: impl.plugin_name for impl in getattr(pm.hook, hook_name).get_hookimpls()}
    tb = exc.__traceback__
    culprit = "unknown"
    while tb is not None:
        name = impls.get(tb.tb_frame.f_code)
        if name is not None:
            culprit = name
        tb = tb.tb_next
    return culprit
