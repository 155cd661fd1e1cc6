"""Synthetic degradations a user can write down: ``--task blur:gauss:1.2+sr:4+jpeg:60``.

    from spt_adapter.data.degradations import parse_degradation, apply_degradation
    steps = parse_degradation("blur:gauss:1.2+sr:4+jpeg:60")
    lq = apply_degradation(gt_uint8, steps, seed=7)      # float32 HxWxC on [0, 1]

A task is one step or several joined by ``+``, applied left to right to the clean image:

=========================  ===========================================================================
``denoise:<sigma>``        add white Gaussian noise N(0, sigma/255), sigma in 0..255
``poisson-gauss:<a>:<b>``  signal-dependent camera-like noise: ``a * Poisson(x / a) + N(0, b/255)`` on
                           x in [0, 1] (shot-noise variance ``a * x``; ``a`` in (0, 1], ``b`` in 0..255)
``blur:gauss:<s>[:<k>]``   isotropic Gaussian blur, std ``s`` > 0 pixels, a ``k`` x ``k`` kernel (odd;
                           default ``2 * int(3 s + 0.5) + 1``) normalised to sum 1, mirrored borders
                           (``scipy.ndimage`` mode ``reflect``)
``sr:<s>``                 MATLAB ``imresize(x, 1/s, 'bicubic')`` (antialiased), s in 2..8
``sr:<s>:bd``              the "BD" protocol of the SR literature (RDN, RCAN): ``blur:gauss:1.6:7``
                           then ``sr:<s>``
``jpeg:<q>``               Pillow's JPEG encoder at quality q (1..100, Pillow's scale, 4:2:0 chroma)
=========================  ===========================================================================

Pixel values between steps: blur, resize and JPEG give 8-bit images (rounded and clipped, as an
image file would hold them); a noise step leaves floats, clipped to [0, 1] and rounded to 8 bits
when ``clip=True`` (the default) and left as they are with ``clip=False`` (what CDnCNN-B and
KAIR's training use: unclipped noise); a JPEG step after unclipped noise clips and rounds first,
because JPEG stores 8-bit pixels.

Randomness: step ``i`` draws from ``numpy.random.default_rng((seed, i))``, so a degradation is a
function of ``(seed, step)`` alone: the same seed gives the same image, and changing one noise
step does not change another step's draw.

The BD blur and the JPEG encoder are the ones ``benchmarks/_quality_data.py`` measured with (it
now calls this module), so the product and the measurements degrade images the same way.
BasicSR's ``basicsr.data.degradations`` encodes JPEG with OpenCV and builds its Gaussian kernels
on another grid, so it is not used here: the benchmarks' numbers were made with Pillow.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = [
    "Step",
    "parse_degradation",
    "degradation_scale",
    "apply_degradation",
    "gaussian_kernel",
    "gaussian_blur",
    "jpeg",
    "bd_downsample",
    "GRAMMAR",
]

#: one line per step form, for error messages and ``--help``
GRAMMAR = (
    "denoise:<sigma 0..255> | poisson-gauss:<a 0..1>:<b 0..255> | blur:gauss:<std>[:<odd size>] | "
    "sr:<scale 2..8>[:bd] | jpeg:<quality 1..100>, joined by '+'"
)

BD_SIGMA, BD_SIZE = 1.6, 7  # RDN's BD blur: a 7x7 Gaussian of std 1.6


@dataclass(frozen=True)
class Step:
    """One parsed step: ``kind`` (denoise, poisson-gauss, blur, sr, jpeg), its numbers, its text."""

    kind: str
    args: tuple[float, ...]
    text: str

    @property
    def scale(self) -> int:
        return int(self.args[0]) if self.kind == "sr" else 1

    @property
    def noise(self) -> bool:
        return self.kind in ("denoise", "poisson-gauss")


def _number(text: str, step: str, what: str, lo: float, hi: float, integer: bool = False, open_lo: bool = False):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
        rng = f"{'(' if open_lo else ''}{lo:g}..{hi:g}{')' if open_lo else ''}"
        kind = "an integer" if integer else "a number"
        raise DataError(f"degradation step {step!r}: {what} must be {kind} in {rng}, got {text!r}")
    return value


def _parse_step(text: str) -> Step:
    parts = text.split(":")
    kind, args = parts[0], parts[1:]

    def arity(*allowed: int) -> None:
        if len(args) not in allowed:
            raise DataError(f"degradation step {text!r}: expected {_FORMS[kind]}")

    if kind == "denoise":
        arity(1)
        return Step(kind, (_number(args[0], text, "sigma", 0, 255),), text)
    if kind == "poisson-gauss":
        arity(2)
        a = _number(args[0], text, "a (the shot-noise scale)", 0, 1, open_lo=True)
        b = _number(args[1], text, "b (the Gaussian std on 0..255)", 0, 255)
        return Step(kind, (a, b), text)
    if kind == "blur":
        arity(2, 3)
        if args[0] != "gauss":
            raise DataError(f"degradation step {text!r}: the blur kind must be 'gauss', got {args[0]!r}")
        std = _number(args[1], text, "the blur std", 0, 50, open_lo=True)
        size = 2 * int(3 * std + 0.5) + 1  # scipy.ndimage.gaussian_filter(truncate=3)'s radius
        if len(args) == 3:
            size = _number(args[2], text, "the kernel size", 1, 201, integer=True)
            if size % 2 == 0:
                raise DataError(f"degradation step {text!r}: the kernel size must be odd, got {size}")
        return Step(kind, (std, float(size)), text)
    if kind == "sr":
        arity(1, 2)
        scale = _number(args[0], text, "the scale", 2, 8, integer=True)
        if len(args) == 2 and args[1] not in ("bd", "bicubic"):
            raise DataError(
                f"degradation step {text!r}: sr's kernel is 'bicubic' (the default) or 'bd', got {args[1]!r}"
            )
        return Step("sr", (float(scale), 1.0 if len(args) == 2 and args[1] == "bd" else 0.0), text)
    if kind == "jpeg":
        arity(1)
        return Step(kind, (float(_number(args[0], text, "the quality", 1, 100, integer=True)),), text)
    raise DataError(f"unknown degradation step {text!r}: the steps are {GRAMMAR}")


_FORMS = {
    "denoise": "denoise:<sigma>",
    "poisson-gauss": "poisson-gauss:<a>:<b>",
    "blur": "blur:gauss:<std>[:<odd size>]",
    "sr": "sr:<scale>[:bd]",
    "jpeg": "jpeg:<quality>",
}


def parse_degradation(text: str) -> tuple[Step, ...]:
    """The steps of ``text`` (``"blur:gauss:1.2+sr:4+jpeg:60"``); a step that is not one of
    :data:`GRAMMAR`, or numbers out of range: :class:`DataError` naming the step."""
    text = str(text).strip()
    if not text:
        raise DataError(f"empty degradation: write one or more steps, {GRAMMAR}")
    steps = []
    for part in text.split("+"):
        part = part.strip()
        if not part:
            raise DataError(f"degradation {text!r} has an empty step (two '+' in a row, or one at an end)")
        steps.append(_parse_step(part))
    if degradation_scale(steps) > 8:
        raise DataError(f"degradation {text!r} shrinks the image by {degradation_scale(steps)}: at most x8 in all")
    return tuple(steps)


def degradation_scale(steps) -> int:
    """The total down-scaling of the steps (product of their ``sr`` scales; 1 without one)."""
    return math.prod(s.scale for s in steps)


# ---------------------------------------------------------------------------------------------------- steps
def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_kernel(std: float, size: int) -> np.ndarray:
    """A ``size`` x ``size`` isotropic Gaussian of std ``std`` sampled at integer offsets from the
    centre, normalised to sum 1 (float64)."""
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * std**2))
    k = np.outer(g, g)
    return k / k.sum()


def gaussian_blur(img: np.ndarray, std: float, size: int) -> np.ndarray:
    """``img`` (HxWxC, any dtype, 0..255 scale) correlated with :func:`gaussian_kernel`, mirrored
    borders (``scipy.ndimage`` mode ``reflect``); float64, not rounded."""
    from scipy.ndimage import correlate

    kernel = gaussian_kernel(std, size)
    x = np.asarray(img, dtype=np.float64)
    return np.stack([correlate(x[..., c], kernel, mode="reflect") for c in range(x.shape[2])], -1)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` (HxWxC uint8, C 1 or 3) through Pillow's JPEG encoder at ``quality`` and back (4:2:0
    chroma for colour), uint8 of the same shape."""
    from PIL import Image

    grey = img.shape[2] == 1
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if grey else img).save(buf, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        out = np.asarray(im)
    return np.ascontiguousarray(out[..., None] if grey else out)


def bd_downsample(img: np.ndarray, scale: int) -> np.ndarray:
    """The BD protocol: :func:`gaussian_blur` with a 7x7 kernel of std 1.6, rounded to 8 bits, then
    MATLAB-style bicubic downsampling by ``scale``; uint8."""
    from .images import imresize_bicubic

    return imresize_bicubic(_u8(gaussian_blur(img, BD_SIGMA, BD_SIZE)), scale=1.0 / scale)


def apply_degradation(gt, steps, seed: int = 0, clip: bool = True) -> np.ndarray:
    """``gt`` (HxWxC uint8) degraded by ``steps`` (a :func:`parse_degradation` result or its text):
    float32 HxWxC on the [0, 1] scale (on the 8-bit grid unless the last noise step was left
    unclipped, ``clip=False``). Step ``i`` draws from ``default_rng((seed, i))``."""
    from .images import imresize_bicubic

    if isinstance(steps, str):
        steps = parse_degradation(steps)
    x: np.ndarray = np.asarray(gt)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise DataError(f"apply_degradation takes an HxWxC uint8 image, got {x.dtype} of shape {x.shape}")
    scale = degradation_scale(steps)
    if x.shape[0] < scale or x.shape[1] < scale:
        raise DataError(f"image of size {x.shape[:2]} is smaller than the total SR scale {scale}")
    for i, step in enumerate(steps):
        rng = np.random.default_rng((int(seed), i))
        if not step.noise and x.dtype != np.uint8:
            x = _u8(x)  # resize / blur / JPEG work on 8-bit pixels, as an image file holds them
        if step.kind == "denoise":
            y = x.astype(np.float64) + rng.normal(0.0, step.args[0], x.shape)
        elif step.kind == "poisson-gauss":
            a, b = step.args
            v = np.clip(x.astype(np.float64) / 255.0, 0.0, None)
            y = 255.0 * (a * rng.poisson(v / a)) + rng.normal(0.0, b, x.shape)
        elif step.kind == "blur":
            y = gaussian_blur(x, step.args[0], int(step.args[1]))
        elif step.kind == "sr":
            y = bd_downsample(x, step.scale) if step.args[1] else imresize_bicubic(x, scale=1.0 / step.scale)
        else:  # jpeg
            y = jpeg(x, int(step.args[0]))
        x = _u8(y) if (not step.noise or clip) else y
    return (x.astype(np.float64) / 255.0).astype(np.float32)
