import numpy as np
import pytest

from spt_adapter.errors import PriorError
from spt_adapter.prior import ClassicalMaskProvider, encode_masks, make_provider


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_segments_tile_the_image(method):
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[::8, ::8])
    masks = ClassicalMaskProvider(method).generate(img)
    stack = np.stack([m["segmentation"] for m in masks])
    assert len(masks) > 5
    assert (stack.sum(axis=0) == 1).all()  # every pixel in exactly one segment
    assert all(m["area"] == m["segmentation"].sum() for m in masks)
    lab = encode_masks(masks)[0]
    assert lab.min() > 0 and lab.max() == 1.0 and len(np.unique(lab)) == len(masks)


def test_identity_and_errors():
    p = make_provider("slic", n_segments=10)
    assert p.identity()["settings"]["n_segments"] == 10 and p.identity()["method"] == "slic"
    with pytest.raises(PriorError, match="unknown setting"):
        ClassicalMaskProvider("slic", scale=3)
    with pytest.raises(PriorError, match="unknown classical method"):
        ClassicalMaskProvider("watershed")
    with pytest.raises(PriorError, match="unknown mask provider"):
        make_provider("quickshift")
