"""Masks as one label image: what every mask provider returns and what the cache stores.

:class:`LabelMasks` holds one ``(H, W)`` int32 label image (0: no region, ``i + 1``: region ``i``)
and one record per region, as columns: ``area`` (pixels of the region's whole mask), ``score``
(the provider's confidence: SAM's predicted IoU, 1.0 for classical segmenters) and ``bbox``
(``x, y, w, h`` of the whole mask, SAM's convention), plus optional ``extra`` columns (SAM's
``stability_score``, ``point_coords``, ``crop_box``). It costs 4 bytes a pixel whatever the
number of regions; the old format (one boolean image per region) cost ``N`` bytes a pixel,
about 650 MB for SLIC's ~2,500 regions on a 512x512 image.

Overlapping masks (SAM's) are flattened with one documented precedence, the one SAM-Deblur
paints its maps with: **smaller masks on top**. Masks are ranked by area, largest first (ties
keep the provider's order), and painted in that order, so a pixel belongs to the smallest mask
that covers it (of equal areas, the later one). Region ``i`` is the mask of rank ``i``, and
``area`` stays the area of the whole mask, so rankings (the ``label`` encoding) are those of the
masks, not of what is left visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import PriorError

#: SAM's per-mask fields besides segmentation/area/bbox/predicted_iou, kept as ``extra`` columns.
EXTRA_FIELDS = {"stability_score": (), "point_coords": (2,), "crop_box": (4,)}


@dataclass(eq=False)
class LabelMasks:
    """``labels`` (H, W) int32, 0 = no region, region ``i`` has label ``i + 1``; per-region
    columns ``area`` (N,) int64, ``score`` (N,) float64, ``bbox`` (N, 4) float64 ``x, y, w, h``;
    ``extra``: more (N, ...) columns. Build with :meth:`from_labels` (a segmenter's label image)
    or :meth:`from_masks` (SAM-style dicts or boolean arrays)."""

    labels: np.ndarray
    area: np.ndarray
    score: np.ndarray
    bbox: np.ndarray
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 2 or self.labels.dtype != np.int32:
            raise PriorError(
                f"LabelMasks.labels must be an (H, W) int32 array, got {self.labels.dtype} {self.labels.shape}"
            )
        n = len(self.area)
        self.area = np.asarray(self.area, dtype=np.int64).reshape(n)
        self.score = np.asarray(self.score, dtype=np.float64).reshape(n)
        self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(n, 4)
        self.extra = {k: np.asarray(v, dtype=np.float64) for k, v in self.extra.items()}
        for k, v in self.extra.items():
            if len(v) != n:
                raise PriorError(f"LabelMasks.extra[{k!r}] has {len(v)} rows for {n} regions")
        if self.labels.size and (int(self.labels.min()) < 0 or int(self.labels.max()) > n):
            raise PriorError(
                f"LabelMasks.labels must lie in 0..{n} for {n} regions, got "
                f"{int(self.labels.min())}..{int(self.labels.max())}"
            )

    # -- construction
    @classmethod
    def empty(cls, shape) -> LabelMasks:
        h, w = (int(v) for v in shape)
        return cls(np.zeros((h, w), np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))

    @classmethod
    def from_labels(cls, labels, score=None) -> LabelMasks:
        """A segmenter's label image (any integers; every value is one region, none is background)
        -> regions numbered by increasing label value. ``score``: one value, or one per region."""
        from scipy import ndimage

        raw = np.asarray(labels)
        if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
            raise PriorError(f"a label image must be an (H, W) integer array, got {raw.dtype} {raw.shape}")
        values, inverse = np.unique(raw, return_inverse=True)
        lab = (inverse.reshape(raw.shape) + 1).astype(np.int32)
        del inverse
        n = len(values)
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        bbox = np.zeros((n, 4))
        for i, sl in enumerate(ndimage.find_objects(lab, max_label=n)):
            if sl is not None:
                bbox[i] = (sl[1].start, sl[0].start, sl[1].stop - 1 - sl[1].start, sl[0].stop - 1 - sl[0].start)
        scores = np.broadcast_to(np.asarray(1.0 if score is None else score, dtype=np.float64), (n,))
        return cls(lab, area, scores.copy(), bbox)

    @classmethod
    def from_masks(cls, masks, shape=None) -> LabelMasks:
        """SAM-style masks (dicts with a boolean ``segmentation``, or boolean (H, W) arrays) ->
        one label image, smaller masks on top (see the module docstring). ``shape`` is needed
        only when there are no masks."""
        masks = list(masks)
        segs: list[np.ndarray] = []
        for i, m in enumerate(masks):
            seg = np.asarray(m["segmentation"] if isinstance(m, dict) else m)
            if seg.ndim != 2 or seg.dtype != bool:
                raise PriorError(f"mask {i}: segmentation must be a boolean HxW array, got {seg.dtype} {seg.shape}")
            if segs and seg.shape != segs[0].shape:
                raise PriorError(
                    f"mask {i} has shape {seg.shape}, mask 0 has {segs[0].shape}: all masks must share one size"
                )
            segs.append(seg)
        if not segs:
            if shape is None:
                raise PriorError("no masks and no size/shape given: cannot know the prior's size")
            return cls.empty(shape)
        areas = np.asarray([int(s.sum()) for s in segs], dtype=np.int64)
        order = np.argsort(-areas, kind="stable")
        labels = np.zeros(segs[0].shape, dtype=np.int32)
        for rank, i in enumerate(order):
            labels[segs[i]] = rank + 1
        dicts = [masks[i] if isinstance(masks[i], dict) else {} for i in order]
        bbox = [d["bbox"] if "bbox" in d else _bbox(segs[i]) for d, i in zip(dicts, order, strict=True)]
        score = [float(d.get("predicted_iou", 1.0)) for d in dicts]
        extra = {}
        for name, tail in EXTRA_FIELDS.items():
            if any(name in d for d in dicts):
                default = np.zeros(tail)
                extra[name] = np.stack(
                    [
                        np.asarray(d.get(name, default), dtype=np.float64)
                        .reshape(-1)[: int(np.prod(tail, dtype=int))]
                        .reshape(tail)
                        for d in dicts
                    ]
                )
        return cls(labels, areas[order], np.asarray(score, dtype=np.float64), np.asarray(bbox, dtype=np.float64), extra)

    # -- views
    @property
    def shape(self) -> tuple[int, int]:
        h, w = self.labels.shape
        return int(h), int(w)

    def __len__(self) -> int:
        return len(self.area)

    def __repr__(self) -> str:
        return f"LabelMasks({len(self)} regions, {self.shape[0]}x{self.shape[1]})"

    def region(self, i: int) -> np.ndarray:
        """Boolean (H, W) of the pixels region ``i`` owns (after the precedence)."""
        return self.labels == i + 1

    def records(self) -> list[dict]:
        """One dict per region: ``area``, ``score``, ``bbox`` and the extra columns (no pixels)."""
        out = []
        for i in range(len(self)):
            rec = {"area": int(self.area[i]), "score": float(self.score[i]), "bbox": [float(v) for v in self.bbox[i]]}
            for k, v in self.extra.items():
                rec[k] = v[i].tolist() if v.ndim > 1 else float(v[i])
            out.append(rec)
        return out

    def resized(self, size) -> LabelMasks:
        """Nearest-neighbour resampling of pixel centres (labels stay exact; records unchanged)."""
        h, w = int(size[0]), int(size[1])
        if (h, w) == self.shape:
            return self
        H, W = self.shape
        ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
        xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
        return LabelMasks(self.labels[ys][:, xs], self.area, self.score, self.bbox, self.extra)

    def rank(self) -> np.ndarray:
        """Region indices by area, largest first (ties: lower index first)."""
        return np.argsort(-self.area, kind="stable")

    # -- storage (the cache's columns)
    def to_arrays(self) -> dict:
        arrays = {"labels": self.labels, "area": self.area, "score": self.score, "bbox": self.bbox}
        arrays.update({f"extra.{k}": v for k, v in self.extra.items()})
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict) -> LabelMasks:
        extra = {k[len("extra.") :]: v for k, v in arrays.items() if k.startswith("extra.")}
        return cls(arrays["labels"], arrays["area"], arrays["score"], arrays["bbox"], extra)


def _bbox(seg: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(seg)
    if not len(xs):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]


def as_label_masks(masks, shape=None) -> LabelMasks:
    """``LabelMasks`` as is; a list of SAM-style masks or boolean arrays; an (H, W) integer label
    image; or an (N, H, W) boolean stack -> :class:`LabelMasks`."""
    if isinstance(masks, LabelMasks):
        return masks
    if isinstance(masks, np.ndarray) and masks.ndim == 2 and np.issubdtype(masks.dtype, np.integer):
        return LabelMasks.from_labels(masks)
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        masks = list(masks)
    if isinstance(masks, (list, tuple)):
        return LabelMasks.from_masks(masks, shape=shape)
    raise PriorError(
        f"masks must be LabelMasks, a list of SAM-style masks or an (H, W) integer label image, got "
        f"{type(masks).__name__}"
    )
