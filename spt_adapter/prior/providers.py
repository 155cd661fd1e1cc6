"""The built-in mask providers, offered through the same hook as a third-party plugin's.

This module is a plugin: it is registered through the ``spt_adapter`` entry-point group
(``prior = "spt_adapter.prior.providers"`` in pyproject.toml) like the built-in integrations, and
its :func:`spt_adapter_mask_providers` returns one :class:`ProviderSpec` per provider:

- ``sam``: Segment Anything's automatic masks (segment-anything, ``--provider-checkpoint sam_vit_b_01ec64.pth``);
- ``sam2``: SAM 2's automatic masks (``--provider-checkpoint sam2.1_hiera_tiny.pt``, ``pip install spt-adapter[sam2]``);
- ``slic`` and ``felzenszwalb``: scikit-image segmenters, no weights.

A third-party provider is written the same way (examples/third_party_plugin).
"""

from __future__ import annotations

from ..plugins.hookspecs import hookimpl
from ..plugins.types import ProviderSpec
from . import classical, sam, sam2


def _sam(settings, *, checkpoint, model_type, device):
    return sam.SamMaskProvider(checkpoint, model_type=model_type or "auto", device=device, **settings)


def _classical(method):
    def build(settings, *, checkpoint, model_type, device):
        return classical.ClassicalMaskProvider(method, **settings)

    return build


def _sam2(settings, *, checkpoint, model_type, device):
    return sam2.Sam2MaskProvider(checkpoint, model_type=model_type, device=device, **settings)


SPECS = [
    ProviderSpec(
        "sam",
        _sam,
        sam.SCHEMA,
        "Segment Anything automatic masks (segment-anything; a SAM .pth checkpoint)",
        needs_checkpoint=True,
        version="segment-anything 1.0",
    ),
    ProviderSpec(
        "sam2",
        _sam2,
        sam2.SCHEMA,
        "SAM 2 automatic masks (pip install spt-adapter[sam2]; a SAM 2 .pt checkpoint)",
        needs_checkpoint=True,
        version="sam2 1.x",
    ),
    ProviderSpec(
        "slic",
        _classical("slic"),
        classical.SCHEMAS["slic"],
        "scikit-image SLIC superpixels (no weights)",
        version="skimage",
    ),
    ProviderSpec(
        "felzenszwalb",
        _classical("felzenszwalb"),
        classical.SCHEMAS["felzenszwalb"],
        "scikit-image Felzenszwalb graph segmentation (no weights)",
        version="skimage",
    ),
]


@hookimpl
def spt_adapter_mask_providers():
    return list(SPECS)
