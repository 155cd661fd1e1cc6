"""``SPTPairedImageDataset``: BasicSR's PairedImageDataset plus ``prior`` for each LQ patch.

The prior is computed once per LQ *image* (whole image, through ``spt_adapter.prior.PriorCache``:
SAM never runs twice on the same image and settings) and then cut and flipped exactly like the
LQ patch: the dataset saves Python's ``random`` state before BasicSR's ``__getitem__`` draws the
crop and the flips, and replays BasicSR's own ``paired_random_crop`` and ``augment`` on the prior
with that state. The replay is checked on the LQ image itself, so a mismatch can never pass
silently.

Options: everything PairedImageDataset takes, plus ``spt_prior`` (same keys as ``spt.prior``; a
YAML anchor shares one block: ``prior: &prior {...}`` in ``spt`` and ``spt_prior: *prior`` here).

A distilled prior (``spt.student``): the train dataset takes ``spt_teacher`` instead (the teacher,
same keys). The teacher runs on the whole **GT** image only (cached like every prior), its map gets
the GT patch's crop and flips, is brought to the LQ patch's grid (each LQ pixel takes the GT pixel
nearest its centre, :func:`spt_adapter.core.student.teacher_at_lq_size`) and is returned as
``teacher_prior``; the LQ image is never segmented. Validation datasets need neither block (the
student makes the prior): a plain ``PairedImageDataset`` will do. Units that read no prior (``spt.prior:
none``, ``fusion: lora`` / ``lowrank``) need no prior anywhere: every dataset is a plain
``PairedImageDataset`` (the model refuses an ``spt_prior`` block before training starts).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, imfrombytes
from basicsr.utils.registry import DATASET_REGISTRY

from spt_adapter.core.student import teacher_at_lq_size
from spt_adapter.errors import ConfigError, PriorError

from .._options import DATASET_TEACHER_KEY, PriorSource, dataset_prior_block


class SPTPairedImageDataset(PairedImageDataset):
    """PairedImageDataset whose items also hold ``prior`` (C_p, h, w) aligned with ``lq`` -- or, with
    ``spt_teacher``, ``teacher_prior`` (the teacher's map of the GT patch on the LQ grid)."""

    def __init__(self, opt):
        found = dataset_prior_block(opt, f"datasets.{opt.get('name')}")
        if found is None:
            raise ConfigError(
                f"dataset {opt.get('name')!r} of type SPTPairedImageDataset needs the prior settings: add "
                f"`spt_prior:` (same keys as spt.prior; a YAML anchor can share the block), or `{DATASET_TEACHER_KEY}:` "
                "for a distilled prior's teacher; an adapter that reads no prior (spt.prior: none, fusion lora / "
                "lowrank) trains on a plain `type: PairedImageDataset`"
            )
        key, self.prior_spec = found
        self.teacher = key == DATASET_TEACHER_KEY
        self.prior_source = PriorSource(self.prior_spec)
        super().__init__(opt)

    def _full_image(self, path: str, kind: str) -> np.ndarray:
        """The whole image (HWC, BGR, uint8; grey repeated to 3 channels) BasicSR cropped this item from."""
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop("type"), **self.io_backend_opt)
        img = imfrombytes(self.file_client.get(path, kind), float32=False)
        return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img

    def _prior_of(self, bgr: np.ndarray, path: str) -> np.ndarray:
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        prior = np.asarray(self.prior_source(rgb), dtype=np.float32)  # (C, H, W)
        if prior.ndim != 3 or prior.shape[1:] != rgb.shape[:2]:
            raise PriorError(
                f"the prior of {path} has shape {prior.shape}, expected (C, {rgb.shape[0]}, {rgb.shape[1]})"
            )
        return np.ascontiguousarray(prior.transpose(1, 2, 0))

    def __getitem__(self, index):
        state = random.getstate()
        item = super().__getitem__(index)
        after = random.getstate()
        train = self.opt["phase"] == "train"
        if self.teacher and not train:
            return item  # the student makes the prior at validation: the teacher is for training only
        lq_bgr = self._full_image(item["lq_path"], "lq")
        if self.teacher:  # the teacher sees the GT image only
            hwc = self._prior_of(self._full_image(item["gt_path"], "gt"), item["gt_path"])
        else:
            hwc = self._prior_of(lq_bgr, item["lq_path"])
        if train:
            hwc = self._replay_crop_and_flips(state, item, lq_bgr, hwc)
            random.setstate(after)
        chw = hwc.transpose(2, 0, 1)
        if self.teacher:
            chw = teacher_at_lq_size(chw, self.opt["scale"], tuple(item["lq"].shape[-2:]))
        item["teacher_prior" if self.teacher else "prior"] = torch.from_numpy(np.ascontiguousarray(chw)).float()
        return item

    def _replay_crop_and_flips(self, state, item, lq_bgr: np.ndarray, hwc: np.ndarray) -> np.ndarray:
        """The crop and flips BasicSR drew for this item (Python's ``random`` state before its
        ``__getitem__``), replayed on the prior (GT-sized for a teacher, LQ-sized otherwise) and checked
        on the LQ image itself."""
        random.setstate(state)
        scale = self.opt["scale"]
        gt_shape = (lq_bgr.shape[0] * scale, lq_bgr.shape[1] * scale, 1)
        gt_side = hwc if self.teacher else np.broadcast_to(np.zeros((1, 1, 1), np.float32), gt_shape)
        lq_check = lq_bgr.astype(np.float32) / 255.0
        if self.teacher:  # (one GT image and one LQ image: BasicSR returns bare arrays)
            hwc, lq_check = paired_random_crop([gt_side], [lq_check], self.opt["gt_size"], scale, item["gt_path"])
        else:
            _, (lq_check, hwc) = paired_random_crop(
                [gt_side], [lq_check, hwc], self.opt["gt_size"], scale, item["gt_path"]
            )
        lq_check, hwc = augment(
            [np.ascontiguousarray(lq_check), np.ascontiguousarray(hwc)], self.opt["use_hflip"], self.opt["use_rot"]
        )
        if hwc.ndim == 2:
            hwc = hwc[..., None]
        expect = torch.from_numpy(np.ascontiguousarray(lq_check[..., ::-1].transpose(2, 0, 1)))
        if (
            self.opt.get("color") != "y"
            and self.mean is None
            and self.std is None
            and not torch.allclose(expect, item["lq"], atol=1e-6)
        ):
            raise PriorError(f"internal error: the prior of {item['lq_path']} could not be aligned with its LQ patch")
        return hwc


if "SPTPairedImageDataset" not in DATASET_REGISTRY:
    DATASET_REGISTRY.register(SPTPairedImageDataset)
