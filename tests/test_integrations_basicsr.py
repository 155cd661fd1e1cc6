"""BasicSR integration: BasicSR's own train_pipeline trains SPT units (real images, real SwinIR)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

basicsr = pytest.importorskip("basicsr.utils.registry", reason="BasicSR (basicsr-fixed) is not installed")
prior_api = pytest.importorskip("spt_adapter.prior", reason="spt_adapter.prior is not available")
if not hasattr(prior_api, "ClassicalMaskProvider"):
    pytest.skip("spt_adapter.prior has no ClassicalMaskProvider yet", allow_module_level=True)

from PIL import Image  # noqa: E402

import spt_adapter  # noqa: E402
from _data import DATA  # small crops of the test sets, committed (tests/data)
from _helpers import run_python

#: the scripts run on the CPU with two threads
CPU = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}

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


def _write_pairs(images: list[Path], root: Path) -> tuple[Path, Path]:
    hq, lq = root / "HQ", root / "LQ"
    hq.mkdir(parents=True)
    lq.mkdir(parents=True)
    for path in images:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        left, top = (w - 64) // 2, (h - 64) // 2
        gt = img.crop((left, top, left + 64, top + 64))
        gt.save(hq / f"{path.stem}.png")
        gt.resize((32, 32), Image.BICUBIC).save(lq / f"{path.stem}.png")
    return hq, lq


def yaml_load(text: str):
    import yaml

    return yaml.safe_load(text)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _yaml(tmp: Path, backbone: Path, total_iter: int, resume_state: str | None, distilled: bool = False) -> Path:
    """BasicSR options; ``distilled``: a student in the spt block, the teacher (``spt_teacher``) in the
    train dataset, and a plain PairedImageDataset for validation (the student makes the prior)."""
    prior = f"{{cache_dir: {tmp / 'priors'}, provider: classical, method: slic, settings: {{n_segments: 8}}}}"
    train_prior = f"spt_teacher: &prior {prior}" if distilled else f"spt_prior: &prior {prior}"
    val_type, val_prior = ("PairedImageDataset", "") if distilled else ("SPTPairedImageDataset", "spt_prior: *prior")
    student = "student: {width: 4, depth: 2}\n  distill: {weight: 0.5, student_steps: 2}" if distilled else ""
    text = f"""
name: spt_swinir_x2
model_type: SPTSRModel
scale: 2
num_gpu: 0
manual_seed: 0

datasets:
  train:
    name: set14_crops
    type: SPTPairedImageDataset
    dataroot_gt: {tmp / "train" / "HQ"}
    dataroot_lq: {tmp / "train" / "LQ"}
    filename_tmpl: '{{}}'
    io_backend: {{type: disk}}
    gt_size: 32
    use_hflip: true
    use_rot: true
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 1
    prefetch_mode: ~
    {train_prior}
  val:
    name: set5_crops
    type: {val_type}
    dataroot_gt: {tmp / "val" / "HQ"}
    dataroot_lq: {tmp / "val" / "LQ"}
    io_backend: {{type: disk}}
    {val_prior}

network_g:
  type: SwinIR
{chr(10).join(f"  {k}: {json.dumps(v)}" for k, v in SWINIR.items())}

spt:
  fusion: sft
  hidden: 8
  prior: *prior
  {student}

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
    path = tmp / f"train_{total_iter}{'_distilled' if distilled else ''}.yml"
    path.write_text(text)
    return path


def _run(tmp: Path, yml: Path) -> str:
    proc = run_python("-m", "spt_adapter.integrations.basicsr.train", "-opt", str(yml), cwd=tmp, timeout=400, env=CPU)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    logs = sorted((tmp / "experiments" / "spt_swinir_x2").glob("train_*.log"))
    return out + "".join(p.read_text() for p in logs)


@pytest.mark.slow
def test_basicsr_train_pipeline_trains_only_units_and_resumes(tmp_path):
    from basicsr.archs.swinir_arch import SwinIR

    images = sorted((DATA / "Set14").glob("*.png"))
    _write_pairs([p for p in images if p.stem != "bridge"][:4], tmp_path / "train")
    _write_pairs(sorted((DATA / "Set5").glob("*.png"))[:2], tmp_path / "val")

    torch.manual_seed(0)
    backbone_net = SwinIR(**SWINIR)
    backbone = tmp_path / "swinir_x2_backbone.pth"
    torch.save({"params": backbone_net.state_dict()}, backbone)
    digest = _sha256(backbone)

    log = _run(tmp_path, _yaml(tmp_path, backbone, total_iter=4, resume_state=None))
    models = tmp_path / "experiments" / "spt_swinir_x2" / "models"
    assert "Model [SPTSRModel] is created." in log
    assert re.search(r"# psnr: \d+\.\d+", log), "validation PSNR through basicsr.metrics is reported"
    assert "trainable params:" in log
    names = sorted(p.name for p in models.iterdir())
    assert names == sorted(f"net_g{e}_{i}.safetensors" for e in ("", "_ema") for i in ("2", "4", "latest")), names
    assert _sha256(backbone) == digest, "the backbone file on disk must not change"

    # the deltas hold only units and load onto the untouched backbone (hash check passes: frozen backbone)
    meta, entries = spt_adapter.read_adapter_header(models / "net_g_4.safetensors")
    assert all(".spt_unit." in k for k in entries)
    assert meta["integration"] == "basicsr" and meta["preset"] == "swinir"
    assert meta["basicsr_backbone"] == str(backbone)
    n_units = sum(int(np.prod(e["shape"])) for e in entries.values())
    assert (models / "net_g_4.safetensors").stat().st_size < 4 * n_units + 64_000
    fresh = SwinIR(**SWINIR)
    fresh.load_state_dict(torch.load(backbone, weights_only=True)["params"])
    model = spt_adapter.load_adapter(fresh, models / "net_g_4.safetensors")
    assert model.spt_targets["default"] == ["layers.0", "layers.1"]
    # BasicSR's test pipeline scores the delta as basicsr.metrics does for the adapter loaded here
    prior = f"{{cache_dir: {tmp_path / 'priors'}, provider: classical, method: slic, settings: {{n_segments: 8}}}}"
    _basicsr_test_matches_our_scores(tmp_path, backbone, models / "net_g_4.safetensors", model, prior=prior)
    last = [p for k, p in model.unit_parameters() if k.endswith("fuse.weight")]
    assert any(float(p.detach().abs().sum()) > 0 for p in last), "the units trained"
    ema = spt_adapter.load_adapter(SwinIR(**SWINIR), models / "net_g_ema_4.safetensors", check_backbone_hash=False)
    g = dict(model.unit_parameters())
    assert any(not torch.equal(p, g[k]) for k, p in ema.unit_parameters()), "net_g_ema has its own (EMA) units"

    # resume from the state saved at iteration 4 and continue to 6
    state = tmp_path / "experiments" / "spt_swinir_x2" / "training_states" / "4.state"
    assert state.is_file()
    log = _run(tmp_path, _yaml(tmp_path, backbone, total_iter=6, resume_state=str(state)))
    assert "Resuming training from epoch" in log and "iter: 4." in log
    assert (models / "net_g_6.safetensors").is_file()
    assert _sha256(backbone) == digest
    resumed = spt_adapter.load_adapter(SwinIR(**SWINIR), models / "net_g_6.safetensors", check_backbone_hash=False)
    six = dict(resumed.unit_parameters())
    assert any(not torch.equal(p, six[k]) for k, p in g.items())


@pytest.mark.slow
def test_basicsr_train_pipeline_trains_a_distilled_prior(tmp_path):
    """BasicSR's own loop trains units + a prior student: 2 student-only iterations, then 2 joint ones;
    the teacher (SLIC) runs on the GT images only; validation and the saved delta need no prior."""
    from basicsr.archs.swinir_arch import SwinIR

    from _distilled import assert_distilled_schedule
    from spt_adapter.prior import PriorCache, make_provider

    images = sorted((DATA / "Set14").glob("*.png"))
    hq, lq = _write_pairs([p for p in images if p.stem != "bridge"][:4], tmp_path / "train")
    _write_pairs(sorted((DATA / "Set5").glob("*.png"))[:2], tmp_path / "val")
    torch.manual_seed(0)
    backbone = tmp_path / "swinir_x2_backbone.pth"
    torch.save({"params": SwinIR(**SWINIR).state_dict()}, backbone)
    digest = _sha256(backbone)

    log = _run(tmp_path, _yaml(tmp_path, backbone, total_iter=4, resume_state=None, distilled=True))
    assert re.search(r"l_distill: [0-9.e+-]+", log), "the distillation loss is logged"
    assert re.search(r"# psnr: \d+\.\d+", log), "validation runs with the student's prior"
    assert _sha256(backbone) == digest
    models = tmp_path / "experiments" / "spt_swinir_x2" / "models"

    def load(path):
        fresh = SwinIR(**SWINIR)
        fresh.load_state_dict(torch.load(backbone, weights_only=True)["params"])
        return spt_adapter.load_adapter(fresh, path)

    model = assert_distilled_schedule(
        models / "net_g_2.safetensors", models / "net_g_4.safetensors", load, torch.rand(1, 3, 16, 16)
    )
    config = model.spt_config["default"]
    assert config.student == {"in_channels": 3, "width": 4, "depth": 2}
    assert config.prior["kind"] == "distilled" and config.prior["teacher"]["method"] == "slic"
    # the teacher saw the whole GT images, never an LQ image (the prior cache holds what it segmented)
    cache, slic = PriorCache(tmp_path / "priors"), make_provider("slic", n_segments=8)

    def rgb(path):
        return np.asarray(Image.open(path).convert("RGB"))

    assert all(cache.contains(rgb(p), slic, "boundary") for p in sorted(hq.iterdir()))
    assert not any(cache.contains(rgb(p), slic, "boundary") for p in sorted(lq.iterdir()))

    # BasicSR's own test pipeline scores the adapter (no prior: its student makes it), with the
    # numbers basicsr.metrics gives for the loaded adapter, and writes the restored images
    _basicsr_test_matches_our_scores(tmp_path, backbone, models / "net_g_4.safetensors", model)


def _basicsr_test_matches_our_scores(tmp: Path, backbone: Path, adapter: Path, model, prior: str | None = None) -> None:
    """``python -m spt_adapter.integrations.basicsr.test`` on the val crops reports the PSNR that
    basicsr.metrics gives for ``model`` (the adapter loaded here); ``prior``: the spt_prior block of
    a provider prior (None: the adapter's student makes it)."""
    from basicsr.metrics import calculate_psnr
    from basicsr.utils import img2tensor, tensor2img

    from spt_adapter.integrations._options import PriorSource, parse_spt_block

    dataset = f"type: SPTPairedImageDataset\n    spt_prior: {prior}" if prior else "type: PairedImageDataset"
    source = PriorSource(parse_spt_block({"prior": yaml_load(prior)}).prior) if prior else None

    text = f"""
name: spt_swinir_x2_test
model_type: SPTSRModel
scale: 2
num_gpu: 0
datasets:
  test_1:
    name: set5_crops
    {dataset}
    dataroot_gt: {tmp / "val" / "HQ"}
    dataroot_lq: {tmp / "val" / "LQ"}
    io_backend: {{type: disk}}
network_g:
  type: SwinIR
{chr(10).join(f"  {k}: {json.dumps(v)}" for k, v in SWINIR.items())}
path:
  pretrain_network_g: {backbone}
  strict_load_g: true
spt:
  adapter: {adapter}
val:
  save_img: true
  suffix: ~  # BasicSR's test options name it
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 2, test_y_channel: true}}
"""
    yml = tmp / "test.yml"
    yml.write_text(text)
    proc = run_python("-m", "spt_adapter.integrations.basicsr.test", "-opt", str(yml), cwd=tmp, timeout=300, env=CPU)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    logs = "".join(p.read_text() for p in (tmp / "results" / "spt_swinir_x2_test").glob("test_*.log"))
    reported = float(re.search(r"# psnr: (\d+\.\d+)", logs).group(1))
    scores = []
    with torch.no_grad():
        for gt_path in sorted((tmp / "val" / "HQ").iterdir()):
            lq = img2tensor(
                np.asarray(Image.open(tmp / "val" / "LQ" / gt_path.name).convert("RGB"))[..., ::-1].astype(np.float32)
                / 255.0,
                bgr2rgb=True,
            )[None]
            if source is None:
                restored = tensor2img(model.eval()(lq))
            else:
                rgb = np.asarray(Image.open(tmp / "val" / "LQ" / gt_path.name).convert("RGB"))
                restored = tensor2img(model.eval()(lq, prior=torch.from_numpy(source(rgb))[None]))
            gt = np.asarray(Image.open(gt_path).convert("RGB"))[..., ::-1]
            scores.append(calculate_psnr(restored, gt, crop_border=2, test_y_channel=True))
    assert reported == pytest.approx(float(np.mean(scores)), abs=1e-4)  # BasicSR logs 4 decimals
    saved = sorted((tmp / "results" / "spt_swinir_x2_test" / "visualization" / "set5_crops").glob("*.png"))
    assert len(saved) == len(scores)
    # the adapter is required: without it test.py would score the identity units (the bare backbone)
    yml.write_text(text.replace(f"  adapter: {adapter}", "  fusion: sft"))
    proc = run_python("-m", "spt_adapter.integrations.basicsr.test", "-opt", str(yml), cwd=tmp, timeout=300, env=CPU)
    assert proc.returncode == 2 and "needs spt.adapter" in proc.stderr and "Traceback" not in proc.stderr


def test_spt_teacher_items_are_the_gt_patch_on_the_lq_grid(tmp_path):
    """spt_teacher: the teacher's map of the whole GT image gets the GT patch's crop and flips and is
    brought to the LQ grid. With a 'teacher' that returns the GT image's red channel, the map must be
    the GT patch's red channel sampled at each LQ pixel's centre; it never sees an LQ image."""
    from spt_adapter.integrations.basicsr.dataset import SPTPairedImageDataset

    hq, lq = _write_pairs(sorted((DATA / "Set14").glob("*.png"))[:2], tmp_path / "train")

    def options(phase):  # (BasicSR pops io_backend.type: a new dict per dataset)
        return {
            "name": "t",
            "phase": phase,
            "scale": 2,
            "dataroot_gt": str(hq),
            "dataroot_lq": str(lq),
            "io_backend": {"type": "disk"},
            "gt_size": 32,
            "use_hflip": True,
            "use_rot": True,
            "filename_tmpl": "{}",
            "spt_teacher": {"cache_dir": str(tmp_path / "priors"), "provider": "classical", "method": "slic"},
        }

    ds = SPTPairedImageDataset(options("train"))
    seen = []

    def red_channel(rgb):
        seen.append(rgb.copy())
        return rgb[None, :, :, 0].astype(np.float32) / 255.0

    ds.prior_source = red_channel
    gts = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(hq.iterdir())]
    for index in range(len(ds)):
        for _ in range(4):  # several random crops and flips
            item = ds[index]
            assert "prior" not in item and item["teacher_prior"].shape == (1, 16, 16)
            assert torch.equal(item["teacher_prior"][0], item["gt"][0, 1::2, 1::2])
    assert seen and all(any(img.shape == g.shape and np.array_equal(img, g) for g in gts) for img in seen)
    assert "teacher_prior" not in SPTPairedImageDataset(options("val"))[0]  # the student makes the prior at validation


def test_sptsrmodel_refuses_datasets_that_do_not_fit_a_distilled_prior():
    from spt_adapter.errors import ConfigError
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    teacher = {"provider": "classical", "method": "slic", "encoding": "boundary"}
    spt = {"student": {"width": 4}, "prior": dict(teacher)}
    with pytest.raises(ConfigError, match=r"datasets\.val\.spt_prior: the model has a distilled prior.*spt_teacher"):
        SPTSRModel({"spt": spt, "path": {}, "datasets": {"val": {"spt_prior": dict(teacher)}}})
    with pytest.raises(
        ConfigError, match=r"datasets\.train\.spt_teacher is the teacher of a distilled prior.*no student"
    ):
        SPTSRModel({"spt": {"prior": dict(teacher)}, "path": {}, "datasets": {"train": {"spt_teacher": dict(teacher)}}})
    other = dict(teacher, method="felzenszwalb")
    with pytest.raises(ConfigError, match=r"datasets\.train\.spt_teacher runs .*felzenszwalb.* but spt\.prior"):
        SPTSRModel({"spt": spt, "path": {}, "datasets": {"train": {"spt_teacher": other}}})
    with pytest.raises(ConfigError, match="both spt_prior .* and spt_teacher"):
        SPTSRModel({"spt": spt, "path": {}, "datasets": {"train": {"spt_teacher": teacher, "spt_prior": teacher}}})
    # a fitting teacher block: the next complaint is the missing backbone
    with pytest.raises(ConfigError, match="pretrain_network_g"):
        SPTSRModel({"spt": spt, "path": {}, "datasets": {"train": {"spt_teacher": dict(teacher)}}})


def test_spt_classes_register_through_the_plugin_hook():
    from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

    from spt_adapter.plugins.manager import register_frameworks

    done = register_frameworks(raise_errors=True)
    assert "basicsr:MODEL_REGISTRY.SPTSRModel" in done["basicsr"]
    assert "SPTSRModel" in MODEL_REGISTRY and "SPTPairedImageDataset" in DATASET_REGISTRY
    register_frameworks(raise_errors=True)  # idempotent: BasicSR's registry rejects duplicates


def test_basicsr_checkpoint_reader_and_claim(tmp_path):
    from basicsr.archs.rrdbnet_arch import RRDBNet
    from basicsr.archs.swinir_arch import SwinIR

    from spt_adapter.plugins.manager import call_hook

    net = RRDBNet(3, 3, num_feat=8, num_block=2, num_grow_ch=4)
    sd = net.state_dict()
    path = tmp_path / "rrdb.pth"
    torch.save({"params": sd, "params_ema": {k: v + 1 for k, v in sd.items()}}, path)
    read = call_hook("spt_adapter_read_checkpoint", path=str(path))
    assert list(read) == list(sd) and torch.equal(read["conv_first.weight"], sd["conv_first.weight"] + 1)  # params_ema
    claim = call_hook("spt_adapter_claim_model", model=net)
    assert (claim.integration, claim.preset, claim.targets) == ("basicsr", "rrdb", ["body.*"])
    assert claim.channels == {"body.0": 8, "body.1": 8}
    claim = call_hook("spt_adapter_claim_model", model=SwinIR(**SWINIR))
    assert (claim.integration, claim.preset) == ("basicsr", "swinir")


def test_sptsrmodel_needs_a_backbone_and_a_valid_spt_block():
    from spt_adapter.errors import ConfigError
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    with pytest.raises(ConfigError, match="pretrain_network_g"):
        SPTSRModel({"spt": {"prior": {"provider": "classical"}}, "path": {}})
    with pytest.raises(ConfigError, match="unknown key.*'fusoin'"):
        SPTSRModel({"spt": {"fusoin": "sft"}, "path": {}})
    with pytest.raises(ConfigError, match="no 'spt' block"):
        SPTSRModel({"path": {}})


def test_sptsrmodel_refuses_a_dataset_prior_the_units_cannot_read(tmp_path):
    from spt_adapter.errors import ConfigError
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    shared = {"provider": "classical", "method": "slic"}  # one block shared by spt.prior and spt_prior, no encoding
    opt = {
        "spt": {"fusion": "pool", "prior": dict(shared)},
        "path": {},
        "datasets": {"train": {"type": "SPTPairedImageDataset", "spt_prior": dict(shared)}},
    }
    # the dataset (built first, blind to the fusion) would make boundary maps; pool reads label maps
    with pytest.raises(ConfigError, match=r"datasets\.train\.spt_prior makes 'boundary' priors.*'label'.*pool"):
        SPTSRModel(opt)
    # stating the encoding in the shared block resolves it: the next complaint is the missing backbone
    opt["spt"]["prior"]["encoding"] = opt["datasets"]["train"]["spt_prior"]["encoding"] = "label"
    with pytest.raises(ConfigError, match="pretrain_network_g"):
        SPTSRModel(opt)
    # the default fusion with no encoding anywhere: both sides make the default, nothing to refuse
    opt = {
        "spt": {"prior": dict(shared)},
        "path": {},
        "datasets": {"val": {"type": "SPTPairedImageDataset", "spt_prior": dict(shared)}},
    }
    with pytest.raises(ConfigError, match="pretrain_network_g"):
        SPTSRModel(opt)
