"""Near-duplicate check between training and test images of ``benchmarks/quality.py``.

The public sets overlap: Set12 (KAIR's and DnCNN's grey test set) holds grey copies, crops and
half-size versions of Set14's lenna, barbara, man, pepper(s) and monarch. A ladder that trains on
Set14 and tests on Set12 would train on its test images. This check finds such pairs in every
split before anything trains, so the data builders can drop the training side.

How: both images become luma, shrunk so that the test image is ``SIDE`` pixels on its longer side;
the training image is shrunk by the same factor times each ratio in ``RATIOS`` (a test image may be
a resized copy), and the test image is slid over it (``skimage.feature.match_template``, normalised
cross-correlation). A peak correlation of at least ``THRESHOLD`` anywhere means the test image is
(a crop of, a resize of) the training image. Natural images of different scenes stay far below it.
"""

from __future__ import annotations

import numpy as np

SIDE = 96
THRESHOLD = 0.92
RATIOS = (1.0, 0.75, 2 / 3, 0.5, 1 / 3, 0.25)


def _luma(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        return img
    if img.shape[2] == 1:
        return img[..., 0]
    return img[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _shrink(img: np.ndarray, factor: float) -> np.ndarray:
    from skimage.transform import resize

    h, w = img.shape
    return resize(
        img, (max(1, round(h * factor)), max(1, round(w * factor))), anti_aliasing=True, preserve_range=True
    ).astype(np.float32)


def similarity(train: np.ndarray, test: np.ndarray) -> float:
    """The highest normalised correlation of ``test`` (or a resize of it, by ``RATIOS``) placed anywhere
    inside ``train``: near 1 when ``test`` is a crop or resize of ``train``."""
    from skimage.feature import match_template

    a, b = _luma(train), _luma(test)
    factor = SIDE / max(b.shape)
    small_test = _shrink(b, factor)
    if small_test.std() < 1e-3:  # a flat picture matches anything: not a duplicate check it can pass
        return 0.0
    best = 0.0
    for ratio in RATIOS:
        small_train = _shrink(a, factor * ratio)  # the test image is the training image resized by ratio
        if small_train.shape[0] < small_test.shape[0] or small_train.shape[1] < small_test.shape[1]:
            continue
        ncc = match_template(small_train, small_test)
        # windows with almost no texture make the normalised correlation meaningless (it can exceed 1)
        textured = _window_std(small_train, small_test.shape) >= 0.25 * small_test.std()
        if textured.any():
            best = max(best, float(ncc[textured].max()))
    return best


def _window_std(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The standard deviation of every ``shape`` window of ``img`` (the positions match_template scores)."""
    h, w = shape

    def box(a: np.ndarray) -> np.ndarray:  # the sum over every h x w window, from an integral image
        c = np.pad(a.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]

    n = h * w
    mean = box(img) / n
    return np.sqrt(np.maximum(box(img * img.astype(np.float64)) / n - mean * mean, 0.0))


def near_duplicates(
    train: list[tuple[str, np.ndarray]], tests: list[tuple[str, np.ndarray]], threshold: float = THRESHOLD
) -> list[tuple[str, str, float]]:
    """Every (train name, test name, similarity) pair at or above ``threshold``."""
    return [(tn, sn, s) for tn, timg in train for sn, simg in tests if (s := similarity(timg, simg)) >= threshold]


def drop_near_duplicates(
    train: list[tuple[str, np.ndarray]], tests: list[tuple[str, np.ndarray]], log=None
) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str, float]]]:
    """``train`` without the images that are near-duplicates of a test image, and the pairs found."""
    pairs = near_duplicates(train, tests)
    dropped = {tn for tn, _, _ in pairs}
    if pairs and log is not None:
        log(
            "training images dropped as near-duplicates of test images: "
            + ", ".join(f"{tn} ~ {sn} ({s:.3f})" for tn, sn, s in pairs)
        )
    return [(n, img) for n, img in train if n not in dropped], pairs
