"""Target patterns: which modules of a model an adapter goes on, and the nearest names when none match.

Pattern syntax, matched against full dotted module names:

* glob (default): ``*`` matches one dotted segment (or part of one: ``layers*``), ``**`` any number
  of segments, including none; ``[...]`` and ``?`` as in :mod:`fnmatch`, within one segment;
* ``re:<regex>``: a regular expression that must match the whole name;
* a list of patterns: the union. Every pattern in a list must match something.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from functools import cache

import torch.nn as nn

from ..errors import TargetError
from .keys import logical_named_modules


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

        @cache
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


def nearest_names(pattern: str, names: list[str], n: int = 5) -> list[str]:
    probe = pattern[3:] if pattern.startswith("re:") else pattern
    close = difflib.get_close_matches(probe, names, n=n, cutoff=0.3)
    if close:
        return close
    # fall back on names sharing the last segment the pattern names
    tail = probe.rsplit(".", 1)[-1].strip("*")
    return [nm for nm in names if tail and tail in nm][:n]


def top_level_names(names: list[str]) -> list[str]:
    """The first segments of ``names``, in module order, once each (the model's top-level modules)."""
    return list(dict.fromkeys(n.split(".", 1)[0] for n in names))


def no_match_hint(pattern: str, names: list[str]) -> str:
    """What to tell a user whose ``pattern`` matched nothing: the closest module names, or, when no
    name is near, the model's top-level structure (never an empty list)."""
    close = nearest_names(pattern, names)
    if close:
        return f"closest names: {close}"
    top = top_level_names(names)
    shown = ", ".join(top[:12]) + (f", ... ({len(top)} in all)" if len(top) > 12 else "")
    return (
        f"no module name is close; the top-level modules are: {shown or 'none'} (`spt-adapter inspect` shows the tree)"
    )


def inspect_targets(
    model: nn.Module,
    targets: str | Sequence[str],
    exclude: str | Sequence[str] | None = None,
    *,
    names: list[str] | None = None,
) -> list[str]:
    """Names of the modules ``inject`` would adapt: ``targets`` minus ``exclude``, in module order.

    Pure: it changes nothing.

    Raises :class:`TargetError` for an invalid pattern, a pattern that matches nothing (quoting it
    with the closest module names), an empty result, the root module, or nested targets.
    """
    target_patterns, exclude_patterns = _patterns(targets), _patterns(exclude)
    if not target_patterns:
        raise TargetError("no target patterns given")
    if names is None:
        names = [name for name, _ in logical_named_modules(model)]
    compiled = [(p, compile_pattern(p)) for p in target_patterns]
    compiled_ex = [(p, compile_pattern(p)) for p in exclude_patterns]
    unmatched = [p for p, fn in compiled if not any(fn(n) for n in names)]
    unmatched_ex = [p for p, fn in compiled_ex if not any(fn(n) for n in names)]
    if unmatched or unmatched_ex:
        lines = []
        for p in unmatched:
            lines.append(f"target pattern {p!r} matched no module; {no_match_hint(p, names)}")
        for p in unmatched_ex:
            lines.append(f"exclude pattern {p!r} matched no module; {no_match_hint(p, names)}")
        raise TargetError("; ".join(lines) + f" (model {type(model).__name__} has {len(names)} modules)")
    selected = [n for n in names if any(fn(n) for _, fn in compiled) and not any(fn(n) for _, fn in compiled_ex)]
    if not selected:
        raise TargetError(f"targets {target_patterns} minus exclude {exclude_patterns} leave no module")
    check_disjoint(selected)
    return selected


def select_targets(model: nn.Module, predicate: Callable[[str], bool], described_as: str) -> list[str]:
    """Names (logical, in module order) for which ``predicate`` holds; the same errors as
    :func:`inspect_targets` (nothing matched: the nearest names; nested targets). Used by paths
    with their own pattern syntax, such as PEFT's ``target_modules``."""
    names = [name for name, _ in logical_named_modules(model)]
    selected = [n for n in names if predicate(n)]
    if not selected:
        raise TargetError(
            f"{described_as} matched no module of {type(model).__name__}; {no_match_hint(described_as, names)}"
        )
    check_disjoint(selected)
    return selected


def check_disjoint(names: list[str]) -> None:
    """Refuse nested targets: a unit on a module and another inside it would adapt twice."""
    for outer in names:
        inner = next((n for n in names if n.startswith(outer + ".")), None)
        if inner is not None:
            raise TargetError(
                f"targets overlap: {outer!r} contains {inner!r}; adapt one of them (use exclude= or a narrower pattern)"
            )
