"""`spt-adapter inspect`: what a backbone is and where SPT units would go, without changing anything.

    spt-adapter inspect swinir_x2.pth                              # architecture, claim, preset, tree
    spt-adapter inspect dncnn_25.pth --targets "model.*" --depth 1  # what a pattern matches, unit cost
    spt-adapter inspect dncnn_25.pth --preset dncnn-light --hidden 8   # another preset, another width

The command-line twin of :func:`spt_adapter.inspect_targets`: the architecture spandrel detects, the
plugin that claims it, every preset that recognises it with the parameters its units would add (with
and without a prior, at ``--hidden`` / ``--unit-depth``), the module tree to ``--depth``, and for the
default preset's targets (or ``--preset``'s, or ``--targets``) every matched module with its channel
count and the parameters its unit would add. A
pattern that matches nothing prints the tree, then one error line naming the closest module names (or
the top-level modules when none is close), exit status 1.
"""

from __future__ import annotations

import argparse

HELP = "show a backbone's architecture, claiming plugin and preset, module tree, and what target patterns match"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..core.config import DEFAULT_FUSION, FUSIONS
    from ._args import nonneg_int, positive_int

    parser.add_argument(
        "backbone",
        metavar="BACKBONE",
        help="backbone checkpoint (.pth/.safetensors of any architecture spandrel detects)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        metavar="PATTERN",
        help="target patterns to try (`*` one dotted segment, `**` any, `re:` regex; default: the "
        "claiming plugin's preset)",
    )
    parser.add_argument("--exclude", nargs="+", metavar="PATTERN", help="modules to leave out")
    parser.add_argument("--depth", type=nonneg_int, default=2, help="levels of the module tree to show (0: none)")
    parser.add_argument(
        "--fusion", choices=FUSIONS, default=DEFAULT_FUSION, help="unit fusion, for the parameter count"
    )
    parser.add_argument("--hidden", type=positive_int, default=16, help="unit width, for the parameter count")
    parser.add_argument(
        "--unit-depth",
        type=positive_int,
        default=2,
        help="prior-encoder layers (train's --depth; --depth here is the tree's), for the parameter count",
    )
    parser.add_argument(
        "--preset",
        metavar="PRESET",
        default=None,
        help="the preset whose targets to show (default: the first that recognises the backbone)",
    )


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_tree(model, depth: int, marks: dict[str, str] | None = None) -> list[str]:
    """Lines of the logical module tree down to ``depth`` levels: name, class, parameters, and a mark
    for the modules in ``marks`` (``{name: text}``)."""
    from ..core.keys import logical_named_modules

    marks = marks or {}
    rows = []
    hidden_below: dict[str, int] = {}
    for name, module in logical_named_modules(model):
        level = name.count(".") + 1
        if level <= depth:
            rows.append((name, level, module))
        else:
            parent = ".".join(name.split(".")[:depth])
            hidden_below[parent] = hidden_below.get(parent, 0) + 1
    width = max((len(n) + 2 * (lv - 1) for n, lv, _ in rows), default=0)
    lines = []
    for name, level, module in rows:
        label = ("  " * (level - 1) + name).ljust(width)
        more = f"  (+{hidden_below[name]} below)" if level == depth and name in hidden_below else ""
        mark = f"  <- {marks[name]}" if name in marks else ""
        lines.append(f"  {label}  {type(module).__name__:<20} {_count(module):>12,}{more}{mark}")
    return lines


def run(args) -> int:
    import torch

    from ..core.planning import plan_injection, target_weight_shapes
    from ..core.targets import inspect_targets
    from ..errors import SPTError, TargetError
    from .builders import load_backbone_from_args

    if args.preset and args.targets:
        raise SPTError(f"--preset {args.preset} proposes the targets and --targets names them too: pass one of them")
    args.arch, args.weights = args.preset, None
    model, default, described = load_backbone_from_args(args, targets=args.targets, require_targets=False)
    total = _count(model)
    claim = args._claim
    print(f"backbone: {described}")
    descriptor = args._descriptor
    print(
        f"  class {type(model).__name__}, {total:,} parameters, {args._channels}-channel input"
        + (f", scale x{args._scale}" if args._scale else "")
    )
    if claim[0]:
        print(f"claimed by: plugin {claim[0]!r}, preset {claim[1]!r}; preset targets: {default}")
        _print_presets(model, total, args)
    else:
        print(
            "claimed by: no plugin (no preset): pass --targets PATTERN to `train` "
            "(`spt-adapter plugins --presets` lists the architectures with presets)"
        )
    if getattr(descriptor, "supports_half", None) is False:
        print("  spandrel: no float16 support (restore --half is refused)")

    patterns = list(args.targets) if args.targets else default
    names: list[str] = []
    error = None
    if patterns:
        try:
            names = inspect_targets(model, patterns, args.exclude)
        except TargetError as exc:  # shown after the tree, which is what the user needs to fix it
            error = exc
    marks: dict[str, str] = {}
    rows = []
    without = 0
    if names:
        config = _config(args, patterns, True)  # what inject adds by default: units that read a prior
        free = _config(args, patterns, False)
        with torch.no_grad():
            plan = plan_injection(model, config)
        weights = target_weight_shapes(model, plan.names)
        without = sum(unit_parameter_count(plan.channels[n], free, weights.get(n)) for n in plan.names)
        for n in plan.names:
            channels = plan.channels[n]
            unit = unit_parameter_count(channels, config, weights.get(n))
            rows.append((n, channels, unit))
            marks[n] = f"unit: {channels} channels, +{unit:,} parameters"
    if args.depth:
        print(f"\nmodule tree (depth {args.depth}; class, parameters):")
        for line in module_tree(model, args.depth, marks):
            print(line)
    if error is not None:
        raise error
    if not patterns:
        return 0
    added = sum(u for _, _, u in rows)
    print(
        f"\ntargets {patterns}" + (f" minus {args.exclude}" if args.exclude else "") + f" match {len(rows)} module(s):"
    )
    width = max(len(n) for n, _, _ in rows)
    for n, channels, unit in rows:
        print(f"  {n.ljust(width)}  {channels:>5} channels  +{unit:,} parameters")
    pct = 100 / max(total, 1)
    reads = _config(args, [], True).reads_prior
    what = f"depth {args.unit_depth}, a 1-channel prior" if reads else "no prior"
    print(
        f"units ({args.fusion}, hidden {args.hidden}, {what}) add {added:,} parameters = {added * pct:.2f} % of the backbone"
    )
    if reads and args.fusion != "pool":
        print(f"without a prior (train's default --prior none: no encoder): {without:,} = {without * pct:.2f} %")
    return 0


def unit_parameter_count(channels: int, config, weight_shape: tuple[int, ...] | None = None) -> int:
    """Parameters of one unit of ``config`` on a ``channels``-wide target (from the shapes; nothing built);
    ``fusion="lora"`` counts from the target's ``weight_shape``."""
    from ..core.planning import units_parameter_count

    weights = {"t": weight_shape} if weight_shape is not None else None
    return units_parameter_count({"t": channels}, config, weights)


def _config(args, targets: list[str], with_prior: bool):
    from ..core.config import SPTConfig

    return SPTConfig(
        targets=targets,
        exclude=list(args.exclude or []),
        fusion=args.fusion,
        hidden=args.hidden,
        depth=args.unit_depth,
        prior_channels=1 if with_prior or args.fusion == "pool" else 0,  # pool reads regions: always a prior
    )


def preset_counts(model, claim, config_for) -> list[tuple[str, int, int, int]]:
    """(preset, units, parameters with a prior, parameters without) for every preset ``claim`` offers."""
    import torch

    from ..core.planning import plan_injection, target_weight_shapes

    rows = []
    for name in claim.presets:
        picked = claim.pick(name)
        counts = []
        for with_prior in (True, False):
            config = config_for(list(picked.targets), with_prior)
            with torch.no_grad():
                plan = plan_injection(model, config, picked)
            weights = target_weight_shapes(model, plan.names)
            counts.append(sum(unit_parameter_count(plan.channels[n], config, weights.get(n)) for n in plan.names))
        rows.append((name, len(plan.names), counts[0], counts[1]))
    return rows


def _print_presets(model, total: int, args) -> None:
    """The presets that recognise ``model`` and what each costs (``--preset`` picks one in train/inject)."""
    from ..core.planning import claim_model

    claim = claim_model(model)
    if claim is None:
        return
    rows = preset_counts(model, claim, lambda targets, with_prior: _config(args, targets, with_prior))
    print(f"presets that recognise it (--preset NAME; units {args.fusion}, hidden {args.hidden}):")
    width = max(len(n) for n, *_ in rows)
    for name, units, with_prior, without in rows:
        pct = 100 / max(total, 1)
        line = f"  {name.ljust(width)}  {units:>3} unit(s)"
        if not _config(args, [], True).reads_prior:  # a unit kind that never reads a prior
            line += f"  +{without:,} ({without * pct:.2f} %)"
        else:
            if args.fusion != "pool":
                line += f"  no prior: +{without:,} ({without * pct:.2f} %)"
            line += f"  with a prior (depth {args.unit_depth}): +{with_prior:,} ({with_prior * pct:.2f} %)"
        print(line + ("  <- default" if name == claim.preset else ""))
