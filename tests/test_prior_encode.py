import json
from pathlib import Path

import numpy as np
import pytest

from spt_adapter.errors import PriorError
from spt_adapter.prior import LabelMasks, encode_masks, encoding_channels, parse_encoding

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "prior_v1" / "expected.npz"


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return {"segmentation": m, "area": int(m.sum())}


def _masks():
    # big (area 48), medium overlapping it (16), small inside medium (4)
    return [_mask(8, 8, 3, 5, 3, 5), _mask(8, 8, 0, 6, 0, 8), _mask(8, 8, 2, 6, 2, 6)]


def test_label_values_order_and_overlap():
    enc = encode_masks(_masks(), kind="label")
    assert enc.shape == (1, 8, 8) and enc.dtype == np.float32
    lab = enc[0]
    assert lab[0, 0] == pytest.approx(1.0)  # largest mask -> 1.0
    assert lab[2, 2] == pytest.approx(2 / 3)  # medium on top of large
    assert lab[3, 3] == pytest.approx(1 / 3)  # smallest on top of both
    assert lab[7, 7] == 0.0  # background
    assert sorted(np.unique(lab).tolist()) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # deterministic and independent of input order for distinct areas
    np.testing.assert_array_equal(enc, encode_masks(list(reversed(_masks())), kind="label"))


def test_onehot_and_boundary():
    oh = encode_masks(_masks(), kind="onehot:4")
    assert oh.shape == (4, 8, 8)
    # one label image: each channel holds the pixels its region owns, smaller masks on top
    assert oh[0].sum() == 48 - 16 and oh[1].sum() == 16 - 4 and oh[2].sum() == 4 and oh[3].sum() == 0
    assert (oh[:3].sum(axis=0) <= 1).all()
    b = encode_masks([_mask(8, 8, 2, 6, 2, 6)], kind="boundary")[0]
    assert b[2, 2] == 1 and b[3, 3] == 0 and b[0, 0] == 0
    assert b.sum() == 12  # the ring of a 4x4 square
    # a mask touching the border has no edge along the border
    assert encode_masks([_mask(4, 4, 0, 4, 0, 4)], kind="boundary").sum() == 0
    assert encoding_channels("onehot:5") == 5 and encoding_channels("label") == 1


def test_size_and_empty():
    up = encode_masks(_masks(), kind="label", size=(16, 16))
    assert up.shape == (1, 16, 16)
    np.testing.assert_array_equal(up[0, ::2, ::2], encode_masks(_masks())[0])
    empty = encode_masks([], kind="label", shape=(5, 7))
    assert empty.shape == (1, 5, 7) and not empty.any()


def test_errors():
    with pytest.raises(PriorError, match="unknown prior encoding"):
        parse_encoding("labels")
    with pytest.raises(PriorError, match="integer"):
        parse_encoding("onehot:x")
    with pytest.raises(PriorError, match="boolean"):
        encode_masks([{"segmentation": np.zeros((4, 4), dtype=np.uint8)}])
    with pytest.raises(PriorError, match="share one size"):
        encode_masks([_mask(4, 4, 0, 1, 0, 1), _mask(5, 4, 0, 1, 0, 1)])
    with pytest.raises(PriorError, match="no masks"):
        encode_masks([])


def test_default_encoding_follows_the_fusion():
    from spt_adapter.core.config import DEFAULT_FUSION
    from spt_adapter.prior import DEFAULT_ENCODING, default_encoding

    assert DEFAULT_ENCODING == "boundary"  # docs/results.md, results 6-7
    assert default_encoding("concat") == default_encoding("sft") == "boundary"
    assert default_encoding("pool") == "label"  # pool averages inside the regions of a label map
    assert default_encoding(None) == default_encoding(DEFAULT_FUSION) == "boundary"


def test_pool_needs_a_label_map():
    from spt_adapter.prior import check_encoding_for_fusion

    check_encoding_for_fusion("label", "pool")
    for fusion in ("concat", "sft", None):
        for encoding in ("label", "boundary", "onehot:3"):
            check_encoding_for_fusion(encoding, fusion)
    for encoding in ("boundary", "onehot", "onehot:3"):
        with pytest.raises(PriorError, match="fusion 'pool'.*needs encoding 'label'") as exc:
            check_encoding_for_fusion(encoding, "pool")
        assert repr(encoding) in str(exc.value)


def test_overlap_precedence_smaller_on_top():
    """SAM-Deblur's painting order: a pixel belongs to the smallest mask covering it; of two
    masks of equal area, the later one; records keep the whole mask's area and bbox."""
    big, medium, small = _masks()[1], _masks()[2], _masks()[0]
    twin = _mask(8, 8, 0, 2, 4, 6)  # same area as `small` (4), overlapping `big` only
    lm = LabelMasks.from_masks([small, big, twin, medium])
    assert lm.labels.dtype == np.int32 and lm.shape == (8, 8) and len(lm) == 4
    assert lm.area.tolist() == [48, 16, 4, 4]  # ranked by area, ties in the provider's order
    assert lm.labels[0, 0] == 1 and lm.labels[2, 2] == 2 and lm.labels[3, 3] == 3  # small on medium on big
    assert lm.labels[0, 4] == 4 and lm.labels[7, 7] == 0  # the twin over big; background
    assert lm.bbox[1].tolist() == [2.0, 2.0, 3.0, 3.0]  # medium's own box, x y w h
    # equal areas: the later mask is painted on top where they overlap
    a, b = _mask(4, 4, 0, 2, 0, 2), _mask(4, 4, 1, 3, 1, 3)
    assert LabelMasks.from_masks([a, b]).labels[1, 1] == 2 and LabelMasks.from_masks([b, a]).labels[1, 1] == 2
    np.testing.assert_array_equal(LabelMasks.from_masks([a, b]).region(1), b["segmentation"])


def test_label_image_input_and_records():
    labels = np.array([[5, 5, 9], [7, 7, 9]])
    lm = LabelMasks.from_labels(labels)
    assert lm.labels.tolist() == [[1, 1, 3], [2, 2, 3]] and lm.area.tolist() == [2, 2, 2]
    assert [r["bbox"] for r in lm.records()] == [[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [2.0, 0.0, 0.0, 1.0]]
    assert all(r["score"] == 1.0 for r in lm.records())
    # an integer label image is accepted by encode_masks directly, like LabelMasks and mask lists
    np.testing.assert_array_equal(encode_masks(labels, "boundary"), encode_masks(lm, "boundary"))
    np.testing.assert_array_equal(
        encode_masks(lm, "label"), encode_masks([{"segmentation": labels == v} for v in (5, 7, 9)], "label")
    )
    with pytest.raises(PriorError, match="int32"):
        LabelMasks(labels, [1, 1, 1], [1, 1, 1], np.zeros((3, 4)))
    with pytest.raises(PriorError, match="0..1"):
        LabelMasks(np.full((2, 2), 2, np.int32), [4], [1.0], np.zeros((1, 4)))


@pytest.mark.parametrize("encoding", ["label", "boundary", "onehot:8"])
def test_same_priors_as_the_one_array_per_mask_code(encoding):
    """tests/fixtures/prior_v1 holds SLIC's segmentation of a McMaster crop and the priors the
    former encoder (one boolean array per mask, commit b6774d9) made from it: the label-image
    encoder must give the very same values (exact: both compute (K - r) / K in float64 and round
    once to float32; 0/1 maps are exact)."""
    with np.load(FIXTURE) as z:
        labels, expected = z["labels"], z[f"prior_{encoding.replace(':', '_')}"]
    np.testing.assert_array_equal(encode_masks(labels, encoding), expected)
    masks = [{"segmentation": labels == v} for v in np.unique(labels)]  # the old input form still works
    np.testing.assert_array_equal(encode_masks(masks, encoding), expected)


def test_same_priors_on_the_real_image():
    """The whole path on the real image: today's SLIC + label-image encoder = the old priors
    (when scikit-image is the version that recorded them; SLIC itself may change between versions)."""
    import skimage
    from PIL import Image

    from spt_adapter.prior import make_provider

    with np.load(FIXTURE) as z:
        meta = json.loads(z["meta"].tobytes())
        expected = {k: z[k] for k in z.files if k.startswith("prior_")}
        old_labels = z["labels"]
    if skimage.__version__ != meta["skimage"]:
        pytest.skip(f"fixture recorded with scikit-image {meta['skimage']}, this is {skimage.__version__}")
    # image.png is meta["image"] cropped to meta["crop"] (lossless), committed beside the fixture
    img = np.asarray(Image.open(FIXTURE.with_name("image.png")).convert("RGB"))
    assert img.shape[:2] == tuple(b - a for a, b in meta["crop"])
    masks = make_provider("slic", **meta["settings"]).generate(img)
    assert len(masks) == len(np.unique(old_labels))
    for encoding in ("label", "boundary", "onehot:8"):
        np.testing.assert_array_equal(encode_masks(masks, encoding), expected[f"prior_{encoding.replace(':', '_')}"])
