"""`spt-adapter plugins`: list loaded plugins, failed ones, and what they registered."""

from __future__ import annotations

HELP = "list the plugins (built-in shims and third-party) and their hooks"


def add_arguments(parser) -> None:
    parser.add_argument("--hooks", action="store_true", help="also list the hooks each plugin implements")


def run(args) -> int:
    from ..plugins import get_plugin_manager, plugin_report

    pm = get_plugin_manager()
    report = plugin_report()
    if report.disabled:
        print("plugin autoload is disabled (SPT_ADAPTER_DISABLE_PLUGINS is set)")
    registered = {}
    for result in pm.hook.spt_adapter_register_framework():
        for item in result or []:
            registered.setdefault(item.split(":", 1)[0], []).append(item)
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: kv[0]):
        origin = report.loaded.get(name, "registered in-process")
        print(f"{name:<12} {origin}")
        if args.hooks:
            for caller in pm.get_hookcallers(plugin) or []:
                print(f"{'':<12}   {caller.name}")
    for name, reason in sorted(report.failed.items()):
        print(f"{name:<12} FAILED: {reason}")
    return 1 if report.failed else 0
