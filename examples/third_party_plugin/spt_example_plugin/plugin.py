"""Example plugin: everything a third party needs, in one module.

Installed, it is found through the ``spt_adapter`` entry-point group (see pyproject.toml) and
loaded like the built-in shims. It claims ``TinyNet`` (below), describes a layout, reads ``.tiny``
checkpoints, "registers" a framework and offers a mask provider, ``watershed``
(``spt-adapter masks --provider watershed``). Set ``SPT_EXAMPLE_TRACE`` to a file path to have each hook
append its name there (the tests use it to see the hooks called from another process).
"""

from __future__ import annotations

import os

import torch.nn as nn

from spt_adapter.plugins.hookspecs import hookimpl
from spt_adapter.plugins.types import LayoutSpec, ModelClaim


def _trace(name: str) -> None:
    path = os.environ.get("SPT_EXAMPLE_TRACE")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(name + "\n")


class TinyNet(nn.Module):
    """Two conv blocks and a head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(2)]
        )
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.tail(self.blocks(self.head(x)))


@hookimpl
def spt_adapter_claim_model(model):
    if isinstance(model, TinyNet):
        _trace("spt_adapter_claim_model")
        width = model.head.out_channels
        return ModelClaim(
            integration="example",
            preset="tinynet",
            targets=["blocks.*"],
            channels={"blocks.0": width, "blocks.1": width},
        )
    return None


@hookimpl
def spt_adapter_describe_layout(model, name, module):
    if isinstance(model, TinyNet):
        _trace("spt_adapter_describe_layout")
        return LayoutSpec(kind="map")
    return None


@hookimpl
def spt_adapter_read_checkpoint(path):
    if str(path).endswith(".tiny"):
        _trace("spt_adapter_read_checkpoint")
        from safetensors.torch import load_file

        return load_file(str(path))
    return None


@hookimpl
def spt_adapter_register_framework():
    _trace("spt_adapter_register_framework")
    return ["example:TinyNet"]


# ----------------------------------------------------------------------------- a mask provider
class WatershedProvider:
    """Compact watershed of the image's Sobel gradient from a grid of ``markers`` seeds
    (scikit-image), as one label image: a real segmenter in a dozen lines."""

    VERSION = "0.1.0"

    def __init__(self, markers: int, compactness: float) -> None:
        self.settings = {"markers": markers, "compactness": compactness}

    def identity(self) -> dict:  # everything that changes the masks: the cache key
        import skimage

        return {
            "provider": "watershed",
            "version": self.VERSION,
            "settings": dict(sorted(self.settings.items())),
            "skimage": skimage.__version__,
        }

    def generate(self, image):
        from skimage.color import rgb2gray
        from skimage.filters import sobel
        from skimage.segmentation import watershed

        from spt_adapter.prior import LabelMasks

        _trace("WatershedProvider.generate")
        if os.environ.get("SPT_EXAMPLE_FAIL_GENERATE"):
            raise RuntimeError("watershed failed on purpose (SPT_EXAMPLE_FAIL_GENERATE)")
        labels = watershed(
            sobel(rgb2gray(image)), markers=self.settings["markers"], compactness=self.settings["compactness"]
        )
        return LabelMasks.from_labels(labels)

    def __repr__(self) -> str:
        return f"WatershedProvider({self.settings})"


def _watershed(settings, *, checkpoint, model_type, device):
    return WatershedProvider(settings.get("markers", 64), settings.get("compactness", 0.001))


@hookimpl
def spt_adapter_mask_providers():
    from spt_adapter.plugins.types import ProviderSpec, Setting

    _trace("spt_adapter_mask_providers")
    return [
        ProviderSpec(
            "watershed",
            _watershed,
            {
                "markers": Setting(int, 64, "number of seeds (about the number of regions)", minimum=2),
                "compactness": Setting(float, 0.001, "higher: more regular regions", minimum=0),
            },
            description="compact watershed of the Sobel gradient (example plugin, scikit-image)",
            version=WatershedProvider.VERSION,
        )
    ]
