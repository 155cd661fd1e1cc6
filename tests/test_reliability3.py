"""Issue 19: bad input and faults, round 3. Each test is one numbered case of the issue (the number is
in its name). Real architectures (spandrel SwinIR), real files on disk, the real CLI in-process."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spt_adapter
from _archs import small_swinir
from _helpers import one_line_error as _one_line_error
from _helpers import run_cli as _run
from _helpers import run_python
from spt_adapter.cli import main
from spt_adapter.errors import RestoreError

pytest.importorskip("spandrel")
sys.path.insert(0, str(Path(__file__).resolve().parent))


#: a tiny BasicSR SwinIR x2 (window 8), as a network_g block of a YAML options file would give it
TINY_SWINIR_X2 = dict(
    upscale=2,
    in_chans=3,
    img_size=16,
    window_size=8,
    img_range=1.0,
    depths=[2],
    embed_dim=12,
    num_heads=[2],
    mlp_ratio=2,
    upsampler="pixelshuffledirect",
    resi_connection="1conv",
)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


# ---------------------------------------------------------------------------------------------
# A1 / C15. tiles on a windowed backbone, image sizes that are not window multiples
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w,tile", [(61, 77, 48), (45, 93, 44)])
def test_a1_swinir_tiled_equals_whole_on_sizes_that_are_not_window_multiples(h, w, tile):
    """Before: border tiles ended at the image edge unpadded while the whole image was reflect-padded to
    the window, so the last rows/columns differed (17 dB in the border strip, 25 dB overall)."""
    from spt_adapter.inference import restore as R
    from test_restore import photo, swinir

    model = swinir()  # x2, window 8, attention weights at PyTorch's default scale
    assert h % R.window_size(model) and w % R.window_size(model)
    img = photo(h, w).astype(np.float32) / 255
    whole = spt_adapter.restore(model, img)
    tiled = spt_adapter.restore(model, img, tile=tile)
    assert tiled.shape == whole.shape == (2 * h, 2 * w, 3)
    # the same tolerance as test_restore's window-multiple case, over the image and its border strips
    for a, b in ((whole, tiled), (whole[-10:], tiled[-10:]), (whole[:, -10:], tiled[:, -10:])):
        assert _psnr(a, b) >= 45


def test_c15_an_overlap_leaving_a_stride_of_one_is_refused_before_any_tile_runs(tmp_path, capsys):
    from test_restore import photo, swinir

    with pytest.raises(RestoreError, match="advances 1 pixel"):
        spt_adapter.restore(swinir(), photo(40, 40), tile=33, tile_overlap=32)
    with pytest.raises(RestoreError, match="whole number"):
        spt_adapter.restore(swinir(), photo(40, 40), tile=40.5)
    with pytest.raises(RestoreError, match="needs a model"):
        spt_adapter.restore(None, photo(40, 40))


# ---------------------------------------------------------------------------------------------
# A2. BasicSR's test route on images that are not window multiples (the shipped example YAML)
# ---------------------------------------------------------------------------------------------
def test_a2_basicsr_test_route_runs_the_example_yaml_on_sizes_that_are_not_window_multiples(tmp_path, monkeypatch):
    """Before: a raw window_partition traceback (SPTSRModel did not pad as BasicSR's SwinIRModel does).
    Now the example YAML runs and every saved image is the adapter's output on the whole image."""
    pytest.importorskip("basicsr.archs.swinir_arch")
    monkeypatch.chdir(tmp_path)

    import yaml
    from basicsr.archs.swinir_arch import SwinIR

    from spt_adapter.integrations._netio import attach_units
    from spt_adapter.integrations._options import PriorSource, parse_spt_block

    net_opt = dict(TINY_SWINIR_X2)
    torch.manual_seed(0)
    backbone = tmp_path / "swinir_x2.pth"
    torch.save({"params": SwinIR(**net_opt).state_dict()}, backbone)
    prior = {"cache_dir": None, "provider": "classical", "method": "slic", "settings": {"n_segments": 8}}
    options = parse_spt_block({"fusion": "sft", "hidden": 8, "prior": prior})
    net = SwinIR(**net_opt)
    net.load_state_dict(torch.load(backbone)["params"])
    model = attach_units(net, options)
    with torch.no_grad():  # units that change the output, so a prior that is not padded right shows
        for _, p in model.unit_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    adapter = spt_adapter.save_adapter(model, tmp_path / "net_g_latest.safetensors")
    rng = np.random.default_rng(0)
    for folder in ("HQ", "LQ"):
        (tmp_path / folder).mkdir()
    yy, xx = np.mgrid[0:30, 0:37]  # 30x37: not multiples of the window 8
    for i in range(2):
        lq = np.clip(
            (np.sin(xx / (3 + i)) + np.cos(yy / 4))[..., None] * 60 + 128 + rng.normal(0, 8, (30, 37, 3)), 0, 255
        ).astype(np.uint8)
        Image.fromarray(lq).save(tmp_path / "LQ" / f"im{i}.png")
        Image.fromarray(lq).resize((74, 60), Image.BICUBIC).save(tmp_path / "HQ" / f"im{i}.png")

    example = Path(__file__).resolve().parents[1] / "examples" / "basicsr" / "test_spt_swinir_x2.yml"
    opt = yaml.safe_load(example.read_text())
    data = opt["datasets"]["test_1"]
    data.update(dataroot_gt=str(tmp_path / "HQ"), dataroot_lq=str(tmp_path / "LQ"), spt_prior=dict(prior))
    opt["network_g"] = {"type": "SwinIR", **net_opt}
    opt["path"]["pretrain_network_g"] = str(backbone)
    opt["spt"]["adapter"] = str(adapter)
    yml = tmp_path / "test.yml"
    yml.write_text(yaml.safe_dump(opt))
    cpu = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = run_python(
        "-m", "spt_adapter.integrations.basicsr.test", "-opt", str(yml), cwd=tmp_path, timeout=300, env=cpu
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    source = PriorSource(options.prior)
    for i in range(2):
        (found,) = (tmp_path / "results" / opt["name"] / "visualization" / "Set5").glob(f"im{i}_*.png")
        saved = np.asarray(Image.open(found))
        lq = np.asarray(Image.open(tmp_path / "LQ" / f"im{i}.png"))
        ours = spt_adapter.restore(model, lq, source(lq))  # reflect-padded whole image, prior padded alike
        assert saved.shape == ours.shape == (60, 74, 3)
        assert np.abs(saved.astype(int) - ours).max() <= 1  # BasicSR's and our uint8 rounding


# ---------------------------------------------------------------------------------------------
# A3 / A8. the PEFT route makes load_adapter's checks
# ---------------------------------------------------------------------------------------------
def _peft_folder(tmp_path: Path) -> Path:
    peft = pytest.importorskip("peft")
    import spt_adapter.peft as spt_peft
    from _archs import tiny_esrgan

    config = spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=[1, 3, 16, 16])
    pm = peft.get_peft_model(tiny_esrgan(), config)
    pm.save_pretrained(tmp_path / "good")
    return tmp_path / "good"


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fault", ["nan", "huge", "big", "int32", "duplicate_key"])
def test_a3_peft_route_refuses_what_load_adapter_refuses(tmp_path, fault):
    """Before: NaN / 3e38 / 1e4 / int32 tensors and a config with a key twice loaded through every PEFT
    entry point (NaN output)."""
    import shutil

    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file

    import spt_adapter.peft as spt_peft
    from _archs import tiny_esrgan
    from spt_adapter.errors import SPTError

    good = _peft_folder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    tensors = load_file(str(good / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    if fault in ("nan", "huge", "big", "int32"):
        t = tensors[first].clone()
        if fault == "nan":
            t.view(-1)[0] = float("nan")
        elif fault == "huge":
            t.view(-1)[0] = 3e38
        elif fault == "big":
            t.view(-1)[0] = 1e4
        else:
            t = t.to(torch.int32)
        tensors[first] = t
        save_file(tensors, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    else:  # a second "hidden": json.loads keeps the last one silently
        text = (good / "adapter_config.json").read_text()
        (bad / "adapter_config.json").write_text(text.replace('"hidden": 4', '"hidden": 4, "hidden": 4096', 1))

    backbone = tiny_esrgan()
    before = _state(backbone)
    with pytest.raises(SPTError):
        spt_peft.load_peft_adapter(backbone, bad)
    with pytest.raises(SPTError):
        spt_peft.peft_to_spt(bad, backbone, tmp_path / "a.safetensors")
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(SPTError):
        peft.PeftModel.from_pretrained(backbone, bad)
    assert set(_state(backbone)) == set(before)
    assert all(torch.equal(v, before[k]) for k, v in _state(backbone).items())  # the backbone is as it was


def test_a3_spt_to_peft_refuses_a_file_load_adapter_refuses(tmp_path):
    """Before: spt_to_peft read tensors with safe_open and no checks, so a NaN adapter became a PEFT folder."""
    pytest.importorskip("peft")
    import struct

    import spt_adapter.peft as spt_peft
    from _archs import tiny_esrgan
    from spt_adapter.errors import AdapterFileError

    model = spt_adapter.inject(tiny_esrgan(), targets="model.1.sub.*", config=spt_adapter.SPTConfig(hidden=4))
    path = model.save_adapter(tmp_path / "a.safetensors")
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    data[8 + n : 8 + n + 4] = struct.pack("<f", float("nan"))  # the first value of the first tensor
    path.write_bytes(bytes(data))
    with pytest.raises(AdapterFileError, match="NaN"):
        spt_adapter.load_adapter(tiny_esrgan(), path)
    with pytest.raises(AdapterFileError, match="NaN"):
        spt_peft.spt_to_peft(path, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_c16_a_config_with_an_absurd_hidden_size_is_one_config_error():
    from spt_adapter.errors import ConfigError

    with pytest.raises(ConfigError, match="hidden 1000000 is beyond"):
        spt_adapter.SPTConfig(hidden=1_000_000)


# ---------------------------------------------------------------------------------------------
# A4. EXIF orientation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_a4_an_exif_rotated_photo_is_read_as_viewers_show_it(tmp_path, suffix):
    """Before: the stored (sideways) pixels were read; a phone photo tagged 'rotate 90' came out 40x24."""
    from spt_adapter.data.images import read_image

    stored = np.zeros((40, 24, 3), np.uint8)  # stored 24 wide, 40 high; the top row is bright
    stored[:4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer rotates the stored image 90 degrees clockwise
    path = tmp_path / f"phone{suffix}"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))
    shown = read_image(path)
    assert shown.shape == (24, 40, 3)
    # rotated clockwise: the stored top row is now the right-hand column
    assert shown[:, -4:].mean() > 200 and shown[:, :-8].mean() < 50
    assert read_image(path, channels=1).shape == (24, 40, 1)


# ---------------------------------------------------------------------------------------------
# A7. a prior of another size is refused, not stretched
# ---------------------------------------------------------------------------------------------
def test_a7_restore_refuses_a_prior_of_another_size_or_aspect():
    """Before: a 20x50 prior (another image's) was resized nearest onto a 40x40 image and used."""
    from spt_adapter.errors import PriorError
    from test_restore import photo, swinir

    model = spt_adapter.inject(swinir(stressed=False), "layers.*.residual_group")
    img = photo(40, 40)
    ok = np.ones((1, 40, 40), np.float32) * 0.5
    assert spt_adapter.restore(model, img, ok).shape == (80, 80, 3)
    assert spt_adapter.restore(model, img, np.ones((1, 80, 80), np.float32) * 0.5).shape == (80, 80, 3)  # k = 2
    for shape in ((1, 20, 50), (1, 40, 41), (1, 20, 20), (1, 80, 120)):
        with pytest.raises(PriorError, match=r"the prior is \d+x\d+ but the image is 40x40"):
            spt_adapter.restore(model, img, np.ones(shape, np.float32) * 0.5)


# ---------------------------------------------------------------------------------------------
# A6. restore --skip-existing checks what it skips
# ---------------------------------------------------------------------------------------------
def test_a6_skip_existing_redoes_truncated_empty_and_wrong_size_outputs(tmp_path, capsys):
    """Before: any existing file counted as done, so a PNG cut short by a crash stayed cut short."""
    from test_reliability import _ckpt, _images

    ckpt = _ckpt(tmp_path / "swinir_x1.safetensors")
    data = _images(tmp_path / "in", n=4)
    out = tmp_path / "out"
    argv = ["restore", data, "--backbone", ckpt, "--no-adapter", "--out", out, "--no-progress"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    finished = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert len(finished) == 4
    (out / "img0.png").write_bytes(finished["img0.png"][: len(finished["img0.png"]) // 2])  # truncated
    (out / "img1.png").write_bytes(b"")  # empty
    Image.new("RGB", (10, 10)).save(out / "img2.png")  # decodes, but not at 40x40
    kept = (out / "img3.png").stat().st_mtime_ns
    code, _, err = _run([*argv, "--skip-existing"], capsys)
    assert code == 0, err
    assert "3 restored, 1 skipped" in err and err.count("redone") == 3
    for name in ("img0.png", "img1.png", "img2.png"):
        assert (out / name).read_bytes() == finished[name]  # the same output as the first run
    assert (out / "img3.png").stat().st_mtime_ns == kept  # the finished one was skipped


# ---------------------------------------------------------------------------------------------
# A5. scale and channels are part of what an adapter is checked against, hash or no hash
# ---------------------------------------------------------------------------------------------
def test_a5_an_x1_colour_adapter_is_refused_on_an_x2_or_grey_backbone_even_without_the_hash_check(tmp_path):
    """Before: the fingerprint held the targets' classes and shapes only, so with check_backbone_hash=False
    (--no-hash-check) an x1 colour-denoising adapter loaded onto an x2 SR network and a grey one."""
    import json

    from spt_adapter.errors import FingerprintMismatchError
    from spt_adapter.files.format import read_adapter_header
    from test_reliability import _header, _rewrite

    model = spt_adapter.inject(small_swinir(), "layers.*.residual_group")
    path = spt_adapter.save_adapter(model, tmp_path / "x1.safetensors", task="denoise:25")
    meta, _ = read_adapter_header(path)
    assert json.loads(meta["fingerprint"])["io"] == {"scale": 1, "in_channels": 3, "out_channels": 3}
    for other, words in (
        (small_swinir(scale=2), "upscales x1, this one upscales x2"),
        (small_swinir(channels=1), "takes 3-channel images, this one takes 1-channel images"),
    ):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(FingerprintMismatchError, match=words) as info:
            spt_adapter.load_adapter(other, path, check_backbone_hash=False)
        assert "check_backbone_hash" not in str(info.value)  # the real difference, no override offered
        assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    assert spt_adapter.load_adapter(small_swinir(seed=1), path, check_backbone_hash=False) is not None  # same kind

    # an older file (no "io" in its fingerprint) still loads; its recorded task still guards the scale
    header = _header(path)
    fp = json.loads(header["__metadata__"]["fingerprint"])
    del fp["io"]
    header["__metadata__"]["fingerprint"] = json.dumps(fp, sort_keys=True)
    old = _rewrite(path, tmp_path / "old.safetensors", header)
    assert spt_adapter.load_adapter(small_swinir(), old) is not None
    with pytest.raises(FingerprintMismatchError, match="upscales x1, this one upscales x2.*denoise:25"):
        spt_adapter.load_adapter(small_swinir(scale=2), old, check_backbone_hash=False)


# ---------------------------------------------------------------------------------------------
# A8. headers that say two things, or a task that is no task
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit,words",
    [
        ("prior", "metadata 'prior' .* and config.prior .* disagree"),
        ("task", "recorded task 'sr:banana' is not a task"),
        ("sigma", "recorded task 'denoise:900' is not a task"),
    ],
)
def test_a8_a_header_whose_prior_records_disagree_or_whose_task_is_invalid_is_refused(tmp_path, edit, words):
    """Before: both loaded; which prior (or task) a reader used depended on which record it read."""
    import json

    from _archs import tiny_esrgan
    from spt_adapter.errors import AdapterFileError
    from test_reliability import _fresh_adapter, _rewrite

    path, header = _fresh_adapter(tmp_path, prior={"provider": "classical", "method": "slic", "encoding": "label"})
    meta = header["__metadata__"]
    if edit == "prior":
        meta["prior"] = json.dumps(
            {"provider": {"provider": "classical", "method": "felzenszwalb"}, "encoding": "label"}
        )
    else:
        config = json.loads(meta["config"])
        config["prior"]["task"] = "sr:banana" if edit == "task" else "denoise:900"
        meta["config"] = json.dumps(config, sort_keys=True)
        meta["prior"] = json.dumps(config["prior"], sort_keys=True)
    bad = _rewrite(path, tmp_path / "bad.safetensors", header)
    assert spt_adapter.load_adapter(tiny_esrgan(), path) is not None  # the file as written loads
    with pytest.raises(AdapterFileError, match=words):
        spt_adapter.load_adapter(tiny_esrgan(), bad)


# ---------------------------------------------------------------------------------------------
# B9. an output folder is a run only when it holds what the command wrote
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    from test_reliability import _ckpt, _images, _train_argv

    root = tmp_path_factory.mktemp("rel3")
    env = {
        "root": root,
        "data": _images(root / "hq"),
        "ckpt": _ckpt(root / "swinir_x1.safetensors"),
        "cache": root / "priors",
        "argv": _train_argv,
    }
    env["run"] = root / "run"
    assert main([str(a) for a in _train_argv(env["ckpt"], env["data"], env["run"], env["cache"])]) == 0
    return env


@pytest.mark.parametrize("name", ["train_log.csv", "train_log.json"])
def test_b9_train_out_holding_only_a_users_log_is_refused_and_kept(run_env, tmp_path, capsys, name):
    """Before: train_log.csv/json counted as a run's own files, so a user's log was replaced."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("my own log\n")
    code, _, err = _run(run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"]), capsys)
    assert code == 1 and name in _one_line_error(err)
    assert (out / name).read_text() == "my own log\n" and [p.name for p in out.iterdir()] == [name]


def test_b9_train_resume_refuses_to_replace_a_users_readme_in_the_run(run_env, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_env["run"], out)
    (out / "README.md").write_text("# my notes about this run\n")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"], "--resume", iters=3)
    code, _, err = _run(argv, capsys)
    assert code == 1 and "README.md" in _one_line_error(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_b9_eval_out_refuses_to_replace_a_users_eval_md(run_env, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "eval.md").write_text("my own evaluation notes\n")
    code, _, err = _run(
        [
            "eval",
            "--backbone",
            run_env["ckpt"],
            "--adapter",
            run_env["run"],
            "--data",
            run_env["data"],
            "--task",
            "denoise:25",
            "--out",
            out,
            "--prior-cache",
            run_env["cache"],
        ],
        capsys,
    )
    assert code == 1 and "eval.md" in _one_line_error(err)
    assert (out / "eval.md").read_text() == "my own evaluation notes\n"


def test_b9_restore_refuses_to_replace_an_existing_output_silently(run_env, tmp_path, capsys):
    out = tmp_path / "restored"
    out.mkdir()
    Image.new("RGB", (40, 40), "red").save(out / "img1.png")  # the user's own picture of that name
    mine = (out / "img1.png").read_bytes()
    argv = ["restore", run_env["data"], "--backbone", run_env["ckpt"], "--no-adapter", "--out", out, "--no-progress"]
    code, _, err = _run(argv, capsys)
    assert code == 1 and "img1.png" in _one_line_error(err) and "--overwrite" in err
    assert (out / "img1.png").read_bytes() == mine and [p.name for p in out.iterdir()] == ["img1.png"]
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0 and (out / "img1.png").read_bytes() != mine


# ---------------------------------------------------------------------------------------------
# B10. the demo refuses a folder holding files it did not write
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "planted", ["adapter/my_adapter.safetensors", "data/test/holiday.png", "notes.txt", "eval/crops"]
)
def test_b10_demo_out_with_someone_elses_files_is_refused_and_untouched(tmp_path, capsys, planted):
    """Before: the demo deleted DIR/adapter/ whatever it held and scored every image in DIR/data/test/."""
    out = tmp_path / "demo"
    target = out / planted
    target.parent.mkdir(parents=True)
    if planted == "eval/crops":  # a file where the demo keeps a folder
        target.write_bytes(b"mine")
    else:
        Image.new("RGB", (8, 8)).save(target, format="PNG")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    code, _, err = _run(["demo", "--quick", "--no-progress", "--out", out, "--cache-dir", tmp_path / "cache"], capsys)
    assert code == 1 and planted.split("/")[-1] in _one_line_error(err)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# B11. a cached demo backbone is written once
# ---------------------------------------------------------------------------------------------
def test_b11_a_second_demo_run_never_replaces_the_cached_backbone_under_a_finished_run(tmp_path):
    """Before: two runs sharing a cache both trained the backbone (neither found it at their start) and
    the later one replaced the file the earlier run's adapter was trained on."""
    import dataclasses

    from spt_adapter.demo import DemoSettings, backbone_path, pretrain_backbone, write_images

    settings = DemoSettings.quick()
    train_dir, _ = write_images(tmp_path / "data", settings)
    path = backbone_path(tmp_path / "cache", settings)
    pretrain_backbone(path, train_dir, settings, progress=False)  # the first run's backbone
    first = path.read_bytes()
    # the second run trained too (it started before the first one wrote); other weights, same name
    pretrain_backbone(path, train_dir, dataclasses.replace(settings, seed=1), progress=False)
    assert path.read_bytes() == first
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    pretrain_backbone(path, train_dir, dataclasses.replace(settings, seed=1), progress=False, replace=True)
    assert path.read_bytes() != first  # --retrain-backbone: asked for


# ---------------------------------------------------------------------------------------------
# B12 / C16 / D18. masks: failures that are not the images' own, bad shard settings
# ---------------------------------------------------------------------------------------------
def _mask_images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_b12_masks_on_a_full_disk_exits_1_with_a_count(tmp_path):
    """Before: every image 'failed' with OSError File too large / No space left, and the exit status was 0.
    The file-size limit (RLIMIT_FSIZE) makes the operating system refuse the cache writes, as a full disk does."""
    import subprocess

    images = _mask_images(tmp_path / "imgs")
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
        "from spt_adapter.cli import main\n"
        f"sys.exit(main(['masks', {str(images)!r}, '--provider', 'slic', '--cache', {str(tmp_path / 'c')!r}, "
        "'--no-progress']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "cannot write the prior cache" in proc.stderr and "0 computed before it" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "env,flags,words",
    [
        ({"WORLD_SIZE": "abc"}, [], "WORLD_SIZE='abc' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, [], "RANK='x' is not an integer"),
        ({}, ["--num-shards", "0"], "--num-shards must be at least 1"),
    ],
)
def test_c16_masks_shard_settings_are_one_line(tmp_path, capsys, monkeypatch, env, flags, words):
    """Before: WORLD_SIZE=abc was a raw ValueError traceback; --num-shards 0 said 'must be in 0..-1'."""
    images = _mask_images(tmp_path / "imgs")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, _, err = _run(
        ["masks", images, "--provider", "slic", "--cache", tmp_path / "c", "--no-progress", *flags], capsys
    )
    assert code == 1 and words in _one_line_error(err) and "0..-1" not in err


# ---------------------------------------------------------------------------------------------
# B13. SIGTERM stops train as Ctrl-C does; the log's seconds continue across --resume
# ---------------------------------------------------------------------------------------------
def test_b13_sigterm_saves_the_steps_since_the_last_checkpoint(run_env, tmp_path):
    """Before: SIGTERM (kill, a scheduler's timeout) killed the process: every step since the last
    checkpoint was lost (here all of them: --save-every 0). The signal is real; the only hook sends it
    to the process itself as step 4 begins: step 4 finishes (a signal never splits an update from its
    count), then the run stops with 4 steps saved."""

    from spt_adapter.training.train import adapter_step

    out = tmp_path / "run"
    argv = [str(a) for a in run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"], iters=50)]
    code = (
        "import os, signal, sys\n"
        "import spt_adapter.training.train as tr\n"
        "real = tr._Stepper.__call__\n"
        "calls = []\n"
        "def counted(self, *a, **k):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 4:  # at the start of step 4: steps 1-3 are done\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(self, *a, **k)\n"
        "tr._Stepper.__call__ = counted\n"
        "from spt_adapter.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    proc = run_python("-c", code, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "interrupted" in proc.stderr and "--resume" in proc.stderr
    assert adapter_step(out / "spt_adapter.safetensors") == 4


def test_b13_the_log_seconds_continue_across_resume(run_env, tmp_path, capsys):
    """Before: every resumed call restarted the `seconds` column at 0."""
    import json
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_env["run"], out)
    first = json.loads((out / "train_log.json").read_text())["history"]
    argv = run_env["argv"](
        run_env["ckpt"], run_env["data"], out, run_env["cache"], "--resume", "--log-every", 1, iters=4
    )
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    history = json.loads((out / "train_log.json").read_text())["history"]
    seconds = [r["seconds"] for r in history if "seconds" in r]
    assert [r["step"] for r in history if "seconds" in r][-2:] == [3, 4]
    assert seconds == sorted(seconds) and seconds[-2] >= [r["seconds"] for r in first if "seconds" in r][-1]


def test_b13_the_log_follows_the_run_before_its_first_checkpoint(run_env, tmp_path, capsys, monkeypatch):
    """Before: train_log.csv/.json were written only with a checkpoint, so a run with --save-every
    beyond its length showed an empty folder while it ran (and a kill -9 lost every row). Now the
    rows are there as they come, and a folder holding only such logs (a run that stopped before its
    first checkpoint) may be started again."""
    import csv

    import spt_adapter.training.train as tr

    out = tmp_path / "run"
    seen: list[list[int]] = []
    real = tr._Stepper.__call__

    def looking(self, *a, **k):
        log = out / "train_log.csv"
        seen.append([int(r["step"]) for r in csv.DictReader(log.open())] if log.is_file() else [])
        return real(self, *a, **k)

    monkeypatch.setattr(tr._Stepper, "__call__", looking)
    argv = run_env["argv"](
        run_env["ckpt"], run_env["data"], out, run_env["cache"], "--save-every", 0, "--log-every", 1, iters=4
    )
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert seen == [[], [1], [1, 2], [1, 2, 3]]  # before steps 1-4: no checkpoint yet, the log follows
    # a run that stopped before its first checkpoint leaves only its own logs: a new run may replace them,
    # --resume says there is nothing to resume; a user's own train_log.json is still refused
    (out / "spt_adapter.safetensors").unlink()
    for name in ("train_state.safetensors", "README.md"):
        (out / name).unlink(missing_ok=True)
    code, _, err = _run([*argv, "--resume"], capsys)
    assert code == 1 and "stopped before the first checkpoint" in _one_line_error(err)
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train_log.json").write_text('{"history": []}')
    code, _, err = _run(run_env["argv"](run_env["ckpt"], run_env["data"], mine, run_env["cache"], iters=2), capsys)
    assert code == 1 and "train_log.json" in _one_line_error(err)


# ---------------------------------------------------------------------------------------------
# C16. every bad option of the BasicSR test route is one line
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case,words",
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("list", "must hold a mapping"),
        ("invalid", "is not valid YAML at line"),
        ("spt5", "'spt' must be a mapping"),
        ("nodatasets", "no test dataset"),
    ],
)
def test_c16_bad_basicsr_test_options_are_one_line(tmp_path, capsys, case, words):
    """Before: FileNotFoundError / IsADirectoryError / AttributeError ('list' object has no attribute 'get')
    / a YAML ScannerError / 'int' object has no attribute 'get' / BasicSR's KeyError: raw tracebacks."""
    pytest.importorskip("basicsr.test")
    from spt_adapter.integrations.basicsr.test import main as test_main

    yml = tmp_path / "test.yml"
    text = {
        "list": "- a\n- b\n",
        "invalid": "name: x\n  model_type: [unclosed\n",
        "spt5": "name: x\nmodel_type: SPTSRModel\nspt: 5\ndatasets: {test_1: {name: a}}\n",
        "nodatasets": "name: x\nmodel_type: SPTSRModel\nspt: {adapter: a.safetensors}\n",
    }.get(case)
    if text is not None:
        yml.write_text(text)
    elif case == "folder":
        yml.mkdir()
    code = test_main(["-opt", str(yml)])
    err = capsys.readouterr().err
    assert code == 2 and words in _one_line_error(err)


def test_c16_train_with_a_patch_below_the_window_is_one_line(run_env, tmp_path, capsys):
    """Before: --patch 4 on SwinIR was a raw 'Padding size should be less than ...' traceback at step 1."""
    argv = [str(a) for a in run_env["argv"](run_env["ckpt"], run_env["data"], tmp_path / "out", run_env["cache"])]
    argv[argv.index("--patch") + 1] = "4"
    code, _, err = _run(argv, capsys)
    assert code == 1 and "--patch 4 gives 4-pixel LQ patches" in _one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_c16_eval_on_a_one_pixel_high_image_is_one_line_before_anything_is_written(run_env, tmp_path, capsys):
    """Before: a raw ValueError from SSIM after the other images were scored."""
    data = tmp_path / "val"
    data.mkdir()
    Image.open(run_env["data"] / "img0.png").save(data / "a.png")
    Image.fromarray(np.zeros((1, 40, 3), np.uint8)).save(data / "thin.png")
    out = tmp_path / "report"
    code, _, err = _run(
        ["eval", "--backbone", run_env["ckpt"], "--no-adapter", "--task", "denoise:25", "--data", data, "--out", out],
        capsys,
    )
    assert code == 1 and "thin.png is 40x1 pixels: too small to score" in _one_line_error(err)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# B14. temporary files a killed masks run left are removed by the next run
# ---------------------------------------------------------------------------------------------
def test_b14_masks_removes_stale_temporaries_of_its_own_naming_only(tmp_path, capsys):
    """Before: `.<key>.sptc.<random>.tmp` files left by kill -9 during a write stayed forever."""
    import os
    import time

    images = _mask_images(tmp_path / "imgs")
    cache = tmp_path / "c"
    code, _, err = _run(["masks", images, "--provider", "slic", "--cache", cache, "--no-progress"], capsys)
    assert code == 0, err
    entry = next(cache.rglob("*.sptc"))
    stale = entry.parent / f".{entry.name}.k9x2ab.tmp"  # what atomic_write_bytes leaves when killed
    stale.write_bytes(b"half an entry")
    fresh = entry.parent / f".{entry.name}.q7zz01.tmp"  # a concurrent shard's write in progress
    fresh.write_bytes(b"being written")
    users = entry.parent / "notes.tmp"  # not our naming: never touched
    users.write_bytes(b"mine")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    os.utime(users, (an_hour_ago, an_hour_ago))
    code, _, err = _run(["masks", images, "--provider", "slic", "--cache", cache, "--no-progress"], capsys)
    assert code == 0 and "removed 1 temporary file(s)" in err
    assert not stale.exists() and fresh.exists() and users.read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------
# D17. a mistyped relative --adapter with the Hub out of reach
# ---------------------------------------------------------------------------------------------
def test_d17_a_missing_relative_adapter_says_no_local_folder_and_does_not_retry_for_25_s(tmp_path, monkeypatch):
    """Before: 'runs/x' (no runs/ here) went to the Hub, which huggingface_hub retried five times with
    back-off (~28 s to a refused port), and the message never mentioned the local path."""
    import socket
    import time

    from spt_adapter.errors import AdapterFileError
    from spt_adapter.files.hub import resolve_adapter_file

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(AdapterFileError, match=r"there is no local folder or file runs/x .*cannot be reached"):
        resolve_adapter_file("runs/x")
    assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------------
# D18. a full disk at the first checkpoint promises nothing that does not exist
# ---------------------------------------------------------------------------------------------
def test_d18_full_disk_at_the_first_checkpoint_does_not_promise_a_resume(run_env, tmp_path):
    """Before: 'the previous checkpoint there is intact (... continue with --resume)' with no checkpoint
    there at all. The file-size limit makes the system refuse the first write as a full disk does (the
    priors come from the fixture's cache, so the checkpoint is the first thing written)."""

    out = tmp_path / "run"
    argv = [str(a) for a in run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"])]
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))\n"
        "from spt_adapter.cli import main\n"
        f"sys.exit(main({argv!r}))\n"
    )
    proc = run_python("-c", code, timeout=300, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert "Traceback" not in proc.stderr
    assert "cannot write the checkpoint of step 2" in line and "no earlier checkpoint exists" in line
    assert "--resume" not in line and "intact" not in line


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_d18_a_fifo_device_or_folder_as_backbone_is_named_as_such(tmp_path, capsys, kind):
    """Before: a FIFO or /dev/zero given as --backbone 'does not exist'."""
    import os

    from spt_adapter.errors import BackboneError

    if kind == "fifo":
        path = tmp_path / "backbone.pth"
        os.mkfifo(path)
        words = "is not a regular file (a pipe, socket or device)"
    elif kind == "device":
        path = Path("/dev/zero")
        words = "is not a regular file (a pipe, socket or device)"
    else:
        path = tmp_path / "weights"
        path.mkdir()
        words = "is a folder"
    images = _mask_images(tmp_path / "imgs")
    code, _, err = _run(
        ["restore", images, "--backbone", path, "--no-adapter", "--out", tmp_path / "o", "--no-progress"], capsys
    )
    line = _one_line_error(err)
    assert code == 1 and words in line and "does not exist" not in line
    with pytest.raises(BackboneError, match=words.replace("(", r"\(").replace(")", r"\)")):
        spt_adapter.load_backbone(path)


def test_d18_resume_with_another_hidden_is_refused(run_env, tmp_path, capsys):
    """Before: --resume --hidden 32 on a hidden-16 run silently continued with 16."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_env["run"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"], "--resume", "--hidden", 32, iters=3)
    code, _, err = _run(argv, capsys)
    assert code == 1 and "was trained with --hidden 16, not 32" in _one_line_error(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------------------------------
# E19. files that travel keep their record and say how to restore
# ---------------------------------------------------------------------------------------------
def test_e19_resaving_a_loaded_adapter_keeps_its_training_record_and_the_card_names_restore(run_env, tmp_path):
    """Before: save_pretrained / save_adapter of a loaded adapter dropped the 'training' record (task,
    data, steps), and the card's "how to load" never mentioned spt_adapter.restore."""
    import json

    from spt_adapter.files.format import read_adapter_header
    from test_reliability import _swinir

    original, _ = read_adapter_header(run_env["run"] / "spt_adapter.safetensors")
    assert json.loads(original["training"])["step"] == 2
    backbone = spt_adapter.load_backbone(run_env["ckpt"]).model
    model = spt_adapter.load_adapter(backbone, run_env["run"] / "spt_adapter.safetensors")
    model.save_pretrained(tmp_path / "shared")
    again, _ = read_adapter_header(tmp_path / "shared" / "spt_adapter.safetensors")
    assert again["training"] == original["training"]
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "spt_adapter.restore(model, image)" in card and "step: 2" in card
    # the card names the checkpoint the units were trained on by its file name, not only class and sha256
    assert f"checkpoint the units were trained on: `{run_env['ckpt'].name}`" in card
    # a fresh adapter records no training it never had
    fresh = spt_adapter.inject(_swinir(), "layers.*.residual_group")
    fresh.save_adapter(tmp_path / "fresh.safetensors")
    assert "training" not in read_adapter_header(tmp_path / "fresh.safetensors")[0]


def test_c16_train_with_world_size_2_and_no_master_addr_is_one_line(run_env, tmp_path, capsys, monkeypatch):
    """Before: torch's env:// rendezvous raised a raw ValueError ('MASTER_ADDR expected')."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    code, _, err = _run(run_env["argv"](run_env["ckpt"], run_env["data"], tmp_path / "out", run_env["cache"]), capsys)
    line = _one_line_error(err)
    assert code == 1 and "MASTER_ADDR and MASTER_PORT are not set" in line and "torchrun" in line
    assert not (tmp_path / "out").exists()


def test_d18_a_provider_flag_with_a_distilled_adapter_names_the_flag_not_the_python_api(tmp_path, capsys):
    """Before: restore/eval --provider with a distilled adapter failed at the first image with the Python
    API's text ("call model(x) without prior= and without use_prior()")."""
    from test_reliability import _ckpt, _images, _train_argv

    ckpt, data = _ckpt(tmp_path / "b.safetensors"), _images(tmp_path / "hq")
    run = tmp_path / "run"
    argv = _train_argv(
        ckpt,
        data,
        run,
        tmp_path / "pc",
        "--prior",
        "distilled",
        "--teacher",
        "slic",
        "--student-steps",
        "1",
        "--student-width",
        "4",
    )
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    for cmd in (["restore", data, "--out", tmp_path / "o"], ["eval", "--data", data, "--out", tmp_path / "e"]):
        code, _, err = _run([*cmd, "--backbone", ckpt, "--adapter", run, "--provider", "slic", "--no-progress"], capsys)
        line = _one_line_error(err)
        assert code == 1 and "carries a distilled prior" in line and "drop --provider" in line
        assert "model(x)" not in line and "use_prior" not in line


def test_d18_the_framework_hash_hint_names_the_yaml_key_not_a_python_argument(tmp_path):
    """Before: BasicSR/KAIR/Restormer runs were told to 'pass check_backbone_hash=False', which no YAML
    key sets."""
    pytest.importorskip("basicsr.archs.swinir_arch")
    from basicsr.archs.swinir_arch import SwinIR

    from spt_adapter.errors import BackboneHashMismatchError
    from spt_adapter.integrations._netio import attach_units
    from spt_adapter.integrations._options import parse_spt_block

    net_opt = dict(TINY_SWINIR_X2)
    options = parse_spt_block(
        {"fusion": "sft", "hidden": 8, "prior": {"cache_dir": None, "provider": "classical", "method": "slic"}}
    )
    torch.manual_seed(0)
    adapter = spt_adapter.save_adapter(attach_units(SwinIR(**net_opt), options), tmp_path / "a.safetensors")
    torch.manual_seed(1)
    with pytest.raises(BackboneHashMismatchError, match="path.pretrain_network_g") as info:
        attach_units(SwinIR(**net_opt), options, adapter=str(adapter), training=False)
    assert "check_backbone_hash" not in str(info.value)


def test_a8_a_32_bit_integer_tiff_is_not_scaled_as_if_65535_were_white(tmp_path):
    """Before: a 32-bit integer TIFF holding 0..255 was scaled by 255/65535 and read as black (and one
    holding 0..65535 as full range), whatever its own white (2**32 - 1)."""
    tifffile = pytest.importorskip("tifffile")
    from spt_adapter.data.images import read_image
    from spt_adapter.errors import ImageError

    tifffile.imwrite(tmp_path / "scan.tif", (np.arange(30 * 40).reshape(30, 40) % 256).astype(np.uint32))
    with pytest.raises(ImageError, match="32-bit integer image: its white is 4294967295"):
        read_image(tmp_path / "scan.tif")
    tifffile.imwrite(tmp_path / "ok16.tif", np.full((30, 40), 65535, np.uint16))
    assert read_image(tmp_path / "ok16.tif").min() == 255  # 16-bit files: white is 65535


@pytest.mark.parametrize(
    "flag,value,words", [("--batch", 2, "global batch of 1, not 2"), ("--seed", 5, "--seed 0, not 5")]
)
def test_d18_resume_with_another_batch_or_seed_is_refused(run_env, tmp_path, capsys, flag, value, words):
    """Before: --resume --batch 2 / --seed 5 continued the run with other samples and rewrote its record."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_env["run"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = [
        str(a) for a in run_env["argv"](run_env["ckpt"], run_env["data"], out, run_env["cache"], "--resume", iters=3)
    ]
    if flag in argv:
        argv[argv.index(flag) + 1] = str(value)
    else:
        argv += [flag, str(value)]
    code, _, err = _run(argv, capsys)
    assert code == 1 and words in _one_line_error(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_an_interrupt_during_the_update_is_taken_after_the_step_is_counted(run_env, tmp_path):
    """Before: Ctrl-C (or SIGTERM) landing right after the optimizer's update, before the step counter
    moved, saved an adapter that said step N but held N+1 updates. The signal is real, sent by the
    process to itself inside the 3rd update; the saved step must equal the updates applied, and the
    units must equal those of an uninterrupted run's step 3."""

    from safetensors.torch import load_file

    from spt_adapter.training.train import adapter_step

    def run(out, stop: bool, iters: int, ignored: bool = False, signals: int = 1):
        argv = run_env["argv"](
            run_env["ckpt"], run_env["data"], out, run_env["cache"], "--schedule", "constant", iters=iters
        )
        argv = [str(a) for a in argv]  # a constant learning rate: the first 3 steps do not depend on --iters
        code = (
            "import os, signal, sys, torch\n"
            # Ctrl-C as a terminal delivers it, or ignored as nohup / a background job of a script sets it
            # (a test run started in the background inherits SIG_IGN; do not depend on how pytest was started)
            f"signal.signal(signal.SIGINT, {'signal.SIG_IGN' if ignored else 'signal.default_int_handler'})\n"
            "real = torch.optim.Adam.step\n"
            "calls = []\n"
            "def counted(self, *a, **k):\n"
            "    out = real(self, *a, **k)\n"
            "    calls.append(1)\n"
            f"    if {stop} and len(calls) == 3:  # the update is applied; the counter has not moved yet\n"
            f"        for _ in range({signals}):\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "    return out\n"
            "torch.optim.Adam.step = counted\n"
            "from spt_adapter.cli import main\n"
            "try:\n"
            f"    code = main({argv!r})\n"
            "finally:\n"
            "    print('UPDATES', len(calls), file=sys.stderr)\n"
            "sys.exit(code)\n"
        )
        return run_python("-c", code, timeout=300, env={"OMP_NUM_THREADS": "1"})

    proc = run(tmp_path / "stopped", True, 50)
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-2000:])
    assert "UPDATES 3" in proc.stderr
    assert adapter_step(tmp_path / "stopped" / "spt_adapter.safetensors") == 3
    ref = run(tmp_path / "three", False, 3)
    assert ref.returncode == 0, ref.stderr[-2000:]
    got = load_file(str(tmp_path / "stopped" / "spt_adapter.safetensors"))
    want = load_file(str(tmp_path / "three" / "spt_adapter.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # a process started with SIGINT ignored keeps ignoring it, even twice inside one step (the second
    # signal would otherwise interrupt at once): the run ends normally with every update
    ign = run(tmp_path / "ignored", True, 5, ignored=True, signals=2)
    assert ign.returncode == 0, ign.stderr[-2000:]
    assert "UPDATES 5" in ign.stderr and adapter_step(tmp_path / "ignored" / "spt_adapter.safetensors") == 5
