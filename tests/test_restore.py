"""Restoring a user's own images: tiles that agree with the whole image, the whole-image prior cropped
per tile, grey/colour conversion, the `spt-adapter restore` command and its refusals, grey backbones
through train / eval / restore, and the opt-in KAIR DnCNN check."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spt_adapter
from _archs import dncnn, tiny_swinir
from _helpers import cli, save_safetensors
from spt_adapter.cli import main
from spt_adapter.errors import RestoreError
from spt_adapter.inference import restore as R
from spt_adapter.pixels import rgb_to_grey_uint8, to_uint8_channels

pytest.importorskip("spandrel")
from _data import DATA  # small crops of the test sets, committed (tests/data)

KAIR_ROOT = os.environ.get("SPT_KAIR_ROOT")


def swinir(seed=0, stressed=True, embed=12):
    """A small SwinIR x2 (window 8). ``stressed``: every linear/conv weight redrawn at PyTorch's default
    scale, so the attention paths matter (spandrel's 0.02 init leaves them nearly silent)."""
    m = tiny_swinir(seed, window_size=8, embed_dim=embed)
    if stressed:
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                torch.nn.init.kaiming_uniform_(mod.weight, a=math.sqrt(5))
    return m


def photo(h, w, channels=3):
    from skimage import data

    img = data.astronaut()[60 : 60 + h, 120 : 120 + w]
    return to_uint8_channels(img, channels)


def _perturb(model):
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "length,tile,overlap,blend,scale",
    [(100, 32, 8, 4, 1), (77, 40, 11, 0, 2), (65, 64, 16, 16, 3), (70, 40, 32, 16, 1), (90, 24, 13, 13, 2)],
)
def test_tile_weights_cover_every_output_pixel_exactly_once(length, tile, overlap, blend, scale):
    starts = R.tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    total = torch.zeros(length * scale, dtype=torch.float64)
    for i, s in enumerate(starts):
        w = R._axis_weights(starts, tile, length, scale, blend, i)
        total[s * scale : min(s + tile, length) * scale] += w
    # float32 ramps w and 1 - w: their sum is 1 within one float32 rounding
    assert torch.allclose(total, torch.ones_like(total), atol=2 * torch.finfo(torch.float32).eps)


def test_cnn_tiled_equals_whole_image_when_the_overlap_covers_the_receptive_field():
    model = dncnn(nb=6)  # 6 conv layers of 3x3: radius 6, receptive field 13
    assert R.receptive_radius(model) == 6 and R.default_overlap(model) == 32 and R.default_blend(model, 13) == 1
    img = photo(70, 90, 1)
    whole = spt_adapter.restore(model, img.astype(np.float32) / 255)
    for overlap in (13, None):  # exactly the receptive field, and the default
        tiled = spt_adapter.restore(
            model, img.astype(np.float32) / 255, tile=40 if overlap is None else 24, tile_overlap=overlap
        )
        # blend weights sum to 1 within float32 rounding; values are O(1): a few eps
        assert np.abs(whole - tiled).max() <= 1e-5
    assert whole.shape == (70, 90)


def test_swinir_tiled_agrees_with_whole_image_at_the_default_overlap():
    model = swinir()
    img = photo(64, 80)
    whole = spt_adapter.restore(model, img.astype(np.float32) / 255)
    tiled = spt_adapter.restore(model, img.astype(np.float32) / 255, tile=48)  # overlap 32: 4 tiles
    psnr = 10 * math.log10(1 / float(np.mean((whole.astype(np.float64) - tiled) ** 2)))
    assert whole.shape == (128, 160, 3) and psnr >= 45, psnr
    assert R.receptive_radius(model) is None and R.size_multiple(model) == 8 and R.minimum_tile(model) == 8


def test_every_tile_gets_its_crop_of_the_one_whole_image_prior():
    """The provider runs once, on the whole image; every forward call sees exactly the prior crop of
    its tile (at k times the coordinates for a prior at k times the image's size)."""
    from spt_adapter.prior import ClassicalMaskProvider, encode_masks

    backbone = swinir(stressed=False)
    model = spt_adapter.inject(backbone, "layers.*.residual_group")
    calls = []

    class Counting(ClassicalMaskProvider):
        def generate(self, image):
            calls.append(image.shape)
            return super().generate(image)

    seen = []
    model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0].shape, kwargs.get("prior"))), with_kwargs=True
    )
    img = photo(40, 56)
    info = R.RestoreInfo()
    spt_adapter.restore(
        model, img, provider=Counting("slic", n_segments=12), encoding="label", tile=24, tile_overlap=8, info=info
    )
    assert calls == [(40, 56, 3)] and info.tiles == len(seen) == 2 * 3
    full = torch.from_numpy(encode_masks(ClassicalMaskProvider("slic", n_segments=12).generate(img), kind="label"))
    ys, xs = R.tile_starts(40, 24, 8), R.tile_starts(56, 24, 8)
    boxes = [(y, x) for y in ys for x in xs]
    for (shape, prior), (y, x) in zip(seen, boxes, strict=True):
        assert tuple(shape[-2:]) == (24, 24)
        assert torch.equal(prior[0], full[:, y : y + 24, x : x + 24])
    # a prior at twice the image's resolution: crops at twice the coordinates
    seen.clear()
    big = full.repeat_interleave(2, -2).repeat_interleave(2, -1)
    spt_adapter.restore(model, img, big.numpy(), tile=24, tile_overlap=8)
    for (_shape, prior), (y, x) in zip(seen, boxes, strict=True):
        assert torch.equal(prior[0], big[:, 2 * y : 2 * y + 48, 2 * x : 2 * x + 48])


def test_refusals_name_the_minimum():
    model = swinir(stressed=False)
    img = photo(40, 40)
    with pytest.raises(RestoreError, match="at least 8"):
        spt_adapter.restore(model, img, tile=4, tile_overlap=2)
    with pytest.raises(RestoreError, match="at least 17"):
        spt_adapter.restore(model, img, tile=16, tile_overlap=16)
    with pytest.raises(RestoreError, match="CUDA"):
        spt_adapter.restore(model, img, half=True)


# ---------------------------------------------------------------------------------------------
# channels
# ---------------------------------------------------------------------------------------------
def test_grey_and_colour_conversion():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert rgb_to_grey_uint8(red)[0, 0, 0] == 76  # round(0.299 * 255), OpenCV's COLOR_RGB2GRAY value
    rgba = np.dstack([photo(8, 8), np.zeros((8, 8), np.uint8)])
    assert np.array_equal(to_uint8_channels(rgba, 3), photo(8, 8))  # alpha dropped, colour kept
    grey = photo(8, 8, 1)
    assert grey.shape == (8, 8, 1) and np.array_equal(to_uint8_channels(grey[..., 0], 3), np.repeat(grey, 3, 2))
    assert np.array_equal(to_uint8_channels(grey, 1), grey)
    # restore converts to what the backbone takes: colour into a grey DnCNN, grey into a colour SwinIR
    assert spt_adapter.restore(dncnn(), photo(20, 24)).shape == (20, 24)
    out = spt_adapter.restore(swinir(stressed=False), photo(16, 24, 1)[..., 0])
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8


def test_grey_image_files_are_read_as_luma(tmp_path):
    from spt_adapter.data.images import read_image

    Image.fromarray(photo(10, 12)).save(tmp_path / "c.png")
    Image.fromarray(photo(10, 12)).convert("LA").save(tmp_path / "la.png")
    grey = read_image(tmp_path / "c.png", channels=1)
    assert grey.shape == (10, 12, 1) and np.array_equal(grey, rgb_to_grey_uint8(photo(10, 12)))
    assert read_image(tmp_path / "la.png", channels=1).shape == (10, 12, 1)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SwinIR checkpoint, an adapter for it that records SLIC priors, and three input files
    (two photos, one corrupt)."""
    from spt_adapter.prior import ClassicalMaskProvider

    root = tmp_path_factory.mktemp("restore")
    ckpt = save_safetensors(swinir(stressed=False), root / "swinir.safetensors")
    backbone = spt_adapter.load_backbone(ckpt).model
    model = spt_adapter.inject(backbone, "layers.*.residual_group")
    cfg = model.spt_config["default"]
    cfg.prior = {
        "provider": ClassicalMaskProvider("slic", n_segments=10).identity(),
        "encoding": "boundary",
        "task": "sr:2",
        "channels": 3,
    }
    _perturb(model)
    adapter = spt_adapter.save_adapter(model, root / "adapter.safetensors")
    inputs = root / "in"
    inputs.mkdir()
    Image.fromarray(photo(40, 48)).save(inputs / "a.png")
    Image.fromarray(photo(36, 30, 1)[..., 0]).save(inputs / "b.jpg")
    (inputs / "broken.png").write_bytes(b"not an image")
    return {"root": root, "ckpt": ckpt, "adapter": adapter, "inputs": inputs}


def _restore(setup, out, *extra):
    return main(
        ["restore", str(setup["inputs"]), "--backbone", str(setup["ckpt"]), "--out", str(out), "--no-progress", *extra]
    )


def test_restore_folder_writes_pngs_like_the_python_api(setup, tmp_path, capsys):
    from spt_adapter.data.images import read_image

    out = tmp_path / "deep" / "er" / "out"  # a missing parent is created
    assert _restore(setup, out, "--adapter", str(setup["adapter"])) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "2 restored, 0 skipped (output exists), 1 unreadable" in err and "broken.png" in err
    assert "prior" in err and "network" in err
    model = spt_adapter.load_adapter(spt_adapter.load_backbone(setup["ckpt"]).model, setup["adapter"])
    expected = spt_adapter.restore(model, read_image(setup["inputs"] / "a.png"))
    got = np.asarray(Image.open(out / "a.png"))
    assert got.shape == (80, 96, 3) and np.array_equal(got, expected)
    # the backbone alone gives another picture; tiled gives nearly the same one
    assert _restore(setup, tmp_path / "plain", "--no-adapter") == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "plain" / "a.png")), got)
    assert (
        _restore(setup, tmp_path / "tiled", "--adapter", str(setup["adapter"]), "--tile", "24", "--tile-overlap", "16")
        == 0
    )
    tiled = np.asarray(Image.open(tmp_path / "tiled" / "a.png")).astype(np.float64)
    mse = np.mean((tiled - got) ** 2)
    assert mse == 0 or 10 * math.log10(255**2 / mse) >= 40  # 8-bit outputs of the two runs


def test_restore_skip_existing_strict_and_stale_temporaries(setup, tmp_path, capsys):
    out = tmp_path / "o"
    assert _restore(setup, out, "--no-adapter") == 0
    stamp = (out / "a.png").stat().st_mtime_ns
    (out / "b.png").unlink()
    (out / ".b.png.abc123.tmp").write_bytes(b"half")  # what kill -9 during a write leaves
    capsys.readouterr()
    assert _restore(setup, out, "--no-adapter", "--skip-existing") == 0
    assert "1 restored, 1 skipped" in capsys.readouterr().err
    assert (out / "a.png").stat().st_mtime_ns == stamp and (out / "b.png").is_file()
    assert not list(out.glob(".*.tmp"))
    assert _restore(setup, out, "--no-adapter", "--strict", "--overwrite") == 1
    assert "broken.png" in capsys.readouterr().err


def test_restore_refusals_are_one_line(setup, tmp_path, capsys):
    from spt_adapter.prior import ClassicalMaskProvider

    def refused(source, expect, backbone=setup["ckpt"], **flags):
        code = main(cli("restore", source, backbone=backbone, **flags, no_progress=True))
        err = capsys.readouterr().err.strip()
        assert code == 1 and expect in err and len(err.splitlines()) == 1, err

    a_png = setup["inputs"] / "a.png"
    refused(setup["inputs"], "inside the input folder", no_adapter=True, out=setup["inputs"] / "x")
    refused(a_png, "--allow-out-in-input", no_adapter=True, out=setup["inputs"])
    refused(a_png, "use --tile 16", no_adapter=True, out=tmp_path, tile=4)  # spandrel: SwinIR needs at least 16 pixels
    refused(a_png, "use --tile 17", no_adapter=True, out=tmp_path, tile=16, tile_overlap=16)
    refused(tmp_path / "*.nothing", "matches no file", no_adapter=True, out=tmp_path)
    # an adapter for another backbone: the first differing module
    other = save_safetensors(swinir(stressed=False, embed=16), tmp_path / "other.safetensors")
    refused(a_png, "layers.0", backbone=other, adapter=setup["adapter"], out=tmp_path / "o")
    # a grey adapter on a colour backbone
    model = spt_adapter.inject(spt_adapter.load_backbone(setup["ckpt"]).model, "layers.*.residual_group")
    model.spt_config["default"].prior = {"provider": ClassicalMaskProvider("slic").identity(), "channels": 1}
    grey = spt_adapter.save_adapter(model, tmp_path / "grey.safetensors")
    refused(a_png, "grey (1-channel) backbone", adapter=grey, out=tmp_path / "o")
    # SAM priors recorded: says what to pass
    model.spt_config["default"].prior = {"provider": {"provider": "sam", "model_type": "vit_b"}, "channels": 3}
    sam = spt_adapter.save_adapter(model, tmp_path / "sam.safetensors")
    refused(a_png, "--provider-checkpoint", adapter=sam, out=tmp_path / "o")


def test_restore_globs_and_never_overwrites_an_input(setup, tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.fromarray(photo(16, 16)).save(folder / "p.jpg")
    Image.fromarray(photo(16, 16)).save(folder / "p.png")
    code = main(
        cli("restore", folder / "*.jpg", backbone=setup["ckpt"], no_adapter=True, out=tmp_path / "g", no_progress=True)
    )
    assert code == 0 and [p.name for p in (tmp_path / "g").iterdir()] == ["p.png"]
    capsys.readouterr()
    code = main(
        cli(
            "restore",
            folder / "p.png",
            backbone=setup["ckpt"],
            no_adapter=True,
            out=folder,
            allow_out_in_input=True,
            no_progress=True,
        )
    )
    assert code == 1 and "would overwrite the input" in capsys.readouterr().err
    code = main(
        cli("restore", folder / "p.*", backbone=setup["ckpt"], no_adapter=True, out=tmp_path / "h", no_progress=True)
    )
    assert code == 1 and "would both be written to" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# grey backbones: train, eval, restore
# ---------------------------------------------------------------------------------------------
def test_grey_dncnn_trains_evaluates_and_restores(tmp_path, capsys):
    """KAIR's dncnn_25 shape (17 layers, 64 channels, grey; random weights): `train --targets model.7
    model.15 model.23` on colour PNGs used to die with "expected input to have 1 channels"."""
    ckpt = save_safetensors(dncnn(nc=64, nb=17), tmp_path / "dncnn_25.safetensors")
    data = tmp_path / "hq"
    data.mkdir()
    for p in sorted((DATA / "CBSD68").glob("*.png"))[:2]:
        Image.open(p).convert("RGB").crop((0, 0, 48, 40)).save(data / p.name)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--backbone",
                str(ckpt),
                "--targets",
                "model.7",
                "model.15",
                "model.23",
                "--data",
                str(data),
                "--task",
                "denoise:50",
                "--out",
                str(run),
                "--prior-cache",
                str(tmp_path / "priors"),
                "--patch",
                "32",
                "--batch",
                "2",
                "--iters",
                "2",
                "--segments",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    cfg = spt_adapter.read_adapter_config(run / "spt_adapter.safetensors")
    assert cfg.prior["channels"] == 1
    capsys.readouterr()
    assert (
        main(
            cli(
                "eval",
                backbone=ckpt,
                adapter=run,
                data=data,
                out=tmp_path / "ev",
                prior_cache=tmp_path / "priors",
                no_progress=True,
            )
        )
        == 0
    )
    assert "grey" in (tmp_path / "ev" / "eval.md").read_text()
    assert main(cli("restore", data, backbone=ckpt, adapter=run, out=tmp_path / "r", no_progress=True)) == 0
    out = Image.open(sorted((tmp_path / "r").iterdir())[0])
    assert out.mode == "L" and out.size == (48, 40)


def test_eval_no_adapter_kair_noise_protocol(tmp_path):
    """``--noise kair``: np.random.seed(seed) per image, noise added to float32 [0,1] grey, unclipped."""
    from spt_adapter.data.datasets import PairedPriorDataset, kair_noisy

    gt = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (24, 1))[..., None]  # from black to white
    Image.fromarray(gt[..., 0]).save(tmp_path / "g.png")
    ds = PairedPriorDataset(
        tmp_path,
        "denoise:25",
        prior_fn=lambda im: np.zeros((1,) + im.shape[:2], np.float32),
        train=False,
        channels=1,
        noise="kair",
    )
    item = ds[0]
    np.random.seed(0)
    expected = np.float32(gt / 255.0)
    expected += np.random.normal(0, 25 / 255.0, expected.shape)
    assert np.array_equal(item["lq"].numpy().transpose(1, 2, 0), expected)
    assert np.array_equal(kair_noisy(gt, 25, 0), expected)
    assert item["lq"].min() < 0 and item["lq"].max() > 1  # neither clipped nor rounded


@pytest.mark.skipif(
    not KAIR_ROOT, reason="set SPT_KAIR_ROOT to a KAIR checkout (model_zoo/dncnn_25.pth, testsets/set12)"
)
def test_kair_dncnn_25_reproduces_30_43_db_on_set12(tmp_path):
    root = Path(KAIR_ROOT)
    out = tmp_path / "ev"
    assert (
        main(
            cli(
                "eval",
                no_adapter=True,
                backbone=root / "model_zoo" / "dncnn_25.pth",
                data=root / "testsets" / "set12",
                task="denoise:25",
                seed="0",
                out=out,
                no_progress=True,
                crops="0",
            )
        )
        == 0
    )
    mean = [line for line in (out / "eval.csv").read_text().splitlines() if line.startswith("MEAN")][0]
    assert abs(float(mean.split(",")[1]) - 30.43) <= 0.01


def test_a_network_whose_output_is_no_whole_multiple_of_its_input_is_named_by_both_runners():
    """restore_tensor (PyTorch) and the NumPy tiler share one scale check: 1.5x, or 2x on one axis only,
    is one RestoreError naming both sizes."""
    from spt_adapter.deploy.tiling import integer_scale

    assert integer_scale((1, 3, 10, 12), (1, 3, 20, 24)) == 2
    with pytest.raises(RestoreError, match="10x12 input to 15x18: not an integer scale"):
        integer_scale((1, 3, 10, 12), (1, 3, 15, 18))
    with pytest.raises(RestoreError, match="not an integer scale"):
        integer_scale((1, 3, 10, 12), (1, 3, 20, 36))
    net = torch.nn.Upsample(scale_factor=1.5, mode="nearest")
    with pytest.raises(RestoreError, match="16x16 input to 24x24: not an integer scale"):
        R.restore_tensor(net, torch.rand(3, 16, 16), None, multiple=1)
