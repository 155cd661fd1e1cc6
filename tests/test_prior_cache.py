import multiprocessing as mp
import warnings

import numpy as np
import pytest

from spt_adapter.prior import ClassicalMaskProvider, PriorCache, encode_masks, image_key


class CountingSlic(ClassicalMaskProvider):
    """The real SLIC provider, counting how often it runs."""

    def __init__(self, **kw):
        super().__init__("slic", **kw)
        self.calls = 0

    def generate(self, image):
        self.calls += 1
        return super().generate(image)


def _img(seed=0, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_hit_miss_and_reencode(tmp_path):
    cache, prov, img = PriorCache(tmp_path), CountingSlic(n_segments=12), _img()
    a = cache.get_or_compute(img, prov)
    b = cache.get_or_compute(img, prov)
    assert prov.calls == 1 and cache.stats["prior_hits"] == 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, encode_masks(prov.generate(img), "boundary"))  # the default: DEFAULT_ENCODING
    assert (
        cache.contains(img, prov) and cache.contains(img, prov, "boundary") and not cache.contains(img, prov, "label")
    )
    prov.calls = 0
    oh = cache.get_or_compute(img, prov, "onehot:3")  # new encoding: masks reused, SAM/SLIC not rerun
    assert oh.shape == (3, 40, 48) and prov.calls == 0 and cache.stats["mask_hits"] == 1
    assert cache.contains(img, prov, "onehot:3") and not cache.contains(img, prov, "label")
    # a fresh cache object on the same folder reuses everything
    fresh = PriorCache(tmp_path)
    np.testing.assert_array_equal(fresh.get_or_compute(img, prov), a)
    assert prov.calls == 0


def test_keys_depend_on_pixels_settings_and_encoding(tmp_path):
    cache, img = PriorCache(tmp_path), _img()
    p1, p2 = ClassicalMaskProvider("slic", n_segments=12), ClassicalMaskProvider("slic", n_segments=13)
    assert cache.mask_key(img, p1) != cache.mask_key(img, p2)
    other = img.copy()
    other[0, 0, 0] ^= 1
    assert image_key(img) != image_key(other)
    assert image_key(img) != image_key(img.reshape(48, 40, 3))
    assert cache.prior_key(img, p1, "label") != cache.prior_key(img, p1, "boundary")
    # the same pixels given as float are the same image
    assert image_key(img) == image_key(img.astype(np.float64) / 255.0)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "swap"])
def test_corrupt_entry_is_recomputed_with_warning(tmp_path, damage):
    cache, prov, img = PriorCache(tmp_path), CountingSlic(n_segments=12), _img()
    good = cache.get_or_compute(img, prov)
    entry = next((tmp_path / "priors").rglob("*.sptc"))
    masks_entry = next((tmp_path / "masks").rglob("*.sptc"))
    data = entry.read_bytes()
    if damage == "flip":
        entry.write_bytes(data[:-20] + bytes([data[-20] ^ 0xFF]) + data[-19:])
    elif damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        entry.write_bytes(b"")
    else:  # a valid entry for another key copied over this one
        cache.get_or_compute(_img(1), prov)
        other = [p for p in (tmp_path / "priors").rglob("*.sptc") if p != entry][0]
        entry.write_bytes(other.read_bytes())
    masks_entry.write_bytes(masks_entry.read_bytes()[:10])  # masks too: the provider must rerun
    prov.calls = 0
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = PriorCache(tmp_path).get_or_compute(img, prov)
    np.testing.assert_array_equal(again, good)
    assert prov.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(PriorCache(tmp_path).get_or_compute(img, prov), good)


def _worker(root, seeds, q):
    cache = PriorCache(root)
    prov = ClassicalMaskProvider("slic", n_segments=12)
    out = {}
    for s in seeds:
        out[s] = cache.get_or_compute(_img(s), prov).sum()
    q.put(out)


def test_concurrent_processes_same_keys(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    seeds = [0, 1, 2, 3]
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), seeds[i:] + seeds[:i], q)) for i in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in results[1:]:
        assert r == results[0]
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary files left behind
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every entry verifies
        cache = PriorCache(tmp_path)
        prov = CountingSlic(n_segments=12)
        for s in seeds:
            assert cache.get_or_compute(_img(s), prov).sum() == results[0][s]
        assert prov.calls == 0


def test_old_format_entry_is_recomputed_with_one_warning(tmp_path):
    """A real format-1 masks entry (tests/fixtures/make_prior_v1_fixture.py, written by the code of
    commit b6774d9) put where the cache looks for this image's masks: one RuntimeWarning naming
    the format, the provider reruns, the entry is rewritten in format 2; no crash."""
    import json
    from pathlib import Path

    from PIL import Image

    from spt_adapter.prior.cache import FORMAT, MAGIC

    fixture = Path(__file__).resolve().parent / "fixtures" / "prior_v1"
    with np.load(fixture / "expected.npz") as z:
        meta = json.loads(z["meta"].tobytes())
    img = np.ascontiguousarray(
        np.asarray(Image.open(fixture / "image.png").convert("RGB"))
    )  # meta["crop"] of meta["image"]
    assert img.shape[:2] == tuple(b - a for a, b in meta["crop"])
    cache, prov = PriorCache(tmp_path), CountingSlic(**meta["settings"])
    old = (fixture / "masks.sptc").read_bytes()
    assert old.startswith(b"SPTPRIOR1\n") and FORMAT == 2
    path = cache._path("masks", cache.mask_key(img, prov))
    path.parent.mkdir(parents=True)
    path.write_bytes(old)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prior = cache.get_or_compute(img, prov, "label")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "cache format 1" in messages[0] and "recomputing" in messages[0], messages
    assert "\n" not in messages[0]
    assert prov.calls == 1 and cache.stats["old_format"] == 1 and cache.stats["corrupt"] == 0
    assert path.read_bytes().startswith(MAGIC)
    np.testing.assert_array_equal(prior, encode_masks(prov.generate(img), "label"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(
            PriorCache(tmp_path).get_or_compute(img, prov, "boundary"), encode_masks(prov.generate(img), "boundary")
        )


class WrongSize(ClassicalMaskProvider):
    """SLIC on the image, but the label image it returns lost its last row."""

    def __init__(self):
        super().__init__("slic", n_segments=8)

    def generate(self, image):
        from spt_adapter.prior import LabelMasks

        return LabelMasks.from_labels(self.segment(image)[:-1])


class Raising(ClassicalMaskProvider):
    def __init__(self):
        super().__init__("slic", n_segments=8)

    def generate(self, image):
        raise ValueError("segmenter exploded")


def test_masks_of_the_wrong_size_are_refused_before_caching(tmp_path):
    from spt_adapter.errors import ProviderError

    cache = PriorCache(tmp_path)
    with pytest.raises(ProviderError, match=r"returned 39x48 masks for a 40x48 image.*nothing was cached"):
        cache.get_or_compute(_img(), WrongSize())
    assert not list(tmp_path.rglob("*.sptc"))


def test_a_provider_raising_is_named_and_the_cache_stays_usable(tmp_path):
    from spt_adapter.errors import ProviderRunError

    cache = PriorCache(tmp_path)
    with pytest.raises(
        ProviderRunError, match=r"provider ClassicalMaskProvider.*failed: ValueError: segmenter exploded"
    ):
        cache.get_or_compute(_img(), Raising())
    assert not list(tmp_path.rglob("*.sptc"))
    assert cache.get_or_compute(_img(), ClassicalMaskProvider("slic", n_segments=8)).shape == (1, 40, 48)


def test_label_image_entries_roundtrip_records(tmp_path):
    from spt_adapter.prior import LabelMasks

    cache, prov = PriorCache(tmp_path), CountingSlic(n_segments=12)
    made = cache.get_masks(_img(), prov)
    again = PriorCache(tmp_path).get_masks(_img(), prov)
    assert isinstance(again, LabelMasks) and prov.calls == 1
    np.testing.assert_array_equal(again.labels, made.labels)
    assert again.records() == made.records()


def test_compute_prior_goes_through_the_cache_only_when_given_one(tmp_path):
    """compute_prior: the cached path and the uncached one give the same float32 prior."""
    from spt_adapter.prior import ClassicalMaskProvider, PriorCache, compute_prior

    image = (np.random.default_rng(3).random((20, 24, 3)) * 255).astype(np.uint8)
    provider = ClassicalMaskProvider("slic", n_segments=6)
    cache = PriorCache(tmp_path / "c")
    cached = compute_prior(image, provider, "boundary", cache)
    assert cache.stats["computed"] == 1 and list((tmp_path / "c").rglob("*.sptc"))
    uncached = compute_prior(image, provider, "boundary")
    assert uncached.dtype == np.float32 and uncached.shape == (1, 20, 24)
    np.testing.assert_array_equal(uncached, cached)
