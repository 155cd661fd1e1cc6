"""The SPT unit: encode a prior, fuse it into a feature map, start as an exact identity."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import SPTConfig


def _act() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


def resize_prior(prior: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (B, C_p, H_p, W_p) prior to ``size``; ``nearest`` keeps label values intact."""
    if tuple(prior.shape[-2:]) == tuple(size) and not torch.jit.is_tracing():
        return prior  # (a trace always records the resize: it is exact at equal sizes, and sizes vary)
    if mode == "nearest":
        # "nearest-exact" samples pixel centres, so a label map is not shifted by half a pixel.
        if torch.jit.is_tracing():  # the ONNX exporter has no nearest-exact: the same gather, spelt out
            return _nearest_exact_gather(prior, size)
        return F.interpolate(prior, size=size, mode="nearest-exact")
    if mode == "area":
        return F.adaptive_avg_pool2d(prior, size)
    return F.interpolate(prior, size=size, mode="bilinear", align_corners=False)


def _nearest_exact_gather(prior: torch.Tensor, size) -> torch.Tensor:
    """``F.interpolate(prior, size, mode="nearest-exact")`` as two index gathers (source pixel
    ``floor((i + 0.5) * in / out)``, float32 as torch computes it), for traced / exported graphs."""
    for dim, out in ((2, size[0]), (3, size[1])):
        length = prior.shape[dim]
        scale = torch.as_tensor(length, dtype=torch.float32) / torch.as_tensor(out, dtype=torch.float32)
        index = ((torch.arange(out, dtype=torch.float32) + 0.5) * scale).floor().to(torch.int64)
        index = torch.minimum(index, torch.as_tensor(length, dtype=torch.int64) - 1)
        prior = prior.index_select(dim, index.to(prior.device))
    return prior


def region_average(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average ``features`` (B,C,H,W) inside each region of the label map ``labels`` (B,H,W).

    Regions are the distinct values of each image's label map (any values: ids, or ids scaled to
    (0, 1]); every pixel gets the mean feature of its region.
    """
    b, c, h, w = features.shape
    _, inverse = torch.unique(labels.reshape(b, -1), return_inverse=True)  # ids shared over the batch
    n = int(inverse.max()) + 1 if inverse.numel() else 1
    ids = inverse + torch.arange(b, device=labels.device).unsqueeze(1) * n  # (B, HW), per image
    flat = features.reshape(b, c, -1).transpose(1, 2).reshape(b * h * w, c)
    sums = flat.new_zeros(b * n, c).index_add_(0, ids.reshape(-1), flat)
    counts = flat.new_zeros(b * n).index_add_(0, ids.reshape(-1), flat.new_ones(b * h * w))
    means = sums / counts.clamp_min(1).unsqueeze(1)
    return means[ids.reshape(-1)].reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w)


def unit_tensor_count(config: SPTConfig) -> int:
    """How many tensors (weights and biases) one :class:`SPTUnit` of ``config`` holds."""
    if config.fusion == "pool":
        return 4
    if config.fusion == "lowrank":
        return 2 * config.depth + 2
    if not config.reads_prior:  # no encoder: concat keeps its two fuse convs, sft a scale and a shift
        return 4 if config.fusion == "concat" else 2
    return 2 * config.depth + (4 if config.fusion == "concat" else 2)


def unit_parameter_shapes(channels: int, config: SPTConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of ``SPTUnit(channels, config)``, computed without
    building it (an adapter file's header is checked against these before any module is made).
    Runs in O(:func:`unit_tensor_count`)."""
    c, h = channels, config.hidden
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, inp: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out, inp, k, k)
        shapes[f"{name}.bias"] = (out,)

    if config.fusion == "pool":
        conv("fuse.0", h, 2 * c, 1)
        conv("fuse.2", c, h, 1)
        return shapes
    if config.fusion == "lowrank":
        conv("fuse.0", h, c, 3)
        for i in range(1, config.depth):
            conv(f"fuse.{2 * i}", h, h, 3)
        conv(f"fuse.{2 * config.depth - 1}", c, h, 1)
        return shapes
    if not config.reads_prior:  # see SPTUnit: the encoder of a constant prior folded into biases
        if config.fusion == "concat":
            conv("fuse.0", h, c, 1)
            conv("fuse.2", c, h, 1)
        else:
            shapes["fuse.scale"] = (c,)
            shapes["fuse.shift"] = (c,)
        return shapes
    conv("encoder.0", h, config.prior_channels, 3)
    for i in range(1, config.depth):
        conv(f"encoder.{2 * i}", h, h, 3)
    if config.fusion == "concat":
        conv("fuse.0", h, c + h, 1)
        conv("fuse.2", c, h, 1)
    else:
        conv("fuse", 2 * c, h, 1)
    return shapes


class ChannelAffine(nn.Module):
    """``features * (1 + scale) + shift`` with one (scale, shift) per channel, both starting at zero:
    what the ``sft`` fusion computes from a constant prior (its encoder's output is then one vector)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features * (1 + self.scale.view(1, -1, 1, 1)) + self.shift.view(1, -1, 1, 1)


class SPTUnit(nn.Module):
    """One SAM-prior tuning unit for a feature map of ``channels`` channels.

    ``forward(features, prior)`` takes features (B, C, H, W) and a prior (B, C_p, H_p, W_p) at any
    resolution, and returns corrected features of the same shape. The layer that writes into the
    features is zero-initialised, so a fresh unit returns its input exactly.

    With ``config.prior_channels == 0`` (no prior) the unit has no prior encoder and ``prior`` is
    ``None``: a constant prior through the encoder is only a learned bias (one vector per unit, up to
    the zero padding at the borders), so it is folded into the fusion's own biases instead of being
    carried as dead weights -- ``concat`` becomes ``features + conv(act(conv(features)))`` (1x1,
    ``channels -> hidden -> channels``), ``sft`` a per-channel scale and shift (:class:`ChannelAffine`).

    ``fusion="lowrank"`` is the narrow feature unit of issue 28: ``features + up(down(features))``
    with ``down`` a 3x3 conv to ``hidden`` channels (the rank; with ``depth`` > 1, ``depth - 1`` more
    3x3 convs after it, each behind a LeakyReLU) and ``up`` a zero-initialised 1x1 conv back. It has no prior encoder and reads no prior (its config
    has ``prior_channels`` 0): on every real backbone measured (docs/results.md, results 13-16) the
    segment prior added nothing, while spatial context in the unit's own path did (result 16).
    """

    def __init__(self, channels: int, config: SPTConfig) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.fusion = config.fusion
        self.prior_resize = config.prior_resize
        hidden = config.hidden
        self.encoder: nn.Module | None = None
        self.fuse: nn.Module
        self.reads_prior = config.reads_prior
        if self.fusion == "lowrank":
            # features -> 3x3 conv to `hidden` (the rank) -> [act, 3x3 hidden -> hidden] x (depth - 1) -> 1x1 back:
            # linear at depth 1 (a rank-`hidden` residual with 3x3 context, as LoRA's update is linear)
            down: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1)]
            for _ in range(config.depth - 1):
                down += [_act(), nn.Conv2d(hidden, hidden, 3, padding=1)]
            last = nn.Conv2d(hidden, channels, 1)
            self.fuse = nn.Sequential(*down, last)
            self._zero(last)
            return
        if not self.reads_prior:
            if self.fusion == "concat":
                last = nn.Conv2d(hidden, channels, 1)
                self.fuse = nn.Sequential(nn.Conv2d(channels, hidden, 1), _act(), last)
                self._zero(last)
            else:  # sft (pool needs a prior: SPTConfig refuses it)
                self.fuse = ChannelAffine(channels)
            return
        if self.fusion == "pool":
            # features ++ region-averaged features -> hidden -> channels
            last = nn.Conv2d(hidden, channels, 1)
            self.fuse = nn.Sequential(nn.Conv2d(2 * channels, hidden, 1), _act(), last)
            self._zero(last)
            return
        layers: list[nn.Module] = [nn.Conv2d(config.prior_channels, hidden, 3, padding=1), _act()]
        for _ in range(config.depth - 1):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1), _act()]
        self.encoder = nn.Sequential(*layers)
        if self.fusion == "concat":
            last = nn.Conv2d(hidden, channels, 1)
            self.fuse = nn.Sequential(nn.Conv2d(channels + hidden, hidden, 1), _act(), last)
            self._zero(last)
        else:  # sft: one conv gives scale and shift
            last = nn.Conv2d(hidden, 2 * channels, 1)
            self.fuse = last
            self._zero(last)

    @staticmethod
    def _zero(conv: nn.Conv2d) -> None:
        nn.init.zeros_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        if not self.reads_prior:
            if self.fusion in ("concat", "lowrank"):
                return features + self.fuse(features)
            return self.fuse(features)
        assert prior is not None  # the layer refuses a missing prior before calling a unit that reads one
        # no int(): under tracing the sizes are symbolic, and the exported graph must follow them
        size = (features.shape[-2], features.shape[-1])
        prior = resize_prior(prior.type_as(features), size, self.prior_resize)
        if self.fusion == "pool":
            pooled = region_average(features, prior[:, 0])
            return features + self.fuse(torch.cat([features, pooled], dim=1))
        assert self.encoder is not None  # every fusion but pool has a prior encoder
        encoded = self.encoder(prior)
        if self.fusion == "concat":
            return features + self.fuse(torch.cat([features, encoded], dim=1))
        scale, shift = self.fuse(encoded).chunk(2, dim=1)
        return features * (1 + scale) + shift

    def extra_repr(self) -> str:
        prior = f"prior_resize={self.prior_resize!r}" if self.reads_prior else "no prior"
        return f"channels={self.channels}, fusion={self.fusion!r}, {prior}"
