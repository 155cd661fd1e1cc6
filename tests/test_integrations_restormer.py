"""Restormer shim: default targets on spandrel-extra-arches' Restormer, its checkpoints, the spt
YAML block; opt-in run of Restormer's own basicsr/train.py (on the CPU, ``num_gpu: 0``) when
SPT_RESTORMER_ROOT is set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

yaml = pytest.importorskip("yaml")

import spt_adapter
from _archs import RESTORMER_TARGETS
from _helpers import run_python
from spt_adapter.integrations._options import parse_spt_block
from spt_adapter.integrations.restormer.model import pad_prior_like, priors_for
from spt_adapter.plugins.manager import call_hook

pytest.importorskip("spandrel_extra_arches")
from spandrel_extra_arches.architectures.Restormer import Restormer  # noqa: E402


def _restormer():
    torch.manual_seed(0)
    return Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]).eval()


def test_restormer_defaults_identity_and_params_checkpoint(tmp_path):
    net = _restormer()
    torch.save({"params": net.state_dict()}, tmp_path / "restormer.pth")
    state = call_hook("spt_adapter_read_checkpoint", path=str(tmp_path / "restormer.pth"))
    assert list(state) == list(net.state_dict())
    model = spt_adapter.inject(net)
    assert model.spt_targets["default"] == RESTORMER_TARGETS
    assert model.spt_config["default"].integration == "restormer"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        with model.disable_adapter():
            ref = model(x)
        assert torch.equal(model(x, prior=torch.rand(2, 1, 16, 16)), ref)


def test_spt_yaml_block():
    block = yaml.safe_load("""
spt:
  targets: [latent, refinement]
  fusion: concat
  prior: {provider: sam, checkpoint: sam_vit_b_01ec64.pth, model_type: vit_b, cache_dir: priors}
""")["spt"]
    options = parse_spt_block(block)
    assert options.config.targets == ["latent", "refinement"]
    # no prior.encoding: the library's default for the block's fusion (boundary for concat)
    assert options.config.prior == {
        "provider": "sam",
        "encoding": "boundary",
        "settings": {},
        "model_type": "vit_b",
        "checkpoint": "sam_vit_b_01ec64.pth",
    }
    assert options.prior.encoding == "boundary"
    with pytest.raises(spt_adapter.ConfigError, match="checkpoint"):
        parse_spt_block({"prior": {"provider": "sam"}})
    with pytest.raises(
        spt_adapter.ConfigError, match=r"spt\.prior\.provider: unknown mask provider .magic.; installed: .*sam"
    ):
        parse_spt_block({"prior": {"provider": "magic"}})


def test_spt_block_encoding_follows_the_fusion():
    """pool reads regions from a label map: no encoding means label, any other encoding is refused."""
    pool = parse_spt_block(yaml.safe_load("{fusion: pool, prior: {provider: classical, method: slic}}"))
    assert pool.prior.encoding == "label" and pool.config.prior["encoding"] == "label"
    assert parse_spt_block({"prior": {"encoding": None}}).prior.encoding == "boundary"  # `encoding: ~`
    assert parse_spt_block({"fusion": "sft", "prior": {"encoding": "label"}}).config.prior["encoding"] == "label"
    assert parse_spt_block({"fusion": "pool", "prior": {"encoding": "label"}}).prior.encoding == "label"
    for encoding in ("boundary", "onehot:4"):
        with pytest.raises(
            spt_adapter.ConfigError, match=r"spt\.prior\.encoding: fusion 'pool'.*needs encoding 'label'"
        ):
            parse_spt_block({"fusion": "pool", "prior": {"encoding": encoding}})
    with pytest.raises(spt_adapter.ConfigError, match=r"spt\.prior\.encoding: unknown prior encoding 'edges'"):
        parse_spt_block({"prior": {"encoding": "edges"}})


def test_priors_for_a_batch_use_the_cache_api(tmp_path):
    prior_api = pytest.importorskip("spt_adapter.prior")
    if not hasattr(prior_api, "PriorCache"):
        pytest.skip("spt_adapter.prior.PriorCache is not available yet")
    from spt_adapter.integrations._options import PriorSource

    spec = parse_spt_block({"prior": {"cache_dir": str(tmp_path), "provider": "classical", "method": "slic"}}).prior
    batch = torch.rand(2, 3, 24, 24)
    prior = priors_for(batch, PriorSource(spec))
    assert prior.shape[0] == 2 and prior.shape[-2:] == (24, 24)


def test_prior_is_padded_like_pad_test_input():
    """Restormer's pad_test reflect-pads lq at the bottom/right; the prior follows pixel for pixel."""
    lq = torch.rand(1, 3, 28, 36)
    prior = torch.rand(1, 1, 28, 36)
    padded = torch.nn.functional.pad(lq, (0, 4, 0, 4), "reflect")
    out = pad_prior_like(prior, padded)
    assert out.shape[-2:] == (32, 40) and torch.equal(out[..., :28, :36], prior)
    assert torch.equal(out[..., 28:, :36], prior[..., 23:27, :].flip(-2))  # reflected like the image rows
    assert pad_prior_like(prior, lq) is prior


def test_cpu_run_problems_are_named_before_train_py_runs(tmp_path):
    from spt_adapter.integrations.restormer.train import check_cpu_run

    opt = tmp_path / "o.yml"
    opt.write_text("name: exp\nnum_gpu: 8\n")
    assert "set num_gpu: 0" in check_cpu_run(str(tmp_path), ["-opt", str(opt)], cuda=False)
    assert check_cpu_run(str(tmp_path), ["-opt", str(opt)], cuda=True) is None
    opt.write_text("name: exp\nnum_gpu: 0\n")
    assert check_cpu_run(str(tmp_path), ["-opt", str(opt)], cuda=False) is None
    states = tmp_path / "experiments" / "exp" / "training_states"
    states.mkdir(parents=True)
    (states / "4.state").write_bytes(b"")
    assert "would resume from" in check_cpu_run(str(tmp_path), ["-opt", str(opt)], cuda=False)


RESTORMER_ROOT = os.environ.get("SPT_RESTORMER_ROOT")
from _data import DATA  # small crops of the test sets, committed (tests/data)


@pytest.mark.slow
@pytest.mark.skipif(not RESTORMER_ROOT, reason="set SPT_RESTORMER_ROOT to a Restormer checkout")
def test_restormer_checkout_registers_sptimagecleanmodel():
    code = (
        f"import sys; sys.path.insert(0, {RESTORMER_ROOT!r})\n"
        "from spt_adapter.integrations.restormer.train import use_checkout_basicsr; use_checkout_basicsr(sys.path[0])\n"
        "from spt_adapter.plugins.manager import register_frameworks\n"
        "done = register_frameworks(raise_errors=True)\n"
        "assert 'restormer' in done, done\n"
        "from basicsr.models import create_model, _model_modules\n"
        "assert any(hasattr(m, 'SPTImageCleanModel') for m in _model_modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=RESTORMER_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


TRAIN_YML = """
name: spt_tiny_restormer
model_type: SPTImageCleanModel
scale: 1
num_gpu: 0  # Restormer's CPU mode
manual_seed: 10
datasets:
  train:
    name: TrainSet
    type: Dataset_PairedImage  # Dataset_GaussianDenoising's folder mode fails at df766d5 (swz30/Restormer#36)
    dataroot_gt: {train}/gt
    dataroot_lq: {train}/lq
    geometric_augs: true
    filename_tmpl: '{{}}'
    io_backend: {{type: disk}}
    use_shuffle: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    mini_batch_sizes: [2, 1]  # progressive learning: train.py sub-samples and crops the batch itself
    iters: [2, 2]
    gt_size: 32
    gt_sizes: [24, 32]
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: ValSet
    type: Dataset_PairedImage
    dataroot_gt: {val}/gt
    dataroot_lq: {val}/lq
    filename_tmpl: '{{}}'
    io_backend: {{type: disk}}
network_g: {{type: Restormer, inp_channels: 3, out_channels: 3, dim: 8, num_blocks: [1, 1, 1, 1],
  num_refinement_blocks: 1, heads: [1, 1, 1, 1], ffn_expansion_factor: 2.66, bias: false,
  LayerNorm_type: WithBias, dual_pixel_task: false}}
path:
  pretrain_network_g: {backbone}
  param_key: params
  strict_load_g: true
  resume_state: ~
train:
  total_iter: 4
  warmup_iter: -1
  use_grad_clip: true
  ema_decay: 0.9
  scheduler: {{type: CosineAnnealingRestartCyclicLR, periods: [2, 2], restart_weights: [1, 1], eta_mins: [0.0003, 0.000001]}}
  mixing_augs: {{mixup: true, mixup_beta: 1.2, use_identity: true}}
  optim_g: {{type: AdamW, lr: !!float 1e-3, weight_decay: !!float 1e-4, betas: [0.9, 0.999]}}
  pixel_opt: {{type: L1Loss, loss_weight: 1, reduction: mean}}
val:
  window_size: 8
  val_freq: 2
  save_img: false
  rgb2bgr: true
  use_image: false
  max_minibatch: 8
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}
logger:
  print_freq: 1
  save_checkpoint_freq: 2
  use_tb_logger: false
  wandb: {{project: ~, resume_id: ~}}
dist_params: {{backend: gloo, port: 29500}}
spt:
  hidden: 8
  prior: {{cache_dir: {priors}, provider: classical, method: slic}}
"""


def _restormer_run(tmp_path, spt_extra: str = ""):
    """Restormer's own basicsr/train.py through the launcher, 4 iterations on the CPU: a tiny Restormer
    on CBSD68 crops (Gaussian sigma 25 pairs; val sizes not multiples of 8, so pad_test pads).
    Restormer writes experiments/ under its checkout, so a copy of it is used. ``spt_extra``: lines
    added to the spt block. Returns (checkout copy, backbone file, its bytes before, output)."""
    from PIL import Image

    root = tmp_path / "Restormer"
    shutil.copytree(RESTORMER_ROOT, root, ignore=shutil.ignore_patterns(".git", "experiments", "tb_logger", "*.pth"))
    net = _restormer()
    backbone = tmp_path / "restormer_tiny.pth"
    torch.save({"params": net.state_dict()}, backbone)
    before = backbone.read_bytes()
    train, val = tmp_path / "train", tmp_path / "val"
    images = sorted((DATA / "CBSD68").glob("*.png"))
    rng = np.random.default_rng(0)
    for folder, chosen, box in ((train, images[:4], (0, 0, 48, 48)), (val, images[4:6], (0, 0, 36, 28))):
        (folder / "gt").mkdir(parents=True)
        (folder / "lq").mkdir()
        for p in chosen:
            gt = np.asarray(Image.open(p).convert("RGB").crop(box), dtype=np.float64)
            lq = np.clip(np.round(gt + rng.normal(0, 25, gt.shape)), 0, 255).astype(np.uint8)
            Image.fromarray(gt.astype(np.uint8)).save(folder / "gt" / p.name)
            Image.fromarray(lq).save(folder / "lq" / p.name)
    options = root / "Denoising" / "Options" / "spt_tiny.yml"
    options.write_text(
        TRAIN_YML.format(train=train, val=val, backbone=backbone, priors=tmp_path / "priors") + spt_extra
    )
    proc = run_python("-m", "spt_adapter.integrations.restormer.train", "-opt", str(options), cwd=root, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return root, backbone, before, proc


@pytest.mark.slow
@pytest.mark.skipif(not RESTORMER_ROOT, reason="set SPT_RESTORMER_ROOT to a Restormer checkout")
def test_restormer_train_py_trains_units(tmp_path):
    """Only units train, checkpoints are SPT deltas, the backbone file is untouched."""
    root, backbone, before, proc = _restormer_run(tmp_path)
    net = _restormer()
    out = proc.stdout + proc.stderr
    experiment = root / "experiments" / "spt_tiny_restormer"
    models = experiment / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        f"{n}_{i}.safetensors" for n in ("net_g", "net_g_ema") for i in ("2", "4", "latest")
    )
    assert sorted(p.name for p in (experiment / "training_states").iterdir()) == ["2.state", "4.state"]
    assert backbone.read_bytes() == before
    assert "Model [SPTImageCleanModel] is created." in out and re.search(r"# psnr: [0-9.]+", out)
    # only units train: Restormer names every frozen parameter; its optimizer holds the units
    frozen = re.findall(r"Params (\S+) will not be optimized", out)
    assert len(frozen) == len(list(net.parameters())) and not any("spt_units" in k for k in frozen)
    meta, entries = spt_adapter.read_adapter_header(models / "net_g_4.safetensors")
    assert meta["preset"] == "restormer" and meta["integration"] == "restormer"
    assert entries and all(".spt_unit." in k for k in entries)
    assert meta["restormer_backbone"] == str(backbone) and meta["restormer_iter"] == "4"
    state = torch.load(experiment / "training_states" / "4.state", weights_only=True)
    assert state["iter"] == 4 and len(state["optimizers"][0]["param_groups"][0]["params"]) == len(entries)
    # the deltas load onto the untouched backbone file (sha256 checked); training moved the units
    units = {}
    for name in ("net_g_2", "net_g_4", "net_g_ema_4"):
        fresh = _restormer()
        fresh.load_state_dict(torch.load(backbone, weights_only=True)["params"])
        units[name] = dict(spt_adapter.load_adapter(fresh, models / f"{name}.safetensors").unit_parameters())
    assert any(not torch.equal(units["net_g_2"][k], units["net_g_4"][k]) for k in entries)
    assert any(not torch.equal(units["net_g_4"][k], units["net_g_ema_4"][k]) for k in entries)
    if not torch.cuda.is_available():  # train.py would auto-resume onto CUDA: refused in one line
        again = subprocess.run(proc.args, cwd=root, capture_output=True, text=True, timeout=120)
        assert again.returncode == 2 and "would resume from" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
@pytest.mark.skipif(not RESTORMER_ROOT, reason="set SPT_RESTORMER_ROOT to a Restormer checkout")
def test_restormer_train_py_trains_a_distilled_prior(tmp_path):
    """spt.student under Restormer's loop (mixup and progressive crops included): 2 student-only
    iterations, then joint ones; the teacher runs on the (mixed) gt; pad_test validation runs with
    the student's prior; the deltas carry the student."""
    from _distilled import assert_distilled_schedule

    root, backbone, before, proc = _restormer_run(
        tmp_path, "  student: {width: 4, depth: 2}\n  distill: {weight: 0.5, student_steps: 2}\n"
    )
    out = proc.stdout + proc.stderr
    assert re.search(r"l_distill: [0-9.e+-]+", out) and re.search(r"# psnr: [0-9.]+", out)
    assert backbone.read_bytes() == before
    models = root / "experiments" / "spt_tiny_restormer" / "models"

    def load(path):
        fresh = _restormer()
        fresh.load_state_dict(torch.load(backbone, weights_only=True)["params"])
        return spt_adapter.load_adapter(fresh, path)

    assert_distilled_schedule(
        models / "net_g_2.safetensors", models / "net_g_4.safetensors", load, torch.rand(1, 3, 16, 16)
    )
