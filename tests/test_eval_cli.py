"""`spt-adapter eval`: tables that agree with the saved images, adapter as file/folder, clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _archs import small_swinir
from _data import DATA  # small crops of the test sets, committed (tests/data)
from _helpers import cli, image_folder, save_safetensors
from spt_adapter.cli import main
from spt_adapter.inference import metrics


def _ckpt(path: Path, seed: int, embed: int = 16) -> Path:
    return save_safetensors(small_swinir(seed=seed, embed_dim=embed), path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SwinIR checkpoint, three real test images, and an adapter trained on them by the CLI."""
    pytest.importorskip("spandrel")
    root = tmp_path_factory.mktemp("eval")
    data = image_folder("CBSD68", root / "hq", 3, (0, 0, 80, 72))
    ckpt = _ckpt(root / "swinir.safetensors", 0)
    out = root / "run"
    argv = cli("train", backbone=ckpt, data=data, task="denoise:25", out=out, prior_cache=root / "priors", patch=32)
    code = main(argv + cli(batch=2, iters=3, lr="1e-3", segments=8, no_progress=True))
    assert code == 0
    return {"root": root, "data": data, "ckpt": ckpt, "run": out, "priors": root / "priors"}


def _eval(trained, adapter, out, *extra):
    argv = cli("eval", backbone=trained["ckpt"], adapter=adapter, data=trained["data"], out=out)
    return main(argv + cli(prior_cache=trained["priors"], no_progress=True) + list(extra))


def test_eval_tables_crops_and_images_agree(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    # task comes from the adapter's header (denoise:25); adapter given as the run folder
    assert _eval(trained, trained["run"], out, "--save-images") == 0
    stdout = capsys.readouterr().out
    assert "| **mean (3)**" in stdout and str(out / "eval.md") in stdout
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["image"] for r in rows] == [p.stem for p in sorted(trained["data"].glob("*.png"))] + ["MEAN"]
    for r in rows[:-1]:
        gt = np.asarray(Image.open(trained["data"] / f"{r['image']}.png").convert("RGB"))
        for tag, col in (("backbone", "backbone_psnr"), ("spt", "spt_psnr")):
            img = np.asarray(Image.open(out / "images" / tag / f"{r['image']}.png"))
            assert img.shape == gt.shape
            assert abs(metrics.psnr(img, gt) - float(r[col])) < 1e-4  # the table scores the saved outputs (RGB)
        assert (
            abs(
                metrics.ssim(np.asarray(Image.open(out / "images" / "spt" / f"{r['image']}.png")), gt)
                - float(r["spt_ssim"])
            )
            < 1e-5
        )
    mean = rows[-1]
    assert abs(float(mean["spt_psnr"]) - np.mean([float(r["spt_psnr"]) for r in rows[:-1]])) < 1e-5
    crops = sorted((out / "crops").glob("*.png"))
    assert len(crops) == 3
    w, h = Image.open(crops[0]).size
    assert w > 3 * h  # four panels side by side
    md = (out / "eval.md").read_text()
    assert "RGB" in md and "Δ PSNR" in md


def test_adapter_file_equals_folder(trained, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _eval(trained, trained["run"] / "spt_adapter.safetensors", a, "--task", "denoise:25") == 0
    assert _eval(trained, trained["run"], b) == 0
    assert (a / "eval.csv").read_text() == (b / "eval.csv").read_text()


def test_eval_errors(trained, tmp_path, capsys):
    # an adapter trained for another backbone: refused by the fingerprint check, named
    other = _ckpt(tmp_path / "other.safetensors", 1, embed=24)
    code = main(
        cli("eval", backbone=other, adapter=trained["run"], data=trained["data"], out=tmp_path / "x", no_progress=True)
    )
    err = capsys.readouterr().err
    assert code == 1 and "module 'layers.0'" in err and "[24]" in err and "[16]" in err
    assert not (tmp_path / "x").exists()
    # a pickle file given as adapter
    torch.save({"a": torch.zeros(1)}, tmp_path / "adapter.pth")
    assert _eval(trained, tmp_path / "adapter.pth", tmp_path / "y") == 1
    assert "pickle" in capsys.readouterr().err
    # a missing folder
    code = main(cli("eval", backbone=trained["ckpt"], adapter=trained["run"], data=tmp_path / "none", no_progress=True))
    assert code == 1 and "does not exist" in capsys.readouterr().err


def test_sr_eval_scores_y_channel_with_border_crop(tmp_path, capsys):
    """An x2 SwinIR with a fresh (identity) adapter: +SPT equals the backbone exactly, and the
    table's PSNR is the Y-channel, 2-pixel-border PSNR of the saved output against the
    mod-cropped ground truth."""
    pytest.importorskip("spandrel")

    import spt_adapter

    data = tmp_path / "hq"
    data.mkdir()
    Image.open(DATA / "Set5" / "baby.png").convert("RGB").crop((100, 100, 171, 165)).save(data / "baby.png")  # odd size
    m = small_swinir(scale=2, depths=(1,), img_size=16)
    save_safetensors(m, tmp_path / "sr.safetensors")
    bb = spt_adapter.load_backbone(tmp_path / "sr.safetensors")
    spt = spt_adapter.inject(
        bb.model,
        config=spt_adapter.SPTConfig(
            targets=bb.targets,
            prior={
                "task": "sr:2",
                "provider": {"provider": "classical", "method": "slic", "settings": {"n_segments": 8}},
            },
        ),
    )
    spt_adapter.save_adapter(spt, tmp_path / "a.safetensors")
    out = tmp_path / "ev"
    argv = cli("eval", backbone=tmp_path / "sr.safetensors", adapter=tmp_path / "a.safetensors", data=data, out=out)
    assert main(argv + cli(prior_cache=tmp_path / "pc", save_images=True, no_progress=True)) == 0
    row = list(csv.DictReader((out / "eval.csv").open()))[0]
    assert row["backbone_psnr"] == row["spt_psnr"]  # identity at start
    gt = np.asarray(Image.open(data / "baby.png"))[:64, :70]  # mod-cropped to a multiple of 2
    sr = np.asarray(Image.open(out / "images" / "spt" / "baby.png"))
    assert sr.shape == gt.shape
    expected = metrics.psnr(sr, gt, crop_border=2, test_y_channel=True)
    assert abs(float(row["spt_psnr"]) - expected) < 1e-4
    assert abs(metrics.psnr(sr, gt) - expected) > 1e-3  # not the RGB number
    assert "Y channel, border 2" in (out / "eval.md").read_text()


def test_validation_during_training_pads_as_eval_does():
    """make_val_fn pads the input only to what the backbone needs (a CNN: nothing), as ``eval`` does:
    padding a CNN's input to 16 changes its border pixels, so training's validation scored other
    numbers than ``eval`` on the same images."""
    import spt_adapter
    from spt_adapter.inference.evaluate import make_val_fn
    from spt_adapter.inference.restore import restore_tensor

    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()]
    convs += [torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 3, padding=1)]
    model = spt_adapter.inject(torch.nn.Sequential(*convs), ["2"])
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.random((3, 37, 29), dtype=np.float32))
    lq = (gt + 0.1 * torch.from_numpy(rng.standard_normal((3, 37, 29)).astype(np.float32))).clamp(0, 1)
    sample = {"lq": lq, "gt": gt, "prior": torch.zeros(1, 37, 29)}
    got = make_val_fn(lambda: [sample], "denoise:25")(model)["psnr"]

    def psnr_at(multiple: int) -> float:
        with torch.no_grad():
            out = restore_tensor(model, lq, sample["prior"], multiple=multiple)
        out8 = (out.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
        gt8 = (gt * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)
        return metrics.psnr(out8, gt8, **metrics.metric_settings("denoise:25"))

    assert got == pytest.approx(psnr_at(1), abs=1e-9)
    assert abs(psnr_at(16) - psnr_at(1)) > 1e-4  # the old padding scored other numbers
    assert make_val_fn(lambda: [sample], "denoise:25", multiple=16)(model)["psnr"] == pytest.approx(psnr_at(16))
