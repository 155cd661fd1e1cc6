"""Targets -> plan: the one planner that ``inject``, ``load_adapter`` and the PEFT path all call.

:func:`plan_injection` resolves which modules get a unit (through :func:`targets.inspect_targets`,
with a claim from the plugins when no targets are given), their feature layouts (a plugin hook) and
their real output widths (a plugin preset, else one probe forward pass), and raises every
user-caused error *before* anything is replaced. It changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError, LayoutError, PriorError, TargetError
from ..plugins.manager import call_hook
from ..plugins.types import LayoutSpec, ModelClaim
from .config import SPTConfig
from .keys import get_logical_module, see_through
from .layer import apply_to_output
from .targets import inspect_targets


@dataclass
class Injection:
    """What :func:`plan_injection` resolved, before anything changes."""

    names: list[str]
    channels: dict[str, int]
    layouts: dict[str, LayoutSpec | None]


def claim_model(model: nn.Module) -> ModelClaim | None:
    """Ask the plugins whether they know ``model`` (first claim wins)."""
    return call_hook("spt_adapter_claim_model", model=model)


def describe_layout(model: nn.Module, name: str, module: nn.Module) -> LayoutSpec | None:
    return call_hook("spt_adapter_describe_layout", model=model, name=name, module=module)


def pick_preset(claim: ModelClaim | None, preset: str | None, what: str) -> ModelClaim | None:
    """The claim of preset ``preset`` among those ``claim`` offers (None: the claim itself, the
    default); :class:`TargetError` naming the presets that do recognise ``what`` when none is called
    ``preset``, or when nothing claims it."""
    if preset is None:
        return claim
    if claim is None:
        raise TargetError(
            f"preset {preset!r} was asked for, but no preset recognises {what}: pass targets= instead "
            "(`spt-adapter plugins --presets` lists the architectures with presets)"
        )
    picked = claim.pick(preset)
    if picked is None:
        raise TargetError(
            f"preset {preset!r} does not recognise {what}; the presets that do: {', '.join(claim.presets)}"
        )
    return picked


def resolve_config(
    model: nn.Module, targets, exclude, config: SPTConfig | None, preset: str | None = None
) -> tuple[SPTConfig, ModelClaim | None]:
    """The config to inject: ``targets``/``exclude`` replace the config's; with no targets at all, the
    claiming plugin's preset proposes them (``preset``: that preset by name, e.g. ``"dncnn-light"``)."""
    config = config if config is not None else SPTConfig()
    changes: dict[str, Any] = {}
    if targets is not None:
        changes["targets"] = targets
    if exclude is not None:
        changes["exclude"] = exclude
    if changes:
        config = config.replace(**changes)
        config.__post_init__()
    if preset is not None and config.targets:
        raise TargetError(
            f"preset {preset!r} proposes the targets, and targets {config.targets} were given too: pass one of them"
        )
    claim = None
    if not config.targets:
        claim = pick_preset(claim_model(model), preset, f"a {type(model).__name__}")
        if claim is None:
            raise TargetError(
                f"no targets given and no plugin claims a {type(model).__name__}; pass targets= "
                "(see `spt-adapter plugins` for the architectures with presets)"
            )
        config = config.replace(targets=list(claim.targets), integration=claim.integration, preset=claim.preset)
    return config, claim


def target_weight_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    """The ``weight`` shape of each target (what a LoRA unit's size follows), through wrappers."""
    shapes = {}
    for n in names:
        weight = getattr(see_through(get_logical_module(model, n)), "weight", None)
        if torch.is_tensor(weight):
            shapes[n] = tuple(weight.shape)
    return shapes


def units_parameter_count(
    channels: dict[str, int], config: SPTConfig, weights: dict[str, tuple[int, ...]] | None = None
) -> int:
    """Trainable parameters of an adapter of ``config`` with units of the given widths (``{target: C}``),
    its prior student included; from the shapes alone (nothing is built). ``fusion="lora"`` needs
    ``weights``, each target's weight shape (:func:`target_weight_shapes`)."""
    from .student import student_parameter_shapes
    from .unit import unit_parameter_shapes

    def numel(shapes: dict[str, tuple[int, ...]]) -> int:
        total = 0
        for shape in shapes.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    if config.fusion == "lora":
        from .lora import lora_parameter_shapes

        if weights is None or any(n not in weights for n in channels):
            raise ConfigError("counting LoRA parameters needs each target's weight shape")
        return sum(numel(lora_parameter_shapes(weights[n], config.hidden)) for n in channels)
    count = sum(numel(unit_parameter_shapes(c, config)) for c in channels.values())
    if config.student is not None:
        count += numel(student_parameter_shapes(config.student, config.prior_channels))
    return count


def hidden_for_budget(
    channels: dict[str, int], config: SPTConfig, budget: int, weights: dict[str, tuple[int, ...]] | None = None
) -> int:
    """The largest ``hidden`` whose units (widths ``channels``; LoRA: target ``weights``) hold at most
    ``budget`` parameters; :class:`ConfigError` when even ``hidden=1`` holds more (the message gives that count)."""
    from .config import UNIT_LIMITS

    def count(h: int) -> int:
        return units_parameter_count(channels, config.replace(hidden=h), weights)

    if count(1) > budget:
        raise ConfigError(
            f"a budget of {budget:,} parameters is below the smallest units on these {len(channels)} target(s) "
            f"(hidden=1: {count(1):,}); raise the budget or pick fewer targets (a lighter preset)"
        )
    lo, hi = 1, UNIT_LIMITS["hidden"]
    while lo < hi:  # the count grows with hidden
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid - 1)
    return lo


def budget_parameters(budget: int | float, backbone: nn.Module) -> int:
    """A budget as a parameter count: an int is one; a float in (0, 1) is a share of ``backbone``'s
    parameters (``0.02``: 2 %)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ConfigError(
            f"budget must be a parameter count (int) or a share of the backbone (0 < float < 1), got {budget!r}"
        )
    if isinstance(budget, float):
        if not 0 < budget < 1:
            raise ConfigError(f"a float budget is a share of the backbone's parameters, 0 < budget < 1; got {budget!r}")
        total = sum(p.numel() for n, p in backbone.named_parameters() if ".spt_units." not in n)
        return int(budget * total)
    if budget < 1:
        raise ConfigError(f"budget must be a positive parameter count, got {budget!r}")
    return budget


def plan_injection(
    model: nn.Module,
    config: SPTConfig,
    claim: ModelClaim | None = None,
    example_input=None,
    channels: dict[str, int] | None = None,
    names: list[str] | None = None,
) -> Injection:
    """Resolve targets, layouts and unit widths without changing ``model``."""
    names = list(names) if names is not None else inspect_targets(model, config.targets, config.exclude)
    if config.fusion == "lora":  # refused before anything changes, naming the target and its type
        from .lora import check_lora_target, require_peft

        for n in names:
            check_lora_target(n, see_through(get_logical_module(model, n)))
        require_peft()
    layouts = {n: describe_layout(model, n, see_through(get_logical_module(model, n))) for n in names}
    known = {n: int(c) for n, c in (channels or {}).items() if n in names}
    if config.fusion == "lora":  # a LoRA unit takes the call and sizes itself from the weight: no probe pass
        known.update({n: shape[0] for n, shape in target_weight_shapes(model, names).items() if n not in known})
    if claim is not None:
        known.update({n: c for n, c in claim.channels.items() if n in names and n not in known})
    if any(n not in known for n in names):
        if example_input is None and claim is not None and claim.example_input is not None:
            example_input = claim.example_input
        if example_input is None:
            example_input = default_example_input(model)
        probed = probe_channels(model, [n for n in names if n not in known], layouts, example_input)
        known.update(probed)
    return Injection(names=names, channels={n: known[n] for n in names}, layouts=layouts)


def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def input_channels(model: nn.Module, default: int = 3) -> int:
    """Channels of the backbone's input: its first convolution's ``in_channels`` (``default`` if it
    has none). What a prior student reads (1 for a grey DnCNN, 3 for colour networks)."""
    first = _first_conv(model)
    return int(first.in_channels) if first is not None else default


def default_example_input(model: nn.Module, size: int = 64) -> torch.Tensor:
    """A small input for the probe pass, built from the first convolution's input channels."""
    first = _first_conv(model)
    if first is None:
        raise TargetError(
            f"cannot build a probe input for {type(model).__name__} (no Conv2d found): pass example_input="
        )
    param = first.weight
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, first.in_channels, size, size, generator=g).to(device=param.device, dtype=param.dtype)


def probe_channels(
    model: nn.Module, names: list[str], layouts: dict[str, LayoutSpec | None], example_input
) -> dict[str, int]:
    """Run one forward pass with hooks on ``names`` and read each target's real output width.

    The model runs in eval mode under ``no_grad``; modes are restored afterwards. Layout problems
    (unknown token size, tuple outputs) surface here, before anything is replaced.
    """
    found: dict[str, int] = {}
    errors: list[Exception] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            def record(feats: torch.Tensor) -> torch.Tensor:
                found[name] = int(feats.shape[1])
                return feats

            try:
                apply_to_output(name, layouts.get(name), out, args, kwargs, record)
            except Exception as exc:
                errors.append(exc)
            return None

        return hook

    for name in names:
        handles.append(get_logical_module(model, name).register_forward_hook(make_hook(name), with_kwargs=True))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            inputs = example_input() if callable(example_input) else example_input
            if isinstance(inputs, (tuple, list)):
                model(*inputs)
            elif isinstance(inputs, dict):
                model(**inputs)
            else:
                model(inputs)
    except (LayoutError, PriorError):
        raise
    except Exception as exc:
        raise TargetError(
            f"the probe forward pass of {type(model).__name__} failed ({type(exc).__name__}: {exc}); "
            "pass example_input= with an input the model accepts"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    if errors:
        raise errors[0]
    missing = [n for n in names if n not in found]
    if missing:
        raise TargetError(f"targets {missing} did not run in the probe forward pass; they cannot be adapted")
    return found
