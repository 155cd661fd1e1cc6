"""Evaluate a backbone against backbone + SPT on full images: PSNR/SSIM tables and comparison crops.

Used by ``spt-adapter eval``, the demo and the trainer's validation. Outputs are rounded to 8 bits
before scoring (what a user saves and what papers score) -- to 16 bits (65535 levels) against a
sample whose ``bits`` is 16 (a 16-bit ground truth, scored at its own depth); PSNR/SSIM follow
:mod:`spt_adapter.inference.metrics` (RGB for denoising, Y channel with a ``scale``-pixel border crop for SR).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .._io import atomic_write_bytes
from ..core.model import SPTModel
from ..data.datasets import parse_task
from . import metrics
from .restore import restore_tensor, size_multiple

__all__ = ["EvalResult", "evaluate", "compare_strip", "task_scale", "make_val_fn", "markdown_table"]


def task_scale(task: str) -> int:
    """The output/input size ratio of a task (1 for denoising), from :func:`data.parse_task`."""
    return parse_task(task).scale


@dataclass
class EvalResult:
    task: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    table_md: Path | None = None
    table_csv: Path | None = None
    crops: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    outputs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (backbone, +SPT) uint8, on request
    backbone_only: bool = False  # scored without the adapter: the spt_* values repeat the backbone's

    @property
    def delta_psnr(self) -> float:
        return self.mean.get("spt_psnr", float("nan")) - self.mean.get("backbone_psnr", float("nan"))


def _uint8(t: torch.Tensor) -> np.ndarray:
    return metrics.to_uint8(t)


def _at_depth(t: torch.Tensor, bits: int) -> np.ndarray:
    """A float output ``(C,H,W)`` as it is saved at ``bits`` (8: uint8 as :func:`metrics.to_uint8`; 16:
    clamped, rounded to 65535 levels, as float64 ``(H, W, C)`` on [0, 1] for the metrics)."""
    if bits == 8:
        return _uint8(t)
    levels = float((1 << bits) - 1)
    arr = t.detach().cpu().to(torch.float64).permute(1, 2, 0).numpy()
    return np.round(np.clip(arr, 0.0, 1.0) * levels) / levels


def _deep_gt(gt: torch.Tensor) -> np.ndarray:
    """A ground truth kept at full depth: float64 ``(H, W, C)`` on [0, 1], as read."""
    return gt.detach().cpu().to(torch.float64).permute(1, 2, 0).numpy()


def _saved(img: np.ndarray) -> np.ndarray:
    """An output at its scored depth as an array to write: uint8 as it is, 16-bit ones as uint16."""
    if img.dtype == np.uint8:
        return img
    return np.round(img * 65535.0).astype(np.uint16)


def _rgb(img: np.ndarray) -> np.ndarray:
    """An HxWx1 grey image as HxWx3 (for pictures); others unchanged."""
    return np.repeat(img, 3, axis=2) if img.ndim == 3 and img.shape[2] == 1 else img


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img)


def _upscale_nearest(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == size:
        return img
    out = np.asarray(_pil(img).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return out[:, :, None] if out.ndim == 2 else out


def _worst_crop(err: np.ndarray, crop: int) -> tuple[int, int]:
    """Top-left corner of the ``crop`` x ``crop`` window with the largest total error (the
    hardest region for the backbone; not chosen by where SPT helps)."""
    h, w = err.shape
    if h <= crop or w <= crop:
        return 0, 0
    t = torch.from_numpy(err.astype(np.float32))[None, None]
    s = F.avg_pool2d(t, crop, stride=max(crop // 4, 1))[0, 0]
    idx = int(torch.argmax(s))
    y, x = divmod(idx, s.shape[1])
    stride = max(crop // 4, 1)
    return min(y * stride, h - crop), min(x * stride, w - crop)


def compare_strip(panels: list[tuple[str, np.ndarray]], label_height: int = 18) -> Image.Image:
    """Side-by-side panels (same size, HxWx3 uint8) with a caption above each."""
    from PIL import ImageDraw

    h, w = panels[0][1].shape[:2]
    gap = 4
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        x0 = i * (w + gap)
        canvas.paste(Image.fromarray(_rgb(img)), (x0, label_height))
        draw.text((x0 + 3, 3), label, fill="black")
    return canvas


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.4f}"


def markdown_table(result: EvalResult, label_a: str = "backbone", label_b: str = "+SPT") -> str:
    if result.backbone_only:
        lines = [f"| image | {label_a} PSNR | {label_a} SSIM |", "| --- | ---: | ---: |"]
        lines += [f"| {r['image']} | {r['backbone_psnr']:.2f} | {r['backbone_ssim']:.4f} |" for r in result.rows]
        m = result.mean
        lines.append(f"| **mean ({len(result.rows)})** | **{m['backbone_psnr']:.2f}** | **{m['backbone_ssim']:.4f}** |")
        return "\n".join(lines) + "\n"
    lines = [
        f"| image | {label_a} PSNR | {label_b} PSNR | Δ PSNR | {label_a} SSIM | {label_b} SSIM |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result.rows:
        lines.append(
            f"| {r['image']} | {r['backbone_psnr']:.2f} | {r['spt_psnr']:.2f} | "
            f"{r['spt_psnr'] - r['backbone_psnr']:+.2f} | {r['backbone_ssim']:.4f} | {r['spt_ssim']:.4f} |"
        )
    m = result.mean
    lines.append(
        f"| **mean ({len(result.rows)})** | **{m['backbone_psnr']:.2f}** | **{m['spt_psnr']:.2f}** | "
        f"**{m['spt_psnr'] - m['backbone_psnr']:+.2f}** | **{m['backbone_ssim']:.4f}** | **{m['spt_ssim']:.4f}** |"
    )
    return "\n".join(lines) + "\n"


def evaluate(
    model: SPTModel,
    samples: Iterable[dict[str, Any]],
    task: str,
    out_dir: str | Path | None = None,
    *,
    save_images: bool = False,
    crops: int = 4,
    crop_size: int = 96,
    multiple: int = 16,
    progress: bool = True,
    total: int | None = None,
    keep_outputs: bool = False,
    backbone_only: bool = False,
    upsampled: bool = False,
) -> EvalResult:
    """Score backbone (adapter disabled) and backbone + SPT on every sample (dicts with ``lq``,
    ``gt``, ``prior``, ``path``; full images). With ``out_dir``: ``eval.md``, ``eval.csv``, the
    first ``crops`` comparison crops (``crops/<image>.png``: LQ | backbone | +SPT | GT, at the
    backbone's worst region) and, with ``save_images``, both outputs of every image.
    ``keep_outputs`` keeps both outputs of every image in ``result.outputs`` (uint8; uint16 for a
    16-bit sample). A sample whose ``bits`` is 16 (``PairedPriorDataset(full_depth=True)`` with a
    16-bit ground truth) is scored at 16 bits: both outputs rounded to 65535 levels against the
    float GT; its row's ``bits`` says so, as do ``eval.md``'s header and an extra ``bits`` column of
    ``eval.csv`` (8-bit-only tables are written as before).
    ``backbone_only``: score the backbone alone (``model`` may be a plain backbone; no prior needed);
    tables and crops then show the backbone only.
    ``upsampled``: pre-upsampled SR (``data.PairedPriorDataset(upsampled=True)``): the samples' ``lq``
    already has the GT's size and the network runs at x1; scores are still the SR task's (Y channel,
    ``scale``-pixel border), against the float GT (a Y-channel GT is not on the 8-bit grid)."""
    scale = task_scale(task)
    net_scale = 1 if upsampled else scale
    settings = metrics.metric_settings(task)
    out = Path(out_dir) if out_dir is not None else None
    result = EvalResult(task=task, backbone_only=backbone_only or not isinstance(model, SPTModel))
    backbone_only = result.backbone_only
    was_training = model.training
    model.eval()
    iterator = samples
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(samples, total=total, desc="evaluate", unit="image", dynamic_ncols=True)
    try:
        for k, sample in enumerate(iterator):
            lq, gt, prior = sample["lq"], sample["gt"], sample.get("prior")
            name = Path(str(sample.get("path", f"image_{k:03d}"))).stem
            base = restore_tensor(model, lq, None, scale=net_scale, multiple=multiple, backbone_only=True)
            spt = base if backbone_only else restore_tensor(model, lq, prior, scale=net_scale, multiple=multiple)
            bits = int(sample.get("bits", 8))
            gt8, base8, spt8 = _uint8(gt), _uint8(base), _uint8(spt)
            if gt8.shape != base8.shape:  # e.g. an HR image not divisible by the scale
                hh, ww = min(gt8.shape[0], base8.shape[0]), min(gt8.shape[1], base8.shape[1])
                gt8, base8, spt8 = gt8[:hh, :ww], base8[:hh, :ww], spt8[:hh, :ww]
            hh, ww = gt8.shape[:2]
            ref = gt8  # outputs are scored as saved (8 bits); a float GT as it is
            if upsampled or bits != 8:
                ref = _deep_gt(gt)[:hh, :ww]
            base_s, spt_s = base8, spt8  # the outputs at the scored depth
            if bits != 8:  # a 16-bit GT: the outputs as a 16-bit file saves them
                base_s = _at_depth(base, bits)[:hh, :ww]
                spt_s = base_s if spt is base else _at_depth(spt, bits)[:hh, :ww]
            row = {
                "image": name,
                "backbone_psnr": metrics.psnr(base_s, ref, **settings),
                "spt_psnr": metrics.psnr(spt_s, ref, **settings),
                "backbone_ssim": metrics.ssim(base_s, ref, **settings),
                "spt_ssim": metrics.ssim(spt_s, ref, **settings),
                "bits": bits,
            }
            result.rows.append(row)
            if keep_outputs:
                result.outputs.append((_saved(base_s), _saved(spt_s)))
            if out is not None:
                if k < crops:
                    err = np.abs(base8.astype(np.float32) - gt8.astype(np.float32)).mean(axis=2)  # HxWxC, C 1 or 3
                    c = min(crop_size, gt8.shape[0], gt8.shape[1])
                    y, x = _worst_crop(err, c)
                    lq8 = _upscale_nearest(_uint8(lq), gt8.shape[:2])[: gt8.shape[0], : gt8.shape[1]]
                    sl = (slice(y, y + c), slice(x, x + c))
                    panels = [("LQ", lq8[sl]), (f"backbone {row['backbone_psnr']:.2f}", base8[sl])]
                    if not backbone_only:
                        panels.append((f"+SPT {row['spt_psnr']:.2f}", spt8[sl]))
                    strip = compare_strip(panels + [("GT", gt8[sl])])
                    (out / "crops").mkdir(parents=True, exist_ok=True)
                    buf = io.BytesIO()
                    strip.save(buf, format="PNG")
                    result.crops.append(atomic_write_bytes(out / "crops" / f"{name}.png", buf.getvalue()))
                if save_images:
                    for tag, img in (("backbone", base_s), ("spt", spt_s))[: 1 if backbone_only else 2]:
                        (out / "images" / tag).mkdir(parents=True, exist_ok=True)
                        if img.dtype == np.uint8:
                            buf = io.BytesIO()
                            _pil(img).save(buf, format="PNG")
                            data = buf.getvalue()
                        else:  # scored at 16 bits: saved at 16 bits
                            from ..deploy.outputs import png16_bytes

                            data = png16_bytes(_saved(img))
                        result.images.append(atomic_write_bytes(out / "images" / tag / f"{name}.png", data))
    finally:
        model.train(was_training)
    if not result.rows:
        return result
    for key in ("backbone_psnr", "spt_psnr", "backbone_ssim", "spt_ssim"):
        result.mean[key] = float(np.mean([r[key] for r in result.rows]))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        space = "Y channel, border " + str(scale) if scale > 1 else ("grey" if base8.shape[2] == 1 else "RGB")
        if upsampled:
            space += f", pre-upsampled (LR bicubic-upsampled x{scale} before the x1 network)"
        deep = sum(1 for r in result.rows if r["bits"] != 8)
        if deep:  # the depth each image was scored at
            space += (
                ", scored at 16 bits (outputs rounded to 65535 levels)"
                if deep == len(result.rows)
                else f", {deep} image(s) scored at 16 bits, {len(result.rows) - deep} at 8 (eval.csv: bits)"
            )
        header = f"{task}: PSNR (dB) / SSIM, {space}\n\n"
        result.table_md = atomic_write_bytes(out / "eval.md", (header + markdown_table(result)).encode())
        text = io.StringIO()
        fields = (
            ["image", "backbone_psnr", "backbone_ssim"]
            if backbone_only
            else ["image", "backbone_psnr", "spt_psnr", "backbone_ssim", "spt_ssim"]
        ) + (["bits"] if deep else [])
        writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in result.rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
        writer.writerow({"image": "MEAN", **{k: f"{v:.6f}" for k, v in result.mean.items()}})
        result.table_csv = atomic_write_bytes(out / "eval.csv", text.getvalue().encode())
    return result


def make_val_fn(
    samples_factory: Callable[[], Iterable[dict[str, Any]]], task: str, multiple: int | None = None
) -> Callable[[SPTModel], dict[str, float]]:
    """A ``val_fn`` for :func:`spt_adapter.training.train.train_units`: mean PSNR/SSIM of backbone + SPT.
    ``multiple``: what the input is padded to; default: only what the backbone needs
    (:func:`~spt_adapter.inference.restore.size_multiple`), as ``eval`` pads -- padding a CNN's input
    changes its border pixels, so validation during training scores what ``eval`` scores."""
    scale = task_scale(task)
    settings = metrics.metric_settings(task)

    def val(model: SPTModel) -> dict[str, float]:
        ps, ss = [], []
        pad = size_multiple(model) if multiple is None else multiple
        for sample in samples_factory():
            bits = int(sample.get("bits", 8))
            out = restore_tensor(model, sample["lq"], sample.get("prior"), scale=scale, multiple=pad)
            out8 = _at_depth(out, bits)
            gt8 = (_uint8(sample["gt"]) if bits == 8 else _deep_gt(sample["gt"]))[: out8.shape[0], : out8.shape[1]]
            ps.append(metrics.psnr(out8[: gt8.shape[0], : gt8.shape[1]], gt8, **settings))
            ss.append(metrics.ssim(out8[: gt8.shape[0], : gt8.shape[1]], gt8, **settings))
        return {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss))}

    return val
