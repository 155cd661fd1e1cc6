"""Example plugin: everything a third party needs, in one module.

Installed, it is found through the ``spt_adapter`` entry-point group (see pyproject.toml) and
loaded like the built-in shims. It claims ``TinyNet`` (below), describes a layout, reads ``.tiny``
checkpoints and "registers" a framework. Set ``SPT_EXAMPLE_TRACE`` to a file path to have each hook
append its name there (the tests use it to see the hooks called from another process).
"""

from __future__ import annotations

import os

import torch
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
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()) for _ in range(2)])
        self.tail = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x):
        return x + self.tail(self.blocks(self.head(x)))


@hookimpl
def spt_adapter_claim_model(model):
    if isinstance(model, TinyNet):
        _trace("spt_adapter_claim_model")
        width = model.head.out_channels
        return ModelClaim(integration="example", preset="tinynet", targets=["blocks.*"],
                          channels={"blocks.0": width, "blocks.1": width})
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
