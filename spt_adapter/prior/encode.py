"""Masks -> prior tensor.

All encodings read one :class:`~spt_adapter.prior.masks.LabelMasks` (a label image plus one
record per region; SAM-style lists of mask dicts and (H, W) integer label images are converted
first, see :func:`~spt_adapter.prior.masks.as_label_masks`) and return a float32 ``(C, H, W)``
array in [0, 1]. Overlapping masks were flattened smaller-on-top when the label image was made.

The library's default encoding is :data:`DEFAULT_ENCODING` (``boundary``), except for the
``pool`` fusion, which reads regions from a ``label`` map: :func:`default_encoding` picks by
fusion and :func:`check_encoding_for_fusion` refuses any other encoding for ``pool``.
(:func:`encode_masks` itself still encodes ``label`` when no ``kind`` is given.)

``label`` (1 channel) -- the single-map encoding of the SAM-prior literature.
    Regions are ranked by the area of their whole mask, largest first (ties keep the provider's
    order). With K regions, the region of rank r (0-based) gets the value ``(K - r) / K``: the
    largest is 1.0, the smallest 1/K, background (no region) is 0. Every region therefore has a
    distinct value, and the map is a function of the masks only.
``onehot`` (K channels, ``k=8`` by default) -- channel i is the pixels of the i-th largest region
    (the same ranking), as 0/1; missing regions give all-zero channels.
``boundary`` (1 channel) -- 1 on the edge pixels of any region: a pixel of a region with a
    4-neighbour inside the image that belongs to another region or to no region (the image border
    is not an edge), else 0.

For masks that do not overlap (every classical segmenter) the three encodings give exactly the
values of the former one-boolean-array-per-mask code (tests/test_prior_encode.py checks it against
values that code computed). ``size=(H, W)`` resamples the label image with nearest-neighbour
sampling of pixel centres before encoding, so labels stay exact (ranks are those of the masks at
their own resolution).
"""

from __future__ import annotations

import numpy as np

from ..core.config import DEFAULT_FUSION
from ..core.encodings import ENCODINGS as ENCODINGS
from ..core.encodings import encoding_channels as encoding_channels
from ..core.encodings import parse_encoding as parse_encoding
from ..errors import PriorError
from .masks import as_label_masks

#: An explicit edge map beat one value per region on validation; onehot was worse than no prior (docs/results.md, results 6-7).
DEFAULT_ENCODING = "boundary"


def default_encoding(fusion: str | None) -> str:
    """The encoding to use when none is given: ``label`` for the ``pool`` fusion (it averages features
    inside the regions of a label map), :data:`DEFAULT_ENCODING` otherwise; ``None`` is the library's
    default fusion (:data:`spt_adapter.core.config.DEFAULT_FUSION`)."""
    return "label" if (fusion or DEFAULT_FUSION) == "pool" else DEFAULT_ENCODING


def check_encoding_for_fusion(encoding: str, fusion: str | None) -> None:
    """Raise :class:`PriorError` if ``fusion`` is ``pool`` and ``encoding`` is not ``label``."""
    if (fusion or DEFAULT_FUSION) == "pool" and parse_encoding(encoding)[0] != "label":
        raise PriorError(
            f"fusion 'pool' averages features inside the regions of a one-channel label map: it needs "
            f"encoding 'label', got {encoding!r} (use another fusion for {encoding!r})"
        )


def encode_masks(masks, kind: str = "label", size=None, shape=None, k: int = 8) -> np.ndarray:
    """Encode ``masks`` as a float32 ``(C, H, W)`` prior; see the module docstring.

    ``masks``: :class:`LabelMasks`, a list of SAM-style mask dicts (or boolean arrays), or an (H, W)
    integer label image. ``kind`` may also be written ``"onehot:K"``. ``shape`` gives the (H, W) of
    an image that has no masks at all (otherwise the masks decide the size); ``size`` resizes
    (nearest).
    """
    kind, kw = parse_encoding(kind)
    k = kw.get("k", k)
    lm = as_label_masks(masks, shape=size if size is not None else shape)
    if size is not None:
        lm = lm.resized(size)
    labels = lm.labels
    n = len(lm)
    order = lm.rank()
    if kind == "label":
        lut = np.zeros(n + 1, dtype=np.float32)
        for r, i in enumerate(order):
            lut[i + 1] = np.float32((n - r) / n)
        return lut[labels][None]
    h, w = labels.shape
    if kind == "onehot":
        out = np.zeros((k, h, w), dtype=np.float32)
        for c, i in enumerate(order[:k]):
            out[c] = labels == i + 1
        return out
    edge = np.zeros((h, w), dtype=bool)
    dy = labels[1:, :] != labels[:-1, :]
    dx = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge &= labels != 0
    return edge.astype(np.float32)[None]
