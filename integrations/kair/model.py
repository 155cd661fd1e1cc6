"""``SPTModelPlain``: KAIR's ModelPlain training SPT units (built on the checkout's own class).

* units are injected right after ``define_G`` (into ``netG`` and ``netE``), before any load;
* ``load_network`` loads the backbone (``spt.backbone``) onto the logical backbone, so KAIR's
  non-strict load (``G_param_strict: false``: tensors paired *by position*) pairs checkpoint tensors
  with backbone tensors only — never with unit tensors;
* ``feed_data`` takes ``data["prior"]``; ``netG_forward`` runs inside ``netG.use_prior``; units that read
  no prior (``spt.prior: "none"``, ``"fusion": "lora"`` / ``"lowrank"``) get none: the datasets compute
  nothing and every step is ModelPlain's own;
* a distilled prior (``spt.student``): the student makes the prior from ``L``; training items carry
  ``teacher_prior`` (the teacher on the item's ``H`` only, see ``train.PriorDataset``) and the step is
  KAIR's own with the distillation loss added to ``G_lossfn`` (divided by ``G_lossfn_weight``, so that
  ``spt.distill.weight`` is the weight in the total loss), after ``spt.distill.student_steps``
  student-only steps (:mod:`spt_adapter.integrations._distill`);
* ``save`` writes deltas ``<iter>_G.safetensors`` / ``<iter>_E.safetensors`` (+ KAIR's optimizer
  state); ``load`` resumes from the newest deltas in ``path.models``;
* KAIR's loop never ends by itself: ``train.spt_stop_after: N`` stops it cleanly after N
  iterations (the launcher catches :class:`StopTraining`);
* ``"gpu_ids": []`` trains on the CPU (see :func:`model_options`).
"""

from __future__ import annotations

import glob
import os
import re

import torch

import spt_adapter
from spt_adapter.errors import ConfigError

from .._checkpoint import read_state_dict
from .._distill import distilled_iteration
from .._netio import attach_units, bare, check_adapter_matches, copy_units, ema_units, load_backbone_state, load_units
from .._options import task_of
from .options import spt_options


class StopTraining(Exception):
    """Raised to leave KAIR's endless loop after ``spt.stop_after`` iterations."""


def last_delta(models_dir: str, net_type: str) -> tuple[int, str | None]:
    """The newest ``<iter>_<net_type>.safetensors`` in ``models_dir``."""
    found = []
    for path in glob.glob(os.path.join(models_dir, f"*_{net_type}.safetensors")):
        m = re.fullmatch(rf"(\d+)_{net_type}\.safetensors", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return max(found) if found else (0, None)


def model_options(opt: dict) -> dict:
    """The options the model is built with: KAIR's device choice, made consistent for the CPU.

    KAIR's ``utils_option.parse`` needs ``gpu_ids`` to be a list (it exports it as
    ``CUDA_VISIBLE_DEVICES`` and sets ``num_gpu = len(gpu_ids)``), but ``ModelBase.__init__`` picks
    ``'cuda'`` for *any* list (``gpu_ids is not None``), even ``[]`` -- while KAIR's own
    ``define_F`` picks the CPU for ``[]``. So ``"gpu_ids": []`` means "train on the CPU": the model
    gets a copy of the options with ``gpu_ids = None``, ModelBase's own CPU branch (the checkout is
    not modified). A non-empty ``gpu_ids`` without a usable CUDA device is a clear error.
    """
    gpu_ids = opt.get("gpu_ids")
    if gpu_ids is not None and len(gpu_ids) == 0:
        opt = type(opt)(opt)  # NoneDict stays a NoneDict; main_train_psnr.py keeps its own dict
        opt["gpu_ids"] = None
    elif gpu_ids and not torch.cuda.is_available():  # parse() has set CUDA_VISIBLE_DEVICES by now
        raise ConfigError(
            f'KAIR options ask for GPUs "gpu_ids": {list(gpu_ids)} but PyTorch sees no CUDA device; '
            'set "gpu_ids": [] to train on the CPU'
        )
    return opt


def make_model_class(model_plain: type) -> type:
    """Subclass the checkout's ``models.model_plain.ModelPlain``."""

    class SPTModelPlain(model_plain):
        def __init__(self, opt):
            opt = model_options(opt)
            self.spt = spt_options(opt)
            self.spt_stop_after = int(opt["train"].get("spt_stop_after") or 0)
            super().__init__(opt)
            # inject now: right after define_G, before any checkpoint is loaded
            self.netG = self.model_to_device(attach_units(self.netG, self.spt))
            if self.opt_train["E_decay"] > 0:
                self.netE = attach_units(self.netE, self.spt).to(self.device).eval()
                copy_units(bare(self.netG), self.netE)

        # -- weights -------------------------------------------------------------------------
        def load_network(self, load_path, network, strict=True, param_key="params"):
            state = read_state_dict(load_path, param_key)
            load_backbone_state(network, state, "strict" if strict else "by_position", source=load_path)

        def load(self):
            self.load_network(self.spt.backbone, self.netG, strict=self.opt_train["G_param_strict"], param_key="params")
            if self.opt_train["E_decay"] > 0:
                self.load_network(
                    self.spt.backbone, self.netE, strict=self.opt_train["G_param_strict"], param_key="params"
                )
            step, delta_g = last_delta(self.save_dir, "G")
            delta_g = delta_g or self.spt.adapter
            if delta_g:
                check_adapter_matches(delta_g, self.spt)  # e.g. resuming a distilled run with another teacher
                load_units(bare(self.netG), delta_g)
                if self.opt_train["E_decay"] > 0:
                    _, delta_e = last_delta(self.save_dir, "E")
                    load_units(self.netE, delta_e or delta_g)
            elif self.opt_train["E_decay"] > 0:
                copy_units(bare(self.netG), self.netE)
            if self.opt_train["E_decay"] > 0:
                self.netE.eval()

        def load_optimizer(self, load_path, optimizer):
            optimizer.load_state_dict(torch.load(load_path, map_location=self.device, weights_only=True))

        def update_E(self, decay=0.999):
            ema_units(bare(self.netG), self.netE, decay)

        def save_network(self, save_dir, network, network_label, iter_label):
            path = os.path.join(save_dir, f"{iter_label}_{network_label}.safetensors")
            spt_adapter.save_adapter(
                bare(network),
                path,
                metadata={"kair_backbone": os.path.abspath(self.spt.backbone), "kair_iter": str(iter_label)},
                task=task_of(self.opt),
            )

        # -- data and forward ----------------------------------------------------------------
        def feed_data(self, data, need_H=True):
            super().feed_data(data, need_H)
            if not self.spt.reads_prior:
                self.prior = None
                return
            if self.spt.distilled:
                teacher = data.get("teacher_prior")
                self.teacher = None if teacher is None else teacher.to(self.device)
                return
            self.prior = data["prior"].to(self.device)

        def netG_forward(self):
            if self.spt.distilled or not self.spt.reads_prior:  # the student makes the prior from L, or none
                super().netG_forward()
                return
            with bare(self.netG).use_prior(self.prior):
                super().netG_forward()

        def optimize_parameters(self, current_step):
            if not self.spt.distilled:
                super().optimize_parameters(current_step)
                return
            student_only, distill = distilled_iteration(
                bare(self.netG),
                self.spt.distill,
                current_step,
                self.L,
                self.teacher,
                self.G_optimizer,
                self,
                "G_lossfn",
                lambda: super(SPTModelPlain, self).optimize_parameters(current_step),
                loss_scale=float(self.G_lossfn_weight),
            )
            if student_only:  # (no G_loss: the network did not run)
                if self.opt_train["E_decay"] > 0:
                    self.update_E(self.opt_train["E_decay"])
            if distill is not None:
                self.log_dict["distill_loss"] = distill

        def update_learning_rate(self, n):
            if self.spt_stop_after and n > self.spt_stop_after:
                raise StopTraining(n - 1)
            super().update_learning_rate(n)

    SPTModelPlain.__qualname__ = SPTModelPlain.__name__ = "SPTModelPlain"
    return SPTModelPlain
