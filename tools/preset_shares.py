"""The share of a backbone's parameters each architecture preset trains (default units: concat,
hidden 16, depth 2), on the backbones the README names.

    python tools/preset_shares.py [--dncnn-weights DIR] [--kair-zoo DIR]

Random-weight backbones at their published sizes unless weights are given (the count does not
depend on the weights). Prints one Markdown row per (backbone, preset).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def share(name: str, build, preset: str | None = None) -> str:
    import spt_adapter
    from spt_adapter.backbones.presets import PRESETS

    net = build()
    total = _count(net)
    if preset is None:
        targets = None
        preset = spt_adapter.backbones.presets.find_preset(net).name
    else:
        fit = next(p for p in PRESETS if p.name == preset and type(net).__name__ in p.classes and p.detect(net))
        targets = fit.targets(net)
    model = spt_adapter.inject(net, targets) if targets else spt_adapter.inject(net)
    units = sum(p.numel() for _, p in model.unit_parameters())
    return f"| {name} | {preset} | {len(model.unit_names())} | {total:,} | {units:,} | {100 * units / total:.1f} % |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dncnn-weights", type=Path, default=None, help="folder with DnCNN3.safetensors (optional)")
    parser.add_argument("--kair-zoo", type=Path, default=None, help="KAIR model_zoo with dncnn_25.pth (optional)")
    args = parser.parse_args()
    from spandrel.architectures.DnCNN import DnCNN
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SwinIR import SwinIR

    import spt_adapter

    rows = []
    kair = (
        (lambda: spt_adapter.load_backbone(args.kair_zoo / "dncnn_25.pth").model)
        if args.kair_zoo
        else (lambda: DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode="R"))
    )
    d3 = (
        (lambda: spt_adapter.load_backbone(args.dncnn_weights / "DnCNN3.safetensors").model)
        if args.dncnn_weights
        else (lambda: DnCNN(in_nc=1, out_nc=1, nc=64, nb=20, act_mode="R"))
    )
    for preset in ("dncnn", "dncnn-light"):
        rows.append(share("KAIR dncnn_25 (17 convs, 64 wide)", kair, preset))
        rows.append(share("DnCNN-3 / CDnCNN-B (20 convs)", d3, preset))
    rows.append(
        share(
            "SwinIR-light x2 (60 wide, 4 RSTB)",
            lambda: SwinIR(
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
            ),
        )
    )
    rows.append(
        share(
            "SwinIR classical x4 (180 wide, 6 RSTB)",
            lambda: SwinIR(
                upscale=4,
                in_chans=3,
                img_size=48,
                window_size=8,
                img_range=1.0,
                depths=[6] * 6,
                embed_dim=180,
                num_heads=[6] * 6,
                mlp_ratio=2,
                upsampler="pixelshuffle",
                resi_connection="1conv",
            ),
        )
    )
    rows.append(share("ESRGAN x4 (RRDB, 64 wide, 23 blocks)", lambda: ESRGAN(num_filters=64, num_blocks=23, scale=4)))
    try:
        from spandrel_extra_arches.architectures.Restormer import Restormer

        rows.append(share("Restormer (48 wide, blocks 4-6-6-8)", lambda: Restormer()))
        rows.append(
            share(
                "Restormer-small (benchmarks/overhead.py)",
                lambda: Restormer(
                    dim=24,
                    num_blocks=[2, 3, 3, 4],
                    num_refinement_blocks=2,
                    heads=[1, 2, 4, 8],
                    ffn_expansion_factor=2.66,
                ),
            )
        )
    except ImportError:
        pass
    print("| backbone | preset | units | backbone parameters | unit parameters | share |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
