"""Smoke test of benchmarks/quality.py at a tiny budget (real images, real DnCNN, real units)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from _data import DATA, full_data  # small crops of the test sets, committed (tests/data)
from _helpers import cli
from _scripts import load_script

_load = load_script


def _quick(out: Path, write_json: bool = True, **flags) -> list[str]:
    """Arguments of the benchmark's --quick run on the committed images: ``flags`` as ``cli`` spells them,
    the caches under ``out``/cache, the results in ``out``/r.json (unless ``write_json`` is false)."""
    return cli(data=DATA, quick=True, **flags, cache_dir=out / "cache", json=out / "r.json" if write_json else None)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    quality = _load("quality")
    out = tmp_path_factory.mktemp("quality")
    rc = quality.main(_quick(out))
    assert rc == 0
    return quality, out, json.loads((out / "r.json").read_text())


def test_quick_run_fills_every_row_of_the_ladder(quick_run):
    _, out, payload = quick_run
    res = payload["results"]
    assert set(res) == set("abcde")
    evals = set(res["a"]["-"])
    assert evals == {"CBSD68 σ=25", "CBSD68 σ=50 (unseen)"}
    for row in "bcd":
        assert set(res[row]) == {"concat", "sft", "pool"}
        for fusion in res[row]:
            for name in evals:
                (v,) = res[row][fusion][name]
                assert math.isfinite(v) and 5 < v < 60
    # training the units moves the result away from the frozen backbone
    assert any(res["b"][f]["CBSD68 σ=25"][0] != res["a"]["-"]["CBSD68 σ=25"][0] for f in res["b"])
    # the backbone was cached: a second run loads it instead of training again
    assert list((out / "cache").glob("backbone_dncnn_*.safetensors"))
    assert payload["regions_per_test_image"] > 1


def test_json_keeps_each_test_images_psnr_and_names(quick_run):
    """``per_image`` holds one PSNR per test image per seed, named by file, whose mean is the row's
    reported number: which pictures a prior helps can be read from the JSON."""
    _, _, payload = quick_run
    per = payload["per_image"]
    names = per["images"]["CBSD68 σ=25"]
    assert names and all(n.startswith("CBSD68/") and n.endswith(".png") for n in names)
    assert len(set(names)) == len(names)
    for row in "abcde":
        for fusion, by_eval in payload["results"][row].items():
            for name, means in by_eval.items():
                seeds = per["psnr"][row][fusion][name]
                assert len(seeds) == len(means)
                for imgs, mean in zip(seeds, means, strict=True):
                    assert len(imgs) == len(per["images"][name])
                    assert np.mean(imgs) == pytest.approx(mean, abs=1e-9)
    # per image, not one number repeated: the test pictures differ
    assert len(set(per["psnr"]["a"]["-"]["CBSD68 σ=25"][0])) == len(names)


def test_rows_of_a_seed_share_batches_and_differ_only_in_the_prior(quick_run):
    quality, _, _ = quick_run
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    img = qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 96)
    seg = qd.Segmenter.parse("slic:region_px=100,compactness=10,sigma=1")
    cache = qd.LabelCache(Path(quick_run[1]) / "labels")
    pset = qd.build_priors([("x", img)], sigma=25, realisations=2, noise_base=1, seg=seg, cache=cache)
    s1 = quality.make_schedule(3, 4, 2, 32, pset)
    assert np.array_equal(s1, quality.make_schedule(3, 4, 2, 32, pset))
    assert not np.array_equal(s1, quality.make_schedule(4, 4, 2, 32, pset))
    lq_b, gt_b, p_b = quality.get_batch(s1[0], 32, pset, "lq")
    lq_c, gt_c, p_c = quality.get_batch(s1[0], 32, pset, "const")
    lq_d, _, p_d = quality.get_batch(s1[0], 32, pset, "oracle")
    assert (lq_b == lq_c).all() and (gt_b == gt_c).all() and (lq_b == lq_d).all()
    assert (p_c == 1).all() and p_b.shape == p_c.shape == (2, 1, 32, 32)
    # a real segmentation of the noisy input: many regions, not one (SLIC without smoothing collapses)
    assert len(np.unique(pset.lq_prior[0][0])) > 20
    assert not np.array_equal(pset.lq_prior[0][0], pset.oracle_prior)
    # the label cache returns the stored map
    again = qd.build_priors([("x", img)], sigma=25, realisations=2, noise_base=1, seg=seg, cache=cache)
    assert np.array_equal(again.lq_prior[0][1], pset.lq_prior[0][1])


def test_bad_arguments_are_refused(monkeypatch, capsys):
    quality = _load("quality")
    with pytest.raises(SystemExit):
        quality.parse_args(["--rows", "abz"])
    with pytest.raises(SystemExit):
        quality.parse_args(["--rows", "abf"])  # f needs --sam-checkpoint
    with pytest.raises(SystemExit):
        quality.parse_args(["--task", "sr4", "--tune"])  # the segmenter is chosen on denoising validation
    with pytest.raises(SystemExit):
        quality.parse_args(["--task", "sr2"])
    sr = quality.parse_args(["--task", "sr4"])
    assert sr.fusions == ["concat"] and sr.test_crop == 0 and sr.patch == 32
    # the KAIR task needs a checkout named by the caller: no workplace path is assumed
    monkeypatch.delenv("SPT_KAIR_ROOT", raising=False)
    with pytest.raises(SystemExit):
        quality.parse_args(["--task", "kair"])
    assert "--kair-root" in capsys.readouterr().err
    monkeypatch.setenv("SPT_KAIR_ROOT", "/somewhere/KAIR")
    assert str(quality.parse_args(["--task", "kair"]).kair_root) == "/somewhere/KAIR"
    assert quality.parse_args([]).fusions == ["concat", "sft", "pool"]
    with pytest.raises(ValueError):
        _load("_quality_data").Segmenter.parse("watershed:scale=3")
    for bad in (
        ["--encoding", "stripes"],
        ["--encoding", "boundary"],  # pool needs a label map
        ["--encoding", "boundary", "--fusions", "sft", "--tune-encodings", "onehot:x"],
        ["--sr-degradation", "bd"],  # a denoising run has no SR degradation
        ["--task", "sr4", "--segment-input", "restored"],
    ):
        with pytest.raises(SystemExit):
            quality.parse_args(bad)
    ok = quality.parse_args(["--encoding", "onehot:4", "--fusions", "concat", "sft"])
    assert ok.tune_encodings == ["onehot:4"]


def test_units_are_spread_through_the_depth():
    quality = _load("quality")
    assert quality.unit_targets(8) == ["model.4", "model.8", "model.12"]  # the published ladder's three units
    assert quality.unit_targets(8, 0) == [f"model.{i}" for i in range(2, 14, 2)]  # one per hidden conv
    assert quality.unit_targets(8, 2) == ["model.6", "model.12"]
    assert quality.sr_unit_targets(8) == ["body.6", "body.10", "body.16"]
    assert quality.sr_unit_targets(8, 0) == [f"body.{i}" for i in range(2, 18, 2)]


def test_encodings_of_a_label_map_are_the_library_encodings_of_its_regions():
    from spt_adapter.prior import encode_masks

    qd = _load("_quality_data")
    labels = np.zeros((12, 10), np.float32)
    labels[:, 6:] = 0.5
    labels[8:, :3] = 0.25
    assert qd.encode_label_map(labels, "label") is labels
    edge = qd.encode_label_map(labels, "boundary")
    masks = [{"segmentation": labels == v} for v in (0.0, 0.25, 0.5)]
    assert np.array_equal(edge, encode_masks(masks, kind="boundary")[0])
    assert edge[0, 5] == edge[0, 6] == 1 and edge[0, 0] == 0 and edge.shape == (12, 10)
    onehot = qd.encode_label_map(labels, "onehot:4")
    assert onehot.shape == (12, 10, 4)
    assert np.array_equal(onehot[..., 0], labels == 0.0)  # the largest region first
    assert not onehot[..., 3].any()  # three regions: the fourth channel is empty
    pset = qd.PriorSet([np.zeros((12, 10, 3), np.float32)], [[np.zeros((12, 10, 3), np.float32)]], [[labels]], [labels])
    enc = qd.apply_encoding(pset, "onehot:4")
    assert enc.prior_channels == 4 and enc.lq_prior[0][0].shape == (12, 10, 4) and pset.prior_channels == 1


def test_multichannel_priors_reach_every_row_with_a_control_of_the_same_shape(tmp_path):
    quality = _load("quality")
    rc = quality.main(_quick(tmp_path, encoding="onehot:3", fusions="sft", rows="abcd", units="0"))
    assert rc == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["encoding"] == "onehot:3" and payload["settings"]["units"] == 0
    for row in "bcd":
        assert math.isfinite(payload["results"][row]["sft"]["CBSD68 σ=25"][0])
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    img = qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 64)
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    pset = qd.apply_encoding(
        qd.build_priors(
            [("x", img)], sigma=25, realisations=1, noise_base=1, seg=seg, cache=qd.LabelCache(tmp_path / "labels")
        ),
        "onehot:3",
    )
    sched = quality.make_schedule(0, 1, 2, 32, pset)
    _, _, p_b = quality.get_batch(sched[0], 32, pset, "lq")
    _, _, p_c = quality.get_batch(sched[0], 32, pset, "const")
    assert p_b.shape == p_c.shape == (2, 3, 32, 32) and (p_c == 1).all()
    assert set(np.unique(p_b.numpy())) <= {0.0, 1.0}


# ------------------------------------------------------------------ bicubic x4 super-resolution


@pytest.fixture(scope="module")
def quick_sr_run(tmp_path_factory):
    quality = _load("quality")
    out = tmp_path_factory.mktemp("quality_sr")
    rc = quality.main(_quick(out, task="sr4"))
    assert rc == 0
    return quality, out, json.loads((out / "r.json").read_text())


def test_quick_sr_run_fills_the_ladder_on_set5_and_set14(quick_sr_run):
    _, out, payload = quick_sr_run
    res = payload["results"]
    assert payload["task"] == "sr4"
    assert set(res) == set("abcde")
    evals = set(res["a"]["-"])
    assert evals == {"Set5 ×4 (Y, crop 4)", "Set14 ×4 (Y, crop 4)"}
    for row in "bcd":
        assert set(res[row]) == {"concat"}
        for name in evals:
            (v,) = res[row]["concat"][name]
            assert math.isfinite(v) and 15 < v < 50
    assert any(res["b"]["concat"][n][0] != res["a"]["-"][n][0] for n in evals)
    assert list((out / "cache").glob("backbone_srvgg_x4_*.safetensors"))
    assert set(payload["bicubic_upsampling"]) == evals


def test_sr_batches_pair_lq_crops_with_the_hr_crops_they_came_from(quick_sr_run):
    quality, out, _ = quick_sr_run
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    hr = qd.mod_crop(qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 130), 4)
    assert hr.shape[:2] == (128, 128)
    seg = qd.Segmenter.parse("slic:region_px=50,compactness=10,sigma=1")
    pset = qd.build_sr_priors([("x", hr)], scale=4, seg=seg, cache=qd.LabelCache(out / "labels"))
    assert pset.scale == 4 and pset.noisy[0][0].shape == (32, 32, 3)
    assert pset.lq_prior[0][0].shape == pset.oracle_prior[0].shape == (32, 32)
    assert not np.array_equal(pset.lq_prior[0][0], pset.oracle_prior[0])
    sched = quality.make_schedule(0, 3, 2, 8, pset)
    assert sched[:, :, 2].max() <= 32 - 8 and sched[:, :, 3].max() <= 32 - 8  # positions on the LQ image
    lq, gt, pr = quality.get_batch(sched[0], 8, pset, "lq")
    assert lq.shape == (2, 3, 8, 8) and gt.shape == (2, 3, 32, 32) and pr.shape == (2, 1, 8, 8)
    # each LQ crop is the bicubic downsample of its HR crop (up to the image-border support of the kernel)
    from spt_adapter.data.images import imresize_bicubic

    for k in range(2):
        hr_c = qd.to_uint8(gt[k].permute(1, 2, 0).numpy())
        down = imresize_bicubic(hr_c, scale=0.25).astype(np.float32) / 255.0
        got = lq[k].permute(1, 2, 0).numpy()
        assert np.abs(down[2:-2, 2:-2] - got[2:-2, 2:-2]).max() <= 1.5 / 255


def _bicubic_baseline(data: Path) -> tuple[float, list[float]]:
    """(the benchmark's bicubic x4 PSNR on ``data``/Set5, the same by hand with the library's metric)."""
    from spt_adapter.data.images import imresize_bicubic
    from spt_adapter.inference.metrics import psnr

    qd = _load("_quality_data")
    hr = [qd.mod_crop(qd.load_rgb(p), 4) for p in sorted((data / "Set5").glob("*.png"))]
    ps = qd.PriorSet(
        [i.astype(np.float32) / 255 for i in hr], [[qd.bicubic_lq(i, 4).astype(np.float32) / 255] for i in hr], scale=4
    )
    by_hand = [psnr(imresize_bicubic(qd.bicubic_lq(i, 4), scale=4), i, crop_border=4, test_y_channel=True) for i in hr]
    return qd.bicubic_upsample_psnr(ps), by_hand


def test_sr_protocol_is_bicubic_up_and_down_scored_on_y_with_border_crop():
    """The code path of the published-number check below, on the committed Set5 crops."""
    ours, by_hand = _bicubic_baseline(DATA)
    assert len(by_hand) == 5 and 15 < ours < 40
    assert abs(ours - float(np.mean(by_hand))) < 0.05, (ours, by_hand)


def test_sr_protocol_matches_the_published_bicubic_baseline():
    """Bicubic x4 on the full Set5 (MATLAB imresize, Y channel, 4-pixel crop) is 28.42 dB in every SR paper."""
    ours, _ = _bicubic_baseline(full_data("Set5"))
    assert abs(ours - 28.42) < 0.05


def test_sr_oracle_label_map_is_the_hr_segmentation_nearest_downsampled():
    qd = _load("_quality_data")
    lab = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(qd.nearest_down(lab, 4), lab[[2, 6]][:, [2, 6]])
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    assert qd.hr_segmenter(seg, 4).min_size == 800
    with pytest.raises(ValueError, match="multiple of the scale"):
        qd.build_sr_priors([("x", np.zeros((30, 32, 3), np.uint8))], scale=4, seg=seg, cache=None)


def test_sr_backbone_pretraining_is_reproducible(quick_sr_run, tmp_path):
    """Same settings, same backbone: the cache key describes the weights (initialisation seeded)."""
    from safetensors.torch import load_file

    quality, out, payload = quick_sr_run
    args = quality.parse_args(["--task", "sr4", "--quick"])
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    splits = qd.load_sr_splits(DATA, scale=4, n_train=args.n_train, train_crop=args.train_crop, n_test=1)
    seg = qd.Segmenter.parse(args.segmenter)
    pset = qd.build_sr_priors(splits["train"], scale=4, seg=seg, cache=qd.LabelCache(tmp_path / "p"), want_oracle=False)
    net, info = quality.pretrain_sr_backbone(args, [n for n, _ in splits["train"]], pset, tmp_path)
    assert not info["cached"]
    first = load_file(payload["backbone"]["path"])
    assert Path(info["path"]).name == Path(payload["backbone"]["path"]).name
    for k, v in net.state_dict().items():
        assert (v == first[k]).all(), k


def test_bd_degradation_blurs_before_the_bicubic_downsample():
    qd = _load("_quality_data")
    hr = qd.mod_crop(qd.load_rgb(DATA / "Set5" / sorted(p.name for p in (DATA / "Set5").glob("*.png"))[0]), 4)
    bic, bd = qd.sr_lq(hr, 4, "bicubic"), qd.bd_lq(hr, 4)
    assert bd.shape == bic.shape == (hr.shape[0] // 4, hr.shape[1] // 4, 3) and bd.dtype == np.uint8
    # blurred: less high-frequency energy than plain bicubic, same mean brightness
    lap = lambda x: np.abs(np.diff(x.astype(np.float64), axis=0)).mean()  # noqa: E731
    assert lap(bd) < 0.9 * lap(bic)
    assert abs(bd.astype(np.float64).mean() - bic.astype(np.float64).mean()) < 1.0
    with pytest.raises(ValueError):
        qd.sr_lq(hr, 4, "jpeg")


def test_sr_bd_run_adapts_a_backbone_pretrained_on_bicubic(tmp_path):
    quality = _load("quality")
    rc = quality.main(_quick(tmp_path, task="sr4", sr_degradation="bd", rows="abc"))
    assert rc == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["degradation"] == "bd"
    assert set(payload["results"]["a"]["-"]) == {"Set5 ×4 BD (Y, crop 4)", "Set14 ×4 BD (Y, crop 4)"}
    # the backbone cache key is the bicubic pre-training's: a bicubic run reuses the same file
    rc = quality.main(_quick(tmp_path, write_json=False, task="sr4", rows="a"))
    assert rc == 0 and len(list((tmp_path / "cache").glob("backbone_srvgg_*.safetensors"))) == 1


def test_lq_prior_can_segment_the_frozen_backbones_restoration(tmp_path):
    import torch

    quality = _load("quality")
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    img = qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 64)
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    cache = qd.LabelCache(tmp_path / "labels")
    seen = []

    class Smooth(torch.nn.Module):  # a real (if crude) restorer: 5x5 box filter
        def forward(self, x):
            seen.append(tuple(x.shape))
            return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)

    view = quality.restored_view(Smooth())
    plain = qd.build_priors([("x", img)], sigma=50, realisations=1, noise_base=1, seg=seg, cache=cache)
    restored = qd.build_priors(
        [("x", img)], sigma=50, realisations=1, noise_base=1, seg=seg, cache=cache, segment_view=view
    )
    assert seen == [(1, 3, 64, 64)]  # the view saw the noisy image once
    assert np.array_equal(plain.noisy[0][0], restored.noisy[0][0])  # same LQ input, other prior
    assert np.array_equal(plain.oracle_prior[0], restored.oracle_prior[0])
    # the prior is the segmentation of the restored picture, not of the noisy one
    expected = qd.label_map(view(plain.noisy[0][0]), seg)
    assert np.array_equal(restored.lq_prior[0][0], expected)
    assert not np.array_equal(restored.lq_prior[0][0], plain.lq_prior[0][0])
    rc = quality.main(_quick(tmp_path, segment_input="restored", fusions="sft", rows="bc"))
    assert rc == 0 and json.loads((tmp_path / "r.json").read_text())["segment_input"] == "restored"


def test_only_a_deployable_prior_is_marked_as_meeting_the_target():
    quality = _load("quality")
    name = "CBSD68 σ=50"
    res = {
        "a": {"-": {name: [20.0]}},
        "b": {"sft": {name: [20.10, 20.11, 20.12]}},
        "c": {"sft": {name: [20.00, 20.01, 20.02]}},
        "d": {"sft": {name: [20.20, 20.21, 20.22]}},
    }
    text = quality.render(res, [name], list("abcd"), ["sft"])
    line = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "+0.100 ± 0.000 (separate: yes) **meets target**" in line["b − c (paired per seed)"]
    assert "meets target" not in line["d − c (paired per seed)"]
    assert "oracle above 0.05: not deployable" in line["d − c (paired per seed)"]
    res["b"]["sft"][name] = [20.03, 20.04, 20.01]  # +0.017 and overlapping spreads: not met
    text = quality.render(res, [name], list("abcd"), ["sft"])
    assert "meets target" not in text and "(separate: no)" in text


def test_tune_compares_encodings_with_units_sized_for_each(tmp_path, capsys):
    quality = _load("quality")
    rc = quality.main(
        _quick(tmp_path, write_json=False, tune=True, tune_encodings=["label", "onehot:3"], fusions="sft")
    )
    assert rc == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| slic:")]
    assert [r.split("|")[2].strip() for r in rows] == ["label", "onehot:3"]
    for r in rows:  # (b) − (c) and, in brackets, the oracle's (d) − (c), per validation sigma
        cell = r.split("|")[4]
        assert cell.count("(") == 2 and cell.count("/") == 1


# ------------------------------------------------------------------ distilled prior (rows g, h) and KAIR's DnCNN


def _fake_kair_root(root: Path) -> Path:
    """A KAIR checkout's layout with a random-weight DnCNN of dncnn_25.pth's shape (17 convs, 64
    channels, grey) saved as KAIR saves it (a plain state dict), and two small grey test images."""
    import torch
    from PIL import Image
    from spandrel.architectures.DnCNN import DnCNN

    (root / "model_zoo").mkdir(parents=True)
    (root / "testsets" / "set12").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode="R").state_dict(), root / "model_zoo" / "dncnn_25.pth")
    for i, p in enumerate(sorted((DATA / "Set5").glob("*.png"))[:2]):
        Image.open(p).convert("L").crop((0, 0, 48, 48)).save(root / "testsets" / "set12" / f"{i + 1:02d}.png")
    return root


def test_rows_g_and_h_share_units_batches_and_student_init(tmp_path):
    """g and h start from the same units and student and see the same batches; only the teacher
    differs. With distill weight 0 and no student-only steps, g is h exactly."""
    import torch

    quality = _load("quality")
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    img = qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 64)
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    pset = qd.apply_encoding(
        qd.build_priors(
            [("x", img)], sigma=50, realisations=1, noise_base=1, seg=seg, cache=qd.LabelCache(tmp_path / "l")
        ),
        "boundary",
    )
    args = quality.parse_args(["--quick", "--fusions", "concat", "--rows", "cgh", "--encoding", "boundary"])
    backbone = quality.build_backbone(args.nc, args.nb).eval()
    sched = quality.make_schedule(0, 3, 2, 32, pset)
    models = {}
    for row, w in (("g0", 0.0), ("h", None), ("g", 1.0)):
        m = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels, student=True)
        c = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels)
        units = lambda mm: {k: p for k, p in mm.unit_parameters() if ".spt_unit." in k}  # noqa: E731
        assert all(torch.equal(p, units(c)[k]) for k, p in units(m).items())  # same units as the control's
        quality.train_model(m, sched, pset, "student", 1e-2, 32, distill_weight=w)
        models[row] = m
    x = torch.from_numpy(pset.noisy[0][0]).permute(2, 0, 1)[None]
    with torch.no_grad():
        assert torch.equal(models["g0"](x), models["h"](x))
        assert not torch.equal(models["g"](x), models["h"](x))
    # the student-only steps touch the student and nothing else
    m = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels, student=True)
    before = {k: p.detach().clone() for k, p in m.unit_parameters()}
    quality.train_student_alone(m, sched, pset, 32, 3, 1e-2)
    after = dict(m.unit_parameters())
    assert all(torch.equal(after[k], v) for k, v in before.items() if ".spt_unit." in k)
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("spt_student."))


def test_render_prints_g_against_h_c_and_b():
    quality = _load("quality")
    name = "Set12"
    res = {
        "b": {"concat": {name: [20.02, 20.03, 20.01]}},
        "c": {"concat": {name: [20.00, 20.01, 20.02]}},
        "g": {"concat": {name: [20.10, 20.11, 20.12]}},
        "h": {"concat": {name: [20.04, 20.05, 20.03]}},
    }
    text = quality.render(res, [name], list("bcgh"), ["concat"])
    line = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "+0.070 ± 0.017 (separate: yes) **meets target**" in line["g − h (paired per seed)"]
    assert "+0.100 ± 0.000 (separate: yes) **meets target**" in line["g − c (paired per seed)"]
    assert "g − b (paired per seed)" in line
    for bad in (
        ["--rows", "abi"],
        ["--rows", "g", "--fusions", "pool"],
        ["--student-width", "0"],
        ["--tune-distill", "0.1:x:16"],
        ["--task", "sr4", "--tune-distill", "0.1:0:16"],
        ["--jobs", "0"],
        ["--task", "kair", "--kair-root", "/k", "--tune"],
    ):
        with pytest.raises(SystemExit):
            quality.parse_args(bad)
    assert quality.parse_distill_candidate("0.5:200:8") == (0.5, 200, 8)
    assert quality.parse_args(["--task", "kair", "--kair-root", "/k"]).in_channels == 1


def test_kair_frozen_row_follows_kairs_protocol(tmp_path):
    """KAIR's main_test_dncnn.py: np.random.seed(0) per image, float32 noise not clipped, output
    clamped and rounded to uint8, PSNR with border 0 -- recomputed here by hand with numpy."""
    import torch

    quality = _load("quality")
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    root = _fake_kair_root(tmp_path / "KAIR")
    net = quality.load_kair_dncnn(root / "model_zoo" / "dncnn_25.pth")
    test = [(p.name, qd.load_grey(p)) for p in sorted((root / "testsets" / "set12").glob("*.png"))]
    assert test[0][1].shape == (48, 48, 1) and test[0][1].dtype == np.uint8
    mean, per = quality.kair_frozen_psnr(net, test, 25.0)
    img = test[1][1]
    noisy = np.float32(img / 255.0)
    np.random.seed(seed=0)
    noisy += np.random.normal(0, 25 / 255.0, noisy.shape)
    with torch.no_grad():
        out = net(torch.from_numpy(noisy).permute(2, 0, 1)[None])[0, 0].clamp(0, 1).numpy()
    mse = np.mean((np.uint8((out * 255).round()).astype(np.float64) - img[..., 0]) ** 2)
    assert per[1] == pytest.approx(20 * np.log10(255 / np.sqrt(mse)), abs=1e-9) and mean == pytest.approx(np.mean(per))
    assert qd.jpeg_compress(img, 30).shape == img.shape and not np.array_equal(qd.jpeg_compress(img, 30), img)
    with pytest.raises(FileNotFoundError, match="--kair-root"):
        quality.load_kair_dncnn(tmp_path / "nope" / "dncnn_25.pth")


def test_distill_ladder_script_dry_run_writes_every_table(tmp_path):
    """benchmarks/distill_ladder.sh --dry-run: the GPU script's every step, tiny, on the CPU."""
    import os
    import subprocess

    pytest.importorskip("spandrel")
    root = _fake_kair_root(tmp_path / "KAIR")
    out = tmp_path / "out"
    bare_env = {k: v for k, v in os.environ.items() if k not in ("KAIR_ROOT", "SPT_KAIR_ROOT")}
    refused = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "distill_ladder.sh"), str(out), "--dry-run"],
        env={**bare_env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "set KAIR_ROOT" in refused.stderr and not out.exists()
    env = {**bare_env, "PYTHON": sys.executable, "KAIR_ROOT": str(root), "DATA": str(DATA)}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "distill_ladder.sh"), str(out), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distillation settings chosen on validation" in proc.stderr
    for name in ("denoise", "sr4bd", "kair50", "kairjpeg"):
        payload = json.loads((out / f"{name}.json").read_text())
        assert set(payload["results"]) == set("abcdgh"), name
        text = (out / f"{name}.md").read_text()
        assert "g − h (paired per seed)" in text and "g − c (paired per seed)" in text and "g − b" in text
    assert "KAIR's protocol" in (out / "kair50.md").read_text()
    best = json.loads((out / "tune.json").read_text())["best"]
    assert best["candidate"] in {"0.1:0:8", "1:4:8"}
    summary = (out / "summary.md").read_text().splitlines()[2:]
    assert [ln.split("|")[1:3] for ln in summary] == [
        [f" {n} ", " 0 "] for n in ("tune", "denoise", "kair50", "kairjpeg", "sr4bd")
    ]
