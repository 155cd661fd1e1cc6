import numpy as np
import pytest

from spt_adapter.errors import PriorError
from spt_adapter.prior import encode_masks, encoding_channels, parse_encoding


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
    assert oh[0].sum() == 48 and oh[1].sum() == 16 and oh[2].sum() == 4 and oh[3].sum() == 0
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
