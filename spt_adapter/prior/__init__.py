"""Image -> masks -> prior tensor, computed once per image and cached.

    from spt_adapter.prior import make_provider, PriorCache, encode_masks
    provider = make_provider("sam", checkpoint="sam_vit_b_01ec64.pth")   # or "sam2", "slic", a plugin's provider
    masks = provider.generate(image_hwc_uint8)   # LabelMasks: one (H, W) int32 label image + per-region records
    cache = PriorCache("priors/")
    prior = cache.get_or_compute(image_hwc_uint8, provider)  # (1, H, W) float32, DEFAULT_ENCODING ("boundary")
    label = cache.get_or_compute(image_hwc_uint8, provider, encoding=default_encoding("pool"))  # "label", for pool

See docs/prior.md.
"""

from ..errors import SamCheckpointError, SamUnavailableError
from .cache import PriorCache, compute_prior, image_key
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
from .masks import LabelMasks, as_label_masks
from .registry import (
    describe_provider,
    get_provider_spec,
    make_provider,
    provider_failures,
    provider_names,
    provider_specs,
)
from .sam import (
    MODEL_TYPES,
    SAM_CHECKPOINTS_URL,
    SamMaskProvider,
    detect_model_type,
    load_sam,
)
from .sam_generator import FastMaskGenerator

__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "MODEL_TYPES",
    "SAM_CHECKPOINTS_URL",
    "ClassicalMaskProvider",
    "FastMaskGenerator",
    "LabelMasks",
    "PriorCache",
    "SamCheckpointError",
    "SamMaskProvider",
    "SamUnavailableError",
    "as_label_masks",
    "describe_provider",
    "get_provider_spec",
    "check_encoding_for_fusion",
    "compute_prior",
    "default_encoding",
    "detect_model_type",
    "encode_masks",
    "encoding_channels",
    "image_key",
    "load_sam",
    "make_provider",
    "parse_encoding",
    "provider_failures",
    "provider_names",
    "provider_specs",
]
