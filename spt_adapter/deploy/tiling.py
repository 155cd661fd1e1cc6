"""Tiling, padding, blending and output rounding in NumPy: the restoration arithmetic that needs no
PyTorch.

:func:`restore_array` runs any network given as a NumPy callable ``(x, prior) -> y`` on (1,C,H,W)
float32 arrays, whole or in tiles, exactly as :func:`spt_adapter.inference.restore.restore_tensor`
runs a PyTorch model (the module docstring of :mod:`spt_adapter.inference.restore` says what the
tiling does and why): the same tile placement on the padded grid (:func:`tile_starts`), the same
reflect/replicate padding to the size multiple, the same weights (:func:`axis_weights`, which the
torch path uses too), float32 accumulation in the same order, clamping to [0, 1] and
round-half-to-even to uint8 (:func:`to_image`). An exported file runs through here (the
``spt-adapter restore --backbone FILE.onnx`` route and :mod:`spt_adapter.deploy`'s own command).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import PriorError, RestoreError
from ..pixels import LUMA_BT601, to_uint8_channels

__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "MIN_STRIDE_FRACTION",
    "axis_weights",
    "check_tile_stride",
    "check_tiling",
    "default_blend_for",
    "default_overlap_for",
    "float_channels",
    "pad_to",
    "restore_array",
    "tile_starts",
    "to_image",
]

#: LQ pixels shared by neighbouring tiles when ``tile_overlap`` is not given
DEFAULT_TILE_OVERLAP = 32

#: the least share of a tile that must be new from one tile to the next (tile - overlap >= tile / 8):
#: a smaller stride multiplies the work (stride 1 runs a tile per pixel) and buys no accuracy
MIN_STRIDE_FRACTION = 8

#: a network as the tiler runs it: (1,C,h,w) float32 image, (1,C_p,h*k,w*k) prior or None -> (1,C',h*s,w*s)
Network = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels over ``length`` with at least ``overlap`` shared pixels;
    the last tile ends at ``length`` (no tile needs padding unless the image is smaller than a tile).
    ``align``: every start is a multiple of it when ``length`` and ``tile`` are (the stride is rounded
    down to a multiple of ``align``, at least ``align``), so a windowed backbone partitions every tile
    on the whole image's window grid."""
    if length <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def check_tile_stride(tile: int, overlap: int, flag: str = "tile") -> None:
    """Refuse an overlap that leaves tiles advancing by less than an eighth of their size."""
    if overlap < 0:
        raise RestoreError(f"the tile overlap must be 0 or more pixels, got {overlap}")
    if tile <= overlap:
        raise RestoreError(
            f"{flag} {tile} must be larger than the tile overlap {overlap}: use a tile of at least "
            f"{overlap + 1} pixels (or a smaller overlap)"
        )
    least = -(-tile // MIN_STRIDE_FRACTION)
    if tile - overlap < least:
        raise RestoreError(
            f"{flag} {tile} with overlap {overlap} advances {tile - overlap} pixel(s) per tile; at least "
            f"{least} (an eighth of the tile) is needed, else the work grows without bound: use an "
            f"overlap of at most {tile - least} or a tile of at least "
            f"{MIN_STRIDE_FRACTION * overlap // (MIN_STRIDE_FRACTION - 1) + 1}"
        )


def default_overlap_for(radius: int | None) -> int:
    """:data:`DEFAULT_TILE_OVERLAP`, or a CNN's receptive field (``2 * radius + 1``) when that is larger
    (``radius`` None: no finite receptive field, as for attention backbones)."""
    return max(DEFAULT_TILE_OVERLAP, 2 * radius + 1) if radius is not None else DEFAULT_TILE_OVERLAP


def default_blend_for(radius: int | None, overlap: int) -> int:
    """The cross-fade width used when none is given: ``overlap - 2 * radius`` (at most half the
    overlap, at least 0) for a CNN of receptive ``radius``; half the overlap when ``radius`` is None."""
    half = overlap // 2
    if radius is None:
        return half
    return max(0, min(half, overlap - 2 * radius))


def check_tiling(
    tile: int | None,
    overlap: int | None,
    blend: int | None,
    *,
    minimum: int,
    radius: int | None,
    prefix: str = "--",
) -> None:
    """Refuse tiling flags before any image is read: overlap/blend without a tile, a tile below the
    backbone's ``minimum``, an overlap the tile cannot advance past, a blend wider than the overlap."""
    if tile is None:
        if overlap is not None or blend is not None:
            raise RestoreError(f"{prefix}tile-overlap/{prefix}tile-blend need {prefix}tile N")
        return
    if tile < minimum:
        raise RestoreError(
            f"{prefix}tile {tile} is smaller than this backbone needs (its window / size multiple): "
            f"use {prefix}tile {minimum} or more"
        )
    used = default_overlap_for(radius) if overlap is None else overlap
    if tile <= used:
        raise RestoreError(
            f"{prefix}tile {tile} must be larger than the tile overlap {used}: use {prefix}tile {used + 1} "
            f"or more, or a smaller {prefix}tile-overlap"
        )
    check_tile_stride(tile, used, f"{prefix}tile")
    if blend is not None and blend > used:
        raise RestoreError(f"{prefix}tile-blend {blend} exceeds the tile overlap {used}")


def tile_grid(
    hp: int, wp: int, *, tile: int, overlap: int, blend: int, minimum: int, multiple: int
) -> tuple[int, list[int], list[int]]:
    """The tiles of an image already padded to ``multiple`` (``hp x wp``): ``(size, row starts,
    column starts)``, tiles a multiple in size starting on multiples, so that a windowed backbone sees
    the whole image's window grid in every tile. Refuses a tile below ``minimum``, an overlap the tile
    cannot advance past and a blend outside [0, overlap]. Both tilers (PyTorch's ``restore_tensor``
    and :func:`restore_array`) place their tiles with it."""
    if tile < minimum:
        raise RestoreError(f"tile {tile} is smaller than the backbone needs: use a tile of at least {minimum} pixels")
    check_tile_stride(tile, overlap)
    if not 0 <= blend <= overlap:
        raise RestoreError(f"tile blend {blend} must lie between 0 and the overlap {overlap}")
    size = max(multiple, tile // multiple * multiple)
    return size, tile_starts(hp, size, overlap, multiple), tile_starts(wp, size, overlap, multiple)


def axis_weights(starts: list[int], size: int, length: int, scale: int, blend: int, index: int) -> np.ndarray:
    """Weights (output pixels, float32) of tile ``index`` along one axis: 1 inside, 0 beyond the seams
    with its neighbours, a linear ramp of ``blend * scale`` output pixels centred on each seam
    (computed in float64, then rounded once to float32)."""
    start, end = starts[index] * scale, min(starts[index] + size, length) * scale
    pos = np.arange(start, end, dtype=np.float64) + 0.5
    w = np.ones(end - start, dtype=np.float64)
    # neighbouring seams lie (s[k+2] - s[k]) / 2 apart: ramps wider than that would overlap and the
    # weights would no longer sum to one
    gaps = [(b - a) / 2 for a, b in zip(starts, starts[2:], strict=False)]
    width = min([blend] + gaps) * scale
    for other, sign in ((index - 1, 1), (index + 1, -1)):
        if not 0 <= other < len(starts):
            continue
        lo, hi = (starts[other], starts[index]) if sign > 0 else (starts[index], starts[other])
        seam = (hi + min(lo + size, length)) / 2 * scale  # middle of the overlap
        if width > 0:
            ramp = np.clip((pos - seam) / width + 0.5, 0, 1)
        else:
            ramp = (pos >= seam).astype(np.float64)
        w = w * (ramp if sign > 0 else 1 - ramp)
    return w.astype(np.float32)


def pad_to(x: np.ndarray, multiple: int, mode: str | None = None) -> tuple[np.ndarray, int, int]:
    """Pad the last two axes of ``x`` at the bottom/right to a multiple of ``multiple``: reflection
    (without repeating the edge, as torch's ``reflect``) when the image is larger than the padding,
    else edge replication; ``mode="edge"`` forces replication (priors). Returns (padded, ph, pw)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        how = mode or ("reflect" if ph < h and pw < w else "edge")
        x = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], mode=how)  # type: ignore[call-overload]
    return x, ph, pw


def prior_factor(prior: np.ndarray, h: int, w: int) -> int:
    """The integer k >= 1 by which ``prior`` is larger than the h x w image on both sides; any other
    size is refused (stretching it would put every region in the wrong place)."""
    ph, pw = prior.shape[-2:]
    if ph >= h and pw >= w and ph % h == 0 and pw % w == 0 and ph // h == pw // w:
        return ph // h
    raise PriorError(
        f"the prior is {ph}x{pw} but the image is {h}x{w}: give the prior of this image (at its size, "
        "or an integer multiple of it on both sides), not one of another image or crop"
    )


def float_channels(image: Any, channels: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(HxWxC float32 on [0,1] the network sees, HxWxC uint8 of it for the prior)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint16 and arr.ndim in (2, 3):  # 16-bit: the network sees all 16 bits
        if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
            raise RestoreError(f"{name}: expected an HxW or HxWxC image (C 1-4), got shape {arr.shape}")
        from .images import to_uint16_channels

        f16 = to_uint16_channels(arr, channels)
        return f16.astype(np.float32) / np.float32(65535.0), to_uint8_channels(arr, channels, name=name)
    if arr.dtype.kind == "f":
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
            raise RestoreError(f"{name}: expected an HxW or HxWxC image (C 1-4), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
            raise RestoreError(f"{name}: float images must be finite and lie in [0, 1]")
        f = arr.astype(np.float32)
        f = f[:, :, None] if f.ndim == 2 else f
        if f.shape[2] in (2, 4):
            f = f[:, :, : f.shape[2] - 1]
        if channels == 1 and f.shape[2] == 3:
            f = (LUMA_BT601[0] * f[:, :, :1] + LUMA_BT601[1] * f[:, :, 1:2] + LUMA_BT601[2] * f[:, :, 2:]).astype(
                np.float32
            )
        elif channels == 3 and f.shape[2] == 1:
            f = np.repeat(f, 3, axis=2)
        return np.ascontiguousarray(f), np.rint(f * 255.0).astype(np.uint8)
    u8 = to_uint8_channels(arr, channels, name=name)
    return u8.astype(np.float32) / 255.0, u8


def integer_scale(in_shape, out_shape) -> int:
    """The scale of a network that mapped an input of ``in_shape`` (..., H, W) to ``out_shape``: a whole
    number >= 1, the same on both axes, else a RestoreError naming both sizes (both runners check so)."""
    s_h, s_w = out_shape[-2] / in_shape[-2], out_shape[-1] / in_shape[-1]
    if s_h != s_w or s_h < 1 or s_h != int(s_h):
        raise RestoreError(
            f"the backbone maps a {in_shape[-2]}x{in_shape[-1]} input to {out_shape[-2]}x{out_shape[-1]}: "
            "not an integer scale"
        )
    return int(s_h)


def _run(net: Network, x: np.ndarray, p: np.ndarray | None, multiple: int) -> tuple[np.ndarray, int]:
    """One forward pass on (1,C,h,w) ``x`` padded to ``multiple``; returns the cropped (1,C',h*s,w*s)
    float32 output (unclamped) and the scale s."""
    h, w = x.shape[-2:]
    x, ph, pw = pad_to(x, multiple)
    if p is not None:
        k = p.shape[-2] // h
        if ph or pw:
            p = np.pad(p.astype(np.float32), [(0, 0), (0, 0), (0, ph * k), (0, pw * k)], mode="edge")
    out = np.asarray(net(np.ascontiguousarray(x), None if p is None else np.ascontiguousarray(p)))
    s = integer_scale(x.shape, out.shape)
    out = out[..., : h * s, : w * s].astype(np.float32, copy=False)
    check_finite_output(bool(np.isfinite(out).all()))
    return out, s


def check_finite_output(finite: bool) -> None:
    """Refuse a network output holding NaN or Inf (it would be written as black or white pixels)."""
    if not finite:
        raise RestoreError(
            "the network's output holds NaN or Inf values (its weights or this input drive it out of range); "
            "nothing was written for this image"
        )


def restore_array(
    net: Network,
    x: np.ndarray,
    prior: np.ndarray | None = None,
    *,
    multiple: int = 1,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_blend: int | None = None,
    minimum: int = 1,
    radius: int | None = None,
    info: Any = None,
) -> np.ndarray:
    """Run ``net`` on one (C,H,W) float32 image ``x`` on [0,1] and return (C', H*s, W*s) float32 clamped
    to [0, 1]: whole, or in tiles of ``tile`` pixels overlapping by ``tile_overlap`` and cross-faded
    over ``tile_blend`` (defaults from the receptive ``radius``: :func:`default_overlap_for`,
    :func:`default_blend_for`), each padded to ``multiple``; ``prior`` ((C_p, H*k, W*k) or with a batch
    axis) is cropped per tile. ``info`` (a RestoreInfo) accumulates network seconds and tiles."""
    for name, value in (("tile", tile), ("tile_overlap", tile_overlap), ("tile_blend", tile_blend)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise RestoreError(f"{name} must be a whole number of pixels, got {value!r}")
    if tile is not None and tile < 1:
        raise RestoreError(f"tile must be at least 1 pixel, got {tile}")
    tile = None if tile is None else int(tile)
    xb = np.asarray(x, dtype=np.float32)
    xb = xb if xb.ndim == 4 else xb[None]
    if xb.shape[0] != 1:
        raise RestoreError(f"restore takes one image, got a batch of {xb.shape[0]}")
    h, w = xb.shape[-2:]
    p = None
    if prior is not None:
        p = np.asarray(prior)
        p = p if p.ndim == 4 else p[None]
        prior_factor(p, h, w)
    t0 = time.perf_counter()
    if tile is None or (tile >= h and tile >= w):
        out, s = _run(net, xb, p, multiple)
        result = np.clip(out[0], 0, 1)
        tiles = 1
    else:
        overlap = default_overlap_for(radius) if tile_overlap is None else int(tile_overlap)
        blend = default_blend_for(radius, overlap) if tile_blend is None else int(tile_blend)
        # the padded image is tiled: every tile sees the whole image's window grid and border padding,
        # as in restore_tensor (the same loop in PyTorch: keep the two alike)
        k = None if p is None else p.shape[-2] // h
        xp, ph, pw = pad_to(xb, multiple)
        if p is not None and k is not None and (ph or pw):
            p = np.pad(p.astype(np.float32), [(0, 0), (0, 0), (0, ph * k), (0, pw * k)], mode="edge")
        hp, wp = xp.shape[-2:]
        size, ys, xs = tile_grid(hp, wp, tile=tile, overlap=overlap, blend=blend, minimum=minimum, multiple=multiple)
        acc: np.ndarray | None = None
        tiles = 0
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                y1, x1 = min(y0 + size, hp), min(x0 + size, wp)
                pt = None if p is None or k is None else p[..., y0 * k : y1 * k, x0 * k : x1 * k]
                out, s = _run(net, xp[..., y0:y1, x0:x1], pt, multiple)
                if acc is None:
                    acc = np.zeros((out.shape[1], hp * s, wp * s), dtype=np.float32)
                wy = axis_weights(ys, size, hp, s, blend, i)
                wx = axis_weights(xs, size, wp, s, blend, j)
                acc[:, y0 * s : y1 * s, x0 * s : x1 * s] += out[0] * (wy[:, None] * wx[None, :])
                tiles += 1
        assert acc is not None  # tile_starts gives at least one tile per axis
        result = np.clip(acc[:, : h * s, : w * s], 0, 1)
    if info is not None:
        info.network_seconds += time.perf_counter() - t0
        info.tiles += tiles
    return result


def output_kind(image: Any) -> str:
    """What :func:`to_image` returns for an input ``image``: ``float`` (float32 on [0, 1]) for float
    inputs, ``uint16`` for 16-bit ones, else ``uint8``: the depth in is the depth out."""
    dtype = np.asarray(image).dtype
    return "float" if dtype.kind == "f" else "uint16" if dtype == np.uint16 else "uint8"


def to_image(out: np.ndarray, as_float: bool | str = False) -> np.ndarray:
    """(C,H,W) float32 on [0,1] -> ``HxWxC`` (``HxW`` for one channel): float32 as it is with
    ``as_float`` (or ``"float"``), uint16 of ``round(65535 * v)`` for ``"uint16"``, else uint8 of
    ``round(255 * v)`` (half to even, as torch's ``round``), channel by channel (an 8192x8192 colour
    output adds one channel's temporary, not a second image)."""
    kind = as_float if isinstance(as_float, str) else "float" if as_float else "uint8"
    c_out, h, w = out.shape
    dtype = {"float": np.float32, "uint16": np.uint16, "uint8": np.uint8}[kind]
    white = np.float32(65535.0 if kind == "uint16" else 255.0)
    arr = np.empty((h, w, c_out), dtype=dtype)
    for c in range(c_out):
        arr[:, :, c] = out[c] if kind == "float" else np.round(out[c] * white)
    return arr[:, :, 0] if c_out == 1 else arr
