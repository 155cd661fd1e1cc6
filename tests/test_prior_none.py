""" "No prior" is a recorded, first-class choice (issue 28, item 5): ``inject(model, prior="none")`` /
``SPTConfig(prior_channels=0)`` / ``spt-adapter train --prior none`` (its default without provider flags) make
units without a prior encoder, ``model(x)`` runs them, their file records ``prior: {"kind": "none"}``, and
eval, restore, export and the exported-file runner build no segmenter and compute nothing for them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import spt_adapter
from _data import DATA
from _helpers import image_folder, randomise, small_train_argv
from spt_adapter.cli import main
from spt_adapter.core.config import SCHEMA_VERSION, SPTConfig
from spt_adapter.core.unit import SPTUnit, unit_parameter_shapes, unit_tensor_count
from spt_adapter.errors import ConfigError, PriorError

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402


def _dncnn(seed: int = 0, in_nc: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DnCNN(in_nc=in_nc, out_nc=in_nc, nc=8, nb=8, act_mode="R").eval()


def _trained(spt: spt_adapter.SPTModel, seed: int = 1) -> spt_adapter.SPTModel:
    """Give the units non-zero weights, as training would (a fresh unit is an exact identity)."""
    randomise((p for _, p in spt.unit_parameters()), seed)
    return spt


@pytest.fixture()
def no_segmenter(monkeypatch):
    """SLIC and every classical provider made unavailable: any attempt to build one, or to segment, fails
    the test (a no-prior adapter must never need one)."""
    import skimage.segmentation

    from spt_adapter.prior import classical

    def refuse(*args, **kwargs):
        raise AssertionError("a mask provider was built or run for an adapter that reads no prior")

    monkeypatch.setattr(classical.ClassicalMaskProvider, "__init__", refuse)
    monkeypatch.setattr(skimage.segmentation, "slic", refuse)
    monkeypatch.setattr(skimage.segmentation, "felzenszwalb", refuse)


# ---------------------------------------------------------------------------------------------
# the config and the unit
# ---------------------------------------------------------------------------------------------
def test_prior_channels_zero_is_recorded_as_kind_none_and_contradictions_are_refused():
    cfg = SPTConfig(prior_channels=0, prior={"task": "denoise:25"})
    assert not cfg.reads_prior and cfg.prior == {"task": "denoise:25", "kind": "none"}
    # schema 3 brought prior_channels 0; 4 (LoRA: fusion "lora", lora_alpha) keeps it
    assert SPTConfig.from_json(cfg.to_json()) == cfg and cfg.schema_version == SCHEMA_VERSION >= 3
    assert SPTConfig().reads_prior
    with pytest.raises(ConfigError, match="prior_channels=0"):
        SPTConfig(prior={"kind": "none"})  # a 'none' record with one prior channel
    with pytest.raises(ConfigError, match="records how one is made"):
        SPTConfig(prior_channels=0, prior={"provider": {"provider": "classical", "method": "slic"}})
    with pytest.raises(ConfigError, match="student"):
        SPTConfig(prior_channels=0, student={"in_channels": 3, "width": 8, "depth": 2})
    with pytest.raises(ConfigError, match="pool"):
        SPTConfig(prior_channels=0, fusion="pool")
    with pytest.raises(ConfigError, match="an integer >= 0"):
        SPTConfig(prior_channels=-1)


@pytest.mark.parametrize("fusion", ["concat", "sft"])
def test_a_no_prior_unit_has_no_encoder_starts_as_identity_and_matches_its_shapes(fusion):
    cfg = SPTConfig(fusion=fusion, hidden=6, depth=3, prior_channels=0)
    unit = SPTUnit(10, cfg)
    assert unit.encoder is None and not unit.reads_prior
    shapes = {n: tuple(p.shape) for n, p in unit.named_parameters()}
    assert shapes == unit_parameter_shapes(10, cfg) and len(shapes) == unit_tensor_count(cfg)
    assert not any(n.startswith("encoder") for n in shapes)
    feats = torch.randn(2, 10, 7, 5)
    assert torch.equal(unit(feats, None), feats)  # zero-initialised: exactly the input
    with_prior = sum(p.numel() for p in SPTUnit(10, SPTConfig(fusion=fusion, hidden=6, depth=3)).parameters())
    assert sum(p.numel() for p in unit.parameters()) < with_prior


def test_the_folded_concat_unit_computes_what_a_constant_prior_through_the_encoder_does():
    """Why no encoder is kept: with a constant prior the encoder's output is one vector e (away from the
    zero-padded border), so concat's first fuse conv reads W_f x + (W_e e + b) -- a bias. The folded unit
    with that bias gives the same output inside the border."""
    c, hidden, depth = 8, 6, 2
    torch.manual_seed(0)
    full = SPTUnit(c, SPTConfig(hidden=hidden, depth=depth))
    for p in full.parameters():
        torch.nn.init.normal_(p, std=0.2)
    folded = SPTUnit(c, SPTConfig(hidden=hidden, depth=depth, prior_channels=0))
    feats = torch.randn(1, c, 12, 12)
    ones = torch.ones(1, 1, 12, 12)
    with torch.no_grad():
        assert full.encoder is not None
        e = full.encoder(ones)[0, :, 6, 6]  # the interior value of the encoded constant prior
        w = full.fuse[0].weight[:, :, 0, 0]
        folded.fuse[0].weight.copy_(full.fuse[0].weight[:, :c])
        folded.fuse[0].bias.copy_(full.fuse[0].bias + w[:, c:] @ e)
        folded.fuse[2].load_state_dict(full.fuse[2].state_dict())
        a, b = full(feats, ones), folded(feats, None)
    inner = (slice(None), slice(None), slice(depth, -depth), slice(depth, -depth))  # each 3x3 conv: 1 px border
    torch.testing.assert_close(a[inner], b[inner], rtol=0, atol=1e-5)
    assert float((a - feats).abs().max()) > 1e-2  # the unit really acts


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def test_model_runs_without_a_prior_and_refuses_one():
    net = _dncnn()
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        base = net(x)
    spt = spt_adapter.inject(net, prior="none")
    assert spt.spt_config["default"].prior == {"kind": "none"}
    with torch.no_grad():
        assert torch.equal(spt(x), base)  # identity at start, no prior= needed
        _trained(spt)
        out = spt(x)
    assert not torch.equal(out, base)
    with pytest.raises(PriorError, match="reads no prior"):
        spt(x, prior=torch.ones(2, 1, 20, 20))
    with pytest.raises(PriorError, match="reads no prior"):
        with spt.use_prior(torch.ones(2, 1, 20, 20)):
            pass
    # gradients reach the units only
    spt.train()
    spt(x).mean().backward()
    assert all(p.grad is not None for _, p in spt.unit_parameters())
    assert all(p.grad is None for n, p in spt.base_model.named_parameters() if ".spt_units." not in n)


def test_a_no_prior_adapter_beside_one_with_a_prior():
    spt = spt_adapter.inject(_dncnn(), targets=["model.2"], prior="none", adapter_name="free")
    spt.add_adapter("seg", targets=["model.2"])
    _trained(spt)
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(PriorError, match="the prior is missing"):
        spt(x)  # "seg" is active now
    spt.set_adapter("free")
    assert spt(x).shape == x.shape


# ---------------------------------------------------------------------------------------------
# the file
# ---------------------------------------------------------------------------------------------
def test_saved_no_prior_adapter_records_none_and_loads_back(tmp_path):
    spt = _trained(spt_adapter.inject(_dncnn(), preset="dncnn-light", prior="none", hidden=4))
    path = spt.save_adapter(tmp_path / "a.safetensors", task="denoise:25")
    meta, entries = spt_adapter.read_adapter_header(path)
    assert json.loads(meta["prior"]) == {"kind": "none", "task": "denoise:25"}
    assert meta["format_version"] == str(SCHEMA_VERSION)
    assert not any(".encoder." in k for k in entries)
    cfg = spt_adapter.read_adapter_config(path)
    assert cfg.prior_channels == 0 and not cfg.reads_prior and cfg.preset == "dncnn-light"
    loaded = spt_adapter.load_adapter(_dncnn(), path)
    x = torch.rand(1, 3, 18, 18)
    with torch.no_grad():
        assert torch.equal(loaded(x), spt(x))
        with loaded.disable_adapter():
            assert not torch.equal(loaded(x), spt(x))  # the units act


def test_an_old_file_still_reads_its_prior(tmp_path):
    """The committed schema-1 fixture (tests/test_schema_fixture.py checks its outputs) still reads a SLIC
    prior: nothing about 'none' applies to files that record a provider."""
    from pathlib import Path

    from spt_adapter.inference.restore import resolve_prior_source

    fixture = Path(__file__).resolve().parent / "fixtures" / "adapter_v1.safetensors"
    cfg = spt_adapter.read_adapter_config(fixture)
    assert cfg.schema_version == 1 and cfg.reads_prior and cfg.prior_channels == 1
    import importlib.util

    spec = importlib.util.spec_from_file_location("mf", fixture.parent / "make_fixture.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    model = spt_adapter.load_adapter(mf.build_backbone(), fixture)
    source = resolve_prior_source(model)
    assert source.kind == "provider" and source.encoding == "label" and "slic" in repr(source.provider)


# ---------------------------------------------------------------------------------------------
# restore, eval, export, the exported-file runner: no segmenter
# ---------------------------------------------------------------------------------------------
def _image(size=24) -> np.ndarray:
    from PIL import Image

    path = sorted((DATA / "Set5").glob("*.png"))[0]
    return np.asarray(Image.open(path).convert("RGB").crop((0, 0, size + 3, size)))


def test_restore_and_export_compute_no_prior(tmp_path, no_segmenter):
    from spt_adapter.deploy.onnx_restore import load_onnx, restore_image
    from spt_adapter.inference.restore import resolve_prior_source

    spt = _trained(spt_adapter.inject(_dncnn(), prior="none", hidden=4))
    spt.save_adapter(tmp_path / "a.safetensors", task="denoise:25")
    model = spt_adapter.load_adapter(_dncnn(), tmp_path / "a.safetensors")
    source = resolve_prior_source(model)
    assert source.kind == "no-prior" and source.compute(_image()) is None
    with pytest.raises(PriorError, match="reads no prior"):
        resolve_prior_source(model, provider=object())
    image = _image()
    out = spt_adapter.restore(model, image)
    with torch.no_grad():
        x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float()[None] / 255
        ref = (model(x).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(out, ref)
    pytest.importorskip("onnxruntime")
    path = spt_adapter.export(model, tmp_path / "a.onnx")
    net = load_onnx(path)
    assert net.kind == "no-prior" and not net.needs_prior and net.input_names == ["image"]
    torch_free = restore_image(net, image)
    assert np.abs(torch_free.astype(int) - out.astype(int)).max() <= 1  # float32 rounding at most


def _hq(tmp_path, n=2, size=32):
    return image_folder("Set5", tmp_path / "hq", n, (0, 0, size, size))


def _train(ckpt, data, out, *extra):
    return small_train_argv(ckpt, data, out, *extra, iters=2)


@pytest.fixture()
def dncnn_ckpt(tmp_path):
    path = tmp_path / "dncnn.safetensors"
    save_file({k: v.contiguous() for k, v in _dncnn().state_dict().items()}, str(path))
    return path


def test_cli_default_trains_without_a_prior_and_every_command_computes_none(
    tmp_path, dncnn_ckpt, no_segmenter, capsys, monkeypatch
):
    monkeypatch.setenv("SPT_ADAPTER_CACHE", str(tmp_path / "cache"))  # a prior cache would be made here
    data = _hq(tmp_path)
    out = tmp_path / "run"
    assert main(_train(dncnn_ckpt, data, out)) == 0, capsys.readouterr().err  # no prior flag at all
    assert "no prior (--prior none)" in capsys.readouterr().out
    adapter = out / "spt_adapter.safetensors"
    cfg = spt_adapter.read_adapter_config(adapter)
    assert cfg.prior == {"kind": "none", "task": "denoise:25", "channels": 3} and cfg.prior_channels == 0
    assert "prior: none" in (out / "README.md").read_text()
    common = ["--backbone", str(dncnn_ckpt), "--adapter", str(out), "--no-progress"]
    assert main(["eval", *common, "--data", str(data), "--out", str(tmp_path / "ev"), "--crops", "0"]) == 0
    assert main(["restore", str(data), *common, "--out", str(tmp_path / "restored")]) == 0
    said = capsys.readouterr()
    assert "prior: none (the adapter reads no prior)" in said.out + said.err
    assert len(list((tmp_path / "restored").glob("*.png"))) == 2
    assert (
        main(["export", "--backbone", str(dncnn_ckpt), "--adapter", str(out), "--out", str(tmp_path / "a.onnx")]) == 0
    )
    assert main(["restore", str(data), "--backbone", str(tmp_path / "a.onnx"), "--out", str(tmp_path / "r2")]) == 0
    assert len(list((tmp_path / "r2").glob("*.png"))) == 2
    assert not (tmp_path / "cache").exists()  # no prior was ever cached
    # provider flags are refused, naming the reason
    capsys.readouterr()
    assert main(["eval", *common, "--data", str(data), "--out", str(tmp_path / "e2"), "--segments", "8"]) == 1
    assert "reads no prior" in capsys.readouterr().err
    assert main(["restore", str(data), "--backbone", str(tmp_path / "a.onnx"), "--out", str(tmp_path / "r3"),
                 "--provider", "slic"]) == 1  # fmt: skip
    assert "reads no prior" in capsys.readouterr().err
    # --resume continues without a prior; asking for one is refused
    assert main(_train(dncnn_ckpt, data, out, "--iters", "3", "--resume")) == 0
    assert json.loads(spt_adapter.read_adapter_header(adapter)[0]["training"])["step"] == 3
    capsys.readouterr()
    assert main(_train(dncnn_ckpt, data, out, "--iters", "4", "--resume", "--prior", "lq")) == 1
    assert "--prior none" in capsys.readouterr().err


def test_cli_provider_flags_mean_an_lq_prior_and_prior_none_refuses_them(tmp_path, dncnn_ckpt, capsys):
    data = _hq(tmp_path)
    out = tmp_path / "run"
    argv = _train(dncnn_ckpt, data, out, "--segments", "8", "--prior-cache", str(tmp_path / "pc"))
    assert main(argv) == 0, capsys.readouterr().err
    cfg = spt_adapter.read_adapter_config(out / "spt_adapter.safetensors")
    assert cfg.reads_prior and cfg.prior["provider"]["method"] == "slic"
    # resuming it without --prior keeps its LQ prior (the run's own), and --prior none is refused
    assert main(_train(dncnn_ckpt, data, out, "--iters", "3", "--resume", "--prior-cache", str(tmp_path / "pc"))) == 0
    capsys.readouterr()
    assert main(_train(dncnn_ckpt, data, out, "--iters", "4", "--resume", "--prior", "none")) == 1
    assert "drop --prior none" in capsys.readouterr().err
    other = tmp_path / "run2"
    assert main(_train(dncnn_ckpt, data, other, "--prior", "none", "--provider", "slic")) == 1
    assert "--prior none" in capsys.readouterr().err and not other.exists()


def test_peft_tuner_runs_a_no_prior_adapter_without_spt_prior(tmp_path):
    peft = pytest.importorskip("peft")
    spt_peft = pytest.importorskip("spt_adapter.peft")
    from _archs import tiny_esrgan

    config = spt_peft.SPTPeftConfig(
        target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=[1, 3, 16, 16], prior_channels=0
    )
    pm = peft.get_peft_model(tiny_esrgan(), config)
    assert not any(".encoder." in n for n, _ in pm.named_parameters())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        base = pm(x)
        for n, p in pm.named_parameters():
            if ".spt_units." in n:
                p.normal_(std=0.1)
        out = pm(x)  # no spt_prior
    assert not torch.equal(out, base)
    with pytest.raises(PriorError, match="prior_channels=0"):
        pm(x, spt_prior=torch.ones(1, 1, 16, 16))
    pm.save_pretrained(tmp_path / "p")
    again = peft.PeftModel.from_pretrained(tiny_esrgan(), tmp_path / "p")
    with torch.no_grad():
        assert torch.equal(again(x), out)
