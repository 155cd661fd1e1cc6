"""Run KAIR's own ``main_train_psnr.py`` so that it trains SPT units.

    cd /path/to/KAIR
    python -m spt_adapter.integrations.kair.train --opt options/train_spt_rrdb.json

The launcher puts the checkout on ``sys.path`` (``--kair-root``, default: the working directory),
then wraps two KAIR factories before running ``main_train_psnr.py`` unchanged (``runpy``):

* ``models.select_model.define_Model``: an options dict with an ``"spt"`` block and
  ``"model": "plain"`` gets :class:`SPTModelPlain` (a subclass of the checkout's ModelPlain);
* ``data.select_dataset.define_Dataset``: datasets get ``prior`` — computed from each item's own
  ``L`` tensor through the prior cache (KAIR makes LQ patches on the fly: noise, bicubic, random
  crops), so the prior always matches the network's input. With a distilled prior (``spt.student``)
  the train dataset's items get ``teacher_prior`` instead: the teacher runs on the item's clean ``H``
  patch only and its map is brought to ``L``'s grid; test datasets get nothing (the student makes
  the prior). Units that read no prior (``"prior": "none"``, ``"fusion": "lora"`` / ``"lowrank"``): the
  datasets are KAIR's own, unwrapped, and nothing segments.

``"gpu_ids": []`` trains on the CPU (KAIR's ModelBase would pick CUDA for any list; the model is
given ``gpu_ids = None``, KAIR's own CPU branch -- see :func:`.model.model_options`).

Every other part — option parsing, loaders, losses, optimizer, logging, PSNR — is KAIR's code.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

import numpy as np
import torch

from spt_adapter.core.student import teacher_at_lq_size
from spt_adapter.errors import ConfigError

from .._launch import fail, run_reporting_errors
from .._options import provider_image
from .options import check_gpu_ids, read_options, spt_options


class PriorDataset(torch.utils.data.Dataset):
    """A KAIR dataset whose items gain ``prior`` (C_p, h, w), computed from the item's ``L`` -- or,
    with ``teacher=True``, ``teacher_prior``: the map of the item's ``H`` on ``L``'s grid."""

    def __init__(self, dataset, source, teacher: bool = False) -> None:
        self.dataset = dataset
        self.source = source
        self.teacher = teacher

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name in ("dataset", "source"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index):
        item = self.dataset[index]
        seen = item["H"] if self.teacher else item["L"]
        prior = torch.from_numpy(np.asarray(self.source(provider_image(seen)), dtype=np.float32))
        if self.teacher:
            scale = max(1, seen.shape[-1] // item["L"].shape[-1])
            item["teacher_prior"] = teacher_at_lq_size(prior, scale, tuple(item["L"].shape[-2:])).contiguous()
        else:
            item["prior"] = prior
        return item


def install(opt: dict) -> None:
    """Wrap KAIR's ``define_Model`` / ``define_Dataset`` for options ``opt`` (must have ``"spt"``)."""
    from .._options import PriorSource
    from .model import make_model_class

    options = spt_options(opt)
    check_gpu_ids(opt)
    import data.select_dataset as select_dataset
    import models.select_model as select_model
    from models.model_plain import ModelPlain

    spt_cls = make_model_class(ModelPlain)
    original_model, original_dataset = select_model.define_Model, select_dataset.define_Dataset
    if getattr(original_model, "_spt_wrapped", False):
        return

    def define_Model(opt_):  # noqa: N802 - KAIR's name
        if opt_.get("spt") is None:
            return original_model(opt_)
        if opt_["model"] != "plain":
            raise ConfigError(f'the KAIR SPT shim trains "model": "plain" networks, got {opt_["model"]!r}')
        model = spt_cls(opt_)
        print(f"Training model [{type(model).__name__}] is created.")
        return model

    def define_Dataset(dataset_opt):  # noqa: N802
        dataset = original_dataset(dataset_opt)
        if not options.reads_prior:  # no prior (prior: "none", fusion lora / lowrank): KAIR's dataset as it is
            return dataset
        if options.distilled:  # the teacher is for training; the student makes the prior at test time
            return (
                PriorDataset(dataset, PriorSource(options.prior_spec), teacher=True)
                if dataset_opt["phase"] == "train"
                else dataset
            )
        return PriorDataset(dataset, PriorSource(options.prior_spec))

    define_Model._spt_wrapped = True
    select_model.define_Model = define_Model
    select_dataset.define_Dataset = define_Dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--opt", required=True, help='KAIR options JSON with an "spt" block')
    parser.add_argument("--kair-root", default=os.getcwd(), help="the KAIR checkout (default: working directory)")
    parser.add_argument("--script", default="main_train_psnr.py", help="KAIR training script to run")
    args = parser.parse_args(argv)
    root = os.path.abspath(args.kair_root)
    script = os.path.join(root, args.script)
    if not os.path.isfile(script):
        return fail(f"{script} not found: run from a KAIR checkout or pass --kair-root")
    os.chdir(root)
    sys.path.insert(0, root)

    def run() -> None:
        install(read_options(args.opt))
        from .model import StopTraining

        sys.argv = [script, "--opt", args.opt]
        try:
            runpy.run_path(script, run_name="__main__")
        except StopTraining as stop:
            print(f"spt-adapter: stopped after {stop.args[0]} iterations (train.spt_stop_after)")

    return run_reporting_errors(run)


if __name__ == "__main__":
    sys.exit(main())
