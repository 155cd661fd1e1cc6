"""``SPTImageCleanModel``: Restormer's ImageCleanModel training SPT units (built on the fork's class).

Restormer's ``train.py`` crops and sub-samples batches itself (progressive learning) and passes only
``lq``/``gt`` to ``feed_train_data``; the prior is therefore computed from the ``lq`` the model
receives (after mixup), per image, through the prior cache. A distilled prior (``spt.student``):
the teacher runs on the ``gt`` the model receives (after mixup: the clean side of the same mix) and
the step is the fork's own with the distillation loss added to ``cri_pix``, after
``spt.distill.student_steps`` student-only steps; validation needs no prior (the student makes it).
Units that read no prior (``spt.prior: none``, ``fusion: lora`` / ``lowrank``): nothing is computed, every
step and test is the fork's own.
Checkpoints are SPT deltas
``models/net_g_<iter>.safetensors`` (+ ``net_g_ema_<iter>``); resume loads them like the BasicSR
shim. Importing this module needs a Restormer checkout on ``sys.path``.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import torch

from spt_adapter.core.student import teacher_at_lq_size

from .._options import PriorSource, provider_image, task_of


def priors_for(batch: torch.Tensor, source: PriorSource) -> torch.Tensor:
    """(B,3,H,W) images in [0,1] -> (B,C_p,H,W) priors, one cached prior per image."""
    out = [torch.from_numpy(np.asarray(source(provider_image(img)), dtype=np.float32)) for img in batch]
    return torch.stack(out).to(batch.device)


def pad_prior_like(prior: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The prior of ``lq`` for Restormer's ``pad_test`` input: ``pad_test`` reflect-pads ``lq`` at the
    bottom/right to a multiple of ``window_size``; the prior is padded the same way, so that it stays
    aligned pixel for pixel (instead of being stretched to the padded size)."""
    dh, dw = image.shape[-2] - prior.shape[-2], image.shape[-1] - prior.shape[-1]
    if (dh, dw) == (0, 0) or dh < 0 or dw < 0:
        return prior
    return torch.nn.functional.pad(prior, (0, dw, 0, dh), mode="reflect")


def make_model_class(image_clean_model: type) -> type:
    """Subclass the checkout's ``ImageCleanModel``."""
    from os import path as osp

    import spt_adapter
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
    from .._options import parse_spt_block

    class SPTImageCleanModel(image_clean_model):
        def __init__(self, opt):
            self.spt = parse_spt_block(opt.get("spt"), "spt")
            self.spt_prior = PriorSource(self.spt.prior_spec) if self.spt.reads_prior else None
            load_path = opt["path"].get("pretrain_network_g")
            self._resume = find_resume_deltas(load_path)
            backbone = resolve_backbone_path(self.spt.backbone, load_path, self._resume, "restormer_backbone")
            if not backbone or not osp.isfile(backbone):
                raise ConfigError(
                    f"SPTImageCleanModel needs the backbone checkpoint (path.pretrain_network_g or spt.backbone); got {backbone!r}"
                )
            self.spt_backbone = osp.abspath(backbone)
            opt["path"]["pretrain_network_g"] = opt["path"].get("pretrain_network_g") or self.spt_backbone
            super().__init__(opt)

        def _load_backbone(self, net):
            state = read_state_dict(self.spt_backbone, self.opt["path"].get("param_key", "params"))
            load_backbone_state(
                net,
                state,
                "strict" if self.opt["path"].get("strict_load_g", True) else "by_name",
                source=self.spt_backbone,
            )

        def load_network(self, net, load_path, strict=True, param_key="params"):
            self._load_backbone(net)
            self.net_g = self.model_to_device(
                attach_units(net, self.spt, adapter=self._resume.get("net_g") or self.spt.adapter)
            )

        def init_training_settings(self):
            with ema_decay_deferred(self.opt["train"]) as decay:
                super().init_training_settings()
            self.ema_decay = decay
            if decay > 0:
                from basicsr.models.archs import define_network

                self.net_g_ema = build_units_only_ema(
                    lambda: define_network(dict(self.opt["network_g"])),
                    self._load_backbone,
                    self.spt,
                    self._resume.get("net_g_ema"),
                    self.net_g,
                    self.device,
                )

        def model_ema(self, decay=0.999):
            ema_units(bare(self.net_g), self.net_g_ema, decay)

        def _priors(self) -> PriorSource:
            if self.spt_prior is None:
                raise ConfigError("internal error: a prior was asked for units that read none")
            return self.spt_prior

        def feed_train_data(self, data):
            super().feed_train_data(data)
            if not self.spt.reads_prior:
                return
            if self.spt.distilled:  # the teacher sees the (mixed) clean gt only
                scale = max(1, self.gt.shape[-1] // self.lq.shape[-1])
                self.teacher = teacher_at_lq_size(priors_for(self.gt, self._priors()), scale, tuple(self.lq.shape[-2:]))
                return
            self.prior = priors_for(self.lq, self._priors())

        def feed_data(self, data):
            super().feed_data(data)
            if self.spt.reads_prior and not self.spt.distilled:
                self.prior = priors_for(self.lq, self._priors())

        def optimize_parameters(self, current_iter):
            if not self.spt.reads_prior:
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
                lambda: super(SPTImageCleanModel, self).optimize_parameters(current_iter),
            )
            if student_only:
                self.log_dict = {"l_distill": distill}
                if self.ema_decay > 0:
                    self.model_ema(decay=self.ema_decay)
            elif distill is not None:
                self.log_dict["l_distill"] = distill

        def nonpad_test(self, img=None):
            if self.spt.distilled or not self.spt.reads_prior:  # the student makes the prior, or none is read
                super().nonpad_test(img)
                return
            net = self.net_g_ema if hasattr(self, "net_g_ema") else bare(self.net_g)
            with net.use_prior(self.prior if img is None else pad_prior_like(self.prior, img)):
                super().nonpad_test(img)

        def save(self, epoch, current_iter):
            label = "latest" if current_iter == -1 else current_iter
            models = self.opt["path"]["models"]
            meta = {"restormer_backbone": self.spt_backbone, "restormer_iter": str(current_iter)}
            task = task_of(self.opt)
            spt_adapter.save_adapter(
                bare(self.net_g), osp.join(models, f"net_g_{label}.safetensors"), metadata=meta, task=task
            )
            if hasattr(self, "net_g_ema"):
                spt_adapter.save_adapter(
                    self.net_g_ema, osp.join(models, f"net_g_ema_{label}.safetensors"), metadata=meta, task=task
                )
            self.save_training_state(epoch, current_iter)

    SPTImageCleanModel.__qualname__ = "SPTImageCleanModel"
    return SPTImageCleanModel


def register() -> list[str]:
    """Make ``model_type: SPTImageCleanModel`` resolvable by the fork's ``create_model`` (it looks
    the name up in the modules it scanned: one more module is appended to that list)."""
    import basicsr.models as models
    from basicsr.models.image_restoration_model import ImageCleanModel

    name = "spt_adapter_restormer_models"
    if not any(getattr(m, "__name__", "") == name for m in models._model_modules):
        module = types.ModuleType(name)
        module.SPTImageCleanModel = make_model_class(ImageCleanModel)
        sys.modules[name] = module
        models._model_modules.append(module)
    return ["restormer:basicsr.models.create_model.SPTImageCleanModel"]
