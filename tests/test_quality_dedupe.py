"""benchmarks/_dedupe.py: a training image that a test image is a crop, resize or grey copy of is
found and dropped by the quality benchmark's data builders (never train on a test image)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def qd():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _dedupe
        import _quality_data

        yield _quality_data, _dedupe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _grey(img: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(img).convert("L"))[..., None]


def test_crops_resizes_and_grey_copies_are_found(qd):
    _, dd = qd
    astronaut, coffee, chelsea = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    crop = astronaut[40:296, 100:356]  # a 256 px crop
    half = np.asarray(Image.fromarray(astronaut).resize((256, 256), Image.BICUBIC))  # a half-size copy
    tests = [("crop", _grey(crop)), ("half", _grey(half)), ("coffee-crop", coffee[50:300, 100:400])]
    train = [("astronaut", astronaut), ("chelsea", chelsea), ("coffee", coffee)]
    pairs = {(tn, sn) for tn, sn, _ in dd.near_duplicates(train, tests)}
    assert pairs == {("astronaut", "crop"), ("astronaut", "half"), ("coffee", "coffee-crop")}
    kept, dropped = dd.drop_near_duplicates(train, tests)
    assert [n for n, _ in kept] == ["chelsea"] and len(dropped) == 3


def test_different_pictures_and_flat_images_are_not_duplicates(qd):
    _, dd = qd
    pictures = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    for i, a in enumerate(pictures):
        for j, b in enumerate(pictures):
            if i != j:
                assert dd.similarity(a, b[:200, :200]) < dd.THRESHOLD
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert dd.similarity(pictures[0], flat) == 0.0


def test_grey_splits_drop_a_training_copy_of_a_test_image(qd, tmp_path):
    quality_data, _ = qd
    pics = {
        "astronaut": skdata.astronaut(),
        "coffee": skdata.coffee(),
        "chelsea": skdata.chelsea(),
        "rocket": skdata.rocket(),
    }
    for sub in ("Set14", "McMaster", "CBSD68"):
        (tmp_path / "data" / sub).mkdir(parents=True)
    Image.fromarray(pics["astronaut"]).save(tmp_path / "data" / "Set14" / "astronaut.png")
    Image.fromarray(pics["coffee"]).save(tmp_path / "data" / "Set14" / "coffee.png")
    Image.fromarray(pics["chelsea"]).save(tmp_path / "data" / "McMaster" / "1.png")
    Image.fromarray(pics["rocket"][:300, :300]).save(tmp_path / "data" / "McMaster" / "15.png")  # validation
    Image.fromarray(pics["rocket"]).save(tmp_path / "data" / "CBSD68" / "0000.png")
    set12 = tmp_path / "set12"
    set12.mkdir()
    Image.fromarray(_grey(pics["astronaut"][:256, :256])[..., 0]).save(set12 / "08.png")  # Set14 lenna ~ Set12 08
    splits = quality_data.load_grey_splits(tmp_path / "data", set12)
    assert [n for n, _ in splits.train] == ["Set14/coffee.png", "McMaster/1.png", "CBSD68/0000.png"]
    assert [(t, s) for t, s, _ in splits.dropped] == [("Set14/astronaut.png", "set12/08.png")]
