"""Small real architectures (spandrel / spandrel-extra-arches) for tests, with target patterns.

Each entry: name -> (builder(seed) -> nn.Module in eval mode, targets, input shape).
"""

from __future__ import annotations

import warnings

import torch

warnings.filterwarnings("ignore")


def _seeded(build):
    def make(seed: int = 0):
        torch.manual_seed(seed)
        model = build()
        return model.eval()

    return make


def _swinir_24(upsampler: str):
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    return SwinIR(
        upscale=2,
        img_size=16,
        window_size=8,
        img_range=1.0,
        depths=[2, 2],
        embed_dim=24,
        num_heads=[2, 2],
        mlp_ratio=2,
        upsampler=upsampler,
        resi_connection="1conv",
    )


def swinir_classical():
    return _swinir_24("pixelshuffle")


def swinir_light():
    return _swinir_24("pixelshuffledirect")


def hat():
    from spandrel.architectures.HAT.__arch.HAT import HAT

    return HAT(
        img_size=16,
        embed_dim=24,
        depths=(1, 1),
        num_heads=(2, 2),
        window_size=4,
        compress_ratio=3,
        squeeze_factor=6,
        upscale=2,
        num_feat=16,
        mlp_ratio=2.0,
    )


def dat():
    from spandrel.architectures.DAT.__arch.DAT import DAT

    return DAT(
        img_size=16, embed_dim=24, split_size=[2, 4], depth=[2, 2], num_heads=[2, 2], expansion_factor=2.0, upscale=2
    )


def rrdb():
    from spandrel.architectures.ESRGAN.__arch.RRDB import RRDBNet

    return RRDBNet(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=2)


def nafnet():
    from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet

    return NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def scunet():
    from spandrel.architectures.SCUNet.__arch.SCUNet import SCUNet

    return SCUNet(in_nc=3, config=[1, 1, 1, 1, 1, 1, 1], dim=64, input_resolution=64)


def drunet():
    from spandrel.architectures.DRUNet.__arch.network_unet import DRUNet

    return DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=1)


def restormer():
    from spandrel_extra_arches.architectures.Restormer.__arch.restormer_arch import Restormer

    return Restormer(
        dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2], ffn_expansion_factor=2.0
    )


def tiny_esrgan(seed: int = 0):
    """A very small ESRGAN built through spandrel's public class (hub/PEFT tests)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    return ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=2, scale=2).eval()


def tiny_swinir(seed: int = 0, window_size: int = 4, embed_dim: int = 12, mlp_ratio: float = 2.0):
    """A very small SwinIR x2 (16-px images, two stages of two blocks) through spandrel's public class
    (hub/PEFT/restore tests; 4-px windows unless told)."""
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(seed)
    return SwinIR(
        img_size=16,
        embed_dim=embed_dim,
        depths=[2, 2],
        num_heads=[2, 2],
        window_size=window_size,
        mlp_ratio=mlp_ratio,
        upscale=2,
        upsampler="pixelshuffledirect",
        in_chans=3,
    ).eval()


def small_swinir(
    scale: int = 1, seed: int = 0, embed_dim: int = 16, channels: int = 3, depths=(1, 1), img_size: int = 32
):
    """A small SwinIR (32-px images, 8-px windows, one block a stage, two stages unless told) as the CLI
    tests save it: x1 with no upsampler, or x``scale`` by pixel-shuffle."""
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    torch.manual_seed(seed)
    return SwinIR(
        img_size=img_size,
        in_chans=channels,
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=[2] * len(depths),
        window_size=8,
        mlp_ratio=2.0,
        upscale=scale,
        upsampler="" if scale == 1 else "pixelshuffledirect",
        resi_connection="1conv",
        drop_path_rate=0.0,
    )


def dncnn(seed: int = 0, channels: int = 1, nc: int = 8, nb: int = 5):
    """A DnCNN (spandrel's class; spandrel detects one from its weights from 8 convolutions, ``nb``)."""
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(seed)
    return DnCNN(in_nc=channels, out_nc=channels, nc=nc, nb=nb, act_mode="R").eval()


#: the modules the Restormer preset targets, in order
RESTORMER_TARGETS = [
    "encoder_level1",
    "encoder_level2",
    "encoder_level3",
    "latent",
    "decoder_level3",
    "decoder_level2",
    "decoder_level1",
    "refinement",
]


ARCHS = {
    "swinir_classical": (_seeded(swinir_classical), "layers.*.residual_group", (1, 3, 16, 16)),
    "swinir_light": (_seeded(swinir_light), "layers.*.residual_group", (1, 3, 16, 16)),
    "hat": (_seeded(hat), "layers.*.residual_group", (1, 3, 16, 16)),
    "dat": (_seeded(dat), "layers.*", (1, 3, 16, 16)),
    "rrdb": (_seeded(rrdb), "model.1.sub.*", (1, 3, 16, 16)),
    "nafnet": (_seeded(nafnet), ["encoders.*", "middle_blks", "decoders.*"], (1, 3, 16, 16)),
    "scunet": (_seeded(scunet), ["m_down1", "m_body", "m_up1"], (1, 3, 64, 64)),
    "drunet": (_seeded(drunet), ["m_down1", "m_body", "m_up1"], (1, 4, 16, 16)),
    "restormer": (_seeded(restormer), ["encoder_level*", "latent", "decoder_level*", "refinement"], (1, 3, 16, 16)),
}
