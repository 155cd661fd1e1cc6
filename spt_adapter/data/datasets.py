"""Paired (LQ, GT, prior) datasets for denoising and bicubic super-resolution.

    from spt_adapter.data.datasets import PairedPriorDataset
    from spt_adapter.prior import ClassicalMaskProvider, PriorCache
    ds = PairedPriorDataset("../shared/data/CBSD68", "denoise:25", PriorCache("priors"),
                            ClassicalMaskProvider("slic"), patch_size=64, train=True)
    item = ds[0]   # {"lq": (3,h,w), "gt": (3,H,W), "prior": (C,h,w), "path": str, ...}

How LQ images are made (:func:`degrade`; ``spt-adapter masks --degrade`` makes the very same
images, so their cache keys match):

- ``denoise:<sigma>``: ``LQ = round(clip(GT + N(0, sigma/255), 0, 1) * 255)`` as uint8. The noise
  is drawn from a generator seeded by ``(seed, sha256 of the GT pixels)``: fixed per image and
  seed, in training too -- the prior is computed on the LQ image, so a new noise draw would
  mean a new SAM run; use several seeds for several realisations.
- ``sr:<scale>``: GT is cropped to a multiple of ``scale``; ``LQ = imresize_bicubic(GT, 1/scale)``
  (MATLAB-style, uint8).
- any other task of :mod:`spt_adapter.data.degradations` (``jpeg:30``, ``sr:4:bd``,
  ``blur:gauss:1.2+sr:4+jpeg:60``; :func:`degrade_float`): GT mod-cropped to the task's total scale,
  degraded with the seed ``noise_seed(gt, seed)``; ``clip=False`` leaves noise unclipped (the prior
  sees the clipped 8-bit image). ``fresh=True`` (training): a new seed for every item, drawn from
  torch's generator (seeded per sample from (seed, step) by the trainer), the prior computed on
  that draw and not cached.
- ``paired:<scale>`` with ``lq_paths``: the LQ images are files (:mod:`spt_adapter.data.pairs`);
  the GT is cropped at the bottom/right to ``scale`` x the LQ size.
- ``noise="kair"`` (evaluation protocol of KAIR's ``main_test_dncnn.py``, :func:`kair_noisy`): the
  network sees ``float32(GT / 255) + N(0, sigma/255)`` drawn by ``np.random.seed(seed)`` afresh for
  every image, neither clipped nor quantised; the prior is computed on its clipped 8-bit version.

``channels=1`` (1-channel backbones) reads every image as grey (BT.601 luma of a colour file, as
KAIR's ``n_channels=1``), so GT, LQ and the image the prior is computed on are all grey (the prior
provider sees the grey image replicated to RGB).

``upsampled=True`` (SR only): *pre-upsampled SR*, for x1 networks trained on bicubic-upsampled
input (DnCNN-3, VDSR, SRCNN). The LR image is made as above, then upsampled by ``scale`` with the
same MATLAB-style bicubic (in float, not rounded), so ``lq`` has the GT's size. With
``channels=1`` a colour file is read as RGB and both ``gt`` and ``lq`` are the Y channel of YCbCr
(MATLAB ``rgb2ycbcr``, Y in [16, 235], unrounded: ``gt`` is then not on the 8-bit grid) -- the
protocol of DnCNN's ``Demo_test_DnCNN3.m``; a file stored grey (one channel) keeps its grey values,
and its upsampled LR is rounded to 8 bits as MATLAB's ``imresize`` of a uint8 image is.

The prior is computed on the LQ image (``oracle=True``: on the clean GT image) through the
cache, so the provider runs once per image. ``prior_fn(image) -> (C, H, W)`` replaces provider
and cache (e.g. a constant prior). The prior keeps the size of the image it was computed on
(LQ size; GT size for ``oracle``) and gets the same crop / flips / rotation as ``lq`` and ``gt``.
Tensors are float32 in [0, 1]; ``lq`` is the uint8 LQ image / 255.

A distilled prior (``teacher=provider``): the teacher provider runs on the clean GT image only,
through the same cache, and the item holds ``teacher_prior`` (at LQ size: for SR the GT-sized map
is nearest-downsampled, each LQ pixel taking the GT pixel nearest its centre) and no ``prior``:
the LQ image is never segmented. ``with_prior=False`` yields items without any prior (evaluating
an adapter whose student makes its own).

``full_depth=True`` (``eval``; ``train`` on paired files): a 16-bit PNG/TIFF ground truth keeps its 16
bits: ``gt`` is the file / 65535 (same crop and flips), and the item's ``bits`` says 16 (8 for every
other file, with ``depth_note`` when a 16-bit colour file could only be read at 8 bits:
:func:`~spt_adapter.deploy.images.read_image_full_depth`). The LQ image of a synthetic task is still
made from the 8-bit image (the images ``masks --degrade`` makes, the same cache keys); a 16-bit LQ
*file* of a paired task is read whole as what the network reads (its prior from its 8-bit version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.student import teacher_at_lq_size
from ..deploy.images import read_image_full_depth, sixteen_bit
from ..errors import DataError
from ..pixels import rgb_to_ycbcr_y, to_uint8_channels
from ..prior.encode import DEFAULT_ENCODING
from .images import imresize_bicubic, list_images, read_image, stored_grey

#: how ``denoise`` noise is drawn: ``spt`` (per image and seed, clipped, 8-bit; training and default
#: evaluation) or ``kair`` (KAIR's test protocol, :func:`kair_noisy`)
NOISE_PROTOCOLS = ("spt", "kair")


@dataclass(frozen=True)
class Task:
    kind: str  # "denoise" | "sr" | "paired" | "chain"
    sigma: float = 0.0
    scale: int = 1
    steps: tuple = ()  # kind "chain": spt_adapter.data.degradations.Step

    def __str__(self) -> str:
        if self.kind == "denoise":
            return f"denoise:{self.sigma:g}"
        if self.kind == "chain":
            return "+".join(step.text for step in self.steps)
        return f"{self.kind}:{self.scale}"


def parse_task(task) -> Task:
    """``"denoise:25"`` -> Task("denoise", sigma=25); ``"sr:4"`` -> Task("sr", scale=4);
    ``"paired:4"`` -> Task("paired", scale=4): the LQ images are files (``--lq``), HQ = 4 x LQ;
    any other degradation of :mod:`spt_adapter.data.degradations` (``jpeg:30``, ``sr:4:bd``,
    ``blur:gauss:1.2+sr:4+jpeg:60``) -> Task("chain", scale=its total scale, steps=...)."""
    if isinstance(task, Task):
        return task
    text = str(task)
    kind, _, arg = text.partition(":")
    if kind not in ("denoise", "sr", "paired") or (":" in arg or "+" in arg):
        from ..data.degradations import degradation_scale, parse_degradation

        steps = parse_degradation(text)
        return Task("chain", scale=degradation_scale(steps), steps=steps)
    try:
        if kind == "paired":
            scale = int(arg)
            if scale < 1 or scale > 8:
                raise ValueError
            return Task("paired", scale=scale)
        if kind == "denoise":
            sigma = float(arg)
            if not (0 <= sigma <= 255):
                raise ValueError
            return Task("denoise", sigma=sigma)
        if kind == "sr":
            scale = int(arg)
            if scale < 2 or scale > 8:
                raise ValueError
            return Task("sr", scale=scale)
    except ValueError:
        pass
    from ..data.degradations import GRAMMAR

    raise DataError(f"task {task!r}: expected {GRAMMAR}")


def noise_seed(gt: np.ndarray, seed: int) -> int:
    h = hashlib.sha256(f"spt-noise|{seed}|".encode())
    h.update(f"{gt.shape}".encode())
    h.update(np.ascontiguousarray(gt).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def mod_crop(gt: np.ndarray, scale: int) -> np.ndarray:
    h, w = gt.shape[:2]
    return gt[: h - h % scale, : w - w % scale]


NOISES = ("spt", "kair")


def degrade(gt, task, seed: int = 0, channels: int = 3, noise: str = "spt") -> tuple[np.ndarray, np.ndarray]:
    """``(gt, lq)`` as HxWxC uint8 (C = ``channels``, 3 or 1) for ``task`` (gt mod-cropped for SR);
    deterministic in ``seed``. ``noise="kair"`` (denoising): KAIR's draw (:func:`kair_noisy`), and
    ``lq`` is its clipped 8-bit version -- the image a prior is computed on (the network reads the
    unclipped float)."""
    task = parse_task(task)
    if task.kind == "paired":
        raise DataError(f"task {task}: paired data reads its degraded images from files; there is nothing to degrade")
    if noise not in NOISES:
        raise DataError(f"noise must be one of {NOISES}, got {noise!r}")
    gt = to_uint8_channels(gt, channels)
    if task.kind == "chain":
        return degrade_float(gt, task, seed, gt.shape[2])[::2]
    if task.kind == "denoise" and noise == "kair":
        return gt, np.uint8((kair_noisy(gt, task.sigma, seed).clip(0, 1) * 255.0).round())
    if task.kind == "denoise":
        rng = np.random.default_rng(noise_seed(gt, seed))
        noisy = gt.astype(np.float64) / 255.0 + rng.normal(0.0, task.sigma / 255.0, gt.shape)
        return gt, np.rint(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)
    gt = np.ascontiguousarray(mod_crop(gt, task.scale))
    if gt.shape[0] < task.scale or gt.shape[1] < task.scale:
        raise DataError(f"image of size {gt.shape[:2]} is smaller than the SR scale {task.scale}")
    return gt, imresize_bicubic(gt, scale=1.0 / task.scale)


def degrade_float(gt, task, seed: int = 0, channels: int = 3, clip: bool = True):
    """``(gt, lq_float, lq_uint8)`` of a synthetic task: ``lq_float`` (float32 on [0, 1]) is what the
    network reads -- unclipped noise with ``clip=False`` -- and ``lq_uint8`` its clipped 8-bit
    version, the image a prior is computed on. ``denoise:<sigma>`` and ``sr:<scale>`` draw as
    :func:`degrade` does; other tasks run :func:`spt_adapter.data.degradations.apply_degradation`
    with the seed ``noise_seed(gt, seed)`` (a function of the image and ``seed``)."""
    from ..data.degradations import apply_degradation

    task = parse_task(task)
    gt = to_uint8_channels(gt, channels)
    if task.kind == "denoise" and not clip:
        rng = np.random.default_rng(noise_seed(gt, seed))
        noisy = (gt.astype(np.float64) / 255.0 + rng.normal(0.0, task.sigma / 255.0, gt.shape)).astype(np.float32)
        return gt, noisy, to_uint8(noisy)
    if task.kind != "chain":
        gt, lq = degrade(gt, task, seed, channels)
        return gt, lq.astype(np.float32) / 255.0, lq
    gt = np.ascontiguousarray(mod_crop(gt, task.scale))
    lq_f = apply_degradation(gt, task.steps, noise_seed(gt, seed), clip=clip)
    return gt, lq_f, to_uint8(lq_f)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image on [0, 1] as uint8 (round, clip)."""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def kair_noisy(gt: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """KAIR's ``main_test_dncnn.py`` degradation of a uint8 ``HxWxC`` image: ``float32(gt / 255.)``
    plus ``np.random.normal(0, sigma / 255., shape)`` right after ``np.random.seed(seed)`` (the same
    legacy Mersenne-Twister stream, without touching numpy's global state); no clipping, no rounding."""
    img = np.float32(np.asarray(gt) / 255.0)
    img += np.random.RandomState(seed).normal(0.0, sigma / 255.0, img.shape)
    return img


def augment(arrays, hflip: bool, vflip: bool, rot90: bool):
    """Apply the same flips / transpose to HxWxC (or HxW) arrays; returns contiguous copies."""
    out = []
    for a in arrays:
        if hflip:
            a = a[:, ::-1]
        if vflip:
            a = a[::-1]
        if rot90:
            a = a.swapaxes(0, 1)
        out.append(np.ascontiguousarray(a))
    return out


class PairedPriorDataset:
    """``PairedPriorDataset(root_or_paths, task, cache, provider, encoding=DEFAULT_ENCODING, patch_size=None,
    train=True, seed=0, oracle=False, prior_fn=None)``.

    ``encoding``: how masks become the prior (``spt_adapter.prior.encode``); the default is
    ``"boundary"``; pass ``"label"`` for units with the ``pool`` fusion (``default_encoding(fusion)``).

    ``root_or_paths``: a folder, a ``.txt`` list or a list of image files. ``cache``: a
    :class:`~spt_adapter.prior.PriorCache`, a folder for one, or None (compute every time).
    ``patch_size``: LQ patch side (GT patch = scale x patch); random position in training, centre
    crop otherwise; None = whole images. ``train``: random crop, horizontal/vertical flip and
    90-degree rotation, drawn from torch's generator (so DataLoader workers differ and
    ``torch.manual_seed`` reproduces them). Items: ``lq``, ``gt``, ``prior`` (float tensors CHW),
    ``path`` and ``crop`` (top, left, hflip, vflip, rot90 in LQ pixels).
    """

    def __init__(
        self,
        root_or_paths,
        task,
        cache=None,
        provider=None,
        encoding: str = DEFAULT_ENCODING,
        patch_size=None,
        train: bool = True,
        seed: int = 0,
        oracle: bool = False,
        prior_fn=None,
        teacher=None,
        with_prior: bool = True,
        channels: int = 3,
        noise: str = "spt",
        upsampled: bool = False,
        lq_paths=None,
        clip: bool = True,
        fresh: bool = False,
        full_depth: bool = False,
    ) -> None:
        from ..prior import PriorCache, parse_encoding

        self.paths = list_images(root_or_paths)
        if not self.paths:
            raise DataError(f"no images found in {root_or_paths!r}")
        self.task = parse_task(task)
        self.lq_paths = None if lq_paths is None else [Path(p) for p in lq_paths]
        if (self.lq_paths is None) != (self.task.kind != "paired"):
            raise DataError(
                f"task {self.task}: "
                + (
                    "paired data needs lq_paths (the degraded files)"
                    if self.lq_paths is None
                    else "lq_paths (degraded files) go with a paired:<scale> task"
                )
            )
        if self.lq_paths is not None and len(self.lq_paths) != len(self.paths):
            raise DataError(f"{len(self.paths)} clean image(s) but {len(self.lq_paths)} degraded one(s)")
        if teacher is not None and (provider is not None or prior_fn is not None or oracle):
            raise DataError(
                "a distilled prior's teacher replaces the provider: give teacher= alone (it sees GT images only)"
            )
        if teacher is not None or not with_prior:
            with_prior = False
        elif prior_fn is None and provider is None:
            raise DataError("give a mask provider (e.g. ClassicalMaskProvider('slic')) or prior_fn")
        self.teacher, self.with_prior = teacher, bool(with_prior)
        parse_encoding(encoding)
        self.cache = PriorCache(cache) if isinstance(cache, (str, Path)) else cache
        self.provider, self.encoding, self.prior_fn = provider, encoding, prior_fn
        if patch_size is not None and int(patch_size) < 1:
            raise DataError(f"patch_size must be positive, got {patch_size}")
        self.patch_size = None if patch_size is None else int(patch_size)
        self.train, self.seed, self.oracle = bool(train), int(seed), bool(oracle)
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if noise not in NOISE_PROTOCOLS:
            raise DataError(f"noise protocol {noise!r}: choose one of {', '.join(NOISE_PROTOCOLS)}")
        self.channels, self.noise = int(channels), noise
        if upsampled and self.task.kind != "sr":
            raise DataError(f"upsampled=True (pre-upsampled SR) needs an sr:<scale> task, not {self.task}")
        if upsampled and (teacher is not None or patch_size is not None):
            raise DataError("pre-upsampled SR (upsampled=True) scores whole images only: no patches, no teacher")
        self.upsampled = bool(upsampled)
        self.clip = bool(clip)
        if fresh and (self.task.kind == "paired" or upsampled or self._kair):
            raise DataError(f"fresh=True draws a new synthetic degradation per item; task {self.task} has none to draw")
        self.fresh = bool(fresh) and bool(train)
        self.full_depth = bool(full_depth)

    def _deep(self, path: Path) -> tuple[np.ndarray | None, str | None]:
        """With ``full_depth``: a 16-bit file as float32 on [0, 1] (its 65535 levels kept), or None for
        an 8-bit one; the note says why a 16-bit file was read at 8 bits."""
        if not self.full_depth or not sixteen_bit(path):
            return None, None
        arr, note = read_image_full_depth(path, self.channels)
        if arr.dtype != np.uint16:
            return None, note
        return arr.astype(np.float32) / 65535.0, None

    def __len__(self) -> int:
        return len(self.paths)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole ``(gt, lq)`` uint8 images of item ``index`` (with ``noise="kair"``, ``lq`` is the clipped
        8-bit version of what the network sees: the image the prior is computed on)."""
        if self.upsampled:
            gt, lq = self._upsampled_pair(index)
            return to_uint8(gt), to_uint8(lq)
        if self.lq_paths is not None:
            return self._file_pair(index)
        gt = read_image(self.paths[index], self.channels)
        return degrade(gt, self.task, self.seed, self.channels, "kair" if self._kair else "spt")

    def _file_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(gt, lq)`` of paired files: HQ mod-cropped to ``scale`` x the LQ size (the sizes were
        checked by :func:`spt_adapter.data.pairs.check_sizes`; checked again here for the API)."""
        gt = read_image(self.paths[index], self.channels)
        lq = read_image(self.lq_paths[index], self.channels)  # type: ignore[index]
        s = self.task.scale
        h, w = lq.shape[:2]
        if gt.shape[0] // s != h or gt.shape[1] // s != w:
            raise DataError(
                f"{self.lq_paths[index]} is {w}x{h} pixels but its clean partner {self.paths[index]} is "  # type: ignore[index]
                f"{gt.shape[1]}x{gt.shape[0]}: at scale {s} the degraded image must be "
                f"{gt.shape[1] // s}x{gt.shape[0] // s}"
            )
        return np.ascontiguousarray(gt[: h * s, : w * s]), lq

    def _upsampled_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Float ``(gt, lq)`` on [0, 1], HxWxC, of pre-upsampled SR (see the module docstring)."""
        rgb = read_image(self.paths[index], 3)
        s = self.task.scale
        rgb = np.ascontiguousarray(mod_crop(rgb, s))
        if rgb.shape[0] < s or rgb.shape[1] < s:
            raise DataError(f"image of size {rgb.shape[:2]} is smaller than the SR scale {s}")
        deep = None
        if self.full_depth and sixteen_bit(self.paths[index]):  # the GT at 16 bits; the LR made as always
            arr, _ = read_image_full_depth(self.paths[index], 3)
            if arr.dtype == np.uint16:
                deep = arr[: rgb.shape[0], : rgb.shape[1]].astype(np.float64) / 65535.0
                if self.channels == 1 and stored_grey(self.paths[index]):
                    deep = deep[..., :1]
        if self.channels == 1 and stored_grey(
            self.paths[index]
        ):  # MATLAB: imresize(imresize(HR, 1/s), s) on uint8, rounded
            gt = rgb[..., :1]
            lq = imresize_bicubic(imresize_bicubic(gt, scale=1.0 / s), size=gt.shape[:2])
            return (gt.astype(np.float64) / 255.0 if deep is None else deep), lq.astype(np.float64) / 255.0
        lr = imresize_bicubic(rgb, scale=1.0 / s)  # uint8, like MATLAB's imresize of a uint8 image
        up = imresize_bicubic(lr.astype(np.float64) / 255.0, size=rgb.shape[:2])  # float, unrounded
        gt = rgb.astype(np.float64) / 255.0 if deep is None else deep
        if self.channels == 1:
            return rgb_to_ycbcr_y(gt), rgb_to_ycbcr_y(up)
        return gt, up

    @property
    def _kair(self) -> bool:
        return self.noise == "kair" and self.task.kind == "denoise"

    def prior_of(self, image: np.ndarray, provider=None, cached: bool = True) -> np.ndarray:
        provider = provider or self.provider
        if self.prior_fn is not None and provider is self.provider:
            prior = np.asarray(self.prior_fn(image), dtype=np.float32)
        else:
            from ..prior import compute_prior

            prior = compute_prior(image, provider, self.encoding, self.cache if cached else None)
        if prior.ndim != 3 or prior.shape[1:] != image.shape[:2]:
            raise DataError(f"the prior has shape {prior.shape}, expected (C, {image.shape[0]}, {image.shape[1]})")
        return prior

    def __getitem__(self, index: int) -> dict:
        import torch

        gt_f = None
        bits, note = 8, None
        if self.upsampled:  # the network reads the float upsampled image; the GT may be off the 8-bit grid
            gt_f, lq_f = (a.astype(np.float32) for a in self._upsampled_pair(index))
            gt, lq = to_uint8(gt_f), to_uint8(lq_f)
            deep, note = self._deep(self.paths[index])  # _upsampled_pair read the same 16 bits
            bits = 8 if deep is None else 16
        elif self._kair or self.task.kind == "paired":
            gt, lq = self.pair(index)
            lq_f = kair_noisy(gt, self.task.sigma, self.seed) if self._kair else lq.astype(np.float32) / 255.0
            if self.lq_paths is not None:
                lq_deep, _ = self._deep(self.lq_paths[index])
                if lq_deep is not None:  # a 16-bit LQ file: the network reads all of it
                    lq_f = lq_deep
        else:  # synthetic: per image and seed, or drawn afresh for this item (fresh: torch's generator, seeded per sample)
            seed = int(torch.randint(0, 2**62, (1,)).item()) if self.fresh else self.seed
            gt, lq_f, lq = degrade_float(
                read_image(self.paths[index], self.channels), self.task, seed, self.channels, self.clip
            )
        if self.full_depth and not self.upsampled:
            deep, note = self._deep(self.paths[index])
            if deep is not None:  # every crop above keeps the top-left corner
                gt_f, bits = np.ascontiguousarray(deep[: gt.shape[0], : gt.shape[1]]), 16
        scale = self.task.scale if not self.upsampled else 1
        pscale = scale if self.oracle else 1
        key = "prior"
        if self.teacher is not None:  # the teacher sees the clean image only; its map is brought to LQ size
            key = "teacher_prior"
            prior = teacher_at_lq_size(self.prior_of(gt, self.teacher), scale, lq.shape[:2])
            prior = np.ascontiguousarray(prior).transpose(1, 2, 0)
        elif self.with_prior:
            # a fresh draw is seen once: its prior is computed, not cached (the clean image's is cached)
            prior = self.prior_of(gt if self.oracle else lq, cached=self.oracle or not self.fresh).transpose(1, 2, 0)
        else:
            prior = np.zeros(lq.shape[:2] + (0,), np.float32)
        top = left = 0
        hflip = vflip = rot = False
        if self.patch_size is not None:
            p = self.patch_size
            h, w = lq.shape[:2]
            if h < p or w < p:
                raise DataError(f"{self.paths[index]}: LQ image {h}x{w} is smaller than patch_size {p}")
            if self.train:
                top = int(torch.randint(0, h - p + 1, (1,)).item())
                left = int(torch.randint(0, w - p + 1, (1,)).item())
            else:
                top, left = (h - p) // 2, (w - p) // 2
            lq_f = lq_f[top : top + p, left : left + p]
            gt = gt[top * scale : (top + p) * scale, left * scale : (left + p) * scale]
            if gt_f is not None:
                gt_f = gt_f[top * scale : (top + p) * scale, left * scale : (left + p) * scale]
            prior = prior[top * pscale : (top + p) * pscale, left * pscale : (left + p) * pscale]
        if self.train:
            hflip, vflip, rot = (bool(v) for v in torch.rand(3) < 0.5)
        lq_f, gt, prior = augment([lq_f, gt, prior], hflip, vflip, rot)
        if gt_f is not None:
            gt_f = augment([gt_f], hflip, vflip, rot)[0]
        item = {
            "lq": torch.from_numpy(np.ascontiguousarray(lq_f.transpose(2, 0, 1))),
            "gt": torch.from_numpy(
                np.ascontiguousarray(gt.transpose(2, 0, 1)).astype(np.float32) / 255.0
                if gt_f is None
                else np.ascontiguousarray(gt_f.transpose(2, 0, 1))
            ),
            "path": str(self.paths[index]),
            "crop": (top, left, hflip, vflip, rot),
        }
        if self.full_depth:
            item["bits"] = bits
            if note is not None:
                item["depth_note"] = note
        if self.teacher is not None or self.with_prior:
            item[key] = torch.from_numpy(np.ascontiguousarray(prior.transpose(2, 0, 1)).astype(np.float32))
        return item
