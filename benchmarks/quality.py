"""Quality benchmark: does the segment prior earn its keep, or do SPT units only add capacity?

The "prior ladder", on real images (train: Set14 + McMaster crops; validation: McMaster 15-18;
test: CBSD68), colour denoising with a backbone "pre-trained" here at one sigma:

  (a) frozen backbone
  (b) + SPT units, prior = classical segmentation of the noisy (LQ) input
  (c) + SPT units, constant prior (same parameters, no information): the control
  (d) + SPT units, prior = the same segmentation of the clean image (oracle)
  (e) full fine-tuning of the backbone for the same steps and batches
  (f) + SPT units, prior = SAM masks of the LQ input (only with --sam-checkpoint)
  (g) + SPT units, distilled prior: a small student (inside the adapter) maps the LQ input to the
      prior; at training time it learns the teacher's map, the segmentation of the *clean* image
      (the oracle's masks), by a distillation loss beside the restoration loss. No segmenter at test.
  (h) the same student + units trained with the restoration loss only (no teacher): the
      equal-parameter, equal-step control of the student's capacity

for each fusion (concat, sft, pool) and several seeds. Every row of a seed sees exactly the same
batches (same crops, noise and augmentation) and the same unit initialisation; only the prior
differs. Tested at the training sigma and at an unseen sigma (out of distribution).

    python benchmarks/quality.py                 # the default run (docs/results.md)
    python benchmarks/quality.py --quick         # a smoke run in well under a minute
    python benchmarks/quality.py --tune          # choose the segmenter on the validation split
    python benchmarks/quality.py --task sr4      # the same ladder for bicubic x4 super-resolution
    python benchmarks/quality.py --task kair --kair-root /path/to/KAIR      # KAIR's pretrained grey DnCNN

With ``--task sr4`` the ladder runs for bicubic x4 SR on the Set5/Set14 protocol: LQ = MATLAB-style
bicubic downsample of the HR image (8-bit), PSNR on the Y channel with a 4-pixel border crop; the
backbone is a small Real-ESRGAN "Compact" network (spandrel's SRVGGNetCompact, pixel-shuffle x4)
pre-trained here on McMaster + CBSD68 crops and cached; tested on Set5 and Set14 (full images).
Prior (b) segments the LQ image; the oracle (d) segments the HR image (region sizes scaled by 16)
and nearest-downsamples the label map to the LQ size.

With ``--task kair`` the backbone is KAIR's pretrained grey DnCNN (``model_zoo/dncnn_25.pth``, 17
layers, trained at sigma 25; published 30.43 dB on Set12): the frozen row is first reproduced with
KAIR's own test protocol, then the unit rows adapt it to ``--kair-degradation`` (sigma 50, or sigma 25
noise after JPEG q=30, a degradation it never saw), trained on grey Set14 + McMaster + CBSD68 and
tested on Set12 (full images).

Settings are chosen with --tune on the validation split, never on the test sets. ``--device cuda``
and ``--jobs N`` (N trainings in parallel processes) are for GPU runs
(``benchmarks/distill_ladder.sh``).

Size: one benchmark over six tasks that share one ladder (schedules, rows, training, evaluation,
rendering); splitting it by task is still to do (issue 20).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402

FUSIONS = ("concat", "sft", "pool")
ROW_TITLES = {
    "a": "(a) frozen backbone",
    "b": "(b) + SPT, segments of LQ",
    "c": "(c) + SPT, constant prior (control)",
    "d": "(d) + SPT, segments of clean (oracle)",
    "e": "(e) full fine-tune",
    "f": "(f) + SPT, SAM masks of LQ",
    "g": "(g) + SPT, distilled prior (student, teacher = clean-image segments)",
    "h": "(h) + SPT, same student, no teacher (control)",
}
#: paired differences printed under each table: (row, reference row)
DIFFS = (("b", "c"), ("d", "c"), ("f", "c"), ("g", "h"), ("g", "c"), ("g", "b"))
ROWS = "abcdefgh"
DEFAULT_SEGMENTER = "felzenszwalb:scale=300,sigma=0.8,min_size=50"  # chosen with --tune on validation
TUNE_CANDIDATES = (
    "slic:region_px=100,compactness=10,sigma=1",
    "slic:region_px=400,compactness=10,sigma=1",
    "slic:region_px=1600,compactness=10,sigma=1",
    "slic:region_px=8000,compactness=10,sigma=1",
    "felzenszwalb:scale=300,sigma=0.8,min_size=50",
    "felzenszwalb:scale=3000,sigma=0.8,min_size=400",
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -------------------------------------------------------------------------------------------
# backbone
# -------------------------------------------------------------------------------------------
SR_SCALE = 4
KAIR_NB = 17  # KAIR's dncnn_25: 17 convs of 64 channels, no batch norm (merged), grey in and out
KAIR_DEGRADATIONS = ("sigma50", "jpeg30-sigma25")


def build_sr_backbone(nf: int, nconv: int) -> nn.Module:
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    # Real-ESRGAN's compact SR net: conv + PReLU body at LQ size, pixel shuffle x4, + nearest-upsampled input.
    return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=nf, num_conv=nconv, upscale=SR_SCALE, act_type="prelu")


def spread(hidden: list[int], n: int) -> list[int]:
    """``n`` of the ``hidden`` layer indices spread through the depth: for 3, the ones a quarter and
    half way down and the last; 0 (or more than there are) means every one."""
    if n <= 0 or n >= len(hidden):
        return list(hidden)
    if n == 3:
        return sorted({hidden[len(hidden) // 4], hidden[len(hidden) // 2], hidden[-1]})
    return sorted({hidden[round((k + 1) * len(hidden) / n) - 1] for k in range(n)})


def sr_unit_targets(nconv: int, n: int = 3) -> list[str]:
    """``n`` units on body convs spread through the depth (body.0 is the first conv, body.2k its k-th
    hidden conv, body.2*nconv+2 the output conv before the pixel shuffle)."""
    return [f"body.{i}" for i in spread([2 * k for k in range(1, nconv + 1)], n)]


def build_backbone(nc: int, nb: int) -> nn.Module:
    from spandrel.architectures.DnCNN import DnCNN

    # Colour DnCNN (residual: x - net(x)), no batch norm, nb conv layers of nc channels.
    return DnCNN(in_nc=3, out_nc=3, nc=nc, nb=nb, act_mode="R")


def unit_targets(nb: int, n: int = 3) -> list[str]:
    """``n`` units on the outputs of convs spread through the depth (pre-activation)."""
    convs = [2 * i for i in range(nb)]  # Sequential indices of the convs; the last is the output conv
    return [f"model.{i}" for i in spread(convs[1:-1], n)]


def random_crops(rng: np.random.Generator, images: list[np.ndarray], batch: int, patch: int) -> np.ndarray:
    out = np.empty((batch, patch, patch, 3), np.float32)
    for k in range(batch):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        y, x = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        out[k] = _augment(img[y : y + patch, x : x + patch], int(rng.integers(8)))
    return out


def _augment(a: np.ndarray, k: int) -> np.ndarray:
    a = np.rot90(a, k % 4, axes=(0, 1))
    return a[:, ::-1] if k >= 4 else a


def _save_cached(net: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, path)


def _cached_backbone(spec: dict, stem: str, cache_dir: Path, build) -> tuple[nn.Module, Path, bool]:
    """Build the backbone of ``spec`` with a seeded initialisation and load its cached weights if
    present. Returns (net, cache path, whether the cache was hit)."""
    from safetensors.torch import load_file

    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"{stem}_{key}.safetensors"
    torch.manual_seed(1234)  # the initialisation too: the same settings give the same backbone
    net = build()
    if path.exists():
        net.load_state_dict(load_file(str(path)))
        log(f"backbone: loaded from cache {path}")
        net.eval()
    return net, path, path.exists()


def pretrain_sr_backbone(args, names: list[str], pset: qd.PriorSet, cache_dir: Path) -> tuple[nn.Module, dict]:
    """Train the SR backbone from scratch on aligned (bicubic LQ, HR) crops of the training images;
    cached by its settings. ``--patch`` is the LQ patch size (the HR patch is 4x it)."""
    spec = {
        "arch": "SRVGGNetCompact",
        "nf": args.sr_feat,
        "nconv": args.sr_convs,
        "scale": SR_SCALE,
        "steps": args.pretrain_steps,
        "batch": args.pretrain_batch,
        "patch": args.patch,
        "lr": args.pretrain_lr,
        "train": names,
        "version": 2,
    }
    net, path, hit = _cached_backbone(
        spec, f"backbone_srvgg_x{SR_SCALE}", cache_dir, lambda: build_sr_backbone(args.sr_feat, args.sr_convs)
    )
    if hit:
        return net, {"cached": True, "path": str(path), **spec}
    torch.manual_seed(1234)
    sched = make_schedule(1234, args.pretrain_steps, args.pretrain_batch, args.patch, pset)

    def batch(step: int):
        lq, gt, _ = get_batch(sched[step], args.patch, pset, "none")
        return lq, gt

    l1 = lambda out, gt: torch.mean(torch.abs(out - gt))  # noqa: E731 -- L1, as SR networks are trained
    return _pretrain(net, batch, l1, args, path, spec)


def pretrain_backbone(args, train: list[tuple[str, np.ndarray]], cache_dir: Path) -> tuple[nn.Module, dict]:
    """Train the backbone from scratch on the training crops at --sigma; cached by its settings."""
    spec = {
        "arch": "DnCNN",
        "nc": args.nc,
        "nb": args.nb,
        "sigma": args.sigma,
        "steps": args.pretrain_steps,
        "batch": args.pretrain_batch,
        "patch": args.patch,
        "lr": args.pretrain_lr,
        "train": [n for n, _ in train],
        "version": 1,
    }
    # (cached DnCNN backbones made before the initialisation was seeded are reused as they are)
    net, path, hit = _cached_backbone(spec, "backbone_dncnn", cache_dir, lambda: build_backbone(args.nc, args.nb))
    if hit:
        return net, {"cached": True, "path": str(path), **spec}
    torch.manual_seed(1234)
    rng = np.random.default_rng(1234)
    clean = [img.astype(np.float32) / 255.0 for _, img in train]

    def batch(step: int):
        gt = torch.from_numpy(random_crops(rng, clean, args.pretrain_batch, args.patch)).permute(0, 3, 1, 2)
        return gt + torch.randn_like(gt) * (args.sigma / 255.0), gt

    mse = lambda out, gt: torch.mean((out - gt) ** 2)  # noqa: E731
    return _pretrain(net, batch, mse, args, path, spec)


def _pretrain(net: nn.Module, batch, loss_fn, args, path: Path, spec: dict) -> tuple[nn.Module, dict]:
    """The backbones' pre-training loop: Adam at --pretrain-lr with a cosine schedule down to 1 %,
    ``batch(step) -> (lq, gt)``; the trained net is cached at ``path``."""
    t0 = time.time()
    opt = torch.optim.Adam(net.parameters(), lr=args.pretrain_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.pretrain_steps, eta_min=args.pretrain_lr * 0.01)
    net.train()
    for step in range(args.pretrain_steps):
        lq, gt = batch(step)
        loss = loss_fn(net(lq), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, args.pretrain_steps // 10) == 0:
            log(f"backbone pretrain {step + 1}/{args.pretrain_steps} loss {loss.item():.5f} ({time.time() - t0:.0f}s)")
    net.eval()
    _save_cached(net, path)
    log(f"backbone: pre-trained in {time.time() - t0:.0f}s, cached at {path}")
    return net, {"cached": False, "path": str(path), "seconds": round(time.time() - t0, 1), **spec}


# -------------------------------------------------------------------------------------------
# batches: one fixed schedule per seed, shared by every row
# -------------------------------------------------------------------------------------------
def make_schedule(seed: int, steps: int, batch: int, patch: int, pset: qd.PriorSet) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    n_img, n_real = len(pset.clean), len(pset.noisy[0])
    sched = np.empty((steps, batch, 5), np.int64)
    for s in range(steps):
        for k in range(batch):
            i = int(rng.integers(n_img))
            h, w = pset.noisy[i][0].shape[:2]  # crop positions on the LQ image (= clean for denoising)
            sched[s, k] = (
                i,
                rng.integers(n_real),
                rng.integers(0, h - patch + 1),
                rng.integers(0, w - patch + 1),
                rng.integers(8),
            )
    return sched


def get_batch(sched_step: np.ndarray, patch: int, pset: qd.PriorSet, prior: str):
    lqs, gts, priors = [], [], []
    sc = pset.scale
    for i, r, y, x, aug in sched_step:
        sl = (slice(y, y + patch), slice(x, x + patch))
        gts.append(_augment(pset.clean[i][sc * y : sc * (y + patch), sc * x : sc * (x + patch)], aug))
        lqs.append(_augment(pset.noisy[i][r][sl], aug))
        if prior == "lq":
            p = pset.lq_prior[i][r][sl]
        elif prior == "oracle":
            p = pset.oracle_prior[i][sl]
        elif prior == "sam":
            p = pset.sam_prior[i][r][sl]
        else:
            p = None
        if p is not None:
            priors.append(_augment(p if p.ndim == 3 else p[..., None], aug))
    to_t = lambda arr: torch.from_numpy(np.ascontiguousarray(np.stack(arr))).permute(0, 3, 1, 2)  # noqa: E731
    lq, gt = to_t(lqs), to_t(gts)
    if prior == "const":
        pr = torch.ones(lq.shape[0], pset.prior_channels, patch, patch)
    elif prior == "none":
        pr = None
    else:
        pr = to_t(priors)
    return lq, gt, pr


# -------------------------------------------------------------------------------------------
# training and evaluation
# -------------------------------------------------------------------------------------------
def restored_view(backbone: nn.Module):
    """``noisy HxWx3 float -> HxWx3 uint8``: the frozen backbone's restoration, for segmenting a cleaner
    picture than the noisy input while using nothing but the input."""

    def view(noisy: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = backbone(torch.from_numpy(np.ascontiguousarray(noisy)).permute(2, 0, 1)[None])
        return qd.to_uint8(out[0].permute(1, 2, 0).numpy())

    return view


def make_spt(backbone: nn.Module, fusion: str, args, seed: int, prior_channels: int, student: bool = False):
    import spt_adapter
    from spt_adapter import SPTConfig

    torch.manual_seed(seed)
    if args.task == "sr4":
        targets = sr_unit_targets(args.sr_convs, args.units)
    else:
        targets = unit_targets(KAIR_NB if args.task == "kair" else args.nb, args.units)
    # the student is built after the units, so every row of a seed starts from the same units
    cfg = SPTConfig(
        targets=targets,
        fusion=fusion,
        hidden=args.hidden,
        depth=args.depth,
        prior_channels=prior_channels,
        student={"in_channels": args.in_channels, "width": args.student_width, "depth": args.student_depth}
        if student
        else None,
    )
    reads_restored = student and args.student_input == "restored"
    if reads_restored:  # the units read a given prior; the student below makes it from [LQ, restored]
        cfg = SPTConfig(
            targets=targets, fusion=fusion, hidden=args.hidden, depth=args.depth, prior_channels=prior_channels
        )
    device = next(backbone.parameters()).device
    model = spt_adapter.inject(
        copy.deepcopy(backbone), config=cfg, example_input=torch.zeros(1, args.in_channels, 32, 32, device=device)
    ).to(args.device)
    if reads_restored:
        from spt_adapter.core.student import PriorStudent

        student_net = PriorStudent(
            prior_channels, in_channels=2 * args.in_channels, width=args.student_width, depth=args.student_depth
        )
        model = StudentReadsRestored(model, RestoredInputStudent(student_net, backbone)).to(args.device)
    return model


class RestoredInputStudent(nn.Module):
    """``--student-input restored``: the prior student reads the LQ input next to the frozen backbone's
    own restoration of it, ``[LQ, backbone(LQ)]`` (the frozen network removes most of the degradation;
    arXiv 2403.16368 fuses SAM masks with the original network's output the same way). Costs one more
    backbone forward (no gradient) per image at training and at inference, beside the student's own."""

    def __init__(self, net: nn.Module, frozen: nn.Module) -> None:
        super().__init__()
        self.net = net
        self._frozen = [frozen]  # not a submodule: never trained, saved or switched to train mode

    def logits(self, lq: torch.Tensor) -> torch.Tensor:
        frozen = self._frozen[0]
        if next(frozen.parameters()).device != lq.device:
            frozen.to(lq.device)
        with torch.no_grad():
            restored = frozen(lq)
        return self.net.logits(torch.cat([lq, restored], dim=1))


class StudentReadsRestored(nn.Module):
    """An SPTModel whose units read the prior of a :class:`RestoredInputStudent`; the same calls as a
    distilled SPTModel (``student()``, ``model(x, return_prior_logits=True)``), so rows g/h train and
    test it unchanged."""

    def __init__(self, spt: nn.Module, student: RestoredInputStudent) -> None:
        super().__init__()
        self.spt, self.prior_student = spt, student

    def student(self) -> RestoredInputStudent:
        return self.prior_student

    def forward(self, lq: torch.Tensor, return_prior_logits: bool = False):
        logits = self.prior_student.logits(lq)
        out = self.spt(lq, prior=torch.sigmoid(logits))
        return (out, logits) if return_prior_logits else out


def _restoration_loss(out: torch.Tensor, gt: torch.Tensor, pset: qd.PriorSet) -> torch.Tensor:
    return torch.mean(torch.abs(out - gt)) if pset.scale > 1 else torch.mean((out - gt) ** 2)


def train_student_alone(
    model: nn.Module, sched: np.ndarray, pset: qd.PriorSet, patch: int, steps: int, lr: float, device: str = "cpu"
) -> None:
    """The distilled prior's first phase: the student alone learns the teacher's map (the oracle
    segmentation of the clean image) by BCE on ``steps`` batches of the seed's schedule; no backbone
    forward, the units untouched."""
    from spt_adapter.training.train import distill_loss

    student = model.student()
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    student.train()
    for step in range(steps):
        lq, _, teacher = get_batch(sched[step % len(sched)], patch, pset, "oracle")
        loss = distill_loss(student.logits(lq.to(device)), teacher.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()


def train_model(
    model: nn.Module,
    sched: np.ndarray,
    pset: qd.PriorSet,
    prior: str,
    lr: float,
    patch: int,
    full: bool = False,
    distill_weight: float | None = None,
    student_steps: int = 0,
    device: str = "cpu",
) -> float:
    """Train ``model`` on the seed's schedule. ``prior="student"``: a distilled adapter; with
    ``distill_weight`` (row g) the student first learns the teacher alone for ``student_steps``
    batches, then loss = restoration + weight x BCE(student, teacher); ``None`` (row h): the
    restoration loss only, from the same start."""
    t0 = time.time()
    distilled = prior == "student"
    if distilled and distill_weight is not None and student_steps:
        train_student_alone(model, sched, pset, patch, student_steps, lr, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if full:
        for p in model.parameters():
            p.requires_grad_(True)
        params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    sched_lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, len(sched), eta_min=lr * 0.01)
    model.train()
    if distilled:
        from spt_adapter.training.train import distill_loss
    for step in range(len(sched)):
        if distilled:
            lq, gt, teacher = get_batch(sched[step], patch, pset, "oracle" if distill_weight is not None else "none")
            out, logits = model(lq.to(device), return_prior_logits=True)
            loss = _restoration_loss(out, gt.to(device), pset)
            if distill_weight is not None:
                loss = loss + distill_weight * distill_loss(logits, teacher.to(device))
        else:
            lq, gt, pr = get_batch(sched[step], patch, pset, prior)
            out = model(lq.to(device)) if pr is None else model(lq.to(device), prior=pr.to(device))
            loss = _restoration_loss(out, gt.to(device), pset)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
    model.eval()
    return time.time() - t0


def psnr_rgb(out: np.ndarray, gt: np.ndarray, border: int = 0) -> float:
    """PSNR in dB on every channel (RGB, or the one grey/Y channel), the denoising convention of the
    field: the output rounded to 8 bits as a saved image would be (``spt_adapter.training.metrics``,
    cross-checked against BasicSR), ``border`` pixels left out at every edge."""
    from spt_adapter.training.metrics import psnr, to_uint8

    return float(psnr(to_uint8(out), to_uint8(gt), crop_border=border))


def psnr_sr_y(out: np.ndarray, gt: np.ndarray, scale: int) -> float:
    """PSNR in dB for SR x``scale``: the Y channel (BT.601) with ``scale`` pixels cropped from every
    edge, on the 8-bit output (``spt_adapter.training.metrics.metric_settings("sr:<scale>")``)."""
    from spt_adapter.training.metrics import metric_settings, psnr, to_uint8

    return float(psnr(to_uint8(out), to_uint8(gt), **metric_settings(f"sr:{scale}")))


@torch.no_grad()
def evaluate(model: nn.Module, pset: qd.PriorSet, prior: str, batch: int = 17) -> float:
    """Mean PSNR over the images of ``pset`` (first noise realisation)."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scores = []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(pset.clean):
        groups.setdefault(c.shape[:2], []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            chunk = idx[s : s + batch]
            lq = torch.from_numpy(np.stack([pset.noisy[i][0] for i in chunk])).permute(0, 3, 1, 2).to(device)
            if prior in ("none", "student"):
                out = model(lq)
            else:
                if prior == "const":
                    pr = torch.ones(len(chunk), pset.prior_channels, *lq.shape[-2:])
                else:
                    maps = {
                        "lq": lambda i: pset.lq_prior[i][0],
                        "oracle": lambda i: pset.oracle_prior[i],
                        "sam": lambda i: pset.sam_prior[i][0],
                    }[prior]
                    arr = np.stack([maps(i) for i in chunk])
                    pr = torch.from_numpy(arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2).copy())
                out = model(lq, prior=pr.to(device))
            out = out.float().cpu().permute(0, 2, 3, 1).numpy()
            if pset.scale > 1:
                scores += [psnr_sr_y(o, pset.clean[i], pset.scale) for o, i in zip(out, chunk, strict=True)]
            else:
                scores += [psnr_rgb(o, pset.clean[i], pset.border) for o, i in zip(out, chunk, strict=True)]
    return float(np.mean(scores))


ROW_PRIOR = {"b": "lq", "c": "const", "d": "oracle", "f": "sam", "g": "student", "h": "student"}


def stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def fmt(values: list[float]) -> str:
    m, s = stats(values)
    return f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}"


# -------------------------------------------------------------------------------------------
# the run
# -------------------------------------------------------------------------------------------
def run_one(
    args, backbone, train_set: qd.PriorSet, eval_sets: dict[str, qd.PriorSet], seed: int, row: str, fusion: str
) -> tuple[dict[str, float], float]:
    """Train and test one (seed, row, fusion) of the ladder: ({eval name: PSNR}, training seconds)."""
    sched = make_schedule(seed, args.steps, args.batch, args.patch, train_set)
    if row == "e":
        torch.manual_seed(seed)
        model = copy.deepcopy(backbone).to(args.device)
        secs = train_model(model, sched, train_set, "none", args.ft_lr, args.patch, full=True, device=args.device)
        prior = "none"
    else:
        prior = ROW_PRIOR[row]
        model = make_spt(backbone, fusion, args, seed, train_set.prior_channels, student=row in "gh")
        secs = train_model(
            model,
            sched,
            train_set,
            prior,
            args.lr,
            args.patch,
            distill_weight=args.distill_weight if row == "g" else None,
            student_steps=args.student_steps,
            device=args.device,
        )
    return {name: evaluate(model, es, prior) for name, es in eval_sets.items()}, secs


_JOB_CONTEXT: dict[str, Any] = {}


def _job_init(context: dict[str, Any]) -> None:
    """Worker-process initialiser of ``--jobs``: the ladder's shared inputs, sent once per process."""
    _JOB_CONTEXT.update(context)
    torch.set_num_threads(context["args"].threads)


def _job(job: tuple[int, str, str]) -> tuple[tuple[int, str, str], dict[str, float], float]:
    c = _JOB_CONTEXT
    scores, secs = run_one(c["args"], c["backbone"], c["train_set"], c["eval_sets"], *job)
    return job, scores, secs


def _encode_sets(args, train_set, eval_sets: dict):
    """(train set, eval sets, regions per test image): the mean region count of the first eval set's
    label priors (before encoding), then every set in ``--encoding``."""
    n_regions = float(np.mean([len(np.unique(p[0])) for p in next(iter(eval_sets.values())).lq_prior]))
    return (
        qd.apply_encoding(train_set, args.encoding),
        {k: qd.apply_encoding(v, args.encoding) for k, v in eval_sets.items()},
        n_regions,
    )


def run_ladder(
    args, backbone, train_set: qd.PriorSet, eval_sets: dict[str, qd.PriorSet], rows: list[str], fusions: list[str]
) -> dict[str, Any]:
    """results[row][fusion or '-'][eval_name] = list of per-seed PSNRs. With ``args.jobs`` > 1 the
    trainings run in that many processes (spawned; on one GPU with ``--device cuda``); each training
    depends only on (seed, row, fusion), so the numbers are the same as in one process."""
    res: dict[str, Any] = {}
    backbone = backbone.to(args.device)
    for name, es in eval_sets.items():
        res.setdefault("a", {}).setdefault("-", {})[name] = [evaluate(backbone, es, "none")]
    log("(a) frozen: " + ", ".join(f"{k} {v[0]:.3f}" for k, v in res["a"]["-"].items()))
    jobs = [(seed, r, f) for seed in args.seeds for f in fusions for r in rows if r in ROW_PRIOR]
    jobs += [(seed, "e", "-") for seed in args.seeds if "e" in rows]
    done, t_start = 0, time.time()
    scores_of: dict[tuple[int, str, str], dict[str, float]] = {}

    def record(job, scores, secs):
        nonlocal done
        scores_of[job] = scores
        done += 1
        eta = (time.time() - t_start) / done * (len(jobs) - done)
        log(
            f"seed {job[0]} row {job[1]} fusion {job[2]}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            + f"  (train {secs:.0f}s; {done}/{len(jobs)}, eta {eta / 60:.1f} min)"
        )

    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = {"args": args, "backbone": backbone.cpu(), "train_set": train_set, "eval_sets": eval_sets}
        with ProcessPoolExecutor(
            min(args.jobs, len(jobs)), mp_context=mp.get_context("spawn"), initializer=_job_init, initargs=(context,)
        ) as pool:
            for fut in as_completed([pool.submit(_job, j) for j in jobs]):
                record(*fut.result())
        backbone.to(args.device)
    else:
        for job in jobs:
            record(job, *run_one(args, backbone, train_set, eval_sets, *job))
    for job in jobs:  # in the order of the seeds, whatever order they finished in
        seed, row, fusion = job
        for name, v in scores_of[job].items():
            res.setdefault(row, {}).setdefault(fusion, {}).setdefault(name, []).append(v)
    return res


def row_titles(args) -> dict[str, str]:
    titles = dict(ROW_TITLES)
    if getattr(args, "segment_input", "lq") == "restored":
        titles["b"] = "(b) + SPT, segments of the backbone's restoration of LQ"
    if getattr(args, "student_input", "lq") == "restored":
        titles["g"] = "(g) + SPT, distilled prior (student reads [LQ, frozen backbone(LQ)])"
        titles["h"] = "(h) + SPT, same student on [LQ, frozen backbone(LQ)], no teacher (control)"
    return titles


def render(
    res: dict[str, Any], eval_names: list[str], rows: list[str], fusions: list[str], titles: dict[str, str] = ROW_TITLES
) -> str:
    lines = []
    for name in eval_names:
        lines.append(f"\n#### {name}: PSNR (dB), mean ± std over seeds\n")
        lines.append("| row | " + " | ".join(fusions) + " |")
        lines.append("| --- |" + " --- |" * len(fusions))
        for row in rows:
            if row not in res:
                continue
            if row in ("a", "e"):
                cell = fmt(res[row]["-"][name])
                lines.append(f"| {titles[row]} | " + " | ".join([cell] * len(fusions)) + " |")
            else:
                lines.append(f"| {titles[row]} | " + " | ".join(fmt(res[row][f][name]) for f in fusions) + " |")
        for row, ref in DIFFS:
            if row not in res or ref not in res:
                continue
            cells = []
            for f in fusions:
                x, c = res[row][f][name], res[ref][f][name]
                diff = [xi - ci for xi, ci in zip(x, c, strict=True)]
                m, s = stats(diff)
                sep = "yes" if min(x) > max(c) else ("below" if max(x) < min(c) else "no")
                ok = ""
                if m >= 0.05 and sep == "yes":  # the oracle reads the clean image: a ceiling, not a result
                    ok = "**meets target**" if row != "d" else "(oracle above 0.05: not deployable)"
                cells.append(f"{m:+.3f} ± {s:.3f} (separate: {sep}) {ok}".strip())
            lines.append(f"| {row} − {ref} (paired per seed) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------
# KAIR's pretrained grey DnCNN
# -------------------------------------------------------------------------------------------
CDNCNN_B = ("GD_Color_Blind.mat", 20, 3)  # cszn/DnCNN's colour blind model (sigma 0-55): convs, channels
DNCNN_3 = ("DnCNN3.mat", 20, 1)  # cszn/DnCNN's DnCNN-3: grey denoising, SR on the upsampled luma, deblocking


def load_cdncnn_b(dncnn_root: Path) -> tuple[nn.Module, dict]:
    """CDnCNN-B (cszn/DnCNN ``model/GD_Color_Blind.mat``, colour, blind sigma in [0, 55])."""
    return load_dncnn_mat(dncnn_root, CDNCNN_B, "CDnCNN-B")


def load_dncnn_mat(dncnn_root: Path, model: tuple[str, int, int], label: str) -> tuple[nn.Module, dict]:
    """A cszn/DnCNN MatConvNet model (``model/<name>``) converted by ``tools/convert_dncnn_mat.py`` into
    spandrel's DnCNN (``nb`` convs of 64 channels), loaded strictly, in eval mode."""
    import importlib.util

    from spandrel.architectures.DnCNN import DnCNN

    name, nb, channels = model
    mat = dncnn_root / "model" / name
    if not mat.is_file():
        raise FileNotFoundError(f"{mat} is missing: point --dncnn-root at a cszn/DnCNN checkout")
    spec = importlib.util.spec_from_file_location(
        "convert_dncnn_mat", Path(__file__).resolve().parents[1] / "tools" / "convert_dncnn_mat.py"
    )
    converter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(converter)
    net = DnCNN(in_nc=channels, out_nc=channels, nc=64, nb=nb, act_mode="R")
    net.load_state_dict(converter.convert(mat), strict=True)
    return net.eval(), {"cached": True, "path": str(mat), "arch": f"{label} (cszn/DnCNN, converted)", "nb": nb}


def load_kair_dncnn(path: Path) -> nn.Module:
    """KAIR's ``dncnn_25.pth`` in spandrel's DnCNN class (the same layer names as KAIR's
    ``models/network_dncnn.DnCNN``: ``model.0`` .. ``model.32``), loaded strictly, frozen."""
    from spandrel.architectures.DnCNN import DnCNN

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: point --kair-root at a KAIR checkout (model_zoo/dncnn_25.pth)")
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    net = DnCNN(in_nc=1, out_nc=1, nc=64, nb=KAIR_NB, act_mode="R")
    net.load_state_dict(state, strict=True)
    return net.eval()


@torch.no_grad()
def kair_frozen_psnr(
    net: nn.Module, test: list[tuple[str, np.ndarray]], sigma: float = 25.0, device: str = "cpu"
) -> tuple[float, list[float]]:
    """KAIR's ``main_test_dncnn.py`` protocol: per image ``np.random.seed(0)`` noise of ``sigma`` on the
    [0, 1] image (float32, not clipped), the output clamped and rounded to uint8, PSNR with border 0."""
    scores = []
    net = net.to(device).eval()
    for _, img in test:
        noisy = qd.kair_noise(img, sigma)
        out = net(torch.from_numpy(np.ascontiguousarray(noisy)).permute(2, 0, 1)[None].to(device))
        out8 = np.uint8((out[0, 0].float().clamp(0, 1).cpu().numpy() * 255.0).round())
        mse = np.mean((out8.astype(np.float64) - img[..., 0].astype(np.float64)) ** 2)
        scores.append(float(20 * np.log10(255.0 / np.sqrt(mse))))
    return float(np.mean(scores)), scores


def kair_degradation(name: str) -> tuple[float, int]:
    """(sigma, JPEG quality or 0) of a ``--kair-degradation``."""
    return {"sigma50": (50.0, 0), "jpeg30-sigma25": (25.0, 30)}[name]


def main_kair(args, argv, t_all, cache: qd.LabelCache) -> int:
    """KAIR's grey DnCNN (sigma 25): reproduce its frozen Set12 row, then the ladder adapting it to
    ``--kair-degradation`` (train: grey Set14 + McMaster + CBSD68; test: Set12, full images)."""
    splits = qd.load_grey_splits(
        args.data,
        args.kair_root / "testsets" / "set12",
        n_test=args.n_test,
        n_train=args.n_train,
        train_crop=args.train_crop,
    )
    backbone = load_kair_dncnn(args.kair_root / "model_zoo" / "dncnn_25.pth")
    for p in backbone.parameters():
        p.requires_grad_(False)
    repro, per_image = kair_frozen_psnr(backbone, splits.test, 25.0, args.device)
    log(
        f"KAIR dncnn_25 frozen, Set12 sigma 25 (KAIR protocol): {repro:.3f} dB (published 30.43); per image "
        + " ".join(f"{v:.2f}" for v in per_image)
    )
    sigma, jpeg = kair_degradation(args.kair_degradation)
    seg = qd.Segmenter.parse(args.segmenter)
    if args.tune_distill:
        tune_distill(args, splits, backbone, cache, sigma=sigma, jpeg=jpeg)
        return 0
    t0 = time.time()
    train_set = qd.build_priors(
        splits.train, sigma=sigma, realisations=args.realisations, noise_base=1, seg=seg, cache=cache, jpeg=jpeg
    )
    tag = f"Set12 {args.kair_degradation} (grey)"
    eval_sets = {
        tag: qd.build_priors(splits.test, sigma=sigma, realisations=1, noise_base=0, seg=seg, cache=cache, jpeg=jpeg)
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"data: {len(splits.train)} grey train images, {len(splits.test)} Set12 images; priors ready in "
        f"{time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per test image)"
    )
    rows = [r for r in ROWS if r in args.rows]
    res = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print(f"\nKAIR dncnn_25 frozen, Set12 σ=25, KAIR's protocol: {repro:.3f} dB (published 30.43)")
    bb_info = {
        "cached": True,
        "path": str(args.kair_root / "model_zoo" / "dncnn_25.pth"),
        "arch": "KAIR DnCNN",
        "kair_set12_sigma25": repro,
        "kair_set12_sigma25_per_image": per_image,
    }
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, KAIR DnCNN σ=25 → {args.kair_degradation} — {seg.label()}, "
        f"{args.encoding} encoding ({n_regions:.0f} regions per test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": args.kair_degradation,
            "regions_per_test_image": n_regions,
            "kair_frozen_sigma25": repro,
            "dropped_near_duplicates": splits.dropped,
        },
    )
    return 0


def main_dncnn3(args, argv, t_all, cache: qd.LabelCache) -> int:
    """cszn/DnCNN's DnCNN-3 (one grey network for denoising, SR on the bicubic-upsampled luma and JPEG
    deblocking): its frozen bicubic x4 row on Set5/Set14 reproduced first (published 31.40 / 28.04 dB on
    Y), then the ladder adapting it to the BD degradation (blur sigma 1.6, then bicubic x4), which it
    never saw; train Train400 + the Y of McMaster (minus 15-18) + CBSD68, test Set5/Set14 (Y, crop 4)."""
    train400 = (
        None if args.quick else args.dncnn_root / "TrainingCodes" / "DnCNN_TrainingCodes_v1.0" / "data" / "Train400"
    )
    splits = qd.load_y_sr_splits(
        args.data, train400, scale=SR_SCALE, n_test=args.n_test, n_train=args.n_train, train_crop=args.train_crop
    )
    backbone, bb_info = load_dncnn_mat(args.dncnn_root, DNCNN_3, "DnCNN-3")
    for p in backbone.parameters():
        p.requires_grad_(False)
    backbone = backbone.to(args.device)
    seg = qd.Segmenter.parse(args.segmenter)
    repro = {
        sub: evaluate(
            backbone,
            qd.build_upsampled_sr_priors(splits[sub], scale=SR_SCALE, seg=seg, cache=cache, want_oracle=False),
            "none",
        )
        for sub in qd.SR_TEST
    }
    log(
        "DnCNN-3 frozen, bicubic x4 (Y, crop 4): "
        + ", ".join(f"{k} {v:.3f}" for k, v in repro.items())
        + " (published Set5 31.40, Set14 28.04)"
    )
    if args.tune_distill:
        tr = qd.build_upsampled_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
        val = qd.build_upsampled_sr_priors(splits["val"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
        tune_distill_sets(
            args,
            backbone,
            qd.apply_encoding(tr, args.encoding),
            qd.apply_encoding(val, args.encoding),
            "McMaster 15-18 Y, x4 BD",
        )
        return 0
    t0 = time.time()
    train_set = qd.build_upsampled_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd")
    eval_sets = {
        f"{sub} ×{SR_SCALE} BD (Y, crop {SR_SCALE})": qd.build_upsampled_sr_priors(
            splits[sub], scale=SR_SCALE, seg=seg, cache=cache, degradation="bd"
        )
        for sub in qd.SR_TEST
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"data: {len(splits['train'])} Y train images, "
        + ", ".join(f"{k} {len(splits[k])}" for k in qd.SR_TEST)
        + f" test images; priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per "
        "upsampled LQ test image)"
    )
    rows = [r for r in ROWS if r in args.rows]
    res = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print(
        "\nDnCNN-3 frozen, bicubic ×4 (Y, crop 4): "
        + ", ".join(f"{k} {v:.3f}" for k, v in repro.items())
        + " (published Set5 31.40, Set14 28.04)"
    )
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, DnCNN-3 (bicubic ×{SR_SCALE} on the upsampled luma) → ×{SR_SCALE} BD — "
        f"{seg.label()}, {args.encoding} encoding ({n_regions:.0f} regions per test image, "
        f"{args.units or 'all'} units)",
        {**bb_info, "bicubic_x4_frozen": repro},
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": "bd",
            "regions_per_test_image": n_regions,
            "dncnn3_bicubic_x4_frozen": repro,
        },
    )
    return 0


def tune_distill(args, splits: qd.Splits, backbone, cache: qd.LabelCache, *, sigma: float, jpeg: int = 0) -> None:
    """Choose the distillation settings (weight, student-only steps, student width) on the validation
    split, never on the test set: (g) − (h) and (g) − (c) per candidate and fusion, in dB."""
    seg = qd.Segmenter.parse(args.segmenter)
    tr = qd.apply_encoding(
        qd.build_priors(
            splits.train, sigma=sigma, realisations=args.realisations, noise_base=1, seg=seg, cache=cache, jpeg=jpeg
        ),
        args.encoding,
    )
    val = qd.apply_encoding(
        qd.build_priors(splits.val, sigma=sigma, realisations=1, noise_base=2, seg=seg, cache=cache, jpeg=jpeg),
        args.encoding,
    )
    tune_distill_sets(
        args,
        backbone,
        tr,
        val,
        f"McMaster 15-18; σ={sigma:g}{f', JPEG q={jpeg}' if jpeg else ''}",
        {"sigma": sigma, "jpeg": jpeg},
    )


def tune_distill_sets(args, backbone, tr: qd.PriorSet, val: qd.PriorSet, title: str, extra: dict | None = None) -> None:
    """The ``--tune-distill`` comparison on encoded training and validation sets (see :func:`tune_distill`)."""
    backbone = backbone.to(args.device)
    lines, scored = [], []
    base: dict[tuple[int, str, str, int], float] = {}
    for weight, steps, width in args.tune_distill:
        cells, worst = [], []
        for fusion in args.fusions:
            d_h, d_c = [], []
            for seed in args.seeds:
                sched = make_schedule(seed, args.steps, args.batch, args.patch, tr)
                a = argparse.Namespace(**{**vars(args), "student_width": width})
                for row in ("c", "h"):
                    key = (seed, fusion, row, width if row == "h" else 0)
                    if key not in base:
                        m = make_spt(backbone, fusion, a, seed, tr.prior_channels, student=row == "h")
                        train_model(m, sched, tr, ROW_PRIOR[row], args.lr, args.patch, device=args.device)
                        base[key] = evaluate(m, val, ROW_PRIOR[row])
                m = make_spt(backbone, fusion, a, seed, tr.prior_channels, student=True)
                train_model(
                    m,
                    sched,
                    tr,
                    "student",
                    args.lr,
                    args.patch,
                    distill_weight=weight,
                    student_steps=steps,
                    device=args.device,
                )
                g = evaluate(m, val, "student")
                d_h.append(g - base[(seed, fusion, "h", width)])
                d_c.append(g - base[(seed, fusion, "c", 0)])
            cells.append(f"{np.mean(d_h):+.3f} / {np.mean(d_c):+.3f}")
            worst.append(min(np.mean(d_h), np.mean(d_c)))
        scored.append(
            {
                "candidate": f"{weight:g}:{steps}:{width}",
                "weight": weight,
                "student_steps": steps,
                "student_width": width,
                "score": float(np.mean(worst)),
            }
        )
        lines.append(f"| {weight:g} | {steps} | {width} | " + " | ".join(cells) + " |")
        log(f"tune-distill {weight:g}:{steps}:{width}: {lines[-1]}")
    print(f"\n### Distillation settings on validation ({title}): (g) − (h) / (g) − (c), dB\n")
    print("| distill weight | student-only steps | student width | " + " | ".join(args.fusions) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.fusions))
    print("\n".join(lines))
    # the choice: the candidate whose smaller margin (over h and over c), averaged over fusions, is largest
    best = max(scored, key=lambda c: c["score"])
    print(
        f"\nchosen on validation: {best['candidate']} (weight:student-steps:width; min(g − h, g − c) "
        f"{best['score']:+.3f} dB)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "tune_distill": scored,
                    "best": best,
                    **(extra or {}),
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                },
                indent=1,
                sort_keys=True,
            )
        )


def tune(args, splits: qd.Splits, backbone, cache: qd.LabelCache) -> None:
    """Choose the segmenter and the encoding on the validation split (McMaster 15-18), never on
    the test set: (b) − (c) and the oracle's (d) − (c) per fusion, units trained at the unit sigma."""
    names = [f"val σ={s:g}" for s in args.test_sigmas]
    unit_sigma = args.sigma if args.unit_sigma is None else args.unit_sigma
    rows_out = []
    for text in args.tune_candidates:
        seg = qd.Segmenter.parse(text)
        view = restored_view(backbone) if args.segment_input == "restored" else None
        tr0 = qd.build_priors(
            splits.train,
            sigma=unit_sigma,
            realisations=args.realisations,
            noise_base=1,
            seg=seg,
            cache=cache,
            segment_view=view,
        )
        vals0 = {
            n: qd.build_priors(
                splits.val, sigma=s, realisations=1, noise_base=2, seg=seg, cache=cache, segment_view=view
            )
            for n, s in zip(names, args.test_sigmas, strict=True)
        }
        n_regions = float(np.mean([len(np.unique(p[0])) for p in vals0[names[0]].lq_prior]))
        for encoding in args.tune_encodings:
            t0 = time.time()
            tr = qd.apply_encoding(tr0, encoding)
            vals = {n: qd.apply_encoding(v, encoding) for n, v in vals0.items()}
            cells = []
            for fusion in args.fusions:
                d = {(k, n): [] for k in ("lq", "oracle") for n in names}
                for seed in args.seeds:
                    sched = make_schedule(seed, args.steps, args.batch, args.patch, tr)
                    sc = {}
                    for prior in ("lq", "const", "oracle"):
                        m = make_spt(backbone, fusion, args, seed, tr.prior_channels)
                        train_model(m, sched, tr, prior, args.lr, args.patch)
                        sc[prior] = {n: evaluate(m, es, prior) for n, es in vals.items()}
                    for k in ("lq", "oracle"):
                        for n in names:
                            d[(k, n)].append(sc[k][n] - sc["const"][n])
                cells.append(
                    " / ".join(f"{np.mean(d[('lq', n)]):+.3f} ({np.mean(d[('oracle', n)]):+.3f})" for n in names)
                )
            rows_out.append(f"| {seg.label()} | {encoding} | {n_regions:.0f} | " + " | ".join(cells) + " |")
            log(f"tune {seg.label()} {encoding}: {rows_out[-1]} ({time.time() - t0:.0f}s)")
    print(
        f"\n### Validation (McMaster 15-18, 256 px centre crops; units trained at σ={unit_sigma:g}): "
        "(b) − (c), in brackets the oracle's (d) − (c), in dB, " + " / ".join(names) + "\n"
    )
    print("| segmenter | encoding | regions per val crop | " + " | ".join(args.fusions) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.fusions))
    print("\n".join(rows_out))


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--task",
        choices=("denoise", "sr4", "kair", "cdncnnb", "dncnn3bd"),
        default="denoise",
        help="denoise: colour denoising on CBSD68 (default); sr4: bicubic x4 SR on Set5/Set14; kair: "
        "KAIR's pretrained grey DnCNN (sigma 25) adapted to --kair-degradation, tested on Set12; "
        "cdncnnb: cszn/DnCNN's pretrained colour blind CDnCNN-B (sigma 0-55) in place of the "
        "self-trained colour DnCNN (default unit/test sigma 75, outside its range), CBSD68; "
        "dncnn3bd: cszn/DnCNN's DnCNN-3 (SR on the bicubic-upsampled luma) adapted to x4 BD, Set5/Set14",
    )
    p.add_argument(
        "--dncnn-root",
        type=Path,
        default=Path(os.environ["SPT_DNCNN_ROOT"]) if os.environ.get("SPT_DNCNN_ROOT") else None,
        help="cdncnnb, dncnn3bd: a cszn/DnCNN checkout (model/*.mat, Train400); required for those "
        "tasks unless $SPT_DNCNN_ROOT is set",
    )
    p.add_argument(
        "--kair-root",
        type=Path,
        default=Path(os.environ["SPT_KAIR_ROOT"]) if os.environ.get("SPT_KAIR_ROOT") else None,
        help="kair: a KAIR checkout (model_zoo/dncnn_25.pth, testsets/set12); required for --task kair "
        "unless $SPT_KAIR_ROOT is set",
    )
    p.add_argument(
        "--kair-degradation",
        choices=KAIR_DEGRADATIONS,
        default="sigma50",
        help="kair: what the unit rows adapt the sigma-25 DnCNN to: sigma50 (Gaussian noise sigma 50) or "
        "jpeg30-sigma25 (JPEG q=30, then sigma 25 noise: a degradation it never saw)",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (trainings and tests of the ladder)")
    p.add_argument("--jobs", type=int, default=1, help="trainings run in parallel processes (on one GPU with cuda)")
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.1,
        help="row g: weight of the distillation BCE beside the restoration loss",
    )
    p.add_argument(
        "--student-steps",
        type=int,
        default=0,
        help="row g: batches on which the student first learns the teacher alone (no backbone, units "
        "untouched); every row's units then train --steps steps on the same batches",
    )
    p.add_argument("--student-width", type=int, default=16, help="rows g/h: student conv width")
    p.add_argument("--student-depth", type=int, default=4, help="rows g/h: student conv layers")
    p.add_argument(
        "--student-input",
        choices=("lq", "restored"),
        default="lq",
        help="rows g/h: what the student reads: the LQ input (default; the adapter's PriorStudent) or "
        "[LQ, the frozen backbone's restoration of it] (one more backbone forward per image)",
    )
    p.add_argument(
        "--tune-distill",
        nargs="+",
        default=None,
        metavar="WEIGHT:STEPS:WIDTH",
        help="choose the distillation settings on the validation split: (g) − (h) and (g) − (c) per "
        "candidate, e.g. 0.1:0:16 1:200:16, and exit",
    )
    p.add_argument("--data", type=Path, default=qd.DATA_DEFAULT, help="folder with Set14/McMaster/CBSD68")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "spt-adapter" / "quality")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds): few steps/images, 1 seed")
    p.add_argument("--tune", action="store_true", help="compare segmenters on the validation split and exit")
    p.add_argument("--tune-candidates", nargs="+", default=list(TUNE_CANDIDATES))
    p.add_argument(
        "--segmenter",
        default=DEFAULT_SEGMENTER,
        help="e.g. slic:region_px=400,compactness=10 or felzenszwalb:scale=3000,min_size=400",
    )
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="adds row (f): SAM masks of the LQ input")
    p.add_argument("--sam-model-type", default="vit_b")
    p.add_argument(
        "--fusions", nargs="+", default=None, choices=FUSIONS, help="default: all three for denoise, concat for sr4"
    )
    p.add_argument("--rows", default="abcde", help="subset of abcdefgh")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sigma", type=float, default=25.0, help="training sigma (backbone and units)")
    p.add_argument(
        "--unit-sigma",
        type=float,
        default=None,
        help="sigma of the data rows (b)-(f) train on (default: --sigma); another value adapts the "
        "backbone to a noise level it never saw",
    )
    p.add_argument("--test-sigmas", type=float, nargs="+", default=[25.0, 50.0])
    p.add_argument("--nc", type=int, default=32)
    p.add_argument("--nb", type=int, default=8)
    p.add_argument("--sr-feat", type=int, default=32, help="sr4: channels of the SRVGGNetCompact backbone")
    p.add_argument("--sr-convs", type=int, default=8, help="sr4: hidden convs of the SRVGGNetCompact backbone")
    p.add_argument("--pretrain-steps", type=int, default=None, help="default: 1000 (denoise), 2000 (sr4)")
    p.add_argument("--pretrain-batch", type=int, default=16)
    p.add_argument("--pretrain-lr", type=float, default=1e-3)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps of every row (b)-(f); default: 200 (denoise), 1500 (sr4)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--patch",
        type=int,
        default=None,
        help="training patch; for sr4 the LQ patch (HR: 4x). Default: 48 (denoise), 32 (sr4)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of the units")
    p.add_argument("--ft-lr", type=float, default=1e-4, help="learning rate of full fine-tuning (e)")
    p.add_argument(
        "--encoding",
        default="label",
        help="prior encoding of the segments: label (default), boundary, onehot:K "
        "(spt_adapter.prior.encode_masks); pool needs label",
    )
    p.add_argument(
        "--segment-input",
        choices=("lq", "restored"),
        default="lq",
        help="denoise: what the LQ prior (b) segments: the noisy input (default) or the frozen "
        "backbone's restoration of it",
    )
    p.add_argument("--units", type=int, default=3, help="SPT units spread through the depth (0: one per hidden conv)")
    p.add_argument(
        "--sr-degradation",
        choices=qd.SR_DEGRADATIONS,
        default="bicubic",
        help="sr4: LQ of the unit rows' training and test data; the backbone is always pre-trained on "
        "bicubic, so 'bd' (7x7 Gaussian blur sigma 1.6, then bicubic) adapts it to an unseen blur",
    )
    p.add_argument(
        "--tune-encodings", nargs="+", default=None, help="--tune: encodings to compare (default: --encoding)"
    )
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--realisations", type=int, default=3, help="fixed noise draws per training image")
    p.add_argument("--n-test", type=int, default=0, help="first N CBSD68 images (0: all 68)")
    p.add_argument(
        "--test-crop",
        type=int,
        default=None,
        help="centre crop of test images (0: full size); default: 160 (denoise), 0 (sr4)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write all per-seed numbers here")
    args = p.parse_args(argv)
    sr = args.task == "sr4"
    kair = args.task == "kair"
    dncnn3 = args.task == "dncnn3bd"
    if args.task in ("cdncnnb", "dncnn3bd") and args.dncnn_root is None:
        p.error(
            f"--task {args.task} needs --dncnn-root PATH (a cszn/DnCNN checkout with model/*.mat) or SPT_DNCNN_ROOT"
        )
    if args.task == "cdncnnb":
        if args.unit_sigma is None:
            args.unit_sigma = 75.0
        if args.test_sigmas == [25.0, 50.0]:  # the parser default: test where the units were trained
            args.test_sigmas = [args.unit_sigma]
    if kair and args.kair_root is None:
        p.error(
            "--task kair needs --kair-root PATH (a KAIR checkout with model_zoo/dncnn_25.pth and testsets/set12) "
            "or SPT_KAIR_ROOT"
        )
    defaults = {
        "fusions": ["concat"] if (sr or kair or args.task in ("cdncnnb", "dncnn3bd")) else list(FUSIONS),
        "pretrain_steps": 2000 if sr else 1000,
        "steps": 1500 if sr else 200,
        "patch": 32 if sr else 48,
        "test_crop": 0 if (sr or kair or dncnn3) else 160,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.quick:
        args.pretrain_steps, args.steps, args.seeds = 20, 6, [0]
        args.n_test, args.test_crop, args.realisations = 3, 64, 1
        args.pretrain_batch, args.batch, args.patch = 4, 4, 32
        args.nc, args.nb = 8, 4
        args.tune_candidates = args.tune_candidates[:1]
        args.n_train, args.train_crop = 4, 128
        args.sr_feat, args.sr_convs = 8, 4
        if sr:
            args.n_test, args.patch = 2, 16
    else:
        args.n_train, args.train_crop = 0, 0
    args.in_channels = 1 if (kair or dncnn3) else 3
    if args.task in ("cdncnnb", "dncnn3bd"):
        args.nb = (CDNCNN_B if args.task == "cdncnnb" else DNCNN_3)[1]  # the pretrained depth, whatever --quick says
    if not set(args.rows) <= set(ROWS):
        p.error(f"--rows takes letters from {ROWS!r}, got {args.rows!r}")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    if args.distill_weight < 0 or args.student_steps < 0:
        p.error("--distill-weight and --student-steps must be >= 0")
    try:
        from spt_adapter.core.student import check_student

        check_student({"width": args.student_width, "depth": args.student_depth})
    except Exception as exc:  # ConfigError names the bound
        p.error(str(exc))
    if set(args.rows) & set("gh") and "pool" in args.fusions:
        p.error("rows g/h: the student makes a soft map, not the label map the pool fusion reads")
    if args.tune_distill:
        try:
            args.tune_distill = [parse_distill_candidate(c) for c in args.tune_distill]
        except ValueError as exc:
            p.error(str(exc))
        if sr:
            p.error("--tune-distill runs on a validation split of denoise, kair or dncnn3bd")
    if (sr or kair or dncnn3) and args.tune:
        p.error("--tune chooses the segmenter on the denoising validation split; it has no --task sr4 mode")
    try:
        from spt_adapter.prior.encode import parse_encoding

        for enc in [args.encoding] + list(args.tune_encodings or []):
            parse_encoding(enc)
    except Exception as exc:  # PriorError names the bad encoding
        p.error(str(exc))
    if "pool" in args.fusions and set([args.encoding] + list(args.tune_encodings or [])) != {"label"}:
        p.error("the pool fusion averages features inside the regions of a label map: use --encoding label")
    if args.tune_encodings is None:
        args.tune_encodings = [args.encoding]
    if args.student_input == "restored" and sr:
        p.error("--student-input restored needs a backbone whose output has the input's size (not --task sr4)")
    if args.segment_input != "lq" and sr:
        p.error("--segment-input restored is for denoising (the SR backbone's output is HR-sized)")
    if args.segment_input != "lq" and (kair or dncnn3):
        p.error("--segment-input restored is for the colour denoising task")
    if args.sr_degradation != "bicubic" and not sr:
        p.error("--sr-degradation is for --task sr4")
    if "f" in args.rows and args.sam_checkpoint is None:
        p.error("row f needs --sam-checkpoint")
    if args.sam_checkpoint is not None and "f" not in args.rows:
        args.rows += "f"
    return args


def parse_distill_candidate(text: str) -> tuple[float, int, int]:
    """``WEIGHT:STEPS:WIDTH`` (e.g. ``0.1:200:16``) -> (distill weight, student steps, student width)."""
    parts = text.split(":")
    try:
        weight, steps, width = float(parts[0]), int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise ValueError(f"--tune-distill candidate {text!r}: expected WEIGHT:STEPS:WIDTH, e.g. 0.1:200:16") from None
    if len(parts) != 3 or weight < 0 or steps < 0 or not 1 <= width <= 256:
        raise ValueError(f"--tune-distill candidate {text!r}: weight >= 0, steps >= 0, width in [1, 256]")
    return weight, steps, width


def _make_sam(args):
    if args.sam_checkpoint is None:
        return None
    from spt_adapter.prior import SamMaskProvider

    return SamMaskProvider(str(args.sam_checkpoint), model_type=args.sam_model_type)


def _report(args, argv, t_all, title, bb_info, res, eval_names, rows, extra) -> None:
    wall = time.time() - t_all
    cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n### {title}\n")
    print(f"command: `{cmd.strip()}`  ")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPU(s), torch {torch.__version__}, "
        f"{args.threads} threads; wall time {wall / 60:.1f} min (backbone "
        f"{'from cache' if bb_info['cached'] else 'pre-trained in this run'})"
    )
    print(render(res, eval_names, rows, args.fusions, row_titles(args)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": cmd,
            "task": args.task,
            "wall_seconds": wall,
            "backbone": bb_info,
            "results": res,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            **extra,
        }
        args.json.write_text(json.dumps(payload, indent=1, sort_keys=True))


def main_sr(args, argv, t_all, cache: qd.LabelCache) -> int:
    """The prior ladder for x4 SR: train McMaster + CBSD68, test Set5 and Set14. The backbone is
    pre-trained on bicubic LQ; the unit rows train and test on ``--sr-degradation``."""
    splits = qd.load_sr_splits(
        args.data,
        scale=SR_SCALE,
        n_test=args.n_test,
        test_crop=args.test_crop,
        n_train=args.n_train,
        train_crop=args.train_crop,
    )
    seg = qd.Segmenter.parse(args.segmenter)
    sam = _make_sam(args)
    t0 = time.time()
    deg = args.sr_degradation
    train_set = qd.build_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, sam=sam, degradation=deg)
    tag = "" if deg == "bicubic" else f" {deg.upper()}"
    eval_sets = {
        f"{k} ×{SR_SCALE}{tag} (Y, crop {SR_SCALE})": qd.build_sr_priors(
            splits[k], scale=SR_SCALE, seg=seg, cache=cache, sam=sam, degradation=deg
        )
        for k in qd.SR_TEST
    }
    lq_priors = [p[0] for es in eval_sets.values() for p in es.lq_prior]
    n_regions = float(np.mean([len(np.unique(p)) for p in lq_priors]))
    log(
        f"data: {len(splits['train'])} train images, "
        + ", ".join(f"{k} {len(splits[k])}" for k in qd.SR_TEST)
        + f" test images; priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per "
        f"LQ test image; prior code path: {qd.prior_code_path()})"
    )
    bicubic = {k: qd.bicubic_upsample_psnr(es) for k, es in eval_sets.items()}
    log("bicubic upsampling (reference): " + ", ".join(f"{k} {v:.3f}" for k, v in bicubic.items()))
    pretrain_set = (
        train_set
        if deg == "bicubic"
        else qd.build_sr_priors(splits["train"], scale=SR_SCALE, seg=seg, cache=cache, want_oracle=False)
    )
    backbone, bb_info = pretrain_sr_backbone(args, [n for n, _ in splits["train"]], pretrain_set, args.cache_dir)
    train_set = qd.apply_encoding(train_set, args.encoding)
    eval_sets = {k: qd.apply_encoding(v, args.encoding) for k, v in eval_sets.items()}
    for p in backbone.parameters():
        p.requires_grad_(False)
    rows = [r for r in ROWS if r in args.rows]
    res = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    print("\nbicubic upsampling (reference): " + ", ".join(f"{k} {v:.3f}" for k, v in bicubic.items()))
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder, SR ×{SR_SCALE}{tag} — {seg.label()}, {args.encoding} encoding "
        f"({n_regions:.0f} regions per LQ test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "degradation": deg,
            "regions_per_test_image": n_regions,
            "bicubic_upsampling": bicubic,
            "oracle": "segment HR (area settings x16), nearest-downsample the label map",
        },
    )
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    qd.PRIOR_WORKERS = args.jobs
    t_all = time.time()
    cache = qd.LabelCache(args.cache_dir / "priors")
    if args.task == "sr4":
        return main_sr(args, argv, t_all, cache)
    if args.task == "kair":
        return main_kair(args, argv, t_all, cache)
    if args.task == "dncnn3bd":
        return main_dncnn3(args, argv, t_all, cache)
    splits = qd.load_splits(
        args.data, n_test=args.n_test, test_crop=args.test_crop, n_train=args.n_train, train_crop=args.train_crop
    )
    log(
        f"data: {len(splits.train)} train images, {len(splits.val)} val crops, {len(splits.test)} test images "
        f"(crop {args.test_crop or 'full'}); prior code path: {qd.prior_code_path()}"
    )
    if args.task == "cdncnnb":
        backbone, bb_info = load_cdncnn_b(args.dncnn_root)
    else:
        backbone, bb_info = pretrain_backbone(args, splits.train, args.cache_dir)
    for p in backbone.parameters():
        p.requires_grad_(False)
    if args.tune:
        tune(args, splits, backbone, cache)
        log(f"total wall time {time.time() - t_all:.0f}s")
        return 0
    if args.tune_distill:
        tune_distill(args, splits, backbone, cache, sigma=args.sigma if args.unit_sigma is None else args.unit_sigma)
        log(f"total wall time {time.time() - t_all:.0f}s")
        return 0
    sam = _make_sam(args)
    seg = qd.Segmenter.parse(args.segmenter)
    t0 = time.time()
    unit_sigma = args.sigma if args.unit_sigma is None else args.unit_sigma
    view = restored_view(backbone) if args.segment_input == "restored" else None
    train_set = qd.build_priors(
        splits.train,
        sigma=unit_sigma,
        realisations=args.realisations,
        noise_base=1,
        seg=seg,
        cache=cache,
        sam=sam,
        segment_view=view,
    )
    eval_sets = {
        f"CBSD68 σ={s:g}" + ("" if s == unit_sigma else " (unseen)"): qd.build_priors(
            splits.test, sigma=s, realisations=1, noise_base=0, seg=seg, cache=cache, sam=sam, segment_view=view
        )
        for s in args.test_sigmas
    }
    train_set, eval_sets, n_regions = _encode_sets(args, train_set, eval_sets)
    log(
        f"priors ready in {time.time() - t0:.0f}s ({seg.label()}; {n_regions:.0f} regions per test image; "
        f"encoding {args.encoding})"
    )
    rows = [r for r in ROWS if r in args.rows]
    res = run_ladder(args, backbone, train_set, eval_sets, rows, args.fusions)
    _report(
        args,
        argv,
        t_all,
        f"Prior ladder — {seg.label()}, {args.encoding} encoding ({n_regions:.0f} regions per "
        f"test image, {args.units or 'all'} units)",
        bb_info,
        res,
        list(eval_sets),
        rows,
        {
            "segmenter": seg.label(),
            "encoding": args.encoding,
            "segment_input": args.segment_input,
            "regions_per_test_image": n_regions,
            "dropped_near_duplicates": splits.dropped,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
