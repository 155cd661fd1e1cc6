"""Mask provider with no weights: scikit-image SLIC superpixels or Felzenszwalb's graph segmentation.

Same interface as :class:`~spt_adapter.prior.sam.SamMaskProvider`, so the whole pipeline (masks,
cache, training, benchmarks) runs without SAM weights; it is also the baseline a SAM prior has to
beat. Each segment becomes one mask; the segments tile the image (no overlaps, no background).
"""

from __future__ import annotations

import numpy as np

from ..errors import PriorError
from ..pixels import to_rgb_uint8

DEFAULTS = {
    "slic": {"n_segments": 64, "compactness": 10.0, "sigma": 1.0},
    "felzenszwalb": {"scale": 100.0, "sigma": 0.8, "min_size": 50},
}


class ClassicalMaskProvider:
    """``ClassicalMaskProvider(method="slic"|"felzenszwalb", **settings)``.

    Settings are passed to ``skimage.segmentation.slic`` (``n_segments``, ``compactness``,
    ``sigma``, ...) or ``felzenszwalb`` (``scale``, ``sigma``, ``min_size``); unknown names are
    refused when the provider is built.
    """

    name = "classical"

    def __init__(self, method: str = "slic", **settings) -> None:
        if method not in DEFAULTS:
            raise PriorError(f"unknown classical method {method!r}; choose 'slic' or 'felzenszwalb'")
        unknown = sorted(set(settings) - _allowed(method))
        if unknown:
            raise PriorError(f"{method}: unknown setting(s) {unknown}; allowed: {sorted(_allowed(method))}")
        self.method = method
        self.settings = {**DEFAULTS[method], **settings}

    def identity(self) -> dict:
        import skimage

        return {"provider": "classical", "method": self.method, "settings": dict(sorted(self.settings.items())),
                "skimage": skimage.__version__}

    def __repr__(self) -> str:
        return f"ClassicalMaskProvider(method={self.method!r}, {self.settings})"

    def segment(self, image) -> np.ndarray:
        """HxW int label image."""
        from skimage import segmentation

        img = to_rgb_uint8(image)
        if self.method == "slic":
            return segmentation.slic(img, start_label=0, channel_axis=-1, **self.settings)
        return segmentation.felzenszwalb(img, channel_axis=-1, **self.settings)

    def generate(self, image) -> list[dict]:
        labels = self.segment(image)
        out = []
        for value in np.unique(labels):
            seg = labels == value
            ys, xs = np.nonzero(seg)
            x0, y0 = int(xs.min()), int(ys.min())
            out.append({
                "segmentation": seg,
                "area": int(seg.sum()),
                "bbox": [x0, y0, int(xs.max()) - x0, int(ys.max()) - y0],
                "predicted_iou": 1.0,
                "stability_score": 1.0,
                "point_coords": [[float(xs.mean()), float(ys.mean())]],
                "crop_box": [0, 0, int(labels.shape[1]), int(labels.shape[0])],
            })
        return out

    def generate_batch(self, images) -> list[list[dict]]:
        return [self.generate(im) for im in images]


def _allowed(method: str) -> set[str]:
    if method == "slic":
        return {"n_segments", "compactness", "sigma", "max_num_iter", "spacing", "enforce_connectivity",
                "min_size_factor", "max_size_factor", "slic_zero", "convert2lab"}
    return {"scale", "sigma", "min_size"}
