"""Train SPT units with BasicSR's own training loop.

    python -m spt_adapter.integrations.basicsr.train -opt options/train_spt_swinir.yml [--auto_resume]

Run it from the folder BasicSR should treat as its root (your BasicSR checkout, or any folder:
``experiments/`` is created there). It registers ``SPTSRModel`` / ``SPTPairedImageDataset`` through
the plugin hook ``spt_adapter_register_framework`` and then calls ``basicsr.train.train_pipeline``
unchanged; every BasicSR command-line flag works. Equivalent without this launcher: add a file
``basicsr/models/spt_model.py`` to your checkout containing
``from spt_adapter.integrations.basicsr.model import SPTSRModel  # noqa: F401`` — BasicSR imports
every ``basicsr/models/*_model.py`` — and run ``python basicsr/train.py -opt ...`` as usual.

On a machine without CUDA, BasicSR's ``load_resume_state`` maps the resume state onto
``torch.cuda.current_device()`` and fails; the launcher then swaps in a CPU equivalent (same
file lookup, same ``check_resume``), so ``resume_state`` / ``--auto_resume`` also work on CPU.
"""

from __future__ import annotations

import os
import sys
from os import path as osp

import torch

from spt_adapter.errors import PluginError

from .._launch import run_reporting_errors


def register() -> list[str]:
    """Run the plugins' ``spt_adapter_register_framework`` hooks; fail if BasicSR's did not register."""
    from spt_adapter.plugins.manager import register_frameworks

    names = [n for result in register_frameworks(raise_errors=True).values() for n in result]
    if not any(n.endswith("SPTSRModel") for n in names):
        raise PluginError(
            "the basicsr plugin did not register SPTSRModel: is BasicSR importable (pip install 'spt-adapter[basicsr]') "
            "and are plugins enabled (SPT_ADAPTER_DISABLE_PLUGINS unset)? See `spt-adapter plugins`."
        )
    return names


def _load_resume_state_cpu(opt):
    """BasicSR's resume-state lookup, loading onto the CPU."""
    from basicsr.utils import check_resume, scandir

    state_path = None
    if opt["auto_resume"]:
        folder = osp.join("experiments", opt["name"], "training_states")
        if osp.isdir(folder):
            iters = [
                float(v.split(".state")[0]) for v in scandir(folder, suffix="state", recursive=False, full_path=False)
            ]
            if iters:
                state_path = osp.join(folder, f"{max(iters):.0f}.state")
                opt["path"]["resume_state"] = state_path
    elif opt["path"].get("resume_state"):
        state_path = opt["path"]["resume_state"]
    if state_path is None:
        return None
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    check_resume(opt, state["iter"])
    return state


def train(root_path: str | None = None) -> None:
    """Register the SPT classes and run ``basicsr.train.train_pipeline(root_path)`` (sys.argv holds
    BasicSR's arguments)."""
    register()
    import basicsr.train as basicsr_train

    if not torch.cuda.is_available():
        basicsr_train.load_resume_state = _load_resume_state_cpu
    basicsr_train.train_pipeline(osp.abspath(root_path or os.getcwd()))


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    return run_reporting_errors(train)


if __name__ == "__main__":
    sys.exit(main())
