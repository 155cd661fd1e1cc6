"""SAM mask provider over the real ``segment_anything`` package, with a faster automatic mask
generator that returns exactly the masks of the stock ``SamAutomaticMaskGenerator``.

Loading: ``sam_model_registry[model_type](checkpoint=None)`` builds the architecture, then the
state dict is read with ``torch.load(path, map_location=device, weights_only=True)`` (works on
CPU-only machines, never unpickles code) and loaded strictly. ``model_type`` is one of
``vit_b``/``vit_l``/``vit_h`` (Meta's checkpoints) or ``vit_tiny`` (our toy size for tests, see
:mod:`spt_adapter.prior.tiny`).

The generator itself (what makes it faster, its settings and precisions) lives in
:mod:`spt_adapter.prior.sam_generator`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import SamCheckpointError
from ..pixels import to_rgb_uint8
from ..plugins.types import Setting, validate_settings
from .masks import LabelMasks
from .sam_generator import (  # re-exported: the provider's settings are the generator's
    GENERATOR_SETTINGS,
    PRECISIONS,
    SPEED_SETTINGS,
    FastMaskGenerator,
    require_segment_anything,
)

SAM_CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "vit_tiny")
_EMBED_DIM_TO_TYPE = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 64: "vit_tiny"}

#: Types and ranges of the settings above (checked by name before anything runs).
SCHEMA = {
    "points_per_side": Setting(int, 32, "prompt grid: points per side", minimum=1),
    "pred_iou_thresh": Setting(float, 0.88, "keep masks whose predicted IoU exceeds this", minimum=0, maximum=1),
    "stability_score_thresh": Setting(float, 0.95, "keep masks at least this stable", minimum=0, maximum=1),
    "stability_score_offset": Setting(float, 1.0, "logit offset of the stability score", above=0),
    "box_nms_thresh": Setting(float, 0.7, "box IoU above which duplicate masks are dropped", minimum=0, maximum=1),
    "crop_n_layers": Setting(int, 0, "extra layers of image crops", minimum=0),
    "crop_nms_thresh": Setting(float, 0.7, "box IoU for duplicates between crops", minimum=0, maximum=1),
    "crop_overlap_ratio": Setting(float, 512 / 1500, "overlap of neighbouring crops", minimum=0, maximum=1),
    "crop_n_points_downscale_factor": Setting(int, 1, "fewer points in deeper crop layers", minimum=1),
    "min_mask_region_area": Setting(int, 0, "remove holes/islands smaller than this (needs OpenCV)", minimum=0),
    "points_per_batch": Setting(int, 64, "prompts per decoder call (speed/memory only)", minimum=1),
    "encoder_batch": Setting(int, 1, "images per encoder call (speed/memory only)", minimum=1),
    "precision": Setting(
        str,
        "fp32",
        "fp32: stock's exact masks; bf16: autocast + SDPA attention, faster on a GPU, "
        "masks differ slightly (part of the cache key)",
        choices=PRECISIONS,
    ),
}


def _builder(model_type: str):
    if model_type not in MODEL_TYPES:
        raise SamCheckpointError(f"unknown SAM model_type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if model_type == "vit_tiny":
        from .tiny import build_sam_vit_tiny

        return build_sam_vit_tiny
    return require_segment_anything().sam_model_registry[model_type]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_sam(checkpoint, model_type: str = "vit_b", device=None):
    """Build ``model_type`` with segment-anything's classes and load ``checkpoint`` into it.

    Errors (each one :class:`SamCheckpointError` or :class:`SamUnavailableError`, one line): file
    missing (says where checkpoints are published), not a weights-only torch file, not a state
    dict, or a state dict for another model type (names both).
    """
    require_segment_anything()
    import torch

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise SamCheckpointError(
            f"SAM checkpoint {path} not found. Download one (e.g. sam_vit_b_01ec64.pth for model_type vit_b) from "
            f"{SAM_CHECKPOINTS_URL} and install the SAM extra with `pip install spt-adapter[sam]`; "
            "or write a tiny test checkpoint with `python tools/make_tiny_sam.py PATH` (model_type vit_tiny)"
        )
    build = _builder(model_type)
    device = torch.device(device) if device is not None else _default_device()
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle errors, truncated zip, foreign files ...
        raise SamCheckpointError(
            f"SAM checkpoint {path} cannot be read as a weights-only torch file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SamCheckpointError(
            f"SAM checkpoint {path} does not hold a state dict of tensors (got {type(state).__name__})"
        )
    sam = build(checkpoint=None)
    found = _guess_model_type(state)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1] if "\n\t" in str(exc) else str(exc).splitlines()[0]
        guess = (
            f"it holds a {found!r} model (pass model_type={found!r})"
            if found
            else "its shapes match no known SAM model type"
        )
        raise SamCheckpointError(
            f"SAM checkpoint {path} does not fit model_type {model_type!r}: {guess}; first mismatch: {first.strip()}"
        ) from None
    return sam.to(device).eval()


def detect_model_type(checkpoint) -> str:
    """The model type a SAM checkpoint holds, read from its patch-embedding shape (memory-mapped)."""
    import torch

    path = Path(checkpoint).expanduser()
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SamCheckpointError(
            f"SAM checkpoint {path} cannot be read as a weights-only torch file ({type(exc).__name__})"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    found = _guess_model_type(state) if isinstance(state, dict) else None
    if found is None:
        raise SamCheckpointError(
            f"SAM checkpoint {path}: cannot tell its model type (no image_encoder.patch_embed of a known "
            f"width); pass one of {', '.join(MODEL_TYPES)}"
        )
    return found


def _guess_model_type(state: dict) -> str | None:
    w = state.get("image_encoder.patch_embed.proj.weight")
    if w is None or w.ndim != 4:
        return None
    return _EMBED_DIM_TO_TYPE.get(int(w.shape[0]))


# ------------------------------------------------------------------------------ provider
class CheckpointIdentity:
    """For providers with a checkpoint file: its sha256, computed once (part of the cache identity)."""

    checkpoint: Path
    _sha256: str | None = None

    @property
    def checkpoint_sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.checkpoint)
        return self._sha256


class SamMaskProvider(CheckpointIdentity):
    """``SamMaskProvider(checkpoint, model_type="vit_b", device=None, **generator_settings)``.

    ``model_type="auto"`` reads it from the checkpoint's patch-embedding width.

    ``generator_settings``: SamAutomaticMaskGenerator's points_per_side, pred_iou_thresh,
    stability_score_thresh, stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh,
    crop_overlap_ratio, crop_n_points_downscale_factor, min_mask_region_area (they define the
    masks and are part of :meth:`identity`), plus points_per_batch and encoder_batch (speed only).
    The model is loaded lazily on first use; the checkpoint's sha256 is computed once.
    """

    name = "sam"

    def __init__(self, checkpoint, model_type: str = "vit_b", device=None, **generator_settings) -> None:
        require_segment_anything()
        if model_type not in MODEL_TYPES + ("auto",):
            raise SamCheckpointError(
                f"unknown SAM model_type {model_type!r}; choose one of {', '.join(MODEL_TYPES)} or auto"
            )
        self.checkpoint = Path(checkpoint).expanduser()
        if not self.checkpoint.is_file():
            load_sam(
                self.checkpoint, "vit_b" if model_type == "auto" else model_type
            )  # the "where to get checkpoints" error
        if model_type == "auto":
            model_type = detect_model_type(self.checkpoint)
        self.model_type = model_type
        self.device = device
        generator_settings = validate_settings("sam", SCHEMA, generator_settings)
        self.precision = generator_settings.pop("precision", "fp32")
        speed = {k: generator_settings.pop(k) for k in list(generator_settings) if k in SPEED_SETTINGS}
        self.settings = {**GENERATOR_SETTINGS, **generator_settings}
        self.speed = {**SPEED_SETTINGS, **speed}
        self._sha256 = None
        self._generator: FastMaskGenerator | None = None

    def identity(self) -> dict:
        import segment_anything  # noqa: F401

        ident = {
            "provider": "sam",
            "model_type": self.model_type,
            "checkpoint_sha256": self.checkpoint_sha256,
            "settings": dict(sorted(self.settings.items())),
            "segment_anything": "1.0",
        }
        if self.precision != "fp32":  # bf16 changes the masks; fp32 keeps the keys of existing cache entries
            ident["precision"] = self.precision
        return ident

    @property
    def generator(self) -> FastMaskGenerator:
        if self._generator is None:
            model = load_sam(self.checkpoint, self.model_type, self.device)
            self._generator = FastMaskGenerator(model, precision=self.precision, **self.speed, **self.settings)
        return self._generator

    def generate(self, image) -> LabelMasks:
        """One label image, smaller masks on top (:meth:`LabelMasks.from_masks`)."""
        return self.generate_batch([image])[0]

    def generate_batch(self, images) -> list[LabelMasks]:
        images = [to_rgb_uint8(im) for im in images]
        return [
            LabelMasks.from_masks(m, shape=im.shape[:2])
            for m, im in zip(self.generator.generate_batch(images), images, strict=True)
        ]

    def __repr__(self) -> str:
        return f"SamMaskProvider({str(self.checkpoint)!r}, model_type={self.model_type!r})"
