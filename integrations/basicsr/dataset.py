"""``SPTPairedImageDataset``: BasicSR's PairedImageDataset plus ``prior`` for each LQ patch.

The prior is computed once per LQ *image* (whole image, through ``spt_adapter.prior.PriorCache``:
SAM never runs twice on the same image and settings) and then cut and flipped exactly like the
LQ patch: the dataset saves Python's ``random`` state before BasicSR's ``__getitem__`` draws the
crop and the flips, and replays BasicSR's own ``paired_random_crop`` and ``augment`` on the prior
with that state. The replay is checked on the LQ image itself, so a mismatch can never pass
silently.

Options: everything PairedImageDataset takes, plus ``spt_prior`` (same keys as ``spt.prior``; a
YAML anchor shares one block: ``prior: &prior {...}`` in ``spt`` and ``spt_prior: *prior`` here).
"""

from __future__ import annotations

import random

import numpy as np
import torch
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, imfrombytes
from basicsr.utils.registry import DATASET_REGISTRY

from spt_adapter.errors import ConfigError, PriorError

from .._options import PriorSource, parse_spt_block


class SPTPairedImageDataset(PairedImageDataset):
    """PairedImageDataset whose items also hold ``prior`` (C_p, h, w) aligned with ``lq``."""

    def __init__(self, opt):
        block = opt.get("spt_prior")
        if block is None:
            raise ConfigError(
                f"dataset {opt.get('name')!r} of type SPTPairedImageDataset needs the prior settings: add "
                "`spt_prior:` (same keys as spt.prior; a YAML anchor can share the block)"
            )
        self.prior_spec = parse_spt_block({"prior": dict(block)}, "spt_prior").prior
        self.prior_source = PriorSource(self.prior_spec)
        super().__init__(opt)

    def _full_lq(self, lq_path: str) -> np.ndarray:
        if self.file_client is None:
            self.file_client = FileClient(self.io_backend_opt.pop("type"), **self.io_backend_opt)
        return imfrombytes(self.file_client.get(lq_path, "lq"), float32=False)  # HWC, BGR, uint8

    def __getitem__(self, index):
        state = random.getstate()
        item = super().__getitem__(index)
        after = random.getstate()
        lq_bgr = self._full_lq(item["lq_path"])
        if lq_bgr.ndim == 2:
            lq_bgr = np.repeat(lq_bgr[..., None], 3, axis=2)
        rgb = np.ascontiguousarray(lq_bgr[..., ::-1])
        prior = np.asarray(self.prior_source(rgb), dtype=np.float32)  # (C, H, W)
        if prior.ndim != 3 or prior.shape[1:] != rgb.shape[:2]:
            raise PriorError(f"the prior of {item['lq_path']} has shape {prior.shape}, expected (C, {rgb.shape[0]}, {rgb.shape[1]})")
        hwc = np.ascontiguousarray(prior.transpose(1, 2, 0))
        if self.opt["phase"] == "train":
            random.setstate(state)
            scale = self.opt["scale"]
            gt_like = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (rgb.shape[0] * scale, rgb.shape[1] * scale, 1))
            lq_check = lq_bgr.astype(np.float32) / 255.0
            _, (lq_check, hwc) = paired_random_crop([gt_like], [lq_check, hwc], self.opt["gt_size"], scale, item["gt_path"])
            lq_check, hwc = augment([np.ascontiguousarray(lq_check), np.ascontiguousarray(hwc)],
                                    self.opt["use_hflip"], self.opt["use_rot"])
            random.setstate(after)
            if hwc.ndim == 2:
                hwc = hwc[..., None]
            expect = torch.from_numpy(np.ascontiguousarray(lq_check[..., ::-1].transpose(2, 0, 1)))
            if self.opt.get("color") != "y" and self.mean is None and self.std is None and not torch.allclose(
                expect, item["lq"], atol=1e-6
            ):
                raise PriorError(f"internal error: the prior of {item['lq_path']} could not be aligned with its LQ patch")
        item["prior"] = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))).float()
        return item


if "SPTPairedImageDataset" not in DATASET_REGISTRY:
    DATASET_REGISTRY.register(SPTPairedImageDataset)
