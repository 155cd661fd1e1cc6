"""Pattern matching, wrapping (the original module kept as ``base_layer``), eject, freezing.

Pattern syntax, matched against full dotted module names:

* glob (default): ``*`` matches one dotted segment (or part of one: ``layers*``), ``**`` any number
  of segments, including none; ``[...]`` and ``?`` as in :mod:`fnmatch`, within one segment;
* ``re:<regex>``: a regular expression that must match the whole name;
* a list of patterns: the union. Every pattern in a list must match something.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from .errors import LayoutError, PriorError, TargetError
from .hookspecs import LayoutSpec
from .layout import describe_call, find_spatial_size, map_to_tokens, tokens_to_map
from .unit import SPTUnit

UNIT_PREFIX = "spt_"  # every unit parameter's name contains ".spt_units."; nothing else does


# ---------------------------------------------------------------------------------------------
# patterns
# ---------------------------------------------------------------------------------------------
def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """Compile one pattern into a predicate over dotted module names."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise TargetError(f"a target pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as exc:
            raise TargetError(f"pattern {pattern!r} is not a valid regular expression: {exc}") from None
        return lambda name: rx.fullmatch(name) is not None
    segments = tuple(pattern.split("."))
    if any(s == "" for s in segments):
        raise TargetError(f"pattern {pattern!r} has an empty dotted segment")

    def match(name: str) -> bool:
        parts = tuple(name.split("."))

        @lru_cache(maxsize=None)
        def m(i: int, j: int) -> bool:
            if i == len(segments):
                return j == len(parts)
            if segments[i] == "**":
                return any(m(i + 1, k) for k in range(j, len(parts) + 1))
            return j < len(parts) and fnmatchcase(parts[j], segments[i]) and m(i + 1, j + 1)

        return m(0, 0)

    return match


def _patterns(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TargetError(f"targets must be a pattern string or a list of them, got {type(value).__name__}")


def logical_named_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules as the user knows them: an injected layer stands for its ``base_layer``,
    and SPT units are not listed."""
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for child_name, child in module._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            full = prefix + child_name
            yield full, child
            yield from walk(child.base_layer if isinstance(child, SPTLayer) else child, full + ".")

    yield from walk(root, "")


def _nearest(pattern: str, names: list[str], n: int = 5) -> list[str]:
    probe = pattern[3:] if pattern.startswith("re:") else pattern
    close = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    if close:
        return close
    # fall back on names sharing the last segment the pattern names
    tail = probe.rsplit(".", 1)[-1].strip("*")
    return [nm for nm in names if tail and tail in nm][:n]


def match_targets(
    model: nn.Module, targets: str | Sequence[str], exclude: str | Sequence[str] | None = None
) -> list[str]:
    """Names of the modules selected by ``targets`` minus ``exclude``, in module order.

    Raises :class:`TargetError` for an invalid pattern, a pattern that matches nothing (quoting it
    with the closest module names), an empty result, the root module, or nested targets.
    """
    target_patterns, exclude_patterns = _patterns(targets), _patterns(exclude)
    if not target_patterns:
        raise TargetError("no target patterns given")
    names = [name for name, _ in logical_named_modules(model)]
    compiled = [(p, compile_pattern(p)) for p in target_patterns]
    compiled_ex = [(p, compile_pattern(p)) for p in exclude_patterns]
    unmatched = [p for p, fn in compiled if not any(fn(n) for n in names)]
    unmatched_ex = [p for p, fn in compiled_ex if not any(fn(n) for n in names)]
    if unmatched or unmatched_ex:
        lines = []
        for p in unmatched:
            lines.append(f"target pattern {p!r} matched no module; closest names: {_nearest(p, names)}")
        for p in unmatched_ex:
            lines.append(f"exclude pattern {p!r} matched no module; closest names: {_nearest(p, names)}")
        raise TargetError("; ".join(lines) + f" (model {type(model).__name__} has {len(names)} modules)")
    selected = [n for n in names if any(fn(n) for _, fn in compiled) and not any(fn(n) for _, fn in compiled_ex)]
    if not selected:
        raise TargetError(f"targets {target_patterns} minus exclude {exclude_patterns} leave no module")
    for outer in selected:
        inner = next((n for n in selected if n.startswith(outer + ".")), None)
        if inner is not None:
            raise TargetError(
                f"targets overlap: {outer!r} contains {inner!r}; adapt one of them (use exclude= or a narrower pattern)"
            )
    return selected


def inspect_targets(
    model: nn.Module, targets: str | Sequence[str], exclude: str | Sequence[str] | None = None
) -> list[str]:
    """The module names ``inject`` would adapt, without changing anything."""
    return match_targets(model, targets, exclude)


def get_logical_module(root: nn.Module, name: str) -> nn.Module:
    """The module at logical name ``name`` (through injected layers' ``base_layer``)."""
    module = root
    for part in name.split("."):
        if isinstance(module, SPTLayer):
            module = module.base_layer
        module = module._modules.get(part) if part in module._modules else None
        if module is None:
            raise TargetError(f"model {type(root).__name__} has no module {name!r}")
    return module


# ---------------------------------------------------------------------------------------------
# the wrapping layer
# ---------------------------------------------------------------------------------------------
class PriorState:
    """State shared by an SPTModel and its layers: the current prior and the active adapter."""

    def __init__(self) -> None:
        self.prior: torch.Tensor | None = None
        self.active: str | None = None
        self.disabled = False

    def set_prior(self, prior: torch.Tensor | None) -> None:
        self.prior = prior

    @contextlib.contextmanager
    def using(self, prior: torch.Tensor | None) -> Iterator[None]:
        """Set ``prior`` for the block, then put back the one before (also after an error)."""
        previous = self.prior
        self.set_prior(prior)
        try:
            yield
        finally:
            self.set_prior(previous)


class SPTLayer(nn.Module):
    """Wraps one target module: ``base_layer`` runs unchanged, then the active SPT unit corrects
    its output."""

    def __init__(self, base_layer: nn.Module, name: str, state: PriorState, layout: LayoutSpec | None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.spt_units = nn.ModuleDict()
        self.spt_target_name = name
        self._spt_state = state
        self._spt_layout = layout

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        state = self._spt_state
        if state.disabled or state.active not in self.spt_units:
            return out
        if state.prior is None:
            raise PriorError(
                f"SPT layer {self.spt_target_name!r} needs a prior: call model(x, prior=p) or run "
                "inside `with model.use_prior(p):`"
            )
        unit = self.spt_units[state.active]
        return apply_to_output(self.spt_target_name, self._spt_layout, out, args, kwargs,
                               lambda feats: unit(feats, state.prior))

    def extra_repr(self) -> str:
        return f"target={self.spt_target_name!r}"


def apply_to_output(name: str, layout: LayoutSpec | None, out, args: tuple, kwargs: dict,
                    fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` (on a (B,C,H,W) map) to a target's output, whatever its layout."""
    if isinstance(out, (tuple, list)):
        index = layout.tuple_index if layout is not None else None
        if index is None:
            raise LayoutError(
                f"target {name!r} returns a {type(out).__name__} of {len(out)} elements "
                f"({describe_call(tuple(out), {})}); a plugin must say which element to adapt "
                "(hook spt_adapter_describe_layout, LayoutSpec.tuple_index), or target a submodule"
            )
        items = list(out)
        items[index] = apply_to_output(name, LayoutSpec(kind=layout.kind, spatial_size=layout.spatial_size),
                                       items[index], args, kwargs, fn)
        return type(out)(items) if isinstance(out, tuple) else items
    if not torch.is_tensor(out):
        raise LayoutError(f"target {name!r} returns {type(out).__name__}, not a tensor; cannot adapt it")
    kind = layout.kind if layout is not None and layout.kind else ("map" if out.dim() == 4 else "tokens" if out.dim() == 3 else None)
    if kind == "map" and out.dim() == 4:
        return fn(out)
    if kind == "tokens" and out.dim() == 3:
        size = None
        if layout is not None and layout.spatial_size is not None:
            size = tuple(layout.spatial_size(args, kwargs, out))
        if size is None:
            size = find_spatial_size(args, kwargs, out.shape[1])
        if size is None:
            raise LayoutError(
                f"target {name!r} returns tokens of shape {tuple(out.shape)} but its spatial size is "
                f"unknown: no 2-int argument with product L={out.shape[1]} in the call "
                f"{describe_call(args, kwargs)}; a plugin can supply it (hook spt_adapter_describe_layout)"
            )
        return map_to_tokens(fn(tokens_to_map(out, size)))
    raise LayoutError(
        f"target {name!r} returns a tensor of shape {tuple(out.shape)}; SPT units adapt (B,C,H,W) maps "
        "and (B,L,C) token sequences"
    )


# ---------------------------------------------------------------------------------------------
# probing, wrapping, unwrapping
# ---------------------------------------------------------------------------------------------
def default_example_input(model: nn.Module, size: int = 64) -> torch.Tensor:
    """A small input for the probe pass, built from the first convolution's input channels."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise TargetError(
            f"cannot build a probe input for {type(model).__name__} (no Conv2d found): pass example_input="
        )
    param = first.weight
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, first.in_channels, size, size, generator=g).to(device=param.device, dtype=param.dtype)


def probe_channels(model: nn.Module, names: list[str], layouts: dict[str, LayoutSpec | None],
                   example_input) -> dict[str, int]:
    """Run one forward pass with hooks on ``names`` and read each target's real output width.

    The model runs in eval mode under ``no_grad``; modes are restored afterwards. Layout problems
    (unknown token size, tuple outputs) surface here, before anything is replaced.
    """
    found: dict[str, int] = {}
    errors: list[Exception] = []
    handles = []

    def make_hook(name: str):
        def hook(module, args, kwargs, out):
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


def _parent_and_attr(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        parent_name, attr = name.rsplit(".", 1)
        return get_logical_module(root, parent_name), attr
    return root, name


def wrap(root: nn.Module, name: str, state: PriorState, layout: LayoutSpec | None) -> SPTLayer:
    """Replace module ``name`` by an :class:`SPTLayer` around it (or return the existing one)."""
    parent, attr = _parent_and_attr(root, name)
    if isinstance(parent, SPTLayer):
        parent = parent.base_layer
    current = parent._modules[attr]
    if isinstance(current, SPTLayer):
        return current
    layer = SPTLayer(current, name, state, layout)
    setattr(parent, attr, layer)
    return layer


def unwrap(root: nn.Module, name: str) -> None:
    """Put the original module back at ``name``."""
    parent, attr = _parent_and_attr(root, name)
    if isinstance(parent, SPTLayer):
        parent = parent.base_layer
    current = parent._modules[attr]
    if isinstance(current, SPTLayer):
        setattr(parent, attr, current.base_layer)


def iter_layers(root: nn.Module) -> Iterator[tuple[str, SPTLayer]]:
    for name, module in logical_named_modules(root):
        if isinstance(module, SPTLayer):
            yield name, module


def make_unit(channels: int, config, like: nn.Module) -> SPTUnit:
    """A new unit on the device and dtype of the module it adapts."""
    unit = SPTUnit(channels, config)
    ref = next(like.parameters(), None)
    if ref is None:
        ref = next(like.buffers(), None)
    if ref is not None:
        unit = unit.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    return unit


@dataclass
class Injection:
    """What :func:`plan_injection` resolved, before anything changes."""

    names: list[str]
    channels: dict[str, int]
    layouts: dict[str, LayoutSpec | None]
