"""Masks -> prior tensor.

All encodings take masks in SAM's format (a list of dicts with a boolean ``segmentation`` HxW
array; ``area`` is recomputed from it) and return a float32 ``(C, H, W)`` array in [0, 1].

The library's default encoding is :data:`DEFAULT_ENCODING` (``boundary``), except for the
``pool`` fusion, which reads regions from a ``label`` map: :func:`default_encoding` picks by
fusion and :func:`check_encoding_for_fusion` refuses any other encoding for ``pool``.
(:func:`encode_masks` itself still encodes ``label`` when no ``kind`` is given.)

``label`` (1 channel) -- the single-map encoding of the SAM-prior literature.
    Masks are ranked by area, largest first (ties keep the provider's order). With K masks, the
    mask of rank r (0-based) gets the value ``(K - r) / K``: the largest mask is 1.0, the smallest
    1/K, background (no mask) is 0. Masks are painted largest first, so where masks overlap the
    smaller one is on top. Every mask therefore has a distinct value, and the map is a function
    of the masks only (deterministic, independent of dict order except for equal areas).
``onehot`` (K channels, ``k=8`` by default) -- channel i is the i-th largest mask (the same
    ranking), as 0/1; missing masks give all-zero channels.
``boundary`` (1 channel) -- 1 on the edge pixels of any mask (a mask pixel whose 4-neighbour is
    outside the mask or outside the image border is *not* an edge: only transitions inside the
    image count), else 0.

``size=(H, W)`` resizes the masks with nearest-neighbour sampling of pixel centres before
encoding, so labels stay exact.
"""

from __future__ import annotations

import numpy as np

from ..core.config import DEFAULT_FUSION
from ..errors import PriorError

ENCODINGS = ("label", "onehot", "boundary")
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
        raise PriorError(f"fusion 'pool' averages features inside the regions of a one-channel label map: it needs "
                         f"encoding 'label', got {encoding!r} (use another fusion for {encoding!r})")


def parse_encoding(encoding: str) -> tuple[str, dict]:
    """``"label"``, ``"boundary"``, ``"onehot"`` or ``"onehot:K"`` -> (kind, kwargs)."""
    kind, _, arg = str(encoding).partition(":")
    if kind not in ENCODINGS:
        raise PriorError(f"unknown prior encoding {encoding!r}; choose one of label, onehot[:K], boundary")
    if arg:
        if kind != "onehot":
            raise PriorError(f"encoding {kind!r} takes no argument (got {encoding!r})")
        try:
            k = int(arg)
        except ValueError:
            raise PriorError(f"onehot:K needs an integer K, got {encoding!r}") from None
        if k < 1:
            raise PriorError(f"onehot:K needs K >= 1, got {encoding!r}")
        return kind, {"k": k}
    return kind, {}


def encoding_channels(encoding: str) -> int:
    kind, kw = parse_encoding(encoding)
    return kw.get("k", 8) if kind == "onehot" else 1


def _stack(masks, size, shape) -> np.ndarray:
    segs = []
    for i, m in enumerate(masks):
        seg = m["segmentation"] if isinstance(m, dict) else m
        seg = np.asarray(seg)
        if seg.ndim != 2 or seg.dtype != bool:
            raise PriorError(f"mask {i}: segmentation must be a boolean HxW array, got {seg.dtype} {seg.shape}")
        segs.append(seg)
    if not segs:
        if size is None and shape is None:
            raise PriorError("no masks and no size/shape given: cannot know the prior's size")
        h, w = size if size is not None else shape
        return np.zeros((0, int(h), int(w)), dtype=bool)
    first = segs[0].shape
    for i, s in enumerate(segs):
        if s.shape != first:
            raise PriorError(f"mask {i} has shape {s.shape}, mask 0 has {first}: all masks must share one size")
    stack = np.stack(segs)
    if size is not None and tuple(size) != first:
        h, w = int(size[0]), int(size[1])
        ys = np.minimum(((np.arange(h) + 0.5) * first[0] / h).astype(np.int64), first[0] - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * first[1] / w).astype(np.int64), first[1] - 1)
        stack = stack[:, ys][:, :, xs]
    return stack


def _rank(stack: np.ndarray) -> np.ndarray:
    if len(stack) == 0:
        return np.zeros(0, dtype=np.int64)
    areas = stack.reshape(len(stack), -1).sum(axis=1)
    return np.argsort(-areas, kind="stable")


def encode_masks(masks, kind: str = "label", size=None, shape=None, k: int = 8) -> np.ndarray:
    """Encode ``masks`` as a float32 ``(C, H, W)`` prior; see the module docstring.

    ``kind`` may also be written ``"onehot:K"``. ``shape`` gives the (H, W) of an image that has
    no masks at all (otherwise the masks decide the size); ``size`` resizes (nearest).
    """
    kind, kw = parse_encoding(kind)
    k = kw.get("k", k)
    stack = _stack(masks, size, shape)
    n, h, w = stack.shape
    order = _rank(stack)
    if kind == "label":
        out = np.zeros((h, w), dtype=np.float32)
        for r, i in enumerate(order):
            out[stack[i]] = np.float32((n - r) / n)
        return out[None]
    if kind == "onehot":
        out = np.zeros((k, h, w), dtype=np.float32)
        for c, i in enumerate(order[:k]):
            out[c] = stack[i]
        return out
    edge = np.zeros((h, w), dtype=bool)
    for m in stack:
        dy = m[1:, :] != m[:-1, :]
        dx = m[:, 1:] != m[:, :-1]
        e = np.zeros_like(m)
        e[1:, :] |= dy
        e[:-1, :] |= dy
        e[:, 1:] |= dx
        e[:, :-1] |= dx
        edge |= e & m
    return edge.astype(np.float32)[None]
