"""Composable synthetic degradations (spt_adapter/data/degradations.py, ``--task`` grammar): each step
against an independent reference (OpenCV/Pillow JPEG, scipy / a direct convolution for the blur, the
benchmarks' earlier BD code), the seed rule, clipping, every error message, and train/eval on a chain."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from _archs import small_swinir
from _data import DATA  # small crops of the test sets, committed (tests/data)
from spt_adapter.cli import main
from spt_adapter.data import degradations as dg
from spt_adapter.data.datasets import PairedPriorDataset, degrade, degrade_float, parse_task
from spt_adapter.data.images import imresize_bicubic
from spt_adapter.errors import DataError


def _img(n: int = 0, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    files = sorted((DATA / "CBSD68").glob("*.png"))
    path = files[n % len(files)]
    return np.asarray(Image.open(path).convert("RGB"))[: size[0], : size[1]].copy()


def _psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# ------------------------------------------------------------------------------------------------ parsing
def test_grammar_parses_and_keeps_the_old_tasks():
    assert parse_task("denoise:25").kind == "denoise" and str(parse_task("denoise:25")) == "denoise:25"
    assert parse_task("sr:4").kind == "sr" and parse_task("sr:4").scale == 4
    t = parse_task("blur:gauss:1.2+sr:4+jpeg:60")
    assert t.kind == "chain" and t.scale == 4 and [s.kind for s in t.steps] == ["blur", "sr", "jpeg"]
    assert str(t) == "blur:gauss:1.2+sr:4+jpeg:60"
    assert parse_task("sr:2+sr:2").scale == 4
    assert parse_task("sr:4:bd").scale == 4 and parse_task("sr:4:bd").steps[0].args == (4.0, 1.0)
    assert dg.parse_degradation("blur:gauss:1.6")[0].args == (1.6, 11.0)  # 2 * int(3 * 1.6 + 0.5) + 1
    assert dg.parse_degradation("blur:gauss:1.6:7")[0].args == (1.6, 7.0)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("jpeg:0", "'jpeg:0': the quality must be an integer in 1..100, got '0'"),
        ("jpeg:101", "the quality must be an integer in 1..100"),
        ("jpeg:high", "the quality must be an integer in 1..100, got 'high'"),
        ("blur:gauss:-1", "'blur:gauss:-1': the blur std must be a number in (0..50), got '-1'"),
        ("blur:gauss:0", "the blur std must be a number in (0..50)"),
        ("blur:gauss:1:6", "the kernel size must be odd, got 6"),
        ("blur:box:2", "the blur kind must be 'gauss', got 'box'"),
        ("blur:gauss", "expected blur:gauss:<std>[:<odd size>]"),
        ("sr:9:bd", "the scale must be an integer in 2..8, got '9'"),
        ("sr:4:lanczos", "sr's kernel is 'bicubic' (the default) or 'bd', got 'lanczos'"),
        ("poisson-gauss:0:2", "a (the shot-noise scale) must be a number in (0..1)"),
        ("poisson-gauss:0.1", "expected poisson-gauss:<a>:<b>"),
        ("sharpen:2", "unknown degradation step 'sharpen:2': the steps are denoise:<sigma 0..255>"),
        ("jpeg:30++sr:2", "has an empty step"),
        ("sr:4+sr:4", "shrinks the image by 16: at most x8"),
        ("denoise:300", "expected denoise:<sigma 0..255>"),
    ],
)
def test_every_error_names_the_step(task, message):
    with pytest.raises(DataError) as err:
        parse_task(task)
    assert message in str(err.value)


def test_cli_refuses_a_bad_task_with_the_step_named(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--backbone", "x", "--data", str(tmp_path), "--task", "jpeg:0", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "'jpeg:0': the quality must be an integer in 1..100" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ references
@pytest.mark.parametrize("quality", [10, 30, 75])
def test_jpeg_is_pillow_at_that_quality_and_close_to_opencv(quality):
    cv2 = pytest.importorskip("cv2")
    img = _img(1, (96, 80))
    ours = dg.jpeg(img, quality)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    np.testing.assert_array_equal(ours, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    # OpenCV's libjpeg at the same quality and 4:2:0: the same quantisation, decoders that differ by rounding
    ok, enc = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    theirs = cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1]
    assert ok and _psnr(ours, theirs) > 38
    assert abs(_psnr(img, ours) - _psnr(img, theirs)) < 0.3
    grey = img[..., :1].copy()
    assert dg.jpeg(grey, quality).shape == grey.shape


def test_jpeg_quality_orders_the_damage():
    img = _img(2)
    assert _psnr(img, dg.jpeg(img, 10)) < _psnr(img, dg.jpeg(img, 40)) < _psnr(img, dg.jpeg(img, 90))
    out = dg.apply_degradation(img, "jpeg:40")
    np.testing.assert_array_equal(np.rint(out * 255).astype(np.uint8), dg.jpeg(img, 40))


@pytest.mark.parametrize(("std", "size"), [(0.8, 5), (1.6, 7), (2.5, 13)])
def test_blur_kernel_sums_to_one_and_matches_a_direct_convolution(std, size):
    k = dg.gaussian_kernel(std, size)
    assert k.shape == (size, size) and abs(k.sum() - 1) < 1e-12 and np.allclose(k, k.T) and np.allclose(k, k[::-1])
    ratio = k[size // 2, size // 2 + 1] / k[size // 2, size // 2]
    assert abs(ratio - np.exp(-1 / (2 * std**2))) < 1e-12
    img = _img(3, (24, 20)).astype(np.float64)
    r = size // 2
    pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="symmetric")  # scipy's "reflect": d c b a | a b c d
    direct = np.zeros_like(img)
    for dy in range(size):
        for dx in range(size):
            direct += k[dy, dx] * pad[dy : dy + img.shape[0], dx : dx + img.shape[1]]
    np.testing.assert_allclose(dg.gaussian_blur(img, std, size), direct, atol=1e-9)


def test_default_blur_is_scipy_gaussian_filter():
    from scipy.ndimage import gaussian_filter

    img = _img(4)
    ours = dg.apply_degradation(img, "blur:gauss:1.3") * 255
    ref = np.stack(
        [gaussian_filter(img[..., c].astype(np.float64), 1.3, mode="reflect", truncate=3.0) for c in range(3)], -1
    )
    np.testing.assert_allclose(ours, np.clip(np.rint(ref), 0, 255), atol=1.0 + 1e-4)
    assert np.mean(np.abs(ours - np.clip(np.rint(ref), 0, 255))) < 0.01


def _bd_previous(hr: np.ndarray, scale: int) -> np.ndarray:
    """benchmarks/_quality_data.py's bd_lq before issue 29 moved it onto degradations.py (its code)."""
    from scipy.ndimage import correlate

    ax = np.arange(7, dtype=np.float64) - 3
    g = np.exp(-(ax**2) / (2 * 1.6**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    blurred = np.stack(
        [correlate(hr[..., c].astype(np.float64), kernel, mode="reflect") for c in range(hr.shape[2])], -1
    )
    return imresize_bicubic(np.clip(np.round(blurred), 0, 255).astype(np.uint8), scale=1.0 / scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bd_is_the_benchmarks_previous_bd(scale):
    import importlib
    import sys

    from _scripts import ROOT

    hr = _img(5, (48, 48))
    before = _bd_previous(hr, scale)
    np.testing.assert_array_equal(dg.bd_downsample(hr, scale), before)
    _, lq = degrade(hr, f"sr:{scale}:bd")
    np.testing.assert_array_equal(lq, before)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        qd = importlib.import_module("_quality_data")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    np.testing.assert_array_equal(qd.bd_lq(hr, scale), before)
    np.testing.assert_array_equal(qd.jpeg_compress(hr, 35), dg.jpeg(hr, 35))


def test_sr_step_is_matlab_bicubic_and_the_chain_mod_crops():
    hr = _img(6, (50, 47))
    gt, lq = degrade(hr, "sr:4+jpeg:95")
    assert gt.shape == (48, 44, 3) and lq.shape == (12, 11, 3)
    np.testing.assert_array_equal(lq, dg.jpeg(imresize_bicubic(gt, scale=0.25), 95))
    gt2, lq2 = degrade(hr, "sr:4")  # the kept task: same bicubic
    np.testing.assert_array_equal(gt2, gt)
    np.testing.assert_array_equal(lq2, imresize_bicubic(gt, scale=0.25))


# ------------------------------------------------------------------------------------------------ noise, seeds, clip
def test_each_step_is_deterministic_in_seed_and_step():
    img = _img(7)
    a = dg.apply_degradation(img, "denoise:10+jpeg:50", seed=3)
    np.testing.assert_array_equal(a, dg.apply_degradation(img, "denoise:10+jpeg:50", seed=3))
    assert not np.array_equal(a, dg.apply_degradation(img, "denoise:10+jpeg:50", seed=4))
    # step 0's draw does not depend on what follows it
    noisy = dg.apply_degradation(img, "denoise:10", seed=3)
    then_blur = dg.apply_degradation(np.rint(noisy * 255).astype(np.uint8), "blur:gauss:1", seed=99)
    np.testing.assert_array_equal(dg.apply_degradation(img, "denoise:10+blur:gauss:1", seed=3), then_blur)
    # the noise of step 1 is default_rng((seed, 1)) exactly
    out = dg.apply_degradation(np.full((8, 8, 3), 128, np.uint8), "blur:gauss:1+denoise:5", seed=3)
    ref = np.clip(np.rint(128 + np.random.default_rng((3, 1)).normal(0, 5, (8, 8, 3))), 0, 255) / 255
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_clip_is_an_option():
    dark = np.full((32, 32, 3), 3, np.uint8)
    clipped = dg.apply_degradation(dark, "denoise:25", seed=1)
    assert clipped.min() >= 0 and np.allclose(clipped * 255, np.rint(clipped * 255), atol=1e-4)
    free = dg.apply_degradation(dark, "denoise:25", seed=1, clip=False)
    assert free.min() < -0.05 and not np.allclose(free * 255, np.rint(free * 255), atol=1e-3)
    np.testing.assert_allclose(np.clip(np.rint(free * 255), 0, 255) / 255, clipped, atol=1e-6)
    # the kept denoise:<sigma> task: the same draw, unclipped with clip=False
    gt, lq_f, lq = degrade_float(dark, "denoise:25", seed=2, clip=False)
    _, lq_old = degrade(dark, "denoise:25", seed=2)
    np.testing.assert_array_equal(lq, lq_old)
    assert lq_f.min() < 0


def test_poisson_gauss_has_the_documented_statistics():
    x = np.full((200, 200, 3), 128, np.uint8)
    a, b = 0.004, 4.0
    out = dg.apply_degradation(x, f"poisson-gauss:{a}:{b}", seed=0, clip=False).astype(np.float64)
    v = 128 / 255
    assert abs(out.mean() - v) < 2e-3
    assert abs(out.var() - (a * v + (b / 255) ** 2)) < 0.05 * (a * v + (b / 255) ** 2)
    bright = dg.apply_degradation(np.full((200, 200, 3), 230, np.uint8), f"poisson-gauss:{a}:0", clip=False)
    dim = dg.apply_degradation(np.full((200, 200, 3), 40, np.uint8), f"poisson-gauss:{a}:0", clip=False)
    assert bright.var() > 3 * dim.var()  # signal-dependent


def test_dataset_draws_afresh_per_item_when_asked(tmp_path):
    folder = tmp_path / "hq"
    folder.mkdir()
    Image.fromarray(_img(8, (64, 64))).save(folder / "a.png")
    kw = dict(prior_fn=lambda im: np.zeros((1,) + im.shape[:2], np.float32), train=True)  # whole images, flips

    def item(ds, s):
        torch.manual_seed(s)
        return ds[0]

    def values(t):  # pixel values without their order (the flips permute them)
        return t.flatten().sort().values

    fresh = PairedPriorDataset(folder, "denoise:15+jpeg:60", fresh=True, **kw)
    a, b, a2 = item(fresh, 1), item(fresh, 2), item(fresh, 1)
    torch.testing.assert_close(a["lq"], a2["lq"])  # deterministic in (seed, step)
    assert torch.equal(values(a["gt"]), values(b["gt"]))
    assert not torch.equal(values(a["lq"]), values(b["lq"]))  # a new draw
    fixed = PairedPriorDataset(folder, "denoise:15+jpeg:60", fresh=False, **kw)
    assert torch.equal(values(item(fixed, 1)["lq"]), values(item(fixed, 2)["lq"]))  # one draw per image and seed
    with pytest.raises(DataError, match="fresh=True draws a new synthetic degradation"):
        PairedPriorDataset(folder, "denoise:15", noise="kair", fresh=True, **kw)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("chain")
    m = small_swinir(depths=(1,))
    ckpt = root / "swinir.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(ckpt))
    data = root / "hq"
    data.mkdir()
    for i in range(2):
        Image.fromarray(_img(i, (48, 48))).save(data / f"{i}.png")
    return root, ckpt, data


def test_train_and_eval_on_a_chain(tiny, capsys):
    import json

    from spt_adapter.files.format import TRAINING_KEY, read_adapter_header

    root, ckpt, data = tiny
    out = root / "run"
    argv = ["train", "--backbone", str(ckpt), "--data", str(data), "--task", "blur:gauss:1+jpeg:40+denoise:5",
            "--no-clip", "--out", str(out), "--prior-cache", str(root / "priors"), "--patch", "32", "--batch", "2",
            "--iters", "2", "--segments", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads(read_adapter_header(out / "spt_adapter.safetensors")[0][TRAINING_KEY])
    assert meta["task"] == "blur:gauss:1+jpeg:40+denoise:5" and meta["degrade_per"] == "step" and meta["clip"] is False
    capsys.readouterr()
    code = main(["eval", "--backbone", str(ckpt), "--adapter", str(out), "--data", str(data), "--out",
                 str(root / "ev"), "--prior-cache", str(root / "priors"), "--crops", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "task blur:gauss:1+jpeg:40+denoise:5" in text and "| **mean (2)** |" in text
    assert (root / "ev" / "eval.md").read_text().startswith("blur:gauss:1+jpeg:40+denoise:5: PSNR (dB) / SSIM")
