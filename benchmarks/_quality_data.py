"""Data and priors for ``benchmarks/quality.py``: images, fixed noise, segment priors, caching.

Everything here is deterministic given its arguments, so every row of the prior ladder sees the
same noisy images, the same crops and the same segmentations.

Size: every split and degradation the ladder tasks read (colour, grey, Y-channel SR, pre-upsampled
SR), kept deterministic in one place so every row sees the same data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"

# Validation is carved from the *training* side (McMaster 15..18) and never from CBSD68.
VAL_MCMASTER = ("15", "16", "17", "18")


# -------------------------------------------------------------------------------------------
# images
# -------------------------------------------------------------------------------------------
def load_rgb(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 (a grey image is repeated on three channels)."""
    from skimage import io

    img = io.imread(str(path))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit image, got {img.dtype}")
    return np.ascontiguousarray(img)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    if size <= 0:
        return img
    h, w = img.shape[:2]
    s_h, s_w = min(size, h), min(size, w)
    y, x = (h - s_h) // 2, (w - s_w) // 2
    return np.ascontiguousarray(img[y : y + s_h, x : x + s_w])


def _sorted_pngs(folder: Path) -> list[Path]:
    def key(p: Path):
        return (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem)

    return sorted(folder.glob("*.png"), key=key)


@dataclass
class Splits:
    train: list[tuple[str, np.ndarray]]
    val: list[tuple[str, np.ndarray]]
    test: list[tuple[str, np.ndarray]]
    #: (training image, test image, similarity) pairs whose training side was dropped (``_dedupe``)
    dropped: list[tuple[str, str, float]] = field(default_factory=list)


def _without_test_images(train: list[tuple[str, np.ndarray]], tests: list[tuple[str, np.ndarray]]):
    """``train`` minus every image that a test image is a crop or resize of (Set14's lenna is Set12's
    08), and the pairs found: never train on a test image."""
    from _dedupe import drop_near_duplicates

    def log(msg: str) -> None:
        import sys

        print(msg, file=sys.stderr, flush=True)

    return drop_near_duplicates(train, tests, log=log)


def _require_shared(data: Path) -> None:
    for sub in ("Set14", "McMaster", "CBSD68"):
        if not (data / sub).is_dir():
            raise FileNotFoundError(f"{data / sub} is missing: point --data at the shared test-image folder")


def _train_val(data: Path, subsets: tuple[str, ...], load, *, val_crop: int, n_train: int, train_crop: int):
    """(train, val) from the shared sets ``subsets`` read by ``load``: McMaster 15-18 (centre crops of
    ``val_crop``) validate, every other image trains (the first ``n_train`` when given; centre crops of
    ``train_crop`` when given)."""
    train, val = [], []
    for sub in subsets:
        for p in _sorted_pngs(data / sub):
            if sub == "McMaster" and p.stem in VAL_MCMASTER:
                val.append((f"{sub}/{p.name}", centre_crop(load(p), val_crop)))
            else:
                train.append((f"{sub}/{p.name}", load(p)))
    if n_train:
        train = train[:n_train]
    if train_crop:
        train = [(n, centre_crop(img, train_crop)) for n, img in train]
    return train, val


def load_splits(
    data: Path, *, n_test: int = 0, test_crop: int = 160, val_crop: int = 256, n_train: int = 0, train_crop: int = 0
) -> Splits:
    """Train: Set14 + McMaster (minus the validation images); val: McMaster 15-18 centre crops;
    test: CBSD68 (first ``n_test`` images, all when 0) centre crops of ``test_crop`` (0: full)."""
    _require_shared(data)
    train, val = _train_val(
        data, ("Set14", "McMaster"), load_rgb, val_crop=val_crop, n_train=n_train, train_crop=train_crop
    )
    test_paths = _sorted_pngs(data / "CBSD68")
    if n_test:
        test_paths = test_paths[:n_test]
    test = [(f"CBSD68/{p.name}", centre_crop(load_rgb(p), test_crop)) for p in test_paths]
    train, dropped = _without_test_images(train, test)
    return Splits(train, val, test, dropped)


SR_TRAIN = ("McMaster", "CBSD68")
SR_TEST = ("Set5", "Set14")


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so both sides are multiples of ``scale`` (the SR test protocol)."""
    h, w = img.shape[:2]
    return np.ascontiguousarray(img[: h - h % scale, : w - w % scale])


def load_sr_splits(
    data: Path, *, scale: int = 4, n_test: int = 0, test_crop: int = 0, n_train: int = 0, train_crop: int = 0
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """SR x``scale``: train on McMaster + CBSD68 (HR), test on Set5 and Set14 (the field's test sets,
    never trained or tuned on). Returns ``{"train": [...], "Set5": [...], "Set14": [...]}``; every
    image is mod-cropped to a multiple of ``scale``; ``n_test``/``test_crop`` shrink the test sets
    (first N images of each, centre crop), ``n_train``/``train_crop`` the training set."""
    for sub in SR_TRAIN + SR_TEST:
        if not (data / sub).is_dir():
            raise FileNotFoundError(f"{data / sub} is missing: point --data at the shared test-image folder")
    train = [(f"{sub}/{p.name}", load_rgb(p)) for sub in SR_TRAIN for p in _sorted_pngs(data / sub)]
    if n_train:
        train = train[:n_train]
    if train_crop:
        train = [(n, centre_crop(img, train_crop)) for n, img in train]
    out = {}
    for sub in SR_TEST:
        paths = _sorted_pngs(data / sub)[: n_test or None]
        out[sub] = [(f"{sub}/{p.name}", mod_crop(centre_crop(load_rgb(p), test_crop), scale)) for p in paths]
    train, _ = _without_test_images(train, [item for sub in SR_TEST for item in out[sub]])
    out["train"] = [(n, mod_crop(img, scale)) for n, img in train]
    return out


def bicubic_lq(hr: np.ndarray, scale: int) -> np.ndarray:
    """The LQ input of bicubic SR: MATLAB ``imresize(HR, 1/scale, 'bicubic')`` rounded to 8 bits,
    as the Set5/Set14 LR files are made (``spt_adapter.data.images.imresize_bicubic``)."""
    from spt_adapter.data.images import imresize_bicubic

    return imresize_bicubic(hr, scale=1.0 / scale)


SR_DEGRADATIONS = ("bicubic", "bd")


def bd_lq(hr: np.ndarray, scale: int) -> np.ndarray:
    """The "BD" degradation of the SR literature (RDN, RCAN): blur the HR image with a 7x7 Gaussian
    kernel of sigma 1.6, then bicubic-downsample by ``scale``; 8-bit. A backbone trained on plain
    bicubic LQ never saw this blur. The product's ``--task sr:<scale>:bd``
    (:func:`spt_adapter.data.degradations.bd_downsample`), so both degrade images the same way."""
    from spt_adapter.data.degradations import bd_downsample

    return bd_downsample(hr, scale)


def sr_lq(hr: np.ndarray, scale: int, degradation: str = "bicubic") -> np.ndarray:
    if degradation == "bicubic":
        return bicubic_lq(hr, scale)
    if degradation == "bd":
        return bd_lq(hr, scale)
    raise ValueError(f"unknown SR degradation {degradation!r}; choose one of {', '.join(SR_DEGRADATIONS)}")


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Clean uint8 HxWx3 -> float32 HxWx3 in [0,1] scale plus N(0, sigma/255), not clipped (the
    field's convention); the noise is fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    clean = img.astype(np.float32) / 255.0
    return (clean + rng.normal(0.0, sigma / 255.0, clean.shape).astype(np.float32)).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_seed(name: str, sigma: float, realisation: int, base: int) -> int:
    h = hashlib.sha256(f"{name}|{sigma}|{realisation}|{base}".encode()).digest()
    return int.from_bytes(h[:4], "little")


# -------------------------------------------------------------------------------------------
# segment priors
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segmenter:
    """A classical segmenter, sized by region area so that crops and full images get regions of
    the same scale: ``slic`` with ``region_px`` pixels per superpixel (n_segments = area /
    region_px) and ``compactness``; ``felzenszwalb`` with ``scale``/``sigma``/``min_size``."""

    method: str = "slic"
    region_px: int = 1600
    compactness: float = 10.0
    scale: float = 300.0
    sigma: float = 1.0  # Gaussian pre-smoothing; without it SLIC collapses on noisy inputs
    min_size: int = 50

    @classmethod
    def parse(cls, text: str) -> Segmenter:
        """``slic:region_px=1600,compactness=10`` or ``felzenszwalb:scale=500,min_size=200``."""
        method, _, rest = text.partition(":")
        kw: dict[str, Any] = {}
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in {"region_px", "compactness", "scale", "sigma", "min_size"}:
                raise ValueError(f"unknown segmenter setting {key!r} in {text!r}")
            kw[key] = int(value) if key in {"region_px", "min_size"} else float(value)
        if method not in {"slic", "felzenszwalb"}:
            raise ValueError(f"segmenter must be slic or felzenszwalb, got {method!r}")
        return cls(method=method, **kw)

    def label(self) -> str:
        if self.method == "slic":
            return f"slic:region_px={self.region_px},compactness={self.compactness:g},sigma={self.sigma:g}"
        return f"felzenszwalb:scale={self.scale:g},sigma={self.sigma:g},min_size={self.min_size}"

    def provider_kwargs(self, shape: tuple[int, int]) -> dict[str, Any]:
        if self.method == "slic":
            n = max(2, int(round(shape[0] * shape[1] / self.region_px)))
            return {"n_segments": n, "compactness": self.compactness, "sigma": self.sigma}
        return {"scale": self.scale, "sigma": self.sigma, "min_size": self.min_size}


def _label_map_local(img: np.ndarray, seg: Segmenter) -> np.ndarray:
    """Fallback when ``spt_adapter.prior`` is not importable: the same label encoding (one value
    per region in (0,1], larger regions first) straight from scikit-image."""
    from skimage import segmentation

    kw = seg.provider_kwargs(img.shape[:2])
    if seg.method == "slic":
        labels = segmentation.slic(img, start_label=0, channel_axis=-1, **kw)
    else:
        labels = segmentation.felzenszwalb(img, channel_axis=-1, **kw)
    ids, inverse, counts = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    k = len(ids)
    values = (k - rank).astype(np.float32) / k  # largest region -> 1.0
    return values[inverse].reshape(labels.shape).astype(np.float32)


def prior_code_path() -> str:
    try:
        from spt_adapter.prior import ClassicalMaskProvider, encode_masks  # noqa: F401
    except Exception:
        return "scikit-image fallback (spt_adapter.prior not importable)"
    return "spt_adapter.prior.ClassicalMaskProvider + encode_masks(kind='label')"


def label_map(img: np.ndarray, seg: Segmenter) -> np.ndarray:
    """HxW float32 label map of ``img`` (HxWx3 uint8) through spt_adapter.prior when present."""
    try:
        from spt_adapter.prior import ClassicalMaskProvider, encode_masks
    except Exception:
        return _label_map_local(img, seg)
    provider = ClassicalMaskProvider(method=seg.method, **seg.provider_kwargs(img.shape[:2]))
    if img.ndim == 3 and img.shape[2] == 1:  # a grey image is segmented as grey-on-three-channels
        img = np.repeat(img, 3, axis=2)
    enc = encode_masks(provider.generate(img), kind="label")
    return np.asarray(enc, dtype=np.float32)[0]


def sam_label_map(img: np.ndarray, provider) -> np.ndarray:
    from spt_adapter.prior import encode_masks

    return np.asarray(encode_masks(provider.generate(img), kind="label"), dtype=np.float32)[0]


#: processes that segment uncached images in :func:`build_priors` / :func:`build_sr_priors`
#: (``benchmarks/quality.py --jobs``); 1 = in this process, one image after the other
PRIOR_WORKERS = 1


def _label_map_job(item: tuple[np.ndarray, Segmenter]) -> np.ndarray:
    return label_map(*item)


def prefetch(cache: LabelCache, ident: str, seg: Segmenter, images: list[np.ndarray]) -> None:
    """Fill ``cache`` with the label maps of ``images`` (the ones it lacks) in ``PRIOR_WORKERS``
    processes; the maps are the same as one process computes (the segmenters are deterministic)."""
    missing = [img for img in images if not cache.path(img, ident).exists()]
    if not missing:
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(PRIOR_WORKERS, mp_context=mp.get_context("spawn")) as pool:
        for img, labels in zip(
            missing, pool.map(_label_map_job, [(img, seg) for img in missing], chunksize=4), strict=True
        ):
            cache.get(img, ident, lambda _x, labels=labels: labels)


class LabelCache:
    """On-disk cache of label maps keyed by sha256(image bytes) + segmenter identity."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, img: np.ndarray, ident: str) -> Path:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(img).tobytes())
        h.update(repr(img.shape).encode())
        h.update(ident.encode())
        return self.root / f"{h.hexdigest()[:40]}.npy"

    def get(self, img: np.ndarray, ident: str, compute) -> np.ndarray:
        path = self.path(img, ident)
        if path.exists():
            try:
                return np.load(path)
            except Exception:
                path.unlink(missing_ok=True)
        out = compute(img)
        # a name of this process's own: two benchmark runs sharing the cache write the same entries
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        try:
            np.save(tmp, out)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return out


@dataclass
class PriorSet:
    """For each image in a split: the noisy float image(s) and the label maps of each kind."""

    clean: list[np.ndarray]  # HxWx3 float32 [0,1]
    noisy: list[list[np.ndarray]]  # [image][realisation] HxWx3 float32
    lq_prior: list[list[np.ndarray]] = field(default_factory=list)  # [image][realisation] HxW
    oracle_prior: list[np.ndarray] = field(default_factory=list)  # [image] HxW
    sam_prior: list[list[np.ndarray]] = field(default_factory=list)
    scale: int = 1  # super-resolution factor: ``clean`` is ``scale`` times the size of ``noisy``
    prior_channels: int = 1  # maps are HxW while 1, HxWxC after :func:`apply_encoding` with C > 1
    border: int = 0  # pixels cropped from every edge before PSNR (the SR protocol on pre-upsampled inputs)
    names: list[str] = field(default_factory=list)  # [image] the file names, for per-image scores


def build_priors(
    images: list[tuple[str, np.ndarray]],
    *,
    sigma: float,
    realisations: int,
    noise_base: int,
    seg: Segmenter,
    cache: LabelCache,
    sam=None,
    want_oracle: bool = True,
    segment_view=None,
    jpeg: int = 0,
) -> PriorSet:
    """Noisy realisations of ``images`` and their priors. The LQ prior segments the 8-bit noisy image,
    or ``segment_view(noisy)`` (an HxWx3 uint8 image made from the noisy one alone, e.g. the frozen
    backbone's restoration of it) when given; SAM (row f) always sees the noisy input."""
    ident = json.dumps({"segmenter": seg.label(), "code": prior_code_path()}, sort_keys=True)
    if PRIOR_WORKERS > 1 and segment_view is None:  # segment every image not yet cached, in parallel
        todo = [
            to_uint8(
                add_noise(
                    jpeg_compress(img, jpeg) if jpeg else img, sigma, image_seed(name, sigma, r, noise_base) + jpeg
                )
            )
            for name, img in images
            for r in range(realisations)
        ]
        prefetch(cache, ident, seg, todo + ([img for _, img in images] if want_oracle else []))
    clean, noisy, lq, oracle, sam_p = [], [], [], [], []
    for name, img in images:
        clean.append(img.astype(np.float32) / 255.0)
        reals, priors, sams = [], [], []
        for r in range(realisations):
            n = add_noise(
                jpeg_compress(img, jpeg) if jpeg else img, sigma, image_seed(name, sigma, r, noise_base) + jpeg
            )
            reals.append(n)
            u8 = to_uint8(n)
            view = u8 if segment_view is None else segment_view(n)
            priors.append(cache.get(view, ident, lambda x: label_map(x, seg)))
            if sam is not None:
                sams.append(cache.get(u8, json.dumps(sam.identity(), sort_keys=True), lambda x: sam_label_map(x, sam)))
        noisy.append(reals)
        lq.append(priors)
        sam_p.append(sams)
        if want_oracle:
            oracle.append(cache.get(img, ident, lambda x: label_map(x, seg)))
    return PriorSet(clean, noisy, lq, oracle, sam_p, names=[name for name, _ in images])


def encode_label_map(labels: np.ndarray, encoding: str) -> np.ndarray:
    """Re-encode a cached HxW label map (one value per region) with ``spt_adapter.prior.encode_masks``:
    each region becomes one boolean mask, so ``boundary`` and ``onehot:K`` are the library's own
    encodings of the same segmentation. ``label`` returns the map unchanged. Returns HxW for one
    channel, HxWxC otherwise."""
    if encoding == "label":
        return labels
    from spt_adapter.prior import encode_masks

    masks = [{"segmentation": labels == v} for v in np.unique(labels)]
    enc = np.asarray(encode_masks(masks, kind=encoding, shape=labels.shape), dtype=np.float32)
    return enc[0] if enc.shape[0] == 1 else np.ascontiguousarray(enc.transpose(1, 2, 0))


def apply_encoding(pset: PriorSet, encoding: str) -> PriorSet:
    """Every prior map of ``pset`` (LQ, oracle, SAM) re-encoded with :func:`encode_label_map`."""
    if encoding == "label":
        return pset
    from spt_adapter.prior.encode import encoding_channels

    enc = lambda m: encode_label_map(m, encoding)  # noqa: E731
    return PriorSet(
        pset.clean,
        pset.noisy,
        [[enc(m) for m in ms] for ms in pset.lq_prior],
        [enc(m) for m in pset.oracle_prior],
        [[enc(m) for m in ms] for ms in pset.sam_prior],
        scale=pset.scale,
        prior_channels=encoding_channels(encoding),
        border=pset.border,
        names=pset.names,
    )


def bicubic_upsample_psnr(pset: PriorSet) -> float:
    """Mean Y-channel PSNR of plain bicubic upsampling of the LQ images (MATLAB ``imresize`` x scale):
    the field's reference row (Set5 x4: 28.42 dB), a check that LQ and metric follow the protocol."""
    from spt_adapter.data.images import imresize_bicubic
    from spt_adapter.inference.metrics import metric_settings, psnr

    kw = metric_settings(f"sr:{pset.scale}")
    scores = []
    for hr, (lq,) in zip(pset.clean, pset.noisy, strict=True):
        up = imresize_bicubic(to_uint8(lq), scale=float(pset.scale))
        scores.append(float(psnr(up, to_uint8(hr), **kw)))
    return float(np.mean(scores))


def hr_segmenter(seg: Segmenter, scale: int) -> Segmenter:
    """The segmenter for the oracle's HR image: the same method, with its area settings multiplied
    by ``scale``² so that its regions cover the same part of the picture as on the LQ image."""
    from dataclasses import replace

    return replace(seg, region_px=seg.region_px * scale * scale, min_size=seg.min_size * scale * scale)


def nearest_down(labels: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour downsampling of a label map by ``scale`` (the pixel nearest each LQ centre)."""
    return np.ascontiguousarray(labels[scale // 2 :: scale, scale // 2 :: scale])


def build_sr_priors(
    images: list[tuple[str, np.ndarray]],
    *,
    scale: int,
    seg: Segmenter,
    cache: LabelCache,
    sam=None,
    want_oracle: bool = True,
    degradation: str = "bicubic",
) -> PriorSet:
    """SR x``scale``: ``noisy`` holds the one LQ image (``degradation``: bicubic downsample, or "bd"
    blur + bicubic, both deterministic);
    the LQ prior segments the LQ image; the oracle segments the HR image (:func:`hr_segmenter`) and
    nearest-downsamples the label map to the LQ size. (Segmenting the HR image *downsampled the same
    way* would be the LQ image itself, so it could not serve as an oracle.)"""
    ident = json.dumps({"segmenter": seg.label(), "code": prior_code_path()}, sort_keys=True)
    seg_hr = hr_segmenter(seg, scale)
    ident_hr = json.dumps({"segmenter": seg_hr.label(), "code": prior_code_path()}, sort_keys=True)
    out = PriorSet([], [], [], [], [], scale=scale, names=[name for name, _ in images])
    if PRIOR_WORKERS > 1 and cache is not None:
        ok = [hr for _, hr in images if not (hr.shape[0] % scale or hr.shape[1] % scale)]
        prefetch(cache, ident, seg, [sr_lq(hr, scale, degradation) for hr in ok])
        if want_oracle:
            prefetch(cache, ident_hr, seg_hr, ok)
    for _, hr in images:
        if hr.shape[0] % scale or hr.shape[1] % scale:
            raise ValueError(f"HR image {hr.shape[:2]} is not a multiple of the scale {scale}: mod-crop it first")
        lq = sr_lq(hr, scale, degradation)
        out.clean.append(hr.astype(np.float32) / 255.0)
        out.noisy.append([lq.astype(np.float32) / 255.0])
        out.lq_prior.append([cache.get(lq, ident, lambda x: label_map(x, seg))])
        out.sam_prior.append(
            [cache.get(lq, json.dumps(sam.identity(), sort_keys=True), lambda x: sam_label_map(x, sam))]
            if sam is not None
            else []
        )
        if want_oracle:
            out.oracle_prior.append(nearest_down(cache.get(hr, ident_hr, lambda x: label_map(x, seg_hr)), scale))
    return out


# -------------------------------------------------------------------------------------------
# grey images and KAIR's pretrained DnCNN (task "kair")
# -------------------------------------------------------------------------------------------
def load_grey(path: Path) -> np.ndarray:
    """An image as HxWx1 uint8 luma, as KAIR's ``imread_uint(path, n_channels=1)`` reads it
    (``cv2.imread(path, 0)``: BT.601 luma for colour files, the pixels themselves for grey ones)."""
    try:
        import cv2
    except ImportError:  # PIL's "L" is the same BT.601 weights (rounding may differ by 1 on a few pixels)
        from PIL import Image

        return np.ascontiguousarray(np.asarray(Image.open(path).convert("L"))[..., None])
    img = cv2.imread(str(path), 0)
    if img is None:
        raise FileNotFoundError(f"{path}: cannot be read as an image")
    return np.ascontiguousarray(img[..., None])


def load_grey_splits(
    data: Path, set12: Path, *, n_test: int = 0, val_crop: int = 256, n_train: int = 0, train_crop: int = 0
) -> Splits:
    """Grey splits for the KAIR DnCNN task: train on the luma of Set14 + McMaster (minus the
    validation images) + CBSD68; validation McMaster 15-18 (256 px centre crops); test Set12 (full)."""
    _require_shared(data)
    if not set12.is_dir():
        raise FileNotFoundError(f"{set12} is missing: point --kair-root at a KAIR checkout (testsets/set12)")
    train, val = _train_val(
        data, ("Set14", "McMaster", "CBSD68"), load_grey, val_crop=val_crop, n_train=n_train, train_crop=train_crop
    )
    test = [(f"set12/{p.name}", load_grey(p)) for p in _sorted_pngs(set12)[: n_test or None]]
    train, dropped = _without_test_images(train, test)
    return Splits(train, val, test, dropped)


def jpeg_compress(img: np.ndarray, quality: int) -> np.ndarray:
    """``img`` (HxWxC uint8, C = 1 or 3) through a JPEG encoder at ``quality`` and back (PIL/libjpeg,
    4:2:0 chroma for colour), uint8 of the same shape: the product's ``--task jpeg:<quality>``
    (:func:`spt_adapter.data.degradations.jpeg`)."""
    from spt_adapter.data.degradations import jpeg

    return jpeg(img, quality)


def kair_noise(img: np.ndarray, sigma: float) -> np.ndarray:
    """KAIR's ``main_test_dncnn.py`` degradation: ``np.random.seed(0)`` before every image, then
    ``uint2single(img) + np.random.normal(0, sigma/255, img.shape)`` kept float32, not clipped."""
    noisy = np.float32(img / 255.0)
    np.random.seed(seed=0)
    noisy += np.random.normal(0, sigma / 255.0, noisy.shape)
    return noisy


# -------------------------------------------------------------------------------------------
# SR on the bicubic-upsampled luma (cszn/DnCNN's DnCNN-3, task "dncnn3bd")
# -------------------------------------------------------------------------------------------
def load_y(path: Path) -> np.ndarray:
    """An image as HxWx1 uint8 Y (BT.601, MATLAB ``rgb2ycbcr``, 16-235), the channel the SR literature
    scores; a grey file is its own Y (DnCNN-3's demo scores Set5/Set14 the same way)."""
    from spt_adapter.inference.metrics import rgb_to_y

    img = load_rgb(path)
    if np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        return np.ascontiguousarray(img[..., :1])
    return np.clip(np.round(rgb_to_y(img)), 0, 255).astype(np.uint8)


def load_y_sr_splits(
    data: Path,
    train400: Path | None,
    *,
    scale: int = 4,
    n_test: int = 0,
    val_crop: int = 256,
    n_train: int = 0,
    train_crop: int = 0,
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Y-channel SR splits: train on Train400 (cszn/DnCNN's 400 grey 180x180 images, when given) and the
    Y of McMaster (minus 15-18) + CBSD68; validate on McMaster 15-18 (centre crops); test Set5/Set14
    (never trained or tuned on; training images that are copies of them are dropped). Every image is
    mod-cropped to a multiple of ``scale``."""
    _require_shared(data)
    train, val = _train_val(data, ("McMaster", "CBSD68"), load_y, val_crop=val_crop, n_train=0, train_crop=0)
    if train400 is not None:
        if not train400.is_dir():
            raise FileNotFoundError(f"{train400} is missing: point --dncnn-root at a cszn/DnCNN checkout")
        train = [(f"Train400/{p.name}", load_y(p)) for p in _sorted_pngs(train400)] + train
    if n_train:
        train = train[:n_train]
    if train_crop:
        train = [(n, centre_crop(img, train_crop)) for n, img in train]
    out = {"val": [(n, mod_crop(img, scale)) for n, img in val]}
    for sub in SR_TEST:
        paths = _sorted_pngs(data / sub)[: n_test or None]
        out[sub] = [(f"{sub}/{p.name}", mod_crop(load_y(p), scale)) for p in paths]
    train, _ = _without_test_images(train, [item for sub in SR_TEST for item in out[sub]])
    out["train"] = [(n, mod_crop(img, scale)) for n, img in train]
    return out


def build_upsampled_sr_priors(
    images: list[tuple[str, np.ndarray]],
    *,
    scale: int,
    seg: Segmenter,
    cache: LabelCache,
    degradation: str = "bicubic",
    want_oracle: bool = True,
) -> PriorSet:
    """SR x``scale`` for a network that works at the HR size (DnCNN-3): the LQ image (``degradation``
    of the HR Y, 8-bit) is bicubic-upsampled back to the HR size in floating point (MATLAB
    ``imresize``), which is the network's input; the LQ prior segments that upsampled input, the oracle
    the HR image. The set has scale 1 and a ``scale``-pixel border left out of the PSNR."""
    from spt_adapter.data.images import imresize_bicubic

    ident = json.dumps({"segmenter": seg.label(), "code": prior_code_path()}, sort_keys=True)
    out = PriorSet([], [], [], [], [], scale=1, border=scale, names=[name for name, _ in images])
    for _, hr in images:
        if hr.shape[0] % scale or hr.shape[1] % scale:
            raise ValueError(f"HR image {hr.shape[:2]} is not a multiple of the scale {scale}: mod-crop it first")
        lq = sr_lq(hr, scale, degradation)
        up = imresize_bicubic(lq.astype(np.float64) / 255.0, size=hr.shape[:2]).astype(np.float32)
        up = up.reshape(hr.shape)
        out.clean.append(hr.astype(np.float32) / 255.0)
        out.noisy.append([up])
        out.lq_prior.append([cache.get(to_uint8(up), ident, lambda x: label_map(x, seg))])
        out.sam_prior.append([])
        if want_oracle:
            out.oracle_prior.append(cache.get(hr, ident, lambda x: label_map(x, seg)))
    return out
