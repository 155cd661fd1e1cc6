"""Restoring large images: whole vs tiled, speed, peak memory, agreement, prior vs network time.

For each image size (default 2048 and 4096 pixels square, a real photo from ../shared/data tiled
up to that size), side by side in one run:

* a CNN (DnCNN of KAIR's ``dncnn_25`` shape: 17 conv layers, 64 channels, grey; spandrel's class,
  random weights) whole vs ``--tile`` tiles at the default overlap (its receptive field):
  images/s, peak memory, max abs difference tiled vs whole, and the share of time spent on the prior
  (SLIC on the whole image; SAM with ``--sam-checkpoint``) vs the network;
* SwinIR-light x2 (spandrel's class with the model-zoo configuration, random weights -- no
  pretrained weights can be downloaded here) with ``--tile``: images/s and peak memory; the whole
  image too where ``--whole-limit`` allows (whole-image SwinIR needs tens of GB at 4096^2);
* agreement of tiled vs whole SwinIR-light on ``--agree-size`` images (PSNR at the default overlap),
  with spandrel's initialisation and with every linear/conv layer redrawn at PyTorch's default
  scale (``stressed``: random SwinIR's attention paths are otherwise nearly silent, which would
  flatter tiling).

Peak memory: each case runs in its own process; on the CPU the peak resident set size of that
process (``ru_maxrss``: model, image, prior, output buffers), on CUDA ``max_memory_allocated``.
``--max-tiles N`` stops a tiled case after N tiles (all full-size buffers are allocated at the first
tile, so the peak is already reached) and extrapolates the time: for SwinIR on a 2-core CPU.

    python benchmarks/restore_speed.py                       # CPU (a few CPU-hours are cut by --max-tiles)
    python benchmarks/restore_speed.py --device cuda         # the same on a GPU, everything whole
    python benchmarks/restore_speed.py --quick               # seconds: tiny sizes, for CI / the GPU suite
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# models and images
# ---------------------------------------------------------------------------------------------
def dncnn(seed: int = 0, quick: bool = False):
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(seed)
    return DnCNN(in_nc=1, out_nc=1, nc=16 if quick else 64, nb=5 if quick else 17, act_mode="R").eval()


def swinir_light(seed: int = 0, quick: bool = False, stressed: bool = False):
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    torch.manual_seed(seed)
    if quick:
        m = SwinIR(
            upscale=2,
            in_chans=3,
            img_size=32,
            window_size=8,
            img_range=1.0,
            depths=[2],
            embed_dim=12,
            num_heads=[2],
            mlp_ratio=2,
            upsampler="pixelshuffledirect",
            resi_connection="1conv",
        )
    else:  # the SwinIR-light x2 configuration of the model zoo
        m = SwinIR(
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
    if stressed:
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                torch.nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5))
    return m.eval()


def photo(size: int, channels: int) -> np.ndarray:
    """A real photo (CBSD68's first image, else scikit-image's astronaut) tiled by reflection to size^2."""
    from spt_adapter.data.images import read_image

    files = sorted((DATA / "CBSD68").glob("*.png")) if (DATA / "CBSD68").is_dir() else []
    if files:
        img = read_image(files[0], channels)
    else:
        from skimage import data

        from spt_adapter.pixels import to_uint8_channels

        img = to_uint8_channels(data.astronaut(), channels)
    reps = (math.ceil(size / img.shape[0]), math.ceil(size / img.shape[1]))
    row = np.concatenate([img if j % 2 == 0 else img[:, ::-1] for j in range(reps[1])], axis=1)
    full = np.concatenate([row if i % 2 == 0 else row[::-1] for i in range(reps[0])], axis=0)
    return np.ascontiguousarray(full[:size, :size])


# ---------------------------------------------------------------------------------------------
# one case in its own process
# ---------------------------------------------------------------------------------------------
def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def one_case(spec: dict) -> dict:
    """Restore one image as ``spec`` says; returns timings and peak memory (run in a child process)."""
    from spt_adapter.inference import restore as R
    from spt_adapter.prior import make_provider

    torch.set_num_threads(spec["threads"])
    quick = spec["quick"]
    model = dncnn(quick=quick) if spec["model"] == "dncnn" else swinir_light(quick=quick)
    model.to(spec["device"])
    image = photo(spec["size"], 1 if spec["model"] == "dncnn" else 3)
    info = R.RestoreInfo()
    if spec["prior"]:  # the prior an adapter would need, on the whole image (the backbone itself ignores it)
        provider = (
            make_provider("sam", spec["sam_checkpoint"], model_type="auto", device=spec["device"])
            if spec.get("sam_checkpoint")
            else make_provider("slic")
        )
        t0 = time.perf_counter()
        R.PriorSource("provider", provider=provider, encoding="boundary").compute(image)
        info.prior_seconds = time.perf_counter() - t0
    tile, limit = spec["tile"], spec.get("max_tiles")
    ran = {"n": 0}

    def count(*_):
        ran["n"] += 1
        if limit and ran["n"] > limit:
            raise _Enough()

    handle = model.register_forward_pre_hook(count)
    t1 = time.perf_counter()
    try:
        R.restore(model, image, tile=tile, info=info)
        cut = False
    except _Enough:
        cut = True
    handle.remove()
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t1
    result = {
        "prior_s": info.prior_seconds,
        "network_s": seconds,
        "tiles": str(ran["n"]),
        "peak_mb": _peak_mb(spec["device"]),
    }
    if cut:  # time per tile from the tiles that ran, times the tiles of the whole image
        total = len(R.tile_starts(spec["size"], tile, R.default_overlap(model))) ** 2
        result["extrapolated_s"] = seconds / limit * total
        result["tiles"] = f"{limit} of {total}"
    return result


class _Enough(Exception):
    pass


def run_case(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# agreement (in this process; small images)
# ---------------------------------------------------------------------------------------------
def agreement(args) -> list[dict]:
    from spt_adapter.inference import restore as R

    rows = []
    size = args.agree_size
    cases = [
        ("DnCNN (CNN)", dncnn(quick=args.quick), 1),
        ("SwinIR-light x2", swinir_light(quick=args.quick), 3),
        ("SwinIR-light x2, stressed", swinir_light(quick=args.quick, stressed=True), 3),
    ]
    for name, model, channels in cases:
        model.to(args.device)
        img = photo(size, channels).astype(np.float32) / 255.0
        whole = R.restore(model, img)
        tile = args.agree_tile
        tiled = R.restore(model, img, tile=tile)
        mse = float(np.mean((whole.astype(np.float64) - tiled) ** 2))
        rows.append(
            {
                "model": name,
                "size": size,
                "tile": tile,
                "overlap": R.default_overlap(model),
                "blend": R.default_blend(model, R.default_overlap(model)),
                "max_abs": float(np.abs(whole - tiled).max()),
                "psnr": float("inf") if mse == 0 else 10 * math.log10(1.0 / mse),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--max-tiles", type=int, default=None, help="stop SwinIR tiled cases after N tiles (CPU)")
    ap.add_argument(
        "--whole-limit",
        type=int,
        default=None,
        help="largest size run whole through SwinIR (default: 0 on CPU, every size on CUDA)",
    )
    ap.add_argument("--agree-size", type=int, default=192)
    ap.add_argument("--agree-tile", type=int, default=96)
    ap.add_argument("--sam-checkpoint", default=None, help="SAM checkpoint for the prior (default: SLIC)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="tiny models and sizes (seconds); numbers mean nothing")
    ap.add_argument("--skip", nargs="*", default=[], choices=["dncnn", "swinir", "agreement"])
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_case(json.loads(args.one))))
        return
    if args.quick:
        args.sizes, args.tile, args.agree_size, args.agree_tile = [96, 128], 64, 64, 48
    cuda = args.device.startswith("cuda")
    whole_limit = args.whole_limit if args.whole_limit is not None else (max(args.sizes) if cuda or args.quick else 0)
    print(
        f"# restore_speed: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU(s), torch {torch.__version__}, device {args.device}, threads {args.threads}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    base = {"device": args.device, "threads": args.threads, "quick": args.quick, "sam_checkpoint": args.sam_checkpoint}
    print("\n| model | size | mode | images/s | network s | prior s | prior share | peak MB | tiles |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for size in args.sizes:
        plans = []
        if "dncnn" not in args.skip:
            plans += [("dncnn", None, True), ("dncnn", args.tile, True)]
        if "swinir" not in args.skip:
            if size <= whole_limit:
                plans.append(("swinir", None, False))
            plans.append(("swinir", args.tile, False))
        for model, tile, with_prior in plans:
            spec = dict(
                base,
                model=model,
                size=size,
                tile=tile,
                prior=with_prior,
                max_tiles=args.max_tiles if (model == "swinir" and tile) else None,
            )
            r = run_case(spec)
            name = "DnCNN (grey, 17x64)" if model == "dncnn" else "SwinIR-light x2"
            mode = f"tile {tile}" if tile else "whole"
            if "error" in r:
                print(f"| {name} | {size} | {mode} | failed: {r['error']} | | | | | |")
                continue
            net = r.get("extrapolated_s", r["network_s"])
            total = net + r["prior_s"]
            share = f"{100 * r['prior_s'] / total:.0f} %" if with_prior else "-"
            est = " (extrapolated)" if "extrapolated_s" in r else ""
            print(
                f"| {name} | {size} | {mode} | {1 / total:.4f}{est} | {net:.1f}{est} | "
                f"{r['prior_s']:.1f} | {share} | {r['peak_mb']:.0f} | {r['tiles']} |",
                flush=True,
            )
    if "agreement" not in args.skip:
        print("\n| model | size | tile | overlap | blend | max abs diff | PSNR tiled vs whole (dB) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in agreement(args):
            print(
                f"| {r['model']} | {r['size']} | {r['tile']} | {r['overlap']} | {r['blend']} | {r['max_abs']:.2e} | "
                f"{r['psnr']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
