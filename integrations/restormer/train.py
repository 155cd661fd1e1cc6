"""Run Restormer's own ``basicsr/train.py`` so that it trains SPT units.

    cd /path/to/Restormer
    python -m spt_adapter.integrations.restormer.train -opt Denoising/Options/GaussianColorDenoising_Restormer_SPT.yml

Puts the checkout first on ``sys.path`` (its ``basicsr`` fork must win over an installed BasicSR),
registers ``SPTImageCleanModel`` (plugin hook ``spt_adapter_register_framework``) and runs
``basicsr/train.py`` unchanged. Without the launcher: add ``basicsr/models/spt_model.py`` with
``from spt_adapter.integrations.restormer.model import register; register()`` — the fork imports every
``*_model.py`` — and run ``python basicsr/train.py -opt ...``.
"""

from __future__ import annotations

import os
import runpy
import sys


def use_checkout_basicsr(root: str) -> None:
    """Make ``import basicsr`` resolve to the checkout's fork. The fork has no ``__init__.py`` (a
    namespace package), so an installed BasicSR would win the normal path search; the fork is put
    in ``sys.modules`` explicitly instead."""
    import importlib.machinery
    import types

    for name in [m for m in sys.modules if m == "basicsr" or m.startswith("basicsr.")]:
        del sys.modules[name]
    package = os.path.join(root, "basicsr")
    if os.path.isfile(os.path.join(package, "__init__.py")):
        return  # a regular package: sys.path order decides
    module = types.ModuleType("basicsr")
    module.__path__ = [package]
    spec = importlib.machinery.ModuleSpec("basicsr", None, is_package=True)
    spec.submodule_search_locations = [package]
    module.__spec__ = spec
    sys.modules["basicsr"] = module


def main(argv: list[str] | None = None) -> int:
    root = os.path.abspath(os.environ.get("SPT_RESTORMER_ROOT_OVERRIDE") or os.getcwd())
    script = os.path.join(root, "basicsr", "train.py")
    if not os.path.isfile(script):
        print(f"spt-adapter: error: {script} not found: run from a Restormer checkout", file=sys.stderr)
        return 2
    os.chdir(root)
    sys.path.insert(0, root)
    use_checkout_basicsr(root)  # an installed BasicSR must not shadow the fork
    from spt_adapter.plugins import register_frameworks

    done = register_frameworks(raise_errors=True)
    if "restormer" not in done:
        print("spt-adapter: error: the restormer plugin did not register (is this a Restormer checkout?)", file=sys.stderr)
        return 2
    sys.argv = [script, *(sys.argv[1:] if argv is None else argv)]
    from spt_adapter.errors import SPTError

    try:
        runpy.run_path(script, run_name="__main__")
    except SPTError as exc:  # a user error (options, backbone file): one line, like the other launchers
        print(f"spt-adapter: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
