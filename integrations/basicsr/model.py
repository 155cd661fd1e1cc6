"""``SPTSRModel``: BasicSR's SRModel training SPT units on a frozen backbone.

What changes against ``SRModel`` (everything else — losses, optimizers, schedulers, logging,
validation through ``basicsr.metrics`` — is BasicSR's own code):

* the backbone loads from ``path.pretrain_network_g`` (or ``spt.backbone``) and is never written;
* units are injected into ``net_g`` and ``net_g_ema`` (same backbone, units copied); the EMA walks
  unit parameters only, so the frozen backbone stays bit-exact;
* ``feed_data`` takes ``data["prior"]`` (from ``SPTPairedImageDataset``) and every forward runs
  inside ``net.use_prior(prior)``;
* units that read no prior (``spt.prior: none``, ``fusion: lora`` / ``lowrank``): batches carry none
  (plain ``PairedImageDataset``s; a dataset ``spt_prior`` is refused before training) and every step and
  test is SRModel's own, with no prior computed or passed;
* a distilled prior (``spt.student``): the adapter's student makes the prior from ``lq``; training
  batches carry ``teacher_prior`` (``spt_teacher`` in the train dataset: the teacher on GT images
  only) and the step is BasicSR's own with the distillation loss added to ``cri_pix``, after
  ``spt.distill.student_steps`` student-only steps (:mod:`spt_adapter.integrations._distill`);
  validation needs no prior;
* ``save`` writes SPT deltas ``models/net_g_<iter>.safetensors`` (+ ``net_g_ema_<iter>``) instead of
  whole networks, then BasicSR's training state; on resume (``path.resume_state`` or
  ``--auto_resume``) BasicSR points ``pretrain_network_g`` at ``net_g_<iter>.pth``: the model loads
  the deltas saved beside it and the backbone recorded in them.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from os import path as osp

from basicsr.archs import build_network
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import MODEL_REGISTRY

import spt_adapter
from spt_adapter.core import keys
from spt_adapter.core.model import SPTModel
from spt_adapter.errors import ConfigError

from .._checkpoint import read_state_dict
from .._distill import distilled_iteration
from .._netio import (
    attach_units,
    bare,
    build_units_only_ema,
    ema_decay_deferred,
    ema_units,
    find_resume_deltas,
    load_backbone_state,
    resolve_backbone_path,
)
from .._options import check_dataset_priors, parse_spt_block, task_of

META_BACKBONE = "basicsr_backbone"


class SPTSRModel(SRModel):
    """SRModel whose trainable parameters are exactly the SPT units; see the module docstring."""

    def __init__(self, opt):
        self.spt = parse_spt_block(opt.get("spt"), "spt")
        check_dataset_priors(opt, self.spt)
        path_opt = opt["path"]
        load_path = path_opt.get("pretrain_network_g")
        # resuming: BasicSR set pretrain_network_g to models/net_g_<iter>.pth; we saved deltas
        self._resume_deltas = find_resume_deltas(load_path)
        backbone = resolve_backbone_path(self.spt.backbone, load_path, self._resume_deltas, META_BACKBONE)
        if not backbone:
            raise ConfigError(
                "SPTSRModel trains SPT units on a pretrained backbone: set path.pretrain_network_g (or spt.backbone) "
                "to the backbone checkpoint"
            )
        if not osp.isfile(backbone):
            raise ConfigError(f"the backbone checkpoint {backbone} does not exist")
        self.spt_backbone = osp.abspath(backbone)
        if not load_path:
            path_opt["pretrain_network_g"] = self.spt_backbone  # so that SRModel calls load_network
        # SRModel.__init__ loads pretrain_network_g through self.load_network (overridden below)
        super().__init__(opt)

    # -- networks --------------------------------------------------------------------------------
    def _load_backbone(self, net) -> None:
        param_key = self.opt["path"].get("param_key_g", "params")
        if param_key == "params_ema" and self._resume_deltas:
            param_key = "params"
        state = read_state_dict(self.spt_backbone, param_key)
        mode = "strict" if self.opt["path"].get("strict_load_g", True) else "by_name"
        load_backbone_state(net, state, mode, source=self.spt_backbone)
        get_root_logger().info(
            f"SPT: loaded backbone {self.spt_backbone} [{param_key}] into {type(bare(net)).__name__}"
        )

    def load_network(self, net, load_path, strict=True, param_key="params"):
        """Called by SRModel.__init__ for net_g: load the frozen backbone, then put the units on."""
        self._load_backbone(net)
        spt_net = attach_units(
            net,
            self.spt,
            adapter=self._resume_deltas.get("net_g") or self.spt.adapter,
            training=bool(self.opt["is_train"]),
        )
        self.net_g = self.model_to_device(spt_net)

    def init_training_settings(self):
        # SRModel builds optimizers etc. with ema_decay 0; the EMA net is built here
        with ema_decay_deferred(self.opt["train"]) as decay:
            super().init_training_settings()
        self.ema_decay = decay
        if decay > 0:
            get_root_logger().info(f"Use Exponential Moving Average of the SPT units with decay: {decay}")
            self.net_g_ema = build_units_only_ema(
                lambda: build_network(self.opt["network_g"]),
                self._load_backbone,
                self.spt,
                self._resume_deltas.get("net_g_ema"),
                self.net_g,
                self.device,
            )
        trainable = [n for n, p in bare(self.net_g).named_parameters() if p.requires_grad]
        assert trainable and all(keys.is_unit_key(n) for n in trainable), "only SPT units may train"
        bare(self.net_g).print_trainable_parameters()

    def model_ema(self, decay=0.999):
        """EMA over the unit parameters only: the frozen backbone is shared bit for bit."""
        ema_units(bare(self.net_g), self.net_g_ema, decay)

    # -- data and forward ------------------------------------------------------------------------
    def feed_data(self, data):
        super().feed_data(data)
        if not self._reads_prior():
            if "prior" in data:
                raise ConfigError(
                    "the adapter reads no prior but the batch has a 'prior': give its dataset no spt_prior "
                    "(`type: PairedImageDataset`)"
                )
            self.prior = None
            return
        if self._distilled():
            if "prior" in data:
                raise ConfigError(
                    "the model has a distilled prior (spt.student) but the batch has an LQ 'prior': give the "
                    "train dataset `spt_teacher:` instead of `spt_prior:`, and the val datasets neither"
                )
            teacher = data.get("teacher_prior")
            self.teacher = None if teacher is None else teacher.to(self.device)
            return
        if "prior" not in data:
            raise ConfigError(
                "the batch has no 'prior': use `type: SPTPairedImageDataset` for the train and val datasets "
                "(or another dataset that returns a 'prior' tensor)"
            )
        self.prior = data["prior"].to(self.device)

    def _distilled(self) -> bool:
        """Whether the units' prior comes from a student: the spt block's, or for testing the adapter's."""
        return self.spt.distilled or bare(self.net_g).student() is not None

    def _reads_prior(self) -> bool:
        """Whether the units read a prior: the active adapter's config decides (when testing, the adapter
        file's, which may differ from the spt block)."""
        config = bare(self.net_g).spt_config.get(bare(self.net_g).active_adapter)
        return config is None or config.reads_prior

    def optimize_parameters(self, current_iter):
        if not self._reads_prior():
            super().optimize_parameters(current_iter)
            return
        if not self.spt.distilled:
            with bare(self.net_g).use_prior(self.prior):
                super().optimize_parameters(current_iter)
            return
        student_only, distill = distilled_iteration(
            bare(self.net_g),
            self.spt.distill,
            current_iter,
            self.lq,
            self.teacher,
            self.optimizer_g,
            self,
            "cri_pix",
            lambda: super(SPTSRModel, self).optimize_parameters(current_iter),
        )
        if student_only:
            self.log_dict = OrderedDict(l_distill=distill)
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        elif distill is not None:
            self.log_dict["l_distill"] = distill

    def test(self):
        """SRModel.test on ``lq`` reflect-padded to the backbone's size multiple (SwinIR/HAT window), as
        BasicSR's own SwinIRModel does, the prior padded alike (edge-replicated, as ``restore`` does);
        the output is cropped back."""
        from torch.nn import functional as F

        from spt_adapter.inference.restore import size_multiple

        lq, prior = self.lq, getattr(self, "prior", None)
        h, w = lq.shape[-2:]
        # basicsr's SwinIR keeps its window only in the options (no window_size attribute on the net)
        window = self.opt["network_g"].get("window_size") or 1
        multiple = math.lcm(
            size_multiple(bare(self.net_g)), *(window if isinstance(window, (list, tuple)) else [window])
        )
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            self.lq = F.pad(lq, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
            if prior is not None and not self._distilled() and self._reads_prior():
                k = prior.shape[-2] // h
                self.prior = F.pad(prior.float(), (0, pw * k, 0, ph * k), mode="replicate")
        try:
            if self._distilled() or not self._reads_prior():  # the student makes the prior from lq, or none
                super().test()
            else:
                net = self.net_g_ema if hasattr(self, "net_g_ema") else bare(self.net_g)
                with net.use_prior(self.prior):
                    super().test()
        finally:
            self.lq, self.prior = lq, prior
        if ph or pw:
            s = self.output.shape[-2] // (h + ph)
            self.output = self.output[..., : h * s, : w * s]

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, epoch, current_iter):
        label = "latest" if current_iter == -1 else current_iter
        self.save_delta(bare(self.net_g), f"net_g_{label}.safetensors", current_iter)
        if hasattr(self, "net_g_ema"):
            self.save_delta(self.net_g_ema, f"net_g_ema_{label}.safetensors", current_iter)
        self.save_training_state(epoch, current_iter)

    def save_delta(self, net: SPTModel, filename: str, current_iter) -> str | None:
        """Write one network's units as an SPT adapter (rank 0 only)."""
        if get_dist_info()[0] != 0:
            return None
        target = osp.join(self.opt["path"]["models"], filename)
        meta = {
            META_BACKBONE: self.spt_backbone,
            "basicsr_iter": str(current_iter),
            "basicsr_network_g": json.dumps(self.opt["network_g"], sort_keys=True, default=str),
        }
        os.makedirs(osp.dirname(target), exist_ok=True)
        spt_adapter.save_adapter(net, target, metadata=meta, task=task_of(self.opt))
        return target


def _register() -> None:
    if "SPTSRModel" not in MODEL_REGISTRY:
        MODEL_REGISTRY.register(SPTSRModel)


_register()
