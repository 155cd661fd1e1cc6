"""Data types that hooks return: what a plugin says about a backbone, a target's layout, or a mask provider."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelClaim:
    """A plugin's answer to "I know this backbone".

    integration: name of the integration (``"spandrel"``, ``"basicsr"``, ...).
    preset: name of the architecture preset (``"swinir"``, ``"rrdb"``, ...).
    targets: default target patterns for the backbone.
    channels: optional known output width per matched module name (skips the probe pass).
    example_input: optional callable returning a small input for the probe forward pass.
    alternatives: other presets that recognise the same backbone, by name, each as its own claim
        (``inject(model, preset=NAME)`` picks one; the claim itself is the default preset).
    """

    integration: str
    preset: str
    targets: list[str]
    channels: dict[str, int] = field(default_factory=dict)
    example_input: Callable[[], Any] | None = None
    alternatives: dict[str, ModelClaim] = field(default_factory=dict)

    @property
    def presets(self) -> list[str]:
        """The names of every preset this claim offers: its own first, then the alternatives."""
        return [self.preset] + [n for n in self.alternatives if n != self.preset]

    def pick(self, preset: str | None) -> ModelClaim | None:
        """The claim of preset ``preset`` (None: this one, the default), or None when it offers none of that name."""
        if preset is None or preset == self.preset:
            return self
        return self.alternatives.get(preset)


@dataclass
class LayoutSpec:
    """How to read one target's output.

    kind: ``"map"`` for (B,C,H,W) or ``"tokens"`` for (B,L,C).
    tuple_index: for targets returning a tuple/list, which element holds the features.
    spatial_size: for tokens, a callable ``(args, kwargs, features) -> (H, W)``.
    """

    kind: str | None = None
    tuple_index: int | None = None
    spatial_size: Callable[[tuple, dict, Any], tuple[int, int]] | None = None


@dataclass(frozen=True)
class Setting:
    """One mask-provider setting: its type, default and the values it accepts.

    type: ``int``, ``float``, ``bool`` or ``str``. Text (from ``--provider-set name=value``) is converted;
    Python values must already be of the type (an ``int`` is accepted for a ``float``). Floats
    must be finite.
    minimum / maximum: inclusive bounds; ``above``: an exclusive lower bound.
    choices: the allowed values. ``optional``: ``None`` (text ``none``) is allowed.
    """

    type: type
    default: Any = None
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    choices: tuple | None = None
    optional: bool = False

    def rule(self) -> str:
        """The accepted values, in words (for error messages and ``spt-adapter plugins``)."""
        what = {int: "an integer", float: "a number", bool: "true or false", str: "text"}.get(
            self.type, self.type.__name__
        )
        if self.choices is not None:
            what = "one of " + ", ".join(map(str, self.choices))
        parts = [what]
        if self.above is not None:
            parts.append(f"> {self.above:g}")
        if self.minimum is not None and self.maximum is not None:
            parts.append(f"from {self.minimum:g} to {self.maximum:g}")
        elif self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        elif self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return " ".join(parts) + (" (or none)" if self.optional else "")

    def parse(self, provider: str, name: str, value: Any) -> Any:
        """``value`` (text or a Python value) -> the typed value; else :class:`ProviderSettingError`."""
        import math

        from ..errors import ProviderSettingError

        def bad() -> ProviderSettingError:
            return ProviderSettingError(
                f"provider {provider!r}: setting {name}={value!r} is invalid: expected {self.rule()}"
            )

        if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
            if self.optional:
                return None
            raise bad()
        out: Any  # the setting's value as its type says: bool, int, float, str or any other declared type
        if isinstance(value, str):
            text = value.strip()
            try:
                if self.type is bool:
                    low = text.lower()
                    if low not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(text)
                    out = low in ("true", "1", "yes")
                elif self.type in (int, float, str):
                    out = self.type(text)
                else:
                    raise ValueError(text)
            except ValueError:
                raise bad() from None
        else:
            is_bool = isinstance(value, bool) or type(value).__name__ == "bool_"
            if self.type is bool:
                if not is_bool:
                    raise bad()
                out = bool(value)
            elif self.type is int:
                if is_bool or not hasattr(value, "__index__"):
                    raise bad()
                out = int(value)
            elif self.type is float:
                if is_bool or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
                    raise bad()
                out = float(value)
            elif not isinstance(value, self.type):
                raise bad()
            else:
                out = value
        if isinstance(out, float) and not math.isfinite(out):
            raise bad()
        if self.choices is not None and out not in self.choices:
            raise bad()
        if self.type in (int, float):
            if (
                (self.above is not None and not out > self.above)
                or (self.minimum is not None and out < self.minimum)
                or (self.maximum is not None and out > self.maximum)
            ):
                raise bad()
        return out


def validate_settings(provider: str, schema: Mapping[str, Setting], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``values`` against ``schema`` by name and type: an unknown name or a bad value raises
    :class:`~spt_adapter.errors.ProviderSettingError` naming it; returns the typed values (no
    defaults added)."""
    from ..errors import ProviderSettingError

    out = {}
    for name, value in values.items():
        key = str(name).replace("-", "_")
        if key not in schema:
            allowed = ", ".join(sorted(schema)) or "none"
            raise ProviderSettingError(f"provider {provider!r} has no setting {name!r}; its settings: {allowed}")
        out[key] = schema[key].parse(provider, key, value)
    return out


@dataclass(frozen=True)
class ProviderSpec:
    """A mask provider that a plugin offers through ``spt_adapter_mask_providers``.

    name: what ``--provider`` and ``make_provider`` take (unique across plugins).
    factory: ``factory(settings, *, checkpoint, model_type, device) -> provider``; ``settings`` is
        already validated against ``settings_schema``. The provider has ``identity() -> dict``
        (JSON-able; the cache key: at least the provider name, its version, every setting that
        changes the masks and the checkpoint's sha256) and ``generate(image) -> LabelMasks``
        (``spt_adapter.prior.masks``; a list of SAM-style mask dicts is accepted too), optionally
        ``generate_batch(images)``.
    settings_schema: name -> :class:`Setting`; ``--provider-set name=value`` is checked against it before
        any image is read.
    description: one line for ``spt-adapter plugins``.
    needs_checkpoint: ``--provider-checkpoint`` is required. version: the provider's version (identity).
    plugin: filled in by the registry (the plugin that offered it).
    """

    name: str
    factory: Callable[..., Any]
    settings_schema: Mapping[str, Setting] = field(default_factory=dict)
    description: str = ""
    needs_checkpoint: bool = False
    version: str = "1"
    plugin: str = ""

    def validate(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        return validate_settings(self.name, self.settings_schema, settings)
