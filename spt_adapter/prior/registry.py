"""Mask providers by name, from every plugin's ``spt_adapter_mask_providers`` hook.

    from spt_adapter.prior import make_provider, provider_specs
    provider = make_provider("slic", n_segments=200)            # built-in, through the same hook
    provider = make_provider("sam2", checkpoint="sam2.1_hiera_tiny.pt")

The built-in ``sam``, ``sam2``, ``slic`` and ``felzenszwalb`` are offered by the plugin module
:mod:`spt_adapter.prior.providers`, found through the ``spt_adapter`` entry-point group like any
third-party plugin (and registered by hand when entry-point autoload is disabled, since the
package's own providers are not an optional integration). A plugin whose hook raises, or that
offers a name another plugin already offers, is recorded by name (:func:`provider_failures`,
``spt-adapter plugins``) and the other providers stay usable.
"""

from __future__ import annotations

import dataclasses
import weakref

from ..errors import PluginError, ProviderError, SPTError
from ..plugins.types import ProviderSpec

BUILTIN_PLUGIN = "prior"  # entry-point name of spt_adapter.prior.providers
_failures: dict[str, str] = {}
_origin: weakref.WeakKeyDictionary[object, ProviderSpec] = weakref.WeakKeyDictionary()


def _manager():
    from ..plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    if pm.get_plugin(BUILTIN_PLUGIN) is None and not pm.is_blocked(BUILTIN_PLUGIN):
        from . import providers

        if not pm.is_registered(providers):
            pm.register(providers, name=BUILTIN_PLUGIN)
    return pm


def provider_specs() -> dict[str, ProviderSpec]:
    """Every installed provider, name -> :class:`ProviderSpec` (with ``plugin`` filled in); the
    built-in plugin's first, then the others in registration order. Failures go to
    :func:`provider_failures`."""
    pm = _manager()
    impls = list(reversed(pm.hook.spt_adapter_mask_providers.get_hookimpls()))
    impls.sort(key=lambda impl: impl.plugin_name != BUILTIN_PLUGIN)
    specs: dict[str, ProviderSpec] = {}
    _failures.clear()
    for impl in impls:
        try:
            offered = impl.function() or []
            offered = list(offered.values()) if isinstance(offered, dict) else list(offered)
            for spec in offered:
                if not isinstance(spec, ProviderSpec):
                    raise TypeError(f"returned {type(spec).__name__}, not a ProviderSpec")
        except Exception as exc:  # a broken plugin must not hide the others' providers
            _failures[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
            continue
        for spec in offered:
            if spec.name in specs:
                _failures[impl.plugin_name] = (
                    f"offers provider {spec.name!r}, which plugin {specs[spec.name].plugin!r} already offers (ignored)"
                )
                continue
            specs[spec.name] = dataclasses.replace(spec, plugin=impl.plugin_name)
    return specs


def provider_failures() -> dict[str, str]:
    """plugin name -> why its ``spt_adapter_mask_providers`` hook gave nothing (last listing)."""
    return dict(_failures)


def provider_names() -> list[str]:
    return sorted(provider_specs())


def get_provider_spec(name: str) -> ProviderSpec:
    """The spec of provider ``name``; an unknown name lists the installed ones (and broken plugins)."""
    specs = provider_specs()
    if name in specs:
        return specs[name]
    from ..plugins.manager import plugin_report

    failed = {
        **{p: f"failed to load: {why}" for p, why in plugin_report().failed.items()},
        **{p: f"failed to list its providers: {why}" for p, why in _failures.items()},
    }
    broken = "".join(f"; plugin {p!r} {why}" for p, why in sorted(failed.items()))
    raise ProviderError(
        f"unknown mask provider {name!r}; installed: {', '.join(sorted(specs)) or 'none'}"
        f" (see `spt-adapter plugins`){broken}"
    )


def make_provider(name: str, checkpoint=None, model_type: str | None = None, device=None, **settings):
    """Build provider ``name`` (what ``--provider NAME`` builds). ``settings`` are checked against
    the provider's schema by name and type first (:class:`~spt_adapter.errors.ProviderSettingError`);
    ``checkpoint``/``model_type``/``device`` are passed to its factory. A factory that raises
    something other than an :class:`~spt_adapter.errors.SPTError` is reported naming its plugin."""
    spec = get_provider_spec(name)
    values = spec.validate(settings)
    if spec.needs_checkpoint and checkpoint is None:
        raise ProviderError(f"--provider {name} needs --provider-checkpoint PATH ({spec.description})")
    try:
        provider = spec.factory(values, checkpoint=checkpoint, model_type=model_type, device=device)
    except SPTError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin {spec.plugin!r} failed to build provider {name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        _origin[provider] = spec
    except TypeError:  # not weak-referenceable: it is then described by its repr
        pass
    return provider


def check_recorded_provider(identity: dict, what: str) -> str:
    """The name of the provider an adapter records (``identity``: its ``prior.provider``), checked
    to be installed and runnable without a checkpoint; else :class:`PriorError` saying what to pass
    (``--provider`` / ``--provider-checkpoint`` on the command line, ``provider=`` from Python). Classical
    providers record ``provider="classical"`` and their method."""
    from ..errors import PriorError

    name = identity.get("provider")
    if name == "classical":
        return identity.get("method", "slic")
    if not name:
        raise PriorError(f"{what} records no mask provider: pass one (--provider NAME, or provider=...)")
    specs = provider_specs()
    if name not in specs:
        raise PriorError(
            f"{what} was trained with priors of mask provider {name!r}, which is not installed (installed: "
            f"{', '.join(sorted(specs))}): install it, or pass --provider NAME (provider=...)"
        )
    if specs[name].needs_checkpoint:
        label = "SAM" if name == "sam" else name
        raise PriorError(
            f"{what} was trained with {label} priors ({identity.get('model_type', '?')}): pass "
            f"--provider-checkpoint PATH{'' if name == 'sam' else f' with --provider {name}'} "
            "(provider=... from Python), or another --provider"
        )
    return name


def describe_provider(provider) -> str:
    """``provider 'NAME' (plugin 'P')`` for providers built by :func:`make_provider`, else its repr."""
    try:
        spec = _origin.get(provider)
    except TypeError:
        spec = None
    if spec is not None:
        return f"provider {spec.name!r} (plugin {spec.plugin!r})"
    return f"provider {provider!r}"
