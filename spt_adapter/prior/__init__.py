"""Image -> masks -> prior tensor, computed once per image and cached.

    from spt_adapter.prior import ClassicalMaskProvider, SamMaskProvider, PriorCache, encode_masks
    provider = SamMaskProvider("sam_vit_b_01ec64.pth", model_type="vit_b")   # or ClassicalMaskProvider("slic")
    cache = PriorCache("priors/")
    prior = cache.get_or_compute(image_hwc_uint8, provider)  # (1, H, W) float32, DEFAULT_ENCODING ("boundary")
    label = cache.get_or_compute(image_hwc_uint8, provider, encoding=default_encoding("pool"))  # "label", for pool

See docs/prior.md.
"""

from .cache import PriorCache, image_key
from .classical import ClassicalMaskProvider
from .encode import (
    DEFAULT_ENCODING,
    ENCODINGS,
    check_encoding_for_fusion,
    default_encoding,
    encode_masks,
    encoding_channels,
    parse_encoding,
)
from .sam import (
    MODEL_TYPES,
    SAM_CHECKPOINTS_URL,
    FastMaskGenerator,
    SamCheckpointError,
    SamMaskProvider,
    SamUnavailableError,
    detect_model_type,
    load_sam,
)


def make_provider(name: str, checkpoint=None, model_type: str = "vit_b", device=None, **settings):
    """``sam`` | ``slic`` | ``felzenszwalb`` -> a provider (what ``spt-adapter masks --provider`` builds)."""
    from ..errors import PriorError

    if name == "sam":
        if checkpoint is None:
            raise SamCheckpointError(f"--provider sam needs --checkpoint PATH (SAM checkpoints: {SAM_CHECKPOINTS_URL})")
        return SamMaskProvider(checkpoint, model_type=model_type, device=device, **settings)
    if name in ("slic", "felzenszwalb"):
        return ClassicalMaskProvider(method=name, **settings)
    raise PriorError(f"unknown mask provider {name!r}; choose sam, slic or felzenszwalb")


__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "MODEL_TYPES",
    "SAM_CHECKPOINTS_URL",
    "ClassicalMaskProvider",
    "FastMaskGenerator",
    "PriorCache",
    "SamCheckpointError",
    "SamMaskProvider",
    "SamUnavailableError",
    "check_encoding_for_fusion",
    "default_encoding",
    "detect_model_type",
    "encode_masks",
    "encoding_channels",
    "image_key",
    "load_sam",
    "make_provider",
    "parse_encoding",
]
