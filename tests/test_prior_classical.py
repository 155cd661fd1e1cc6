import numpy as np
import pytest

from spt_adapter.errors import PriorError
from spt_adapter.prior import ClassicalMaskProvider, encode_masks, make_provider


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_segments_tile_the_image(method):
    from skimage import data

    img = np.ascontiguousarray(data.astronaut()[::8, ::8])
    provider = ClassicalMaskProvider(method)
    masks = provider.generate(img)
    assert masks.labels.shape == img.shape[:2] and masks.labels.dtype == np.int32
    assert len(masks) > 5
    assert masks.labels.min() == 1  # every pixel in a segment: no background
    assert masks.area.tolist() == np.bincount(masks.labels.ravel())[1:].tolist()
    # one region per segment of the segmenter, in the order of its label values
    raw = provider.segment(img)
    for i, value in enumerate(np.unique(raw)):
        np.testing.assert_array_equal(masks.region(i), raw == value)
    lab = encode_masks(masks)[0]
    assert lab.min() > 0 and lab.max() == 1.0 and len(np.unique(lab)) == len(masks)


def test_identity_and_errors():
    p = make_provider("slic", n_segments=10)
    assert p.identity()["settings"]["n_segments"] == 10 and p.identity()["method"] == "slic"
    with pytest.raises(PriorError, match="provider 'slic' has no setting 'scale'"):
        ClassicalMaskProvider("slic", scale=3)
    with pytest.raises(PriorError, match="unknown classical method"):
        ClassicalMaskProvider("watershed")
    with pytest.raises(
        PriorError, match="unknown mask provider 'quickshift'; installed: felzenszwalb, sam, sam2, slic"
    ):
        make_provider("quickshift")


@pytest.mark.parametrize(
    "setting, value",
    [
        ("n_segments", "abc"),
        ("n_segments", -5),
        ("n_segments", 0),
        ("n_segments", "1.5"),
        ("n_segments", 2.5),
        ("n_segments", True),
        ("compactness", "nan"),
        ("compactness", float("nan")),
        ("compactness", "inf"),
        ("compactness", 0),
        ("sigma", -1.0),
        ("enforce_connectivity", "maybe"),
    ],
)
def test_settings_checked_by_name_and_type(setting, value):
    from spt_adapter.errors import ProviderSettingError

    with pytest.raises(ProviderSettingError, match=f"provider 'slic': setting {setting}=") as err:
        make_provider("slic", **{setting: value})
    assert "\n" not in str(err.value)
    with pytest.raises(ProviderSettingError, match=setting):
        ClassicalMaskProvider("slic", **{setting: value})  # the Python API checks with the same schema


def test_settings_from_text_are_typed():
    p = make_provider("slic", n_segments="20", compactness="5", enforce_connectivity="false", convert2lab="none")
    assert p.settings["n_segments"] == 20 and p.settings["compactness"] == 5.0
    assert p.settings["enforce_connectivity"] is False and p.settings["convert2lab"] is None
    assert make_provider("felzenszwalb", min_size=np.int64(10)).settings["min_size"] == 10
