from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spt_adapter.data.datasets import DataError, PairedPriorDataset, augment, degrade, parse_task
from spt_adapter.data.images import imresize_bicubic
from spt_adapter.prior import ClassicalMaskProvider, PriorCache


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(40, 52, 3), (37, 45, 3)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    return tmp_path


def test_parse_task():
    assert parse_task("denoise:25").sigma == 25 and parse_task("sr:4").scale == 4
    assert str(parse_task("denoise:15")) == "denoise:15" and str(parse_task("sr:3")) == "sr:3"
    for bad in ("denoise", "sr:1", "sr:x", "blur:3", "denoise:-1"):
        with pytest.raises(DataError, match="expected"):
            parse_task(bad)


def test_degrade_deterministic():
    gt = np.random.default_rng(1).integers(0, 256, (20, 22, 3), dtype=np.uint8)
    _, a = degrade(gt, "denoise:25", seed=0)
    _, b = degrade(gt, "denoise:25", seed=0)
    _, c = degrade(gt, "denoise:25", seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 15 < np.std(a.astype(float) - gt) < 35
    g, lq = degrade(gt, "sr:4")
    assert g.shape == (20, 20, 3) and lq.shape == (5, 5, 3)
    np.testing.assert_array_equal(lq, imresize_bicubic(gt[:20, :20], 0.25))


def _identity_prior(image):
    return image.transpose(2, 0, 1).astype(np.float32) / 255.0


@pytest.mark.parametrize("task", ["denoise:25", "sr:2", "sr:3"])
def test_same_augmentation_pixel_exact(folder, task):
    torch.manual_seed(0)
    ds = PairedPriorDataset(folder, task, prior_fn=_identity_prior, patch_size=8, train=True)
    oracle = PairedPriorDataset(folder, task, prior_fn=_identity_prior, patch_size=8, train=True, oracle=True)
    seen = set()
    for step in range(12):
        i = step % 2
        item = ds[i]
        torch.testing.assert_close(item["prior"], item["lq"], rtol=0, atol=0)  # prior on LQ, same crop/flip/rot
        gt_full, lq_full = ds.pair(i)
        top, left, hf, vf, rot = item["crop"]
        seen.add((hf, vf, rot))
        s = parse_task(task).scale if task.startswith("sr") else 1
        exp_lq, exp_gt = augment(
            [lq_full[top : top + 8, left : left + 8], gt_full[top * s : (top + 8) * s, left * s : (left + 8) * s]],
            hf,
            vf,
            rot,
        )
        np.testing.assert_array_equal(item["lq"].numpy(), exp_lq.transpose(2, 0, 1) / np.float32(255))
        np.testing.assert_array_equal(item["gt"].numpy(), exp_gt.transpose(2, 0, 1) / np.float32(255))
        o = oracle[i]
        torch.testing.assert_close(o["prior"], o["gt"], rtol=0, atol=0)  # oracle prior on GT, same transforms
        assert o["gt"].shape[-1] == 8 * s
    assert len(seen) > 3  # the augmentations really vary


def test_cache_and_validation(folder, tmp_path):
    cache = PriorCache(tmp_path / "cache")
    prov = ClassicalMaskProvider("slic", n_segments=8)
    val = PairedPriorDataset(folder, "denoise:15", cache, prov, train=False)
    a, b = val[0], val[0]
    torch.testing.assert_close(a["lq"], b["lq"], rtol=0, atol=0)  # fixed noise
    assert a["prior"].shape == (1, 40, 52) and a["crop"] == (0, 0, False, False, False)
    assert cache.stats["computed"] == 1 and cache.stats["prior_hits"] == 1
    # the prior is the one of the LQ image, not of the GT image
    gt, lq = val.pair(0)
    np.testing.assert_array_equal(a["prior"].numpy(), cache.get_or_compute(lq, prov))
    const = PairedPriorDataset(
        folder, "sr:2", prior_fn=lambda im: np.ones((1,) + im.shape[:2], np.float32), train=False, patch_size=6
    )
    it = const[1]
    assert it["lq"].shape == (3, 6, 6) and it["gt"].shape == (3, 12, 12) and (it["prior"] == 1).all()
    batch = next(
        iter(torch.utils.data.DataLoader(PairedPriorDataset(folder, "sr:2", cache, prov, patch_size=6), batch_size=2))
    )
    assert batch["prior"].shape == (2, 1, 6, 6)


def test_errors(folder, tmp_path):
    prov = ClassicalMaskProvider("slic")
    with pytest.raises(DataError, match="no images"):
        PairedPriorDataset(_empty(tmp_path), "sr:2", None, prov)
    with pytest.raises(DataError, match="provider"):
        PairedPriorDataset(folder, "sr:2")
    with pytest.raises(DataError, match="smaller than patch_size"):
        PairedPriorDataset(folder, "sr:4", None, prov, patch_size=64)[0]
    with pytest.raises(DataError, match=r"expected \(C, 40, 52\)"):
        PairedPriorDataset(folder, "denoise:5", prior_fn=lambda im: np.zeros((1, 3, 3)), train=False)[0]


def _empty(tmp_path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d
