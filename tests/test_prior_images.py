import numpy as np
import pytest
from PIL import Image

from spt_adapter.data.images import ImageError, imresize_bicubic, list_images, read_image, to_rgb_uint8


def test_conversions():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_rgb_uint8(grey)
    assert out.shape == (3, 4, 3) and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 3] = 7
    assert to_rgb_uint8(rgba).shape == (2, 2, 3) and not to_rgb_uint8(rgba).any()
    u16 = np.full((2, 2, 3), 65535, dtype=np.uint16)
    assert (to_rgb_uint8(u16) == 255).all()
    f = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert (to_rgb_uint8(f) == 128).all()
    assert to_rgb_uint8(np.zeros((2, 2, 2), dtype=np.uint8)).shape == (2, 2, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.full((2, 2, 3), 2.0), r"\[0, 1\]"),
        (np.full((2, 2, 3), np.nan), "NaN"),
        (np.zeros((2, 2, 5), dtype=np.uint8), "5 channels"),
        (np.zeros((0, 3, 3), dtype=np.uint8), "empty"),
        (np.zeros((2, 2, 3), dtype=np.int32), "dtype"),
        (np.zeros((2, 2, 3), dtype=bool), "dtype"),
        (np.zeros((2,), dtype=np.uint8), "shape"),
    ],
)
def test_refusals(bad, match):
    with pytest.raises(ImageError, match=match):
        to_rgb_uint8(bad)


def test_refuses_torch_tensor():
    import torch

    with pytest.raises(ImageError, match="torch tensor"):
        to_rgb_uint8(torch.zeros(3, 4, 4))


def test_read_files(tmp_path):
    grey16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[7, 7, 0] == round(63000 * 255 / 65535)
    rgba = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot be read"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ImageError, match="no such image"):
        read_image(tmp_path / "missing.png")


def test_list_images(tmp_path):
    for n in ("b.png", "a.png", "c.txt"):
        (tmp_path / n).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nb.png\n\na.png\n")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.png"]
    assert [p.name for p in list_images([lst])] == ["b.png", "a.png"]
    with pytest.raises(ImageError, match="no such file or folder"):
        list_images([tmp_path / "nothing"])


def test_bicubic_matches_basicsr():
    matlab = pytest.importorskip("basicsr.utils.matlab_functions")
    img = np.random.default_rng(0).random((37, 29, 3))
    for scale in (1 / 4, 1 / 3, 1 / 2, 2):
        ours = imresize_bicubic(img, scale)
        ref = matlab.imresize(img, scale)  # BasicSR's float64 numpy resize, run here on the same machine
        assert ours.shape == ref.shape
        # both are float64 sums of <= 4/scale weighted taps of values in [0, 1]: they differ only by the
        # order of the additions (~1e-16 each); 1e-5 is far above that and far below one 8-bit level
        # (3.9e-3), so it catches a wrong kernel, antialias width or border rule on any CPU
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    u8 = imresize_bicubic((img * 255).astype(np.uint8), 0.5)
    assert u8.dtype == np.uint8 and u8.shape == (19, 15, 3)
