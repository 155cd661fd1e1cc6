"""KAIR shim: options with // comments, checkpoints, injection before KAIR's positional load;
opt-in run of the real main_train_psnr.py when SPT_KAIR_ROOT points to a checkout (on the CPU:
``"gpu_ids": []``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

import spt_adapter
from spt_adapter.errors import ConfigError
from spt_adapter.integrations._netio import load_backbone_state, logical_state
from spt_adapter.integrations.kair.options import read_options, spt_options
from spt_adapter.plugins.manager import call_hook

pytest.importorskip("spandrel")


def test_options_with_double_slash_comments(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("""{
  "task": "spt_rrdb"     //  root/task/images-models-options
  , "model": "plain" // "plain" | "plain2"
  , "spt": {"backbone": "model_zoo/rrdb.pth", "fusion": "concat", "prior": {"provider": "classical", "method": "slic"}}
}""")
    opt = read_options(path)
    assert list(opt) == ["task", "model", "spt"] and opt["model"] == "plain"
    options = spt_options(opt)
    assert options.backbone == "model_zoo/rrdb.pth" and options.config.fusion == "concat"
    assert options.config.prior["provider"] == "classical"
    path.write_text('{"model": "plain", "spt": {"fusion": "sft"}}')
    with pytest.raises(ConfigError, match='needs "backbone"'):
        spt_options(read_options(path))
    path.write_text('{"model": "plain" "x": 1}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_options(path)


def test_gpu_ids_empty_list_means_cpu():
    """KAIR's parse needs a list; its ModelBase picks CUDA for any list, so [] reaches the model as
    None (ModelBase's CPU branch) on a copy of the options."""
    from spt_adapter.integrations.kair.model import model_options
    from spt_adapter.integrations.kair.options import check_gpu_ids

    opt = {"gpu_ids": [], "model": "plain"}
    check_gpu_ids(opt)
    given = model_options(opt)
    assert given["gpu_ids"] is None and opt["gpu_ids"] == [] and given["model"] == "plain"
    for bad in (None, 0, "0", [True]):
        with pytest.raises(ConfigError, match=r'"gpu_ids" as a list.*\[\] to train on the CPU'):
            check_gpu_ids({"gpu_ids": bad})
    if torch.cuda.is_available():
        assert model_options({"gpu_ids": [0]})["gpu_ids"] == [0]
    else:
        with pytest.raises(ConfigError, match=r'sees no CUDA device; set "gpu_ids": \[\]'):
            model_options({"gpu_ids": [0]})


def _drunet():
    from spandrel.architectures.DRUNet import DRUNet

    return DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=1)


@pytest.mark.parametrize("layout", ["bare", "params", "params_ema"])
def test_reads_kair_checkpoints(tmp_path, layout):
    sd = _drunet().state_dict()
    path = tmp_path / "drunet.pth"
    torch.save(sd if layout == "bare" else {layout: sd}, path)
    read = call_hook("spt_adapter_read_checkpoint", path=str(path))
    assert list(read) == list(sd) and all(torch.equal(read[k], sd[k]) for k in sd)


def test_injection_before_kair_positional_load():
    """KAIR's G_param_strict=false pairs checkpoint and network tensors by position. Units are
    injected first; the load must still put the i-th checkpoint tensor into the i-th *backbone*
    tensor, and leave the units untouched (so the model stays an identity of the loaded backbone)."""
    torch.manual_seed(0)
    donor = _drunet()
    old_names = OrderedDict((f"old_{i}", v.clone()) for i, v in enumerate(donor.state_dict().values()))
    net = _drunet()
    model = spt_adapter.inject(net)  # drunet preset: m_down*/m_body/m_up*
    units_before = {k: p.clone() for k, p in model.unit_parameters()}
    loaded = load_backbone_state(model, old_names, "by_position", source="old.pth")
    assert len(loaded) == len(old_names)
    for (k, v), ref in zip(logical_state(model).items(), donor.state_dict().values(), strict=True):
        assert torch.equal(v, ref), k
    assert all(torch.equal(p, units_before[k]) for k, p in model.unit_parameters())
    x = torch.rand(1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, prior=torch.rand(1, 1, 16, 16)), donor.eval()(x))
    with pytest.raises(Exception, match="positional load needs equal counts"):
        load_backbone_state(model, OrderedDict(list(old_names.items())[:-1]), "by_position")
    with pytest.raises(Exception, match="missing"):
        load_backbone_state(model, old_names, "strict")


def test_kair_claims_models_network_classes():
    kair_like = type("RRDBNet", (torch.nn.Module,), {"__module__": "models.network_rrdbnet"})
    net = kair_like()
    net.conv_first = torch.nn.Conv2d(3, 8, 3, padding=1)
    net.RRDB_trunk = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1))
    net.trunk_conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    claim = call_hook("spt_adapter_claim_model", model=net)
    assert (claim.integration, claim.preset, claim.targets) == ("kair", "rrdb", ["RRDB_trunk.*"])


KAIR_ROOT = os.environ.get("SPT_KAIR_ROOT")
from _data import DATA  # small crops of the test sets, committed (tests/data)


def _kair_rrdbnet():
    sys.path.insert(0, KAIR_ROOT)
    try:
        from models.network_rrdbnet import RRDBNet
    finally:
        sys.path.remove(KAIR_ROOT)
    return RRDBNet(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, sf=2)


def _kair_setup(tmp_path):
    """A tiny KAIR RRDBNet x2 backbone file, 96 px Set14 crops, KAIR options with an spt block, and a
    function that runs KAIR's main_train_psnr.py through the launcher up to an iteration."""
    net = _kair_rrdbnet()
    backbone = tmp_path / "rrdbnet_x2.pth"
    torch.save(net.state_dict(), backbone)
    train = tmp_path / "trainH"
    train.mkdir()
    from PIL import Image

    for p in sorted((DATA / "Set14").glob("*.png"))[:4]:
        Image.open(p).convert("RGB").crop((0, 0, 96, 96)).save(train / p.name)
    opt = {
        "task": "spt_rrdbnet",
        "model": "plain",
        "gpu_ids": [],
        "dist": False,
        "scale": 2,
        "n_channels": 3,
        "path": {"root": str(tmp_path / "runs"), "pretrained_netG": None, "pretrained_netE": None},
        "datasets": {
            "train": {
                "name": "t",
                "dataset_type": "sr",
                "dataroot_H": str(train),
                "dataroot_L": None,
                "H_size": 32,
                "dataloader_shuffle": True,
                "dataloader_num_workers": 0,
                "dataloader_batch_size": 2,
            },
            "test": {"name": "v", "dataset_type": "sr", "dataroot_H": str(train), "dataroot_L": None},
        },
        "netG": {"net_type": "rrdbnet", "in_nc": 3, "out_nc": 3, "nf": 8, "nb": 2, "gc": 4, "init_type": "default"},
        "train": {
            "G_lossfn_type": "l1",
            "G_lossfn_weight": 1.0,
            "E_decay": 0.9,
            "G_optimizer_type": "adam",
            "G_optimizer_lr": 1e-3,
            "G_optimizer_wd": 0,
            "G_optimizer_clipgrad": None,
            "G_optimizer_betas": [0.9, 0.999],
            "G_optimizer_reuse": True,
            "G_scheduler_type": "MultiStepLR",
            "G_scheduler_milestones": [1000],
            "G_scheduler_gamma": 0.5,
            "G_regularizer_orthstep": None,
            "G_regularizer_clipstep": None,
            "G_param_strict": False,
            "E_param_strict": False,
            "checkpoint_test": 2,
            "checkpoint_save": 2,
            "checkpoint_print": 1,
            "spt_stop_after": 4,
        },
        "spt": {
            "backbone": str(backbone),
            "hidden": 8,
            "prior": {"cache_dir": str(tmp_path / "priors"), "provider": "classical", "method": "slic"},
        },
    }
    path = tmp_path / "train_spt.json"

    def run(stop_after):
        opt["train"]["spt_stop_after"] = stop_after
        path.write_text("// SPT on KAIR\n" + json.dumps(opt, indent=1))
        proc = subprocess.run(
            [sys.executable, "-m", "spt_adapter.integrations.kair.train", "--opt", str(path), "--kair-root", KAIR_ROOT],
            capture_output=True,
            text=True,
            timeout=300,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        return out

    return net, backbone, opt, run


@pytest.mark.slow
@pytest.mark.skipif(not KAIR_ROOT, reason="set SPT_KAIR_ROOT to a KAIR checkout to run KAIR's main_train_psnr.py")
def test_kair_main_train_psnr_trains_units(tmp_path):
    net, backbone, opt, run = _kair_setup(tmp_path)
    RRDBNet = type(net)
    before = backbone.read_bytes()
    out = run(4)
    models = tmp_path / "runs" / "spt_rrdbnet" / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        f"{i}_{k}" for i in (2, 4) for k in ("G.safetensors", "E.safetensors", "optimizerG.pth")
    )
    assert "Average PSNR" in out and "stopped after 4 iterations" in out
    assert backbone.read_bytes() == before
    # only units train: KAIR's define_optimizer names every frozen parameter, its Adam holds the units
    frozen = re.findall(r"Params \[(.+?)\] will not optimize", out)
    n_backbone = len(list(net.parameters()))
    assert len(frozen) == n_backbone and not any("spt_units" in k for k in frozen)
    optim = torch.load(models / "4_optimizerG.pth", weights_only=True)
    meta, entries = spt_adapter.read_adapter_header(models / "4_G.safetensors")
    assert meta["preset"] == "rrdb" and entries and all(".spt_unit." in k for k in entries)
    assert len(optim["param_groups"][0]["params"]) == len(entries)
    # the deltas load onto the untouched backbone file (sha256 check), and training moved the units
    fresh = RRDBNet(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, sf=2)
    fresh.load_state_dict(torch.load(backbone, weights_only=True))
    g2 = dict(spt_adapter.load_adapter(fresh, models / "2_G.safetensors").unit_parameters())
    fresh = RRDBNet(in_nc=3, out_nc=3, nf=8, nb=2, gc=4, sf=2)
    fresh.load_state_dict(torch.load(backbone, weights_only=True))
    g4 = dict(spt_adapter.load_adapter(fresh, models / "4_G.safetensors").unit_parameters())
    assert any(not torch.equal(g2[k], g4[k]) for k in g4)
    # a second run resumes at iteration 4 (KAIR finds 4_optimizerG.pth; the shim the 4_G/4_E deltas)
    out = run(6)
    assert "Loading optimizerG" in out and "stopped after 6 iterations" in out
    assert re.search(r"iter:\s+5, lr", out) and not re.search(r"iter:\s+[1-4], lr", out)
    assert (models / "6_G.safetensors").is_file() and not (models / "8_G.safetensors").exists()
    assert backbone.read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(not KAIR_ROOT, reason="set SPT_KAIR_ROOT to a KAIR checkout to run KAIR's main_train_psnr.py")
def test_kair_main_train_psnr_trains_a_distilled_prior(tmp_path):
    """KAIR's own loop with spt.student: 2 student-only iterations, then joint ones; KAIR's test
    pass (PSNR) runs with the student's prior; the delta carries the student."""
    from _distilled import assert_distilled_schedule

    net, backbone, opt, run = _kair_setup(tmp_path)
    before = backbone.read_bytes()
    opt["spt"].update(student={"width": 4, "depth": 2}, distill={"weight": 0.5, "student_steps": 2})
    out = run(4)
    assert "Average PSNR" in out and re.search(r"distill_loss: [0-9.e+-]+", out)
    assert backbone.read_bytes() == before
    models = tmp_path / "runs" / "spt_rrdbnet" / "models"

    def load(path):
        fresh = _kair_rrdbnet()
        fresh.load_state_dict(torch.load(backbone, weights_only=True))
        return spt_adapter.load_adapter(fresh, path)

    assert_distilled_schedule(models / "2_G.safetensors", models / "4_G.safetensors", load, torch.rand(1, 3, 16, 16))
    # resuming with another teacher is refused, naming both (nothing is trained or written)
    opt["spt"]["prior"]["method"] = "felzenszwalb"
    opt["train"]["spt_stop_after"] = 6
    path = tmp_path / "train_spt.json"
    path.write_text(json.dumps(opt))
    proc = subprocess.run(
        [sys.executable, "-m", "spt_adapter.integrations.kair.train", "--opt", str(path), "--kair-root", KAIR_ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "was distilled from teacher" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (models / "6_G.safetensors").exists()


class _KairLikeItems(torch.utils.data.Dataset):
    """Items as KAIR's SR datasets make them: ``L`` (C, h, w) and ``H`` (C, 2h, 2w) in [0, 1]."""

    def __init__(self, n=3):
        g = torch.Generator().manual_seed(0)
        self.items = [(torch.rand(3, 8, 8, generator=g), torch.rand(3, 16, 16, generator=g)) for _ in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        low, high = self.items[i]
        return {"L": low.clone(), "H": high.clone(), "L_path": f"{i}.png"}


def test_kair_prior_dataset_teacher_sees_only_h_and_maps_to_the_l_grid():
    from spt_adapter.integrations.kair.train import PriorDataset

    seen = []

    def red(rgb):  # a 'provider' whose map is the image's red channel: alignment is checkable
        seen.append(rgb.copy())
        return rgb[None, :, :, 0].astype(np.float32) / 255.0

    items = _KairLikeItems()
    for i, item in enumerate(PriorDataset(items, red, teacher=True)):
        if i == len(items):
            break
        assert "prior" not in item and item["teacher_prior"].shape == (1, 8, 8)
        high = (item["H"].clamp(0, 1) * 255).round() / 255
        assert torch.allclose(item["teacher_prior"][0], high[0, 1::2, 1::2], atol=1e-6)
    assert len(seen) == len(items) and all(img.shape == (16, 16, 3) for img in seen)  # H only, never L
    item = PriorDataset(items, red)[0]  # a provider prior: from L
    assert "teacher_prior" not in item and item["prior"].shape == (1, 8, 8)
