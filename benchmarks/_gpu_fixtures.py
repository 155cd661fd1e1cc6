#!/usr/bin/env python
"""Inputs for benchmarks/gpu_suite.sh's training and restore steps, made here with no downloads.

Writes into OUT_DIR:
* ``swinir_light_x2.safetensors``: SwinIR-light x2 (the model zoo's configuration: depths 6x4,
  embed 60, window 8) with RANDOM weights (seed 0), loadable by ``spt-adapter --backbone`` through
  spandrel. It measures speed and memory only, never quality.
* ``train/``: scikit-image's sample photographs as PNGs (HQ images for ``--task sr:2``);
* ``photo/``: one large photograph (``--size`` long side, upscaled by bicubic from scikit-image's
  astronaut) to restore whole and tiled.

    python benchmarks/_gpu_fixtures.py OUT_DIR [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TRAIN = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")


def swinir_light_x2(quick: bool):
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    if quick:  # a tiny model of the same family, for the CPU dry run
        return SwinIR(
            upscale=2,
            in_chans=3,
            img_size=16,
            window_size=8,
            img_range=1.0,
            depths=[2, 2],
            embed_dim=24,
            num_heads=[2, 2],
            mlp_ratio=2,
            upsampler="pixelshuffledirect",
            resi_connection="1conv",
        )
    return SwinIR(
        upscale=2,
        in_chans=3,
        img_size=64,
        window_size=8,
        img_range=1.0,
        depths=[6, 6, 6, 6],
        embed_dim=60,
        num_heads=[6, 6, 6, 6],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
        resi_connection="1conv",
    )


def main(argv=None) -> int:
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--quick", action="store_true", help="tiny model and images (CPU dry run)")
    p.add_argument("--size", type=int, default=None, help="long side of the photo to restore (default 2048; 96 quick)")
    args = p.parse_args(argv)
    out: Path = args.out
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "photo").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = swinir_light_x2(args.quick).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "swinir_light_x2.safetensors"))
    side = 64 if args.quick else 256
    for name in TRAIN:
        img = getattr(data, name)()
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3]
        im = Image.fromarray(img)
        im = im.resize((side, max(side, round(side * im.height / im.width) // 2 * 2)), Image.BICUBIC)
        im.save(out / "train" / f"{name}.png")
    size = args.size or (96 if args.quick else 2048)
    photo = Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC)
    photo.save(out / "photo" / "astronaut_big.png")
    print(f"wrote {out}/swinir_light_x2.safetensors, {len(TRAIN)} training images, one {size}x{size} photo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
