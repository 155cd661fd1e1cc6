"""The backbones of ``benchmarks/quality.py``: the ones it trains itself (colour DnCNN, SRVGGNetCompact,
cached by their settings), the pretrained ones it loads (KAIR's DnCNN, cszn/DnCNN's CDnCNN-B and
DnCNN-3 through tools/convert_dncnn_mat.py), and where the units go in each."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _quality_data as qd  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


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
