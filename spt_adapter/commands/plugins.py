"""`spt-adapter plugins`: list loaded plugins, failed ones, and what they registered."""

from __future__ import annotations

HELP = "list the plugins (built-in shims and third-party), what they registered, the mask providers and the presets"


def add_arguments(parser) -> None:
    parser.add_argument("--hooks", action="store_true", help="also list the hooks each plugin implements")
    parser.add_argument("--presets", action="store_true", help="also list the architecture presets")
    parser.add_argument(
        "--providers", action="store_true", help="also list each mask provider's settings (--provider-set NAME=VALUE)"
    )
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="do not import the frameworks (skip the spt_adapter_register_framework hooks)",
    )


def run(args) -> int:
    from ..plugins.manager import get_plugin_manager, plugin_report, register_frameworks

    pm = get_plugin_manager()
    report = plugin_report()
    if report.disabled:
        print("plugin autoload is disabled (SPT_ADAPTER_DISABLE_PLUGINS is set)")
    registered = {} if args.no_register else register_frameworks()
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: kv[0]):
        if plugin is None:  # blocked
            continue
        origin = report.loaded.get(name, "registered in-process")
        print(f"{name:<12} {origin}")
        for item in registered.get(name, []):
            print(f"{'':<12}   registers {item}")
        if name in report.register_failed:
            print(f"{'':<12}   REGISTER FAILED: {report.register_failed[name]}")
        if args.hooks:
            for caller in pm.get_hookcallers(plugin) or []:
                print(f"{'':<12}   hook {caller.name}")
    for name, reason in sorted(report.failed.items()):
        print(f"{name:<12} FAILED: {reason}")
    from ..prior.registry import provider_failures, provider_specs

    specs = provider_specs()
    failed_providers = provider_failures()
    print("mask providers (--provider NAME):")
    for name, spec in sorted(specs.items()):
        needs = ", needs --provider-checkpoint" if spec.needs_checkpoint else ""
        print(f"  {name:<14} plugin {spec.plugin}{needs}: {spec.description}")
        if getattr(args, "providers", False):
            for key, setting in sorted(spec.settings_schema.items()):
                print(f"  {'':<14}   {key}={setting.default!r}  ({setting.rule()}) {setting.help}")
    for plugin, reason in sorted(failed_providers.items()):
        print(f"  PROVIDERS FAILED in plugin {plugin}: {reason}")
    if args.presets:
        from ..backbones.presets import preset_table

        print("presets:")
        for preset, naming, classes in preset_table():
            print(f"  {preset:<10} {classes:<24} {naming}")
    return 1 if report.failed or report.register_failed or failed_providers else 0
