"""Run Restormer's own ``basicsr/train.py`` so that it trains SPT units.

    cd /path/to/Restormer
    python -m spt_adapter.integrations.restormer.train -opt Denoising/Options/GaussianColorDenoising_Restormer_SPT.yml

Puts the checkout first on ``sys.path`` (its ``basicsr`` fork must win over an installed BasicSR),
registers ``SPTImageCleanModel`` (plugin hook ``spt_adapter_register_framework``) and runs
``basicsr/train.py`` unchanged. Without the launcher: add ``basicsr/models/spt_model.py`` with
``from spt_adapter.integrations.restormer.model import register; register()`` — the fork imports every
``*_model.py`` — and run ``python basicsr/train.py -opt ...``.

On a machine without CUDA the options need ``num_gpu: 0`` (Restormer's CPU mode), and a run cannot
resume (``train.py`` loads training states onto CUDA): the launcher says so in one line instead of
a traceback.
"""

from __future__ import annotations

import os
import runpy
import sys

from .._launch import fail, run_reporting_errors


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


def check_cpu_run(root: str, argv: list[str], cuda: bool) -> str | None:
    """Why Restormer's ``train.py`` would fail on a machine without CUDA, or None.

    ``BaseModel`` picks ``'cuda'`` unless ``num_gpu: 0`` (Restormer's CPU mode), and ``train.py``
    resumes by itself from any ``experiments/<name>/training_states/*.state``, loading the state with
    ``torch.cuda.current_device()``. Only the ``-opt`` file is read; nothing is changed.
    """
    if cuda or "-opt" not in argv or argv.index("-opt") + 1 >= len(argv):
        return None
    import yaml

    path = argv[argv.index("-opt") + 1]
    try:
        with open(path, encoding="utf-8") as fh:
            opt = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError):
        return None  # train.py reports it in its own words
    if not isinstance(opt, dict):
        return None
    if opt.get("num_gpu", 1) != 0:
        return f"{path}: num_gpu is {opt.get('num_gpu', 1)!r} but PyTorch sees no CUDA device; set num_gpu: 0 (Restormer's CPU mode)"
    states = os.path.join(root, "experiments", str(opt.get("name")), "training_states")
    if os.path.isdir(states) and any(f.endswith(".state") for f in os.listdir(states)):
        return (
            f"Restormer's train.py would resume from {states} and loads training states onto CUDA "
            "(torch.cuda.current_device()), which this machine lacks; give the run a new name or remove that folder"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    root = os.path.abspath(os.environ.get("SPT_RESTORMER_ROOT_OVERRIDE") or os.getcwd())
    script = os.path.join(root, "basicsr", "train.py")
    if not os.path.isfile(script):
        return fail(f"{script} not found: run from a Restormer checkout")
    os.chdir(root)
    sys.path.insert(0, root)
    use_checkout_basicsr(root)  # an installed BasicSR must not shadow the fork
    from spt_adapter.plugins.manager import register_frameworks

    done = register_frameworks(raise_errors=True)
    if "restormer" not in done:
        return fail("the restormer plugin did not register (is this a Restormer checkout?)")
    args = list(sys.argv[1:] if argv is None else argv)
    import torch

    problem = check_cpu_run(root, args, torch.cuda.is_available())
    if problem:
        return fail(problem)
    sys.argv = [script, *args]
    return run_reporting_errors(lambda: runpy.run_path(script, run_name="__main__"))


if __name__ == "__main__":
    sys.exit(main())
