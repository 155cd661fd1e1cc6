"""SAM provider over the real segment_anything classes, with a tiny checkpoint written to disk."""

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from spt_adapter.errors import SPTError  # noqa: E402
from spt_adapter.prior import (  # noqa: E402
    SAM_CHECKPOINTS_URL,
    FastMaskGenerator,
    LabelMasks,
    SamCheckpointError,
    SamMaskProvider,
    load_sam,
)
from spt_adapter.prior.tiny import make_tiny_sam_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_vit_tiny.pth")


@pytest.fixture(scope="session")
def images():
    from skimage import data

    return [np.ascontiguousarray(data.astronaut()[::8, ::8]), np.ascontiguousarray(data.coffee()[::6, ::5])]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        np.testing.assert_array_equal(x["segmentation"], y["segmentation"])
        for k in x:
            if k != "segmentation":
                # stability is 0/0 = nan for masks that vanish at both cut-offs, in stock too
                assert x[k] == y[k] or (np.isnan(x[k]) and np.isnan(y[k])), k


@pytest.mark.parametrize(
    "settings",
    [
        {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
        {"points_per_side": 8},
        {
            "points_per_side": 4,
            "crop_n_layers": 1,
            "pred_iou_thresh": 0.0,
            "stability_score_thresh": 0.0,
            "min_mask_region_area": 10,
        },
    ],
)
def test_fast_generator_identical_to_stock(tiny_ckpt, images, settings):
    sam = load_sam(tiny_ckpt, "vit_tiny", "cpu")
    stock = SamAutomaticMaskGenerator(sam, **settings)
    fast = FastMaskGenerator(sam, points_per_batch=32, **settings)
    expected = [stock.generate(im) for im in images]
    got = fast.generate_batch(images)
    assert sum(len(e) for e in expected) > 0 or settings.get("pred_iou_thresh", 1) != 0.0
    for e, g in zip(expected, got, strict=True):
        _same(e, g)


def test_provider_same_path_as_real_checkpoint(tiny_ckpt, images):
    p = SamMaskProvider(
        tiny_ckpt,
        model_type="vit_tiny",
        device="cpu",
        points_per_side=8,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    masks = p.generate(images[0])
    assert len(masks) and masks.shape == images[0].shape[:2]
    # the label image is the generator's masks, smaller on top (LabelMasks.from_masks)
    raw = p.generator.generate(images[0])
    assert (
        sorted(masks.area.tolist(), reverse=True)
        == masks.area.tolist()
        == sorted((m["area"] for m in raw), reverse=True)
    )
    np.testing.assert_array_equal(masks.labels, LabelMasks.from_masks(raw).labels)
    assert sorted(masks.score.tolist()) == sorted(m["predicted_iou"] for m in raw)
    ident = p.identity()
    assert ident["model_type"] == "vit_tiny" and len(ident["checkpoint_sha256"]) == 64
    assert ident["settings"]["points_per_side"] == 8 and "points_per_batch" not in ident["settings"]
    # grey and float inputs are converted, not refused
    grey = images[0].mean(axis=2).astype(np.uint8)
    assert p.generate(grey).shape == grey.shape


def test_model_type_auto(tiny_ckpt, tmp_path):
    assert SamMaskProvider(tiny_ckpt, model_type="auto").model_type == "vit_tiny"
    odd = tmp_path / "odd.pth"
    torch.save({"w": torch.zeros(2)}, odd)
    with pytest.raises(SamCheckpointError, match="cannot tell its model type"):
        SamMaskProvider(odd, model_type="auto")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SamCheckpointError) as err:
        SamMaskProvider(tmp_path / "sam_vit_b_01ec64.pth")
    msg = str(err.value)
    assert SAM_CHECKPOINTS_URL in msg and "pip install spt-adapter[sam]" in msg and "sam_vit_b_01ec64.pth" in msg


def test_checkpoint_for_another_model_type(tiny_ckpt):
    with pytest.raises(SamCheckpointError) as err:
        load_sam(tiny_ckpt, "vit_b", "cpu")
    msg = str(err.value)
    assert "'vit_b'" in msg and "'vit_tiny'" in msg and str(tiny_ckpt) in msg


def test_unreadable_checkpoints(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a torch file")
    with pytest.raises(SamCheckpointError, match="weights-only torch file"):
        load_sam(junk, "vit_tiny", "cpu")
    pickled = tmp_path / "code.pth"
    torch.save({"model": SamCheckpointError("x")}, pickled)  # an object, not tensors: needs unpickling code
    with pytest.raises(SamCheckpointError, match="weights-only"):
        load_sam(pickled, "vit_tiny", "cpu")
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(SamCheckpointError, match="state dict"):
        load_sam(not_tensors, "vit_tiny", "cpu")
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes((tmp_path / "list.pth").read_bytes()[:40])
    with pytest.raises(SamCheckpointError):
        load_sam(truncated, "vit_tiny", "cpu")


def test_unknown_model_type_and_setting(tiny_ckpt):
    with pytest.raises(SamCheckpointError, match="unknown SAM model_type"):
        SamMaskProvider(tiny_ckpt, model_type="vit_x")
    from spt_adapter.errors import PriorError

    with pytest.raises(PriorError, match="points_per_sid"):
        SamMaskProvider(tiny_ckpt, model_type="vit_tiny", points_per_sid=4)


def test_segment_anything_missing_gives_the_extra(tiny_ckpt):
    code = (
        "import sys; sys.modules['segment_anything'] = None\n"
        "from spt_adapter.prior import SamMaskProvider, SamUnavailableError\n"
        f"try:\n    SamMaskProvider({str(tiny_ckpt)!r}, model_type='vit_tiny')\n"
        "except SamUnavailableError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "pip install spt-adapter[sam]" in out.stdout, out.stderr


def test_provider_precision_setting_reaches_the_generator_and_the_cache_key(tiny_ckpt, images):
    """precision=bf16 (autocast + SDPA) changes masks, so it is part of the identity; fp32 keeps the
    identity of the entries cached before the setting existed."""
    fp32 = SamMaskProvider(tiny_ckpt, model_type="vit_tiny", device="cpu", points_per_side=4)
    bf16 = SamMaskProvider(tiny_ckpt, model_type="vit_tiny", device="cpu", points_per_side=4, precision="bf16")
    assert "precision" not in fp32.identity() and bf16.identity()["precision"] == "bf16"
    assert fp32.generator.precision == "fp32" and bf16.generator.precision == "bf16"
    assert bf16.generate(images[0]).shape == images[0].shape[:2]
    with pytest.raises(SPTError, match="precision"):
        SamMaskProvider(tiny_ckpt, model_type="vit_tiny", precision="fp8")
