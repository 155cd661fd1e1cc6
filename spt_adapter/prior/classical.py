"""Mask provider with no weights: scikit-image SLIC superpixels or Felzenszwalb's graph segmentation.

Same interface as :class:`~spt_adapter.prior.sam.SamMaskProvider`, so the whole pipeline (masks,
cache, training, benchmarks) runs without SAM weights; it is also the baseline a SAM prior has to
beat. The segmenter's label image is the result (:class:`~spt_adapter.prior.masks.LabelMasks`):
its segments tile the image (no overlaps, no background).
"""

from __future__ import annotations

from ..errors import PriorError
from ..pixels import to_rgb_uint8
from ..plugins.types import Setting, validate_settings
from .masks import LabelMasks

#: The settings each method accepts (checked by name, type and range before anything runs).
SCHEMAS = {
    "slic": {
        "n_segments": Setting(int, 64, "approximate number of segments", minimum=2),
        "compactness": Setting(float, 10.0, "colour vs space trade-off (higher: squarer segments)", above=0),
        "sigma": Setting(float, 1.0, "Gaussian pre-smoothing width", minimum=0),
        "max_num_iter": Setting(int, 10, "k-means iterations", minimum=1),
        "enforce_connectivity": Setting(bool, True, "make every segment connected"),
        "min_size_factor": Setting(float, 0.5, "smallest segment, as a fraction of the mean size", minimum=0),
        "max_size_factor": Setting(float, 3.0, "largest segment, as a multiple of the mean size", above=0),
        "slic_zero": Setting(bool, False, "SLIC-zero (adaptive compactness)"),
        "convert2lab": Setting(bool, None, "segment in Lab colour space (default: yes for RGB)", optional=True),
    },
    "felzenszwalb": {
        "scale": Setting(float, 100.0, "higher: larger segments", above=0),
        "sigma": Setting(float, 0.8, "Gaussian pre-smoothing width", minimum=0),
        "min_size": Setting(int, 50, "smallest segment in pixels", minimum=0),
    },
}
DEFAULTS = {
    "slic": {"n_segments": 64, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 50},
}


class ClassicalMaskProvider:
    """``ClassicalMaskProvider(method="slic"|"felzenszwalb", **settings)``.

    Settings are passed to ``skimage.segmentation.slic`` (``n_segments``, ``compactness``,
    ``sigma``, ...) or ``felzenszwalb`` (``scale``, ``sigma``, ``min_size``); they are checked
    against :data:`SCHEMAS` (unknown names, wrong types, NaN, out-of-range values are refused)
    when the provider is built.
    """

    name = "classical"

    def __init__(self, method: str = "slic", **settings) -> None:
        if method not in SCHEMAS:
            raise PriorError(f"unknown classical method {method!r}; choose 'slic' or 'felzenszwalb'")
        self.method = method
        self.settings = {**DEFAULTS[method], **validate_settings(method, SCHEMAS[method], settings)}

    def identity(self) -> dict:
        import skimage

        version = skimage.__version__  # type: ignore[attr-defined]  # set by lazy_loader, not in its stubs
        return {
            "provider": "classical",
            "method": self.method,
            "settings": dict(sorted(self.settings.items())),
            "skimage": version,
        }

    def __repr__(self) -> str:
        return f"ClassicalMaskProvider(method={self.method!r}, {self.settings})"

    def segment(self, image):
        """HxW int label image."""
        from skimage import segmentation

        img = to_rgb_uint8(image)
        if self.method == "slic":
            return segmentation.slic(img, start_label=0, channel_axis=-1, **self.settings)
        return segmentation.felzenszwalb(img, channel_axis=-1, **self.settings)

    def generate(self, image) -> LabelMasks:
        return LabelMasks.from_labels(self.segment(image))

    def generate_batch(self, images) -> list[LabelMasks]:
        return [self.generate(im) for im in images]
