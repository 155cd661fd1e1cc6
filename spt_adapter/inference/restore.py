"""Restore a user's own images: whole or tiled, with the prior the adapter was trained on.

    import spt_adapter
    from spt_adapter.data.images import read_image
    model = spt_adapter.from_pretrained(backbone, "runs/swinir_x2_spt")   # or load_adapter(...)
    out = spt_adapter.restore(model, read_image("photo.png"), tile=256)     # HxWx3 uint8 in, out

What :func:`restore` does with one image:

1. **Channels.** The backbone's input channels (spandrel's descriptor, else the first convolution)
   decide how the image is read: a 1-channel backbone gets the BT.601 luma of a colour image, a
   3-channel one gets a grey image replicated; alpha is dropped.
2. **Prior.** :func:`resolve_prior_source` decides where the prior comes from: a ``prior`` given by
   the caller, an adapter that makes its own (a distilled student: no provider at all), or the mask
   provider and encoding the adapter records (``provider=`` overrides it), through a
   :class:`~spt_adapter.prior.PriorCache` when one is given. It is computed **once, on the whole
   image** (the image the backbone sees: grey for grey backbones).
3. **Network.** Whole image, or tiles of ``tile`` x ``tile`` LQ pixels overlapping by
   ``tile_overlap``: every tile receives the exactly matching crop of the whole-image prior (a prior
   at k times the image's resolution is cropped at k times the coordinates), so no tile ever sees a
   prior made from a fragment. Each tile (and the whole image) is padded to the size multiple the
   backbone needs (the window of SwinIR/HAT, a U-Net's depth) and cropped back.
4. **Blending.** Neighbouring tiles meet at the middle of their overlap and are cross-faded
   linearly over ``tile_blend`` pixels around that seam. The default blend keeps every pixel that
   contributes at least as far from its tile's edge as a convolutional backbone's receptive radius
   reaches (estimated from its layers), so a CNN gives the whole-image result when the overlap is at
   least its receptive field; for attention backbones (no finite estimate) it is half the overlap.
   The weights of every output pixel sum to one by construction (no weight map is kept: memory
   is the output image plus one tile).

Size: the whole-image path and the tiling (tile placement on the padded grid, overlap, blending,
the prior's crops) are one algorithm whose invariant -- tiled equals whole -- is kept and tested together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.model import SPTModel
from ..deploy.tiling import (  # noqa: F401  (DEFAULT_TILE_OVERLAP, MIN_STRIDE_FRACTION, tile_starts: public here too)
    DEFAULT_TILE_OVERLAP,
    MIN_STRIDE_FRACTION,
    axis_weights,
    check_finite_output,
    check_tile_stride,
    default_blend_for,
    default_overlap_for,
    float_channels,
    integer_scale,
    output_kind,
    tile_grid,
    tile_starts,
    to_image,
)
from ..errors import PriorError, RestoreError
from ..pixels import to_uint8_channels

__all__ = [
    "DEFAULT_TILE_OVERLAP",
    "default_blend",
    "default_overlap",
    "PriorSource",
    "RestoreInfo",
    "input_channels",
    "minimum_tile",
    "receptive_radius",
    "resolve_prior_source",
    "restore",
    "restore_tensor",
    "size_multiple",
    "check_tile_stride",
    "tile_starts",
]


# ---------------------------------------------------------------------------------------------
# what the backbone needs
# ---------------------------------------------------------------------------------------------
def _backbone(model: nn.Module) -> nn.Module:
    return model.base_model if isinstance(model, SPTModel) else model


def input_channels(model: nn.Module, descriptor: Any = None) -> int:
    """The number of image channels ``model`` takes: spandrel's ``descriptor.input_channels`` when
    given, else the input channels of the first convolution (3 when there is none)."""
    n = getattr(descriptor, "input_channels", None)
    if isinstance(n, int) and n > 0:
        return n
    first = next((m for m in _backbone(model).modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


def _ints(value) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return list(value)
    return []


def window_size(model: nn.Module) -> int | None:
    """The attention window of a token backbone (SwinIR, HAT, ...: its ``window_size``, else the largest
    ``window_size`` of its blocks: BasicSR's SwinIR keeps it only there), or None."""
    net = _backbone(model)
    sizes = _ints(getattr(net, "window_size", None))
    if not sizes:
        sizes = [v for m in net.modules() for v in _ints(getattr(m, "window_size", None))]
    return max(sizes) if sizes else None


def size_multiple(model: nn.Module, descriptor: Any = None) -> int:
    """The size multiple the backbone's input must have: the least common multiple of spandrel's
    ``size_requirements.multiple_of``, the attention window and a U-Net's ``padder_size`` (NAFNet);
    1 for a plain CNN. Inputs are reflect-padded to it and the output cropped back."""
    net = _backbone(model)
    found = [1]
    req = getattr(descriptor, "size_requirements", None)
    found += _ints(getattr(req, "multiple_of", None))
    found += _ints(window_size(model))
    found += _ints(getattr(net, "padder_size", None))
    return math.lcm(*[max(1, v) for v in found])


def minimum_tile(model: nn.Module, descriptor: Any = None) -> int:
    """The smallest tile side the backbone accepts: its window, its size multiple, and spandrel's
    ``size_requirements.minimum``."""
    req = getattr(descriptor, "size_requirements", None)
    return max([1, size_multiple(model, descriptor), window_size(model) or 1] + _ints(getattr(req, "minimum", None)))


_LOCAL = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ReLU6,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.BatchNorm2d,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.Upsample,
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)


def receptive_radius(model: nn.Module) -> int | None:
    """How far (in input pixels) an output pixel of a purely convolutional backbone can see: the
    sum over its convolutions of ``(kernel - 1) / 2 * dilation``, times the downsampling before
    each (an upper bound for branching networks, which only makes tiling more careful). None when
    the network has a torch layer that is not local (attention, linear layers, global pooling,
    layer/group normalisation) or an SPT unit that pools over prior regions. Global statistics
    computed in a module's own forward code (``x.mean()``) cannot be seen: for such a network pass
    ``tile_blend=0`` and a wide overlap. A distilled student's prior reaches the units from the
    student's own radius farther: the two are added."""
    if not isinstance(model, nn.Module):  # an exported file's runner records it
        return getattr(model, "receptive_radius", None)
    net = _backbone(model)
    extra = 0
    if isinstance(model, SPTModel):
        cfg = model.spt_config.get(model.active_adapter) if model.active_adapter else None
        if cfg is not None and cfg.fusion == "pool":
            return None
        student = model.student() if model.active_adapter else None
        if student is not None:  # the prior at a pixel sees the student's field around it
            reach = _conv_radius(student)
            if reach is None:
                return None
            extra = reach
    total = _conv_radius(net)
    return None if total is None else total + extra


def _conv_radius(net: nn.Module) -> int | None:
    """:func:`receptive_radius` of one module tree (its convolutions only), None when not local."""
    total, stride = 0.0, 1
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            k, d, s = m.kernel_size, m.dilation, m.stride
            total += max((k[0] - 1) * d[0], (k[1] - 1) * d[1]) / 2 * stride
            stride *= max(s)
        elif type(m).__module__.startswith("torch.nn") and not isinstance(m, _LOCAL):
            return None
    return int(math.ceil(total))


# ---------------------------------------------------------------------------------------------
# where the prior comes from
# ---------------------------------------------------------------------------------------------
@dataclass
class PriorSource:
    """Where :func:`restore` gets a prior from. ``kind``: ``none`` (backbone alone), ``student`` (the
    adapter makes its own prior from the input), ``no-prior`` (the adapter's units read none: nothing
    is computed), ``provider`` (masks of the LQ image, encoded)."""

    kind: str
    provider: Any = None
    encoding: str | None = None
    cache: Any = None
    described: str = ""

    def compute(self, image: np.ndarray) -> np.ndarray | None:
        """The prior of ``image`` (HxWxC uint8 or uint16, the image the backbone sees): (C_p, H, W) float32."""
        if self.kind != "provider":
            return None
        from ..prior import compute_prior

        assert self.encoding is not None  # a provider prior always has its encoding
        arr = np.asarray(image)
        if arr.dtype == np.uint16:  # a 16-bit image: its prior is that of its 8-bit version, as restore() computes it
            arr = to_uint8_channels(arr, 1 if arr.ndim == 2 or arr.shape[2] in (1, 2) else 3)
        return compute_prior(arr, self.provider, self.encoding, self.cache)


def _active_config(model: nn.Module):
    if isinstance(model, SPTModel) and model.active_adapter is not None:
        return model.spt_config[model.active_adapter]
    return None


def makes_own_prior(model: nn.Module) -> bool:
    """Whether the active adapter carries a distilled prior student (``model(x)`` needs no prior)."""
    cfg = _active_config(model)
    return cfg is not None and getattr(cfg, "student", None) is not None


def reads_prior(model: nn.Module) -> bool:
    """Whether the active adapter's units read a prior (False for one made with prior ``none``)."""
    cfg = _active_config(model)
    return cfg is None or getattr(cfg, "prior_channels", 1) > 0


def provider_from_record(identity: dict, what: str = "the adapter"):
    """The mask provider an adapter's recorded ``identity`` describes, when it can run here without
    anything the user must supply; else :class:`PriorError` saying what to pass (a checkpoint, or
    an installed provider): :func:`spt_adapter.prior.registry.check_recorded_provider`."""
    from ..prior import make_provider
    from ..prior.registry import check_recorded_provider

    name = check_recorded_provider(identity, what)
    return make_provider(name, **dict(identity.get("settings") or {}))


def resolve_prior_source(
    model: nn.Module,
    *,
    provider: Any = None,
    encoding: str | None = None,
    cache: Any = None,
    backbone_only: bool = False,
    what: str = "the adapter",
) -> PriorSource:
    """Decide where the prior comes from (the one place that does: ``restore``, ``eval`` and the
    ``restore`` command call it). In order: no adapter active or ``backbone_only`` -> none; an
    adapter that reads no prior -> no-prior (a ``provider`` is refused); an adapter with a prior student and no ``provider`` override -> student; else ``provider`` (or the
    one the adapter records) with ``encoding`` (or the recorded one; adapters that record none were
    made when ``label`` was the only encoding), through ``cache`` when given."""
    cfg = _active_config(model)
    if cfg is None or backbone_only:
        return PriorSource("none", described="none (backbone alone)")
    if not reads_prior(model):  # recorded as prior "none": no provider is built, nothing computed
        if provider is not None:
            raise PriorError(f"{what} reads no prior (it was trained with prior 'none'): drop the provider")
        return PriorSource("no-prior", described="none (the adapter reads no prior)")
    if provider is None and makes_own_prior(model):
        return PriorSource("student", described="the adapter's distilled student")
    recorded = dict(cfg.prior or {})
    if provider is None:
        provider = provider_from_record(dict(recorded.get("provider") or {}), what)
    encoding = encoding or recorded.get("encoding") or "label"
    from ..prior.encode import parse_encoding

    parse_encoding(encoding)
    return PriorSource(
        "provider", provider=provider, encoding=encoding, cache=cache, described=f"{provider!r}, encoding {encoding}"
    )


def check_channels(model: nn.Module, channels: int, what: str = "the adapter") -> None:
    """Refuse an adapter trained on a backbone of another channel count (recorded as
    ``prior["channels"]`` by ``spt-adapter train``)."""
    cfg = _active_config(model)
    recorded = (cfg.prior or {}).get("channels") if cfg is not None else None
    if recorded is not None and int(recorded) != int(channels):
        kind = {1: "grey (1-channel)", 3: "colour (3-channel)"}
        raise RestoreError(
            f"{what} was trained on a {kind.get(int(recorded), f'{recorded}-channel')} backbone, but this "
            f"backbone takes {kind.get(int(channels), f'{channels}-channel')} images: use the backbone "
            "the adapter was trained on"
        )


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------
def _axis_weights(starts: list[int], size: int, length: int, scale: int, blend: int, index: int) -> torch.Tensor:
    """Weights (output pixels) of tile ``index`` along one axis: :func:`spt_adapter.deploy.tiling.axis_weights`
    (the torch-free runner blends with the very same numbers)."""
    return torch.from_numpy(axis_weights(starts, size, length, scale, blend, index))


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, ph, pw


def _run(
    model: nn.Module, x: torch.Tensor, p: torch.Tensor | None, *, multiple: int, backbone_only: bool, half: bool
) -> tuple[torch.Tensor, int]:
    """One forward pass on (1,C,h,w) ``x`` padded to ``multiple``; returns the cropped (1,C',h*s,w*s)
    output (float32, unclamped) and the scale s."""
    h, w = x.shape[-2:]
    x, ph, pw = _pad_to(x, multiple)
    if p is not None:
        k = p.shape[-2] // h
        if ph or pw:
            p = F.pad(p.float(), (0, pw * k, 0, ph * k), mode="replicate")
    autocast = torch.autocast("cuda", dtype=torch.float16) if half else _nullcontext()
    with autocast:
        if not isinstance(model, nn.Module):  # an exported file's runner (inference/exported.py)
            out = model(x, p)
        elif isinstance(model, SPTModel):
            if backbone_only or model.active_adapter is None:
                with model.disable_adapter():
                    out = model(x)
            else:
                out = model(x) if p is None else model(x, prior=p)
        else:
            out = model(x)
    s = integer_scale(x.shape, out.shape)
    out = out[..., : h * s, : w * s].float()
    check_finite_output(bool(torch.isfinite(out).all()))
    return out, s


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _prior_factor(prior: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A prior whose size is the image's times one integer k >= 1 (both sides); any other size is
    refused (stretching it would put every region in the wrong place)."""
    ph, pw = prior.shape[-2:]
    if ph >= h and pw >= w and ph % h == 0 and pw % w == 0 and ph // h == pw // w:
        return prior
    raise PriorError(
        f"the prior is {ph}x{pw} but the image is {h}x{w}: give the prior of this image (at its size, "
        "or an integer multiple of it on both sides), not one of another image or crop"
    )


@torch.no_grad()
def restore_tensor(
    model: nn.Module,
    lq: torch.Tensor,
    prior: Any = None,
    *,
    scale: int | None = None,
    multiple: int = 1,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_blend: int | None = None,
    backbone_only: bool = False,
    half: bool = False,
    minimum: int | None = None,
    info: RestoreInfo | None = None,
) -> torch.Tensor:
    """Run ``model`` on one image ``lq`` ((C,H,W) or (1,C,H,W) on [0,1]) and return (C', H*s, W*s) on the
    CPU, clamped to [0, 1]. ``prior``: (C_p, H_p, W_p) or (1, C_p, H_p, W_p) tensor or array for the
    whole image (None for the backbone alone or an adapter with a student). ``scale`` (optional) is
    checked against what the network does. Tiling as the module docstring says; ``minimum``: the
    smallest tile allowed (default: :func:`minimum_tile`)."""
    for name, value in (("tile", tile), ("tile_overlap", tile_overlap), ("tile_blend", tile_blend)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise RestoreError(f"{name} must be a whole number of pixels, got {value!r}")
    if tile is not None and tile < 1:
        raise RestoreError(f"tile must be at least 1 pixel, got {tile}")
    tile = None if tile is None else int(tile)
    x = lq if lq.dim() == 4 else lq[None]
    if x.shape[0] != 1:
        raise RestoreError(f"restore takes one image, got a batch of {x.shape[0]}")
    device = (
        next((t.device for t in model.parameters()), torch.device("cpu"))
        if isinstance(model, nn.Module)
        else getattr(model, "device", torch.device("cpu"))
    )
    p = None
    if prior is not None:
        # a flipped or sliced view (prior[:, ::-1]) has negative strides, which torch cannot wrap
        p = torch.as_tensor(np.ascontiguousarray(prior)) if not torch.is_tensor(prior) else prior
        p = p if p.dim() == 4 else p[None]
        p = _prior_factor(p, *x.shape[-2:])
    h, w = x.shape[-2:]
    t0 = time.perf_counter()
    if tile is None or (tile >= h and tile >= w):
        out, s = _run(
            model,
            x.to(device),
            None if p is None else p.to(device),
            multiple=multiple,
            backbone_only=backbone_only,
            half=half,
        )
        result = out[0].clamp_(0, 1).cpu()
        tiles = 1
    else:
        overlap = default_overlap(model) if tile_overlap is None else int(tile_overlap)
        least = minimum_tile(model) if minimum is None else minimum
        blend = default_blend(model, overlap) if tile_blend is None else int(tile_blend)
        # Tile the image padded exactly as the whole-image path pads it (reflection to the size
        # multiple), with tiles a multiple in size starting on multiples: a windowed backbone (SwinIR,
        # HAT) then sees the whole image's window grid and border padding in every tile, and the last
        # rows/columns of an image that is not a window multiple match the whole-image output.
        k = None if p is None else p.shape[-2] // h
        xp, ph, pw = _pad_to(x, multiple)
        if p is not None and k is not None and (ph or pw):
            p = F.pad(p.float(), (0, pw * k, 0, ph * k), mode="replicate")
        hp, wp = xp.shape[-2:]
        # the same placement as the NumPy tiler (deploy.tiling.restore_array): keep the two loops alike
        size, ys, xs = tile_grid(hp, wp, tile=tile, overlap=overlap, blend=blend, minimum=least, multiple=multiple)
        result = None
        tiles = 0
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                y1, x1 = min(y0 + size, hp), min(x0 + size, wp)
                pt = None if p is None or k is None else p[..., y0 * k : y1 * k, x0 * k : x1 * k].to(device)
                out, s = _run(
                    model,
                    xp[..., y0:y1, x0:x1].to(device),
                    pt,
                    multiple=multiple,
                    backbone_only=backbone_only,
                    half=half,
                )
                if result is None:
                    result = torch.zeros(out.shape[1], hp * s, wp * s, dtype=torch.float32)
                wy = _axis_weights(ys, size, hp, s, blend, i)
                wx = _axis_weights(xs, size, wp, s, blend, j)
                result[:, y0 * s : y1 * s, x0 * s : x1 * s] += out[0].cpu() * (wy[:, None] * wx[None, :])
                tiles += 1
        assert result is not None  # tile_starts gives at least one tile per axis
        result = result[:, : h * s, : w * s].clamp_(0, 1)
    assert result is not None
    if scale is not None and result.shape[-2] != h * scale:
        raise RestoreError(f"the backbone upscales by {result.shape[-2] // h}, not by the expected {scale}")
    if info is not None:
        info.network_seconds += time.perf_counter() - t0
        info.tiles += tiles
    return result


def default_overlap(model: nn.Module) -> int:
    """:data:`DEFAULT_TILE_OVERLAP`, or a CNN's receptive field (``2 * radius + 1``) when that is larger,
    so that tiling a CNN with the defaults gives its whole-image output."""
    return default_overlap_for(receptive_radius(model))


def default_blend(model: nn.Module, overlap: int) -> int:
    """The cross-fade width used when none is given: as wide as the overlap allows while every
    contributing pixel stays at least a CNN's receptive radius from its tile's edge
    (``overlap - 2 * radius``, at most half the overlap); half the overlap for attention backbones."""
    return default_blend_for(receptive_radius(model), overlap)


# ---------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------
@dataclass
class RestoreInfo:
    """What one or more :func:`restore` calls did: seconds on the prior and on the network, tiles run,
    where the prior came from."""

    prior_seconds: float = 0.0
    network_seconds: float = 0.0
    tiles: int = 0
    prior: str = ""
    extra: dict = field(default_factory=dict)


_float_channels = float_channels  # the one conversion (deploy/tiling.py); the old name stays importable


def restore(
    model: nn.Module,
    image,
    prior: Any = None,
    *,
    provider: Any = None,
    encoding: str | None = None,
    cache: Any = None,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_blend: int | None = None,
    multiple: int | None = None,
    channels: int | None = None,
    device: Any = None,
    half: bool = False,
    backbone_only: bool = False,
    info: RestoreInfo | None = None,
    descriptor: Any = None,
) -> np.ndarray:
    """Restore one image with ``model`` (a backbone, or an SPTModel with its adapter).

    ``image``: a NumPy ``HxW`` / ``HxWxC`` array, uint8/uint16 or float on [0, 1], C 1-4 (alpha is
    dropped); converted to the backbone's channel count (:func:`input_channels`, or ``channels``).
    ``prior``: the whole image's prior ((C_p, H, W) array or tensor, at the image's size or an integer
    multiple of it); by default computed as :func:`resolve_prior_source` decides (``provider``,
    ``encoding``, ``cache`` override the adapter's record). ``tile`` / ``tile_overlap`` /
    ``tile_blend`` (LQ pixels): tiled inference with the whole-image prior cropped per tile.
    ``multiple``: pad to this size multiple (default :func:`size_multiple`). ``half``: float16
    autocast (CUDA only). ``backbone_only``: the backbone without the adapter.

    Returns the restored image: ``HxWx3`` for colour backbones, ``HxW`` for grey ones; uint8 for
    8-bit inputs, uint16 for 16-bit ones (all 16 bits reach the network), float32 on [0, 1] for float
    inputs. ``info`` (a :class:`RestoreInfo`)
    accumulates seconds spent on the prior and on the network.
    """
    if not isinstance(model, nn.Module):
        raise RestoreError(
            f"restore needs a model (a torch.nn.Module: a backbone or an SPTModel), got {type(model).__name__}"
        )
    if image is None:
        raise RestoreError("restore needs an image (a NumPy HxW or HxWxC array), got None")
    if device is not None:
        model.to(device)
    dev = next((t.device for t in model.parameters()), torch.device("cpu"))
    if half and dev.type != "cuda":
        raise RestoreError("half precision (autocast float16) needs the model on a CUDA device")
    n_in = channels or input_channels(model, descriptor)
    if n_in not in (1, 3):
        raise RestoreError(
            f"the backbone takes {n_in}-channel input; restore reads images as 1 (grey) or 3 (RGB) "
            "channels (a network with an extra noise-level channel needs its own wrapper)"
        )
    check_channels(model, n_in)
    as_float = output_kind(image)
    x_np, u8 = _float_channels(image, n_in, "image")
    t0 = time.perf_counter()
    source = None
    if prior is None:
        source = resolve_prior_source(
            model, provider=provider, encoding=encoding, cache=cache, backbone_only=backbone_only
        )
        prior = source.compute(u8)
    elif backbone_only:
        prior = None
    if info is not None:
        info.prior_seconds += time.perf_counter() - t0
        info.prior = source.described if source is not None else ("given" if prior is not None else "none")
    was_training = model.training
    model.eval()
    try:
        mult = multiple or size_multiple(model, descriptor)
        out = restore_tensor(
            model,
            torch.from_numpy(x_np.transpose(2, 0, 1).copy()),
            prior,
            multiple=mult,
            tile=tile,
            tile_overlap=tile_overlap,
            tile_blend=tile_blend,
            backbone_only=backbone_only,
            half=half,
            minimum=minimum_tile(model, descriptor),
            info=info,
        )
    finally:
        model.train(was_training)
    # channel by channel (to_image): an 8192x8192 colour output is 805 MB as float32, and this adds only
    # the HxWxC result and one channel's temporary
    return to_image(out.numpy(), as_float)
