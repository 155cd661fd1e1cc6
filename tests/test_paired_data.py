"""Paired LQ/HQ folders (spt_adapter/data/pairs.py; train/eval --lq): matching by suffix or a list,
SR pairs, crops at matching positions, every refusal naming its file before anything is written, and
`train` / `eval` on small paired folders this test builds itself."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data import DATA  # small crops of the test sets, committed (tests/data)
from spt_adapter.cli import main
from spt_adapter.data.datasets import PairedPriorDataset
from spt_adapter.data.pairs import check_sizes, load_pairs, match_pairs, read_pairs_file
from spt_adapter.errors import DataError


def _clean(n: int, size=(48, 48)) -> np.ndarray:
    files = sorted((DATA / "CBSD68").glob("*.png"))
    return np.asarray(Image.open(files[n % len(files)]).convert("RGB"))[: size[0], : size[1]].copy()


def _noisy(img: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, 12, img.shape)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


def _folders(root: Path, n: int = 3, size=(48, 48), hq_suffix="_mean", lq_suffix="_real", lq_of=None):
    hq, lq = root / "hq", root / "lq"
    hq.mkdir(parents=True)
    lq.mkdir(parents=True)
    for i in range(n):
        img = _clean(i, size)
        Image.fromarray(img).save(hq / f"shot{i}{hq_suffix}.png")
        Image.fromarray(lq_of(img) if lq_of else _noisy(img, i)).save(lq / f"shot{i}{lq_suffix}.png")
    return hq, lq


# ---------------------------------------------------------------------------------------------- matching
def test_suffix_matching_pairs_by_key(tmp_path):
    hq, lq = _folders(tmp_path)
    pairs = match_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")
    assert [p.key for p in pairs] == ["shot0", "shot1", "shot2"]
    assert [p.hq.name for p in pairs] == ["shot0_mean.png", "shot1_mean.png", "shot2_mean.png"]
    assert [p.lq.name for p in pairs] == ["shot0_real.png", "shot1_real.png", "shot2_real.png"]
    ps = check_sizes(pairs)
    assert ps.scale == 1 and ps.cropped == [] and ps.alignment == "3 pair(s), same size, no cropping"


def test_one_folder_holds_both_halves_and_extensions_may_differ(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    for i in range(2):
        img = _clean(i)
        Image.fromarray(img).save(both / f"c{i}_mean.png")
        Image.fromarray(img).save(both / f"c{i}_real.jpg", quality=90)
    ps = load_pairs(both, both, hq_suffix="_mean", lq_suffix="_real")
    assert [(p.hq.name, p.lq.name) for p in ps.pairs] == [
        ("c0_mean.png", "c0_real.jpg"),
        ("c1_mean.png", "c1_real.jpg"),
    ]
    with pytest.raises(DataError, match="are the same folder .*--hq-suffix and --lq-suffix"):
        match_pairs(both, both)


def test_sr_pairs_with_x4_names_and_a_mod_cropped_hq(tmp_path):
    hq, lq = tmp_path / "HR", tmp_path / "LR"
    hq.mkdir()
    lq.mkdir()
    big = _clean(0, (50, 49))  # 50x49: mod-cropped to 48x48 for the 12x12 LQ
    Image.fromarray(big).save(hq / "0001.png")
    Image.fromarray(big[:48:4, :48:4]).save(lq / "0001x4.png")
    ps = load_pairs(hq, lq, lq_suffix="x4")
    assert ps.scale == 4 and ps.cropped == ["0001"]
    assert "HQ = 4 x LQ; 1 HQ image(s) cropped at the bottom/right to 4 x their LQ size (0001)" in ps.alignment
    ds = PairedPriorDataset(
        ps.hq, "paired:4", lq_paths=ps.lq, prior_fn=lambda im: np.zeros((1, *im.shape[:2])), train=False
    )
    item = ds[0]
    assert tuple(item["gt"].shape) == (3, 48, 48) and tuple(item["lq"].shape) == (3, 12, 12)
    torch.testing.assert_close(item["lq"], item["gt"][:, ::4, ::4])


@pytest.mark.parametrize("scale", [1, 2])
def test_training_crops_sit_at_matching_positions(tmp_path, scale):
    hq, lq = _folders(tmp_path, n=2, size=(64, 64), lq_of=lambda im: _blocks(im, scale) // 2)
    ps = load_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")
    assert ps.scale == scale
    seen = set()
    ds = PairedPriorDataset(
        ps.hq,
        f"paired:{scale}",
        lq_paths=ps.lq,
        prior_fn=lambda im: np.asarray(im, np.float32).transpose(2, 0, 1)[:1] / 255,
        patch_size=16,
        train=True,
    )
    for s in range(6):
        torch.manual_seed(s)
        item = ds[s % 2]
        seen.add(item["crop"][:2])
        gt8 = torch.round(item["gt"] * 255)
        want = _blocks(gt8.numpy().transpose(1, 2, 0).astype(np.int64), scale) // 2  # flips keep the blocks
        np.testing.assert_array_equal(torch.round(item["lq"] * 255).numpy().transpose(1, 2, 0), want)
        torch.testing.assert_close(item["prior"][0], item["lq"][0])  # the prior is the LQ image's, cropped alike
    assert len(seen) > 1  # random positions


def _blocks(im: np.ndarray, s: int) -> np.ndarray:
    """The floor of the mean of each s x s block (an LQ pixel's footprint; flips and transposes keep it)."""
    h, w, c = im.shape
    return (im.astype(np.int64).reshape(h // s, s, w // s, s, c).sum((1, 3)) // (s * s)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- refusals
def test_missing_partner_is_named(tmp_path):
    hq, lq = _folders(tmp_path)
    (lq / "shot1_real.png").unlink()
    with pytest.raises(DataError, match=r"shot1_mean\.png has no degraded partner: no shot1_real\.<ext> in --lq"):
        match_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")
    Image.fromarray(_clean(0)).save(lq / "extra_real.png")
    (hq / "shot1_mean.png").unlink()
    with pytest.raises(DataError, match=r"extra_real\.png has no clean partner: no extra_mean\.<ext> in --data"):
        match_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")


def test_duplicate_name_is_named(tmp_path):
    hq, lq = _folders(tmp_path)
    Image.fromarray(_clean(0)).save(hq / "shot0_mean.jpg")
    with pytest.raises(DataError, match=r"shot0_mean\.jpg and shot0_mean\.png both have the name 'shot0'"):
        match_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")


def test_size_mismatch_is_named(tmp_path):
    hq, lq = _folders(tmp_path)
    Image.fromarray(_clean(1, (40, 48))).save(lq / "shot1_real.png")
    with pytest.raises(
        DataError, match=r"shot1_real\.png is 48x40 pixels but its clean partner .*shot1_mean\.png is 48x48"
    ):
        load_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")
    (lq / "shot1_real.png").unlink()
    Image.fromarray(_clean(1, (48, 48))[::2, ::2]).save(lq / "shot1_real.png")  # x2 among x1 pairs
    with pytest.raises(
        DataError, match=r"shot1_real\.png is 24x24 pixels .* at scale 1 the degraded image must be 48x48"
    ):
        load_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_real")


def test_empty_side_and_missing_folder(tmp_path):
    hq, lq = _folders(tmp_path)
    with pytest.raises(DataError, match=r"--lq folder .* holds no image whose name ends with '_noisy'"):
        match_pairs(hq, lq, hq_suffix="_mean", lq_suffix="_noisy")
    with pytest.raises(DataError, match=r"--lq folder .*nowhere does not exist"):
        match_pairs(hq, tmp_path / "nowhere")


def test_pairs_file(tmp_path):
    hq, lq = _folders(tmp_path)
    listing = tmp_path / "pairs.txt"
    listing.write_text("# clean noisy\nshot2_mean.png\tshot2_real.png\nshot0_mean.png, shot0_real.png\n\n")
    ps = load_pairs(hq, lq, pairs_file=listing)
    assert [(p.hq.name, p.lq.name) for p in ps.pairs] == [
        ("shot2_mean.png", "shot2_real.png"),
        ("shot0_mean.png", "shot0_real.png"),
    ]
    listing.write_text("shot2_mean.png shot2_real.png extra\n")
    with pytest.raises(DataError, match=r"pairs\.txt line 1: expected two names \(HQ LQ\), got 3"):
        read_pairs_file(listing, hq, lq)
    listing.write_text("shot2_mean.png shot9_real.png\n")
    with pytest.raises(DataError, match=r"line 1: the LQ image .*shot9_real\.png does not exist"):
        read_pairs_file(listing, hq, lq)
    listing.write_text("shot2_mean.png shot2_real.png\nshot2_mean.png shot1_real.png\n")
    with pytest.raises(DataError, match=r"line 2: .*shot2_mean\.png is listed twice \(first on line 1\)"):
        read_pairs_file(listing, hq, lq)
    with pytest.raises(DataError, match="drop --hq-suffix"):
        load_pairs(hq, lq, pairs_file=listing, hq_suffix="_mean")


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def swinir(tmp_path_factory):
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    torch.manual_seed(0)
    m = SwinIR(img_size=32, in_chans=3, embed_dim=16, depths=[1], num_heads=[2], window_size=8, mlp_ratio=2.0,
               upscale=1, upsampler="", resi_connection="1conv", drop_path_rate=0.0)  # fmt: skip
    path = tmp_path_factory.mktemp("ckpt") / "swinir.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


def _train(swinir, hq, lq, out, *extra):
    return main(["train", "--backbone", str(swinir), "--data", str(hq), "--lq", str(lq), "--out", str(out),
                 "--prior-cache", str(out.parent / "priors"), "--patch", "32", "--batch", "2", "--iters", "2",
                 "--segments", "8", "--no-progress", *extra])  # fmt: skip


def test_train_and_eval_on_paired_folders(tmp_path, swinir, capsys):
    hq, lq = _folders(tmp_path / "train")
    vhq, vlq = _folders(tmp_path / "val", n=1)
    out = tmp_path / "run"
    code = _train(
        swinir, hq, lq, out, "--hq-suffix", "_mean", "--lq-suffix", "_real", "--val", str(vhq), "--val-lq", str(vlq)
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "paired with" in text and "task paired:1" in text and "validation: " in text
    assert "note: an epoch is the full batches of 2 only; the 1 sample(s) left over change" in text
    ev = tmp_path / "ev"
    argv = ["eval", "--backbone", str(swinir), "--adapter", str(out), "--data", str(hq), "--lq", str(lq),
            "--hq-suffix", "_mean", "--lq-suffix", "_real", "--out", str(ev), "--prior-cache",
            str(tmp_path / "priors"), "--crops", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "matched by name (_mean / _real); sizes: 3 pair(s), same size, no cropping" in text
    rows = list(csv.DictReader((ev / "eval.csv").open()))
    assert [r["image"] for r in rows[:3]] == ["shot0_mean", "shot1_mean", "shot2_mean"]
    # the table scores the LQ files: the backbone's PSNR is that of its output on each noisy file
    from spt_adapter.backbones.load import load_backbone
    from spt_adapter.inference import metrics

    model = load_backbone(swinir).model.eval()
    noisy = np.asarray(Image.open(lq / "shot1_real.png"), np.float32) / 255
    with torch.no_grad():
        restored = model(torch.from_numpy(noisy.transpose(2, 0, 1))[None])[0]
    want = metrics.psnr(metrics.to_uint8(restored), _clean(1))
    assert abs(float(rows[1]["backbone_psnr"]) - want) < 0.01
    # the adapter records a paired task: eval without --lq says what is missing
    assert main(["eval", "--backbone", str(swinir), "--adapter", str(out), "--data", str(hq), "--out", str(tmp_path / "e2"), "--no-progress"]) == 1  # fmt: skip
    assert "was trained on paired files (task paired:1): pass --lq LQ_DIR" in capsys.readouterr().err
    # the backbone alone on the same pairs
    argv = ["eval", "--no-adapter", "--backbone", str(swinir), "--data", str(hq), "--lq", str(lq), "--hq-suffix", "_mean",
            "--lq-suffix", "_real", "--out", str(tmp_path / "e3"), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert abs(float(list(csv.DictReader((tmp_path / "e3" / "eval.csv").open()))[1]["backbone_psnr"]) - want) < 0.01


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--task", "denoise:25"],
            "--lq gives the degraded images themselves (HQ = 1 x LQ here, task paired:1): drop --task",
        ),
        (["--hq-suffix", "_x"], "holds no image whose name ends with '_x'"),
        (["--val", "VAL"], "--val needs its degraded partners too: add --val-lq DIR"),
    ],
)
def test_train_refusals_before_any_work(tmp_path, swinir, capsys, extra, message):
    hq, lq = _folders(tmp_path, hq_suffix="", lq_suffix="")
    extra = [str(tmp_path) if e == "VAL" else e for e in extra]
    out = tmp_path / "run"
    assert _train(swinir, hq, lq, out, *extra) == 1
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "priors").exists()


def test_scale_is_checked_against_the_backbone(tmp_path, swinir, capsys):
    hq, lq = _folders(tmp_path, size=(64, 64), lq_of=lambda im: im[::2, ::2])
    out = tmp_path / "run"
    assert _train(swinir, hq, lq, out, "--hq-suffix", "_mean", "--lq-suffix", "_real") == 1
    err = capsys.readouterr().err
    assert "the pairs are x2 (e.g. shot0_real.png -> shot0_mean.png) but SwinIR" in err and "is x1" in err
    assert not out.exists()


def test_pair_flags_need_lq(tmp_path, swinir, capsys):
    hq, _ = _folders(tmp_path)
    code = main(["train", "--backbone", str(swinir), "--data", str(hq), "--task", "denoise:5", "--lq-suffix", "_real",
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert (
        code == 1 and "--lq-suffix pair(s) clean images with degraded ones: add --lq LQ_DIR" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(
            ["train", "--backbone", str(swinir), "--data", str(hq), "--task", "paired:1", "--out", str(tmp_path / "o")]
        )
    assert "paired data is given with --lq LQ_DIR, not --task" in capsys.readouterr().err


def test_masks_caches_the_priors_train_reads(tmp_path, swinir, capsys):
    hq, lq = _folders(tmp_path, n=2)
    cache = tmp_path / "priors"
    argv = ["masks", "--data", str(hq), "--lq", str(lq), "--hq-suffix", "_mean", "--lq-suffix", "_real",
            "--prior-cache", str(cache), "--provider-set", "n_segments=8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    assert "masks: computed 2, reused 0, failed 0" in capsys.readouterr().err
    assert _train(swinir, hq, lq, tmp_path / "run", "--hq-suffix", "_mean", "--lq-suffix", "_real") == 0
    capsys.readouterr()
    assert main(argv) == 0  # train looked up (and found) the very same entries
    assert "masks: computed 0, reused 2" in capsys.readouterr().err
    assert main(["masks", "--lq", str(lq), "--prior-cache", str(cache)]) == 1
    assert "--lq needs --data HQ_DIR" in capsys.readouterr().err
    assert main(["masks", "--data", str(hq), "--lq", str(lq), "--lq-suffix", "_real", "--hq-suffix", "_mean",
                 "--degrade", "jpeg:30", "--prior-cache", str(cache)]) == 1  # fmt: skip
    assert "--lq files are the degraded images already: drop --degrade" in capsys.readouterr().err


def test_the_epoch_leftover_note_counts_what_the_loader_drops():
    from spt_adapter.commands.train import _epoch_leftover
    from spt_adapter.training.distributed import DistInfo
    from spt_adapter.training.train import TrainSettings, _make_loader

    for n, batch in ((53, 8), (3, 2), (16, 8), (5, 8)):
        info = DistInfo()
        _, sampler, per_epoch = _make_loader(list(range(n)), TrainSettings(batch=batch), info)
        assert _epoch_leftover(n, batch) == len(sampler) - per_epoch * batch


def test_polyu_split_tool_lays_out_the_camera_split(tmp_path):
    from _scripts import load_script

    tool = load_script("polyu_split", "tools")
    src = tmp_path / "CroppedImages"
    src.mkdir()
    scenes = {
        "Canon5D2_5_160_3200_chair": 3,
        "Canon5D2_5_200_3200_toy": 3,  # last Canon5D2 scene with >= 3 crops: validation
        "Canon5D2_5_200_3200_zebra": 2,  # last by name, but too few crops to hold back
        "NikonD800_5_100_4000_flower": 3,  # the only NikonD800 scene with >= 3 crops: validation
        "NikonD800_8_125_6400_photo": 1,
        "Canon80D_8_8_3200_ball": 2,  # test
        "Sony_4_200_3200_door": 1,  # unused
    }
    tiny = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for scene, n in scenes.items():
        for k in range(n):
            for half in ("real", "mean"):
                tiny.save(src / f"{scene}_{k + 1}_{half}.JPG")
    out = tmp_path / "split"
    assert tool.main([str(src), str(out)]) == 0
    names = {part: sorted(p.name for p in (out / part / "lq").iterdir()) for part in ("train", "val", "test")}
    assert names["test"] == ["Canon80D_8_8_3200_ball_1_real.JPG", "Canon80D_8_8_3200_ball_2_real.JPG"]
    assert [n.rsplit("_", 2)[0] for n in names["val"]] == ["Canon5D2_5_200_3200_toy"] * 3 + [
        "NikonD800_5_100_4000_flower"
    ] * 3
    assert len(names["train"]) == 3 + 2 + 1 and not any("Sony" in n for ns in names.values() for n in ns)
    assert (out / "val" / "hq" / "Canon5D2_5_200_3200_toy_1_mean.JPG").is_symlink()
    ps = load_pairs(out / "train" / "hq", out / "train" / "lq", hq_suffix="_mean", lq_suffix="_real")
    assert len(ps.pairs) == 6
    with pytest.raises(SystemExit, match="exists and is not an empty folder"):
        tool.main([str(src), str(out)])
    cropped = tmp_path / "cropped"
    assert tool.main([str(src), str(cropped), "--crop", "2"]) == 0  # val/test as centre crops, train whole
    assert Image.open(cropped / "test" / "lq" / "Canon80D_8_8_3200_ball_1_real.png").size == (2, 2)
    assert Image.open(cropped / "train" / "hq" / "Canon5D2_5_160_3200_chair_1_mean.JPG").size == (4, 4)
    assert (
        len(load_pairs(cropped / "val" / "hq", cropped / "val" / "lq", hq_suffix="_mean", lq_suffix="_real").pairs) == 6
    )
    (src / "Canon80D_8_8_3200_ball_2_mean.JPG").unlink()
    with pytest.raises(SystemExit, match="ball_2_real.JPG has no _mean partner"):
        tool.main([str(src), str(tmp_path / "again")])
