"""The framework shims train adapters that read no prior (issue 28, item 4): the shared ``spt`` block takes
``fusion: lora`` (``hidden`` the rank, ``lora_alpha``), ``fusion: lowrank`` and ``prior: none``; no provider is
built or recorded, the datasets and models compute and pass no prior, a dataset prior block beside such an
adapter is refused, and BasicSR's / KAIR's own training loops save deltas that load onto the untouched
backbone and give the outputs the frameworks' own test passes gave.

Size: one file for the one behaviour across the three shims (the block, then BasicSR, KAIR and Restormer, each
run through its own loop), as the brief for issue 28 item 4 asks; the option texts are most of its length."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spt_adapter
from _data import DATA  # small crops of the test sets, committed (tests/data)
from _helpers import randomise_with, run_python
from spt_adapter.core.config import DEFAULT_LORA_RANK
from spt_adapter.errors import ConfigError
from spt_adapter.integrations._options import check_dataset_priors, parse_spt_block

pytest.importorskip("peft")

#: the scripts run on the CPU with two threads
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}

#: run in a child process before a framework's own script: any mask provider built, or any segmenter run,
#: fails the run (an adapter that reads no prior must never need one)
NO_SEGMENTER = """
import sys
import skimage.segmentation
import spt_adapter.prior
from spt_adapter.prior import classical

def refuse(*args, **kwargs):
    raise AssertionError("a mask provider was built or run for an adapter that reads no prior")

classical.ClassicalMaskProvider.__init__ = refuse
spt_adapter.prior.make_provider = refuse
skimage.segmentation.slic = skimage.segmentation.felzenszwalb = refuse
"""


# ---------------------------------------------------------------------------------------------
# the spt block
# ---------------------------------------------------------------------------------------------
def test_spt_block_lora_lowrank_and_prior_none_record_no_provider():
    lora = parse_spt_block({"fusion": "lora", "hidden": 2, "lora_alpha": 4, "targets": "body.*"})
    assert not lora.reads_prior and lora.prior is None and not lora.distilled
    config = lora.config
    assert (config.fusion, config.hidden, config.lora_alpha, config.prior_channels) == ("lora", 2, 4.0, 0)
    assert config.prior == {"kind": "none"} and config.targets == ["body.*"]
    # fusion lora with no rank: the rank `spt-adapter train --fusion lora` takes
    assert parse_spt_block({"fusion": "lora"}).config.hidden == DEFAULT_LORA_RANK
    # `prior: none` is the spelling; it also goes with lora, and prior_channels: 0 may stand beside it
    same = parse_spt_block({"fusion": "lora", "hidden": 2, "lora_alpha": 4, "targets": "body.*", "prior": "none"})
    assert same.config == config
    lowrank = parse_spt_block({"fusion": "lowrank", "hidden": 4, "depth": 1})
    assert lowrank.config.prior == {"kind": "none"} and lowrank.config.prior_channels == 0 and lowrank.prior is None
    for block in ({"fusion": "concat", "prior": "none"}, {"fusion": "sft", "prior": "none", "prior_channels": 0}):
        options = parse_spt_block(block)
        assert not options.reads_prior and options.config.prior == {"kind": "none"}
        assert options.config.fusion == block["fusion"]
    # a prior block stays what it was: a provider recorded, one prior channel read
    provider = parse_spt_block({"fusion": "concat", "prior": {"provider": "classical", "method": "slic"}})
    assert provider.reads_prior and provider.config.prior["provider"] == "classical"
    assert provider.prior_spec.method == "slic"
    with pytest.raises(ConfigError, match="internal error: a prior was asked"):
        lora.prior_spec  # noqa: B018


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (
            {"fusion": "lora", "prior": {"provider": "classical"}},
            r"^spt: fusion 'lora' reads no prior, but spt\.prior describes one: drop spt\.prior "
            r"\(or write `prior: none`\)$",
        ),
        (
            {"fusion": "lowrank", "prior": {}},
            r"^spt: fusion 'lowrank' reads no prior, but spt\.prior describes one",
        ),
        (
            {"prior_channels": 0},
            r"^spt\.prior_channels: 0 means no prior, which an spt block spells `prior: none`: add it",
        ),
        (
            {"prior_channels": 0, "prior": {"provider": "classical"}},
            r"^spt\.prior_channels: 0 means no prior",
        ),
        ({"prior": "slic"}, r"^spt\.prior must be a mapping \(provider:, method:, \.\.\.\) or 'none' \(no prior\)"),
        (
            {"prior": "none", "prior_channels": 2},
            r"^spt\.prior_channels is 2 but the units read no prior \(`prior: none`\): they have no prior channels",
        ),
        (
            {"fusion": "lora", "prior_channels": 1},
            r"^spt\.prior_channels is 1 but the units read no prior \(fusion 'lora'\)",
        ),
        (
            {"fusion": "lora", "student": {"width": 4}},
            r"^spt\.student is for a distilled prior, but the units read no prior \(fusion 'lora'\): drop spt\.student$",
        ),
        (
            {"prior": "none", "distill": {"weight": 0.1}},
            r"^spt\.distill is for a distilled prior, but the units read no prior \(`prior: none`\)",
        ),
        ({"fusion": "lora", "depth": 3}, r"^spt: fusion='lora' has no depth"),
        ({"fusion": "lora", "lora_alpha": 0}, r"^spt: lora_alpha must be a positive number"),
        ({"lora_alpha": 2, "prior": "none"}, r"^spt: lora_alpha is LoRA's scale: it needs fusion='lora'"),
        ({"fusion": "pool", "prior": "none"}, r"^spt: fusion='pool' reads regions from a one-channel label map"),
    ],
)
def test_spt_block_refusals_name_the_cause(block, message):
    with pytest.raises(ConfigError, match=message):
        parse_spt_block(block)


def test_a_dataset_prior_beside_a_no_prior_adapter_is_refused_in_one_line():
    shared = {"provider": "classical", "method": "slic"}
    lora = parse_spt_block({"fusion": "lora"})
    opt = {"datasets": {"train": {"type": "SPTPairedImageDataset", "spt_prior": dict(shared)}}}
    with pytest.raises(
        ConfigError,
        match=r"^datasets\.train\.spt_prior: the adapter reads no prior \(spt fusion 'lora'\), so nothing would "
        r"read this one: drop spt_prior and use `type: PairedImageDataset`$",
    ):
        check_dataset_priors(opt, lora)
    none = parse_spt_block({"fusion": "sft", "prior": "none"})
    opt = {"datasets": {"val": {"type": "MyDataset", "spt_teacher": dict(shared)}}}
    with pytest.raises(
        ConfigError,
        match=r"^datasets\.val\.spt_teacher: the adapter reads no prior \(spt fusion 'sft', prior: none\), so "
        r"nothing would read this one: drop spt_teacher$",
    ):
        check_dataset_priors(opt, none)
    # datasets without a prior block: nothing to refuse
    check_dataset_priors({"datasets": {"train": {"type": "PairedImageDataset"}, "val": None}}, lora)


# ---------------------------------------------------------------------------------------------
# BasicSR: the model and the dataset, in this process
# ---------------------------------------------------------------------------------------------
basicsr = pytest.importorskip("basicsr.utils.registry", reason="BasicSR (basicsr-fixed) is not installed")

SWINIR = dict(
    upscale=2,
    in_chans=3,
    img_size=16,
    window_size=4,
    img_range=1.0,
    depths=[2, 2],
    embed_dim=12,
    num_heads=[2, 2],
    mlp_ratio=2,
    upsampler="pixelshuffledirect",
    resi_connection="1conv",
)
#: LoRA on SwinIR: every RSTB's closing Conv2d and every attention block's qkv Linear
SWINIR_LORA_TARGETS = ["layers.*.conv", "layers.*.residual_group.blocks.*.attn.qkv"]


def _swinir(backbone: Path | None = None):
    from basicsr.archs.swinir_arch import SwinIR

    torch.manual_seed(0)
    net = SwinIR(**SWINIR)
    if backbone is not None:
        net.load_state_dict(torch.load(backbone, weights_only=True)["params"])
    return net.eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sptsrmodel_refuses_a_dataset_prior_for_a_lora_block_before_anything_is_built():
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    opt = {
        "spt": {"fusion": "lora", "hidden": 2},
        "path": {},
        "datasets": {"train": {"type": "SPTPairedImageDataset", "spt_prior": {"provider": "classical"}}},
    }
    with pytest.raises(ConfigError, match=r"datasets\.train\.spt_prior: the adapter reads no prior"):
        SPTSRModel(opt)
    opt["datasets"]["train"] = {"type": "PairedImageDataset"}
    with pytest.raises(ConfigError, match="pretrain_network_g"):  # the next complaint: no backbone
        SPTSRModel(opt)


def test_sptpaireddataset_without_a_prior_block_points_no_prior_adapters_at_paired_image_dataset(tmp_path):
    from spt_adapter.integrations.basicsr.dataset import SPTPairedImageDataset

    opt = {"name": "train", "type": "SPTPairedImageDataset", "phase": "train"}
    with pytest.raises(ConfigError, match=r"reads no prior .* trains on a plain `type: PairedImageDataset`"):
        SPTPairedImageDataset(opt)


def test_an_adapter_of_the_other_prior_kind_is_refused_as_a_starting_point(tmp_path):
    from spt_adapter.core.config import SPTConfig
    from spt_adapter.integrations._netio import check_adapter_matches

    lora_file, sft_file = tmp_path / "lora.safetensors", tmp_path / "sft.safetensors"
    spt_adapter.inject(_swinir(), config=SPTConfig(fusion="lora", hidden=2, targets=SWINIR_LORA_TARGETS)).save_adapter(
        lora_file
    )
    spt_adapter.inject(_swinir(), fusion="sft", hidden=4).save_adapter(sft_file)
    lora_block = parse_spt_block({"fusion": "lora", "hidden": 2, "targets": SWINIR_LORA_TARGETS})
    provider_block = parse_spt_block({"fusion": "sft", "prior": {"provider": "classical"}})
    check_adapter_matches(str(lora_file), lora_block)
    check_adapter_matches(str(sft_file), provider_block)
    with pytest.raises(
        ConfigError,
        match=r"lora\.safetensors has units that read no prior \(lora\) but the spt block asks for a prior "
        r"\(spt\.prior\): use a matching adapter or spt block$",
    ):
        check_adapter_matches(str(lora_file), provider_block)
    with pytest.raises(
        ConfigError,
        match=r"sft\.safetensors has units that read a prior but the spt block asks for no prior \(prior: none",
    ):
        check_adapter_matches(str(sft_file), lora_block)


def _test_options(backbone: Path, adapter: Path | None, spt: dict) -> dict:
    """BasicSR test-mode options, parsed as basicsr.utils.options would leave them (no datasets needed)."""
    return {
        "name": "t",
        "model_type": "SPTSRModel",
        "scale": 2,
        "num_gpu": 0,
        "dist": False,
        "is_train": False,
        "rank": 0,
        "world_size": 1,
        "network_g": {"type": "SwinIR", **SWINIR},
        "path": {"pretrain_network_g": str(backbone), "strict_load_g": True},
        "spt": {**spt, **({"adapter": str(adapter)} if adapter else {})},
        "val": {"metrics": {}},
        "datasets": {},
    }


def test_sptsrmodel_feeds_and_tests_a_lora_adapter_without_a_prior(tmp_path):
    """In test mode the adapter file decides: a LoRA file runs with no prior (the spt block names only the
    file), its output is the loaded adapter's, odd sizes are padded to the window and cropped back; a batch
    that carries a prior is refused."""
    from spt_adapter.core.config import SPTConfig
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    backbone = tmp_path / "swinir.pth"
    torch.save({"params": _swinir().state_dict()}, backbone)
    trained = spt_adapter.inject(
        _swinir(backbone), config=SPTConfig(fusion="lora", hidden=2, lora_alpha=4, targets=SWINIR_LORA_TARGETS)
    )
    g = torch.Generator().manual_seed(1)  # also draws the test input below
    randomise_with(g, (p for _, p in trained.unit_parameters()))
    adapter = tmp_path / "lora.safetensors"
    trained.save_adapter(adapter)
    model = SPTSRModel(_test_options(backbone, adapter, {}))
    lq = torch.rand(1, 3, 18, 22, generator=g)
    model.feed_data({"lq": lq})
    assert model.prior is None
    model.test()
    expected = spt_adapter.load_adapter(_swinir(backbone), adapter).eval()
    from torch.nn import functional as F

    with torch.no_grad():
        padded = F.pad(lq, (0, 2, 0, 2), mode="reflect")  # to the window (4): what SRModel.test ran on
        want = expected(padded)[..., :36, :44]
    assert model.output.shape == (1, 3, 36, 44) and torch.equal(model.output, want)
    with torch.no_grad():
        assert not torch.equal(want, _swinir(backbone)(padded)[..., :36, :44]), "the LoRA units act"
    with pytest.raises(ConfigError, match=r"reads no prior but the batch has a 'prior'.*PairedImageDataset"):
        model.feed_data({"lq": lq, "prior": torch.zeros(1, 1, 18, 22)})


# ---------------------------------------------------------------------------------------------
# BasicSR's own train and test pipelines
# ---------------------------------------------------------------------------------------------
def _write_pairs(images: list[Path], root: Path) -> None:
    from PIL import Image

    for sub in ("HQ", "LQ"):
        (root / sub).mkdir(parents=True)
    for path in images:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        left, top = (w - 64) // 2, (h - 64) // 2
        gt = img.crop((left, top, left + 64, top + 64))
        gt.save(root / "HQ" / f"{path.stem}.png")
        gt.resize((32, 32), Image.BICUBIC).save(root / "LQ" / f"{path.stem}.png")


def _run_without_segmenter(module: str, args: list[str], cwd: Path) -> str:
    code = NO_SEGMENTER + f"\nfrom {module} import main\nsys.exit(main({args!r}))\n"
    proc = run_python("-c", code, cwd=cwd, timeout=400, env=CPU)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _basicsr_yaml(tmp: Path, backbone: Path, total_iter: int = 4, resume_state: str | None = None) -> Path:
    pair = "io_backend: {type: disk}\n    filename_tmpl: '{}'"
    text = f"""
name: spt_swinir_lora
model_type: SPTSRModel
scale: 2
num_gpu: 0
manual_seed: 0
datasets:
  train:
    name: set14_crops
    type: PairedImageDataset
    dataroot_gt: {tmp / "train" / "HQ"}
    dataroot_lq: {tmp / "train" / "LQ"}
    {pair}
    gt_size: 32
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
  val:
    name: set5_crops
    type: PairedImageDataset
    dataroot_gt: {tmp / "val" / "HQ"}
    dataroot_lq: {tmp / "val" / "LQ"}
    {pair}
network_g:
  type: SwinIR
{chr(10).join(f"  {k}: {json.dumps(v)}" for k, v in SWINIR.items())}
spt:
  fusion: lora
  hidden: 2
  lora_alpha: 4
  targets: {json.dumps(SWINIR_LORA_TARGETS)}
path:
  pretrain_network_g: {backbone}
  strict_load_g: true
  resume_state: {resume_state or "~"}
  experiments_root: {tmp / "experiments"}
train:
  ema_decay: 0.9
  optim_g: {{type: Adam, lr: !!float 1e-2, weight_decay: 0, betas: [0.9, 0.99]}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: {total_iter}
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
val:
  val_freq: 2
  save_img: false
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 2, test_y_channel: true}}
logger:
  print_freq: 1
  save_checkpoint_freq: 2
  use_tb_logger: false
"""
    path = tmp / f"train_lora_{total_iter}.yml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_basicsr_train_pipeline_trains_lora_on_swinir_with_no_prior(tmp_path):
    """BasicSR's own train_pipeline trains LoRA (rank 2 on Conv2d and Linear targets of a SwinIR) from an spt
    block with no prior key, on plain PairedImageDatasets, with every segmenter made to fail; the delta holds
    LoRA tensors alone, records no prior, loads onto the untouched backbone, a run resumes from it, and
    BasicSR's own test pipeline writes the images the loaded adapter makes."""
    from basicsr.utils import img2tensor, tensor2img
    from PIL import Image

    images = [p for p in sorted((DATA / "Set14").glob("*.png")) if p.stem != "bridge"][:4]
    _write_pairs(images, tmp_path / "train")
    _write_pairs(sorted((DATA / "Set5").glob("*.png"))[:2], tmp_path / "val")
    backbone = tmp_path / "swinir_x2_backbone.pth"
    torch.save({"params": _swinir().state_dict()}, backbone)
    digest = _sha256(backbone)

    yml = _basicsr_yaml(tmp_path, backbone)
    out = _run_without_segmenter("spt_adapter.integrations.basicsr.train", ["-opt", str(yml)], tmp_path)
    log = out + "".join(p.read_text() for p in (tmp_path / "experiments" / "spt_swinir_lora").glob("train_*.log"))
    assert "Model [SPTSRModel] is created." in log and re.search(r"# psnr: \d+\.\d+", log)
    assert _sha256(backbone) == digest, "the backbone file on disk must not change"
    models = tmp_path / "experiments" / "spt_swinir_lora" / "models"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        f"net_g{e}_{i}.safetensors" for e in ("", "_ema") for i in ("2", "4", "latest")
    )
    meta, entries = spt_adapter.read_adapter_header(models / "net_g_4.safetensors")
    assert entries and all(re.search(r"\.lora\.lora_[AB]\.default\.weight$", k) for k in entries), list(entries)[:3]
    assert meta["basicsr_backbone"] == str(backbone)
    config = spt_adapter.read_adapter_config(models / "net_g_4.safetensors")
    assert (config.fusion, config.hidden, config.lora_alpha) == ("lora", 2, 4.0)
    assert config.prior == {"kind": "none", "task": "sr:2"} and config.prior_channels == 0  # task: from scale

    model = spt_adapter.load_adapter(_swinir(backbone), models / "net_g_4.safetensors").eval()  # hash checked
    assert sorted(model.spt_targets["default"]) == sorted(
        [f"layers.{i}.conv" for i in (0, 1)]
        + [f"layers.{i}.residual_group.blocks.{j}.attn.qkv" for i in (0, 1) for j in (0, 1)]
    )
    b = [p for k, p in model.unit_parameters() if ".lora_B." in k]
    assert b and any(float(p.detach().abs().sum()) > 0 for p in b), "LoRA's B (zero at start) trained"
    ema = spt_adapter.load_adapter(_swinir(backbone), models / "net_g_ema_4.safetensors")
    g = dict(model.unit_parameters())
    assert any(not torch.equal(p, g[k]) for k, p in ema.unit_parameters()), "net_g_ema has its own (EMA) units"

    # resume from the state saved at iteration 4 (the deltas beside it: LoRA, no prior) and continue to 6
    state = tmp_path / "experiments" / "spt_swinir_lora" / "training_states" / "4.state"
    yml = _basicsr_yaml(tmp_path, backbone, total_iter=6, resume_state=str(state))
    out = _run_without_segmenter("spt_adapter.integrations.basicsr.train", ["-opt", str(yml)], tmp_path)
    assert "Resuming training from epoch" in out + "".join(
        p.read_text() for p in (tmp_path / "experiments" / "spt_swinir_lora").glob("train_*.log")
    )
    six = dict(spt_adapter.load_adapter(_swinir(backbone), models / "net_g_6.safetensors").unit_parameters())
    assert any(not torch.equal(p, six[k]) for k, p in g.items()), "training went on from iteration 4"
    assert _sha256(backbone) == digest

    # BasicSR's own test pipeline, on the delta alone (the spt block names only the file)
    test_yml = tmp_path / "test_lora.yml"
    test_yml.write_text(f"""
name: spt_swinir_lora_test
model_type: SPTSRModel
scale: 2
num_gpu: 0
datasets:
  test_1:
    name: set5_crops
    type: PairedImageDataset
    dataroot_gt: {tmp_path / "val" / "HQ"}
    dataroot_lq: {tmp_path / "val" / "LQ"}
    io_backend: {{type: disk}}
network_g:
  type: SwinIR
{chr(10).join(f"  {k}: {json.dumps(v)}" for k, v in SWINIR.items())}
path:
  pretrain_network_g: {backbone}
  strict_load_g: true
spt:
  adapter: {models / "net_g_4.safetensors"}
val:
  save_img: true
  suffix: ~
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 2, test_y_channel: true}}
""")
    _run_without_segmenter("spt_adapter.integrations.basicsr.test", ["-opt", str(test_yml)], tmp_path)
    saved = tmp_path / "results" / "spt_swinir_lora_test" / "visualization" / "set5_crops"
    lqs = sorted((tmp_path / "val" / "LQ").iterdir())
    assert len(list(saved.glob("*.png"))) == len(lqs)
    for lq_path in lqs:
        lq = img2tensor(np.asarray(Image.open(lq_path).convert("RGB"))[..., ::-1].astype(np.float32) / 255.0)[None]
        with torch.no_grad():
            ours = tensor2img(model(lq))  # BGR uint8, as BasicSR writes it
        theirs = np.asarray(Image.open(next(saved.glob(f"{lq_path.stem}_*.png"))).convert("RGB"))[..., ::-1]
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        # the same float computation in two processes: at most a rounding flip of one grey level
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (lq_path.name, diff.max(), (diff > 0).mean())
        with torch.no_grad():
            assert not np.array_equal(tensor2img(_swinir(backbone)(lq)), ours), "the trained LoRA changes the output"


# ---------------------------------------------------------------------------------------------
# KAIR's own main_train_psnr.py (opt-in: SPT_KAIR_ROOT, a KAIR checkout)
# ---------------------------------------------------------------------------------------------
KAIR_ROOT = os.environ.get("SPT_KAIR_ROOT")


def _kair_dncnn(backbone: Path | None = None):
    sys.path.insert(0, KAIR_ROOT)
    try:
        from models.network_dncnn import DnCNN
    finally:
        sys.path.remove(KAIR_ROOT)
    torch.manual_seed(0)
    net = DnCNN(in_nc=1, out_nc=1, nc=8, nb=6, act_mode="R")
    if backbone is not None:
        net.load_state_dict(torch.load(backbone, weights_only=True))
    return net.eval()


@pytest.mark.slow
@pytest.mark.skipif(not KAIR_ROOT, reason="set SPT_KAIR_ROOT to a KAIR checkout to run KAIR's main_train_psnr.py")
@pytest.mark.parametrize("fusion", ["lora", "lowrank"])
def test_kair_main_train_psnr_trains_a_no_prior_adapter_on_dncnn(tmp_path, fusion):
    """KAIR's own loop (JSON options, a grey DnCNN at sigma 25) trains LoRA / lowrank units from an spt block
    with no prior key, every segmenter made to fail; the deltas record no prior, load onto the untouched
    backbone, and KAIR's test pass reports the PSNR the loaded adapter gives on the same noisy images."""
    from PIL import Image

    net = _kair_dncnn()
    backbone = tmp_path / "dncnn.pth"
    torch.save(net.state_dict(), backbone)
    before = backbone.read_bytes()
    train, test = tmp_path / "trainH", tmp_path / "testH"
    train.mkdir()
    test.mkdir()
    for p in sorted((DATA / "Set14").glob("*.png"))[:4]:
        Image.open(p).convert("L").crop((0, 0, 64, 64)).save(train / p.name)
    for p in sorted((DATA / "Set5").glob("*.png"))[:2]:
        Image.open(p).convert("L").crop((0, 0, 40, 40)).save(test / p.name)
    unit = {"fusion": "lora", "hidden": 2, "lora_alpha": 2} if fusion == "lora" else {"fusion": "lowrank", "hidden": 2}
    opt = {
        "task": "spt_dncnn",
        "model": "plain",
        "gpu_ids": [],
        "dist": False,
        "scale": 1,
        "n_channels": 1,
        "path": {"root": str(tmp_path / "runs"), "pretrained_netG": None, "pretrained_netE": None},
        "datasets": {
            "train": {
                "name": "t",
                "dataset_type": "dncnn",
                "dataroot_H": str(train),
                "dataroot_L": None,
                "H_size": 32,
                "sigma": 25,
                "sigma_test": 25,
                "dataloader_shuffle": True,
                "dataloader_num_workers": 0,
                "dataloader_batch_size": 2,
            },
            "test": {
                "name": "v",
                "dataset_type": "dncnn",
                "dataroot_H": str(test),
                "dataroot_L": None,
                "sigma": 25,
                "sigma_test": 25,
            },
        },
        "netG": {
            "net_type": "dncnn",
            "in_nc": 1,
            "out_nc": 1,
            "nc": 8,
            "nb": 6,
            "act_mode": "R",
            "init_type": "default",
        },
        "train": {
            "G_lossfn_type": "l1",
            "G_lossfn_weight": 1.0,
            "E_decay": 0,
            "G_optimizer_type": "adam",
            "G_optimizer_lr": 1e-2,
            "G_optimizer_wd": 0,
            "G_optimizer_clipgrad": None,
            "G_optimizer_betas": [0.9, 0.999],
            "G_optimizer_reuse": True,
            "G_scheduler_type": "MultiStepLR",
            "G_scheduler_milestones": [1000],
            "G_scheduler_gamma": 0.5,
            "G_regularizer_orthstep": None,
            "G_regularizer_clipstep": None,
            "G_param_strict": True,
            "E_param_strict": True,
            "checkpoint_test": 4,
            "checkpoint_save": 4,
            "checkpoint_print": 1,
            "spt_stop_after": 4,
        },
        "spt": {"backbone": str(backbone), **unit},
    }
    path = tmp_path / "train_spt.json"
    path.write_text("// no-prior units on KAIR\n" + json.dumps(opt, indent=1))
    code = NO_SEGMENTER + (
        "\nfrom spt_adapter.integrations.kair.train import main\n"
        f"sys.exit(main(['--opt', {str(path)!r}, '--kair-root', {KAIR_ROOT!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **CPU}
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "stopped after 4 iterations" in out
    assert backbone.read_bytes() == before
    models = tmp_path / "runs" / "spt_dncnn" / "models"
    delta = models / "4_G.safetensors"
    config = spt_adapter.read_adapter_config(delta)
    assert config.fusion == fusion and config.prior == {"kind": "none", "task": "denoise:25"}
    assert config.prior_channels == 0
    assert config.preset == "dncnn"  # the claiming preset's targets: every hidden conv
    model = spt_adapter.load_adapter(_kair_dncnn(backbone), delta).eval()  # the backbone hash is checked
    assert model.spt_targets["default"] == [f"model.{2 * i}" for i in range(1, 5)]
    # KAIR's test pass (checkpoint_test 4) wrote its restored images: the loaded adapter makes them from the
    # same noisy inputs (KAIR's test items: np.random.seed(0) per image), and gives the PSNR KAIR logged
    reported = float(re.search(r"Average PSNR : ([0-9.]+)dB", out).group(1))
    sys.path.insert(0, KAIR_ROOT)
    try:
        from utils import utils_image as util
    finally:
        sys.path.remove(KAIR_ROOT)
    scores = []
    for p in sorted(test.iterdir()):
        clean = util.uint2single(util.imread_uint(str(p), 1))
        noisy = np.copy(clean)
        np.random.seed(seed=0)
        noisy += np.random.normal(0, 25 / 255.0, noisy.shape)
        with torch.no_grad():
            restored = util.tensor2uint(model(util.single2tensor3(noisy)[None]))
        theirs = np.asarray(Image.open(tmp_path / "runs" / "spt_dncnn" / "images" / p.stem / f"{p.stem}_4.png"))
        diff = np.abs(restored.astype(int) - theirs.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-2, (p.name, diff.max(), (diff > 0).mean())
        scores.append(
            util.calculate_psnr(restored, util.tensor2uint(util.single2tensor3(clean)), border=1)
        )  # KAIR: border = scale
    assert reported == pytest.approx(float(np.mean(scores)), abs=0.02)  # KAIR logs 2 decimals
    with torch.no_grad():
        x = torch.rand(1, 1, 24, 24)
        assert not torch.equal(model(x), _kair_dncnn(backbone)(x)), "the units trained"


# ---------------------------------------------------------------------------------------------
# Restormer: the shim's model class on a stand-in for the fork's ImageCleanModel (no checkout here)
# ---------------------------------------------------------------------------------------------
class _ImageCleanModelStandIn:
    """What SPTImageCleanModel takes from Restormer's ImageCleanModel, in the fork's order: ``__init__``
    builds ``network_g`` and loads ``pretrain_network_g`` through ``load_network``; ``feed_train_data`` /
    ``feed_data`` set ``lq`` / ``gt``; ``optimize_parameters`` is one L1 step of ``net_g``; ``nonpad_test``
    runs the EMA network when there is one."""

    def __init__(self, opt):
        from spandrel.architectures.DnCNN import DnCNN

        self.opt, self.device = opt, torch.device("cpu")
        torch.manual_seed(0)
        self.load_network(DnCNN(in_nc=1, out_nc=1, nc=8, nb=6, act_mode="R"), opt["path"]["pretrain_network_g"])
        self.optimizer_g = torch.optim.Adam([p for p in self.net_g.parameters() if p.requires_grad], lr=1e-2)

    def model_to_device(self, net):
        return net.to(self.device)

    def feed_train_data(self, data):
        self.lq, self.gt = data["lq"], data["gt"]

    def feed_data(self, data):
        self.lq, self.gt = data["lq"], data.get("gt")

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        loss = torch.nn.functional.l1_loss(self.output, self.gt)
        loss.backward()
        self.optimizer_g.step()

    def nonpad_test(self, img=None):
        net = self.net_g_ema if hasattr(self, "net_g_ema") else self.net_g
        with torch.no_grad():
            self.output = net(self.lq if img is None else img)

    def save_training_state(self, epoch, current_iter):
        pass


@pytest.fixture()
def no_segmenter(monkeypatch):
    """Every mask provider made to fail when built or run (a no-prior adapter must never need one)."""
    import skimage.segmentation

    import spt_adapter.prior
    from spt_adapter.prior import classical

    def refuse(*args, **kwargs):
        raise AssertionError("a mask provider was built or run for an adapter that reads no prior")

    monkeypatch.setattr(classical.ClassicalMaskProvider, "__init__", refuse)
    monkeypatch.setattr(spt_adapter.prior, "make_provider", refuse)
    monkeypatch.setattr(skimage.segmentation, "slic", refuse)


@pytest.mark.parametrize("fusion", ["lora", "lowrank"])
def test_restormer_model_trains_and_tests_no_prior_units_without_computing_one(tmp_path, no_segmenter, fusion):
    pytest.importorskip("spandrel")
    from spandrel.architectures.DnCNN import DnCNN

    from spt_adapter.integrations.restormer.model import make_model_class

    torch.manual_seed(0)
    backbone_net = DnCNN(in_nc=1, out_nc=1, nc=8, nb=6, act_mode="R").eval()
    backbone = tmp_path / "dncnn.pth"
    torch.save({"params": backbone_net.state_dict()}, backbone)
    opt = {
        "path": {"pretrain_network_g": str(backbone), "models": str(tmp_path / "models")},
        "network_g": {},
        "train": {},
        "scale": 1,
        "datasets": {"train": {"sigma_range": [25, 25]}},
        "spt": {"fusion": fusion, "hidden": 2},
    }
    model = make_model_class(_ImageCleanModelStandIn)(opt)
    assert model.spt_prior is None and not model.spt.reads_prior
    g = torch.Generator().manual_seed(2)
    gt = torch.rand(2, 1, 24, 24, generator=g)
    lq = gt + 0.1 * torch.randn(gt.shape, generator=g)
    for step in range(1, 4):
        model.feed_train_data({"lq": lq, "gt": gt})
        model.optimize_parameters(step)
    model.feed_data({"lq": lq[:1], "gt": gt[:1]})
    model.nonpad_test()
    (tmp_path / "models").mkdir()  # (the fork makes it when the experiment starts)
    model.save(0, 3)
    delta = tmp_path / "models" / "net_g_3.safetensors"
    config = spt_adapter.read_adapter_config(delta)
    assert config.fusion == fusion and config.prior == {"kind": "none", "task": "denoise:25"}
    fresh = DnCNN(in_nc=1, out_nc=1, nc=8, nb=6, act_mode="R")
    fresh.load_state_dict(backbone_net.state_dict())
    loaded = spt_adapter.load_adapter(fresh, delta).eval()  # the backbone hash is checked: it is untouched
    with torch.no_grad():
        assert torch.equal(loaded(lq[:1]), model.output)
        assert not torch.equal(model.output, backbone_net(lq[:1])), "the units trained"
