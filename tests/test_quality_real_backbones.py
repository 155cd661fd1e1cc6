"""benchmarks/quality.py on real pretrained backbones (issue 18): the CDnCNN-B task and the student
that reads the frozen backbone's restoration. Self-contained: images from scikit-image, a MatConvNet
file written the way MATLAB writes one."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


_load = load_script


@pytest.fixture(scope="module")
def quality():
    return _load("quality")


def test_cdncnnb_task_needs_a_dncnn_checkout_and_tests_at_sigma_75(quality, monkeypatch, capsys):
    monkeypatch.delenv("SPT_DNCNN_ROOT", raising=False)
    with pytest.raises(SystemExit):
        quality.parse_args(["--task", "cdncnnb"])
    assert "--dncnn-root" in capsys.readouterr().err
    args = quality.parse_args(["--task", "cdncnnb", "--dncnn-root", "/somewhere/DnCNN", "--quick"])
    assert (args.unit_sigma, args.test_sigmas, args.nb, args.fusions) == (75.0, [75.0], 20, ["concat"])
    with pytest.raises(SystemExit):  # the SR backbone's output is HR-sized: the student cannot read it
        quality.parse_args(["--task", "sr4", "--student-input", "restored"])


def test_cdncnnb_loads_the_converted_matconvnet_model(quality, tmp_path):
    convert_test = _load("test_convert_dncnn_mat", "tests")
    layers = convert_test.matlab_dncnn(3, width=64, convs=20, seed=3)
    (tmp_path / "model").mkdir()
    convert_test.write_simplenn(tmp_path / "model" / "GD_Color_Blind.mat", layers)
    net, info = quality.load_cdncnn_b(tmp_path)
    assert info["nb"] == 20 and not net.training
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x), convert_test.reference_forward(layers, x), rtol=0, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="--dncnn-root"):
        quality.load_cdncnn_b(tmp_path / "nowhere")


def _pset(tmp_path):
    qd = sys.modules["_quality_data"]
    img = qd.centre_crop(skdata.astronaut(), 64)
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    return qd.apply_encoding(
        qd.build_priors(
            [("astronaut", img)],
            sigma=50,
            realisations=1,
            noise_base=1,
            seg=seg,
            cache=qd.LabelCache(tmp_path / "labels"),
        ),
        "boundary",
    )


def test_student_reading_the_restoration_trains_only_student_and_units(quality, tmp_path):
    pset = _pset(tmp_path)
    args = quality.parse_args(
        ["--quick", "--rows", "cgh", "--encoding", "boundary", "--fusions", "concat", "--student-input", "restored"]
    )
    backbone = quality.build_backbone(args.nc, args.nb).eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels, student=True)
    assert isinstance(model, quality.StudentReadsRestored)
    # the student reads [LQ, backbone(LQ)]: twice the image channels
    assert model.student().net.in_channels == 2 * args.in_channels
    control = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels)
    units = {k: p for k, p in model.spt.unit_parameters()}
    assert all(torch.equal(p, units[k]) for k, p in control.unit_parameters())  # rows start from the same units
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in units.values()} | {id(p) for p in model.student().net.parameters()}
    sched = quality.make_schedule(0, 3, 2, 32, pset)
    h = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels, student=True)
    quality.train_model(h, sched, pset, "student", 1e-2, 32, distill_weight=None)
    g0 = quality.make_spt(backbone, "concat", args, 0, pset.prior_channels, student=True)
    quality.train_model(g0, sched, pset, "student", 1e-2, 32, distill_weight=0.0)
    quality.train_model(model, sched, pset, "student", 1e-2, 32, distill_weight=1.0, student_steps=2)
    x = torch.from_numpy(pset.noisy[0][0]).permute(2, 0, 1)[None]
    with torch.no_grad():
        out, logits = model(x, return_prior_logits=True)
        assert out.shape == x.shape and logits.shape == (1, pset.prior_channels, *x.shape[-2:])
        assert torch.equal(g0(x), h(x))  # no teacher weight, no student-only steps: g is h
        assert not torch.equal(model(x), h(x))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())  # the backbone never trains
    # the student's input really is the backbone's restoration: change the backbone, the prior changes
    with torch.no_grad():
        before = model.student().logits(x)
        model.student()._frozen[0].model[0].bias.add_(0.5)
        assert not torch.equal(model.student().logits(x), before)


def test_distill_ladder_refuses_cdncnnb75_without_a_dncnn_checkout(tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("DNCNN_ROOT", "SPT_DNCNN_ROOT")}
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "distill_ladder.sh"), str(out), "--dry-run", "--tasks", "tune cdncnnb75"],
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "set DNCNN_ROOT" in proc.stderr and not out.exists()


def test_dncnn3bd_inputs_are_the_upsampled_bd_luma_scored_with_a_border(quality, tmp_path):
    from PIL import Image

    from spt_adapter.data.images import imresize_bicubic
    from spt_adapter.inference.metrics import rgb_to_y

    qd = sys.modules["_quality_data"]
    rgb = qd.mod_crop(skdata.astronaut()[:130, :150], 4)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    y = qd.load_y(tmp_path / "colour.png")
    assert y.shape == (*rgb.shape[:2], 1) and y.dtype == np.uint8
    assert np.abs(y.astype(float) - rgb_to_y(rgb)).max() <= 0.5  # the BT.601 Y (16-235), rounded
    assert np.array_equal(qd.load_y(tmp_path / "grey.png")[..., 0], rgb[..., 0])  # a grey file is its own Y
    seg = qd.Segmenter.parse("felzenszwalb:scale=300,sigma=0.8,min_size=50")
    pset = qd.build_upsampled_sr_priors(
        [("a", y)], scale=4, seg=seg, cache=qd.LabelCache(tmp_path / "l"), degradation="bd"
    )
    assert (pset.scale, pset.border) == (1, 4)
    up = pset.noisy[0][0]
    assert up.shape == y.shape and up.dtype == np.float32
    expected = imresize_bicubic(qd.bd_lq(y, 4).astype(np.float64) / 255.0, size=y.shape[:2]).reshape(y.shape)
    np.testing.assert_allclose(up, expected, atol=1e-6)
    assert pset.lq_prior[0][0].shape == y.shape[:2] and pset.oracle_prior[0].shape == y.shape[:2]
    # the border is left out of the PSNR: a wrong border strip does not change the score
    out = pset.clean[0].copy()
    out[:4] = 0
    assert quality.psnr_rgb(out, pset.clean[0], pset.border) == float("inf")
    assert quality.psnr_rgb(out, pset.clean[0], 0) < 40
    with pytest.raises(SystemExit):
        quality.parse_args(["--task", "dncnn3bd", "--segment-input", "restored", "--dncnn-root", "/x"])
    args = quality.parse_args(["--task", "dncnn3bd", "--dncnn-root", "/x", "--quick"])
    assert (args.in_channels, args.nb, args.fusions) == (1, 20, ["concat"])
