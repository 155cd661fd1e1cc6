"""`spt-adapter train`: a real run on real images (resume included) and every user error caught
before any work starts (no output folder, no prior cache written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _archs import small_swinir
from _helpers import cli, image_folder, run_cli, save_safetensors
from spt_adapter.cli import main
from spt_adapter.plugins.hookspecs import hookimpl


@pytest.fixture(scope="module")
def swinir_ckpt(tmp_path_factory):
    """A tiny real SwinIR (spandrel's class) saved as a safetensors checkpoint (claimed: preset swinir)."""
    pytest.importorskip("spandrel")
    return save_safetensors(small_swinir(), tmp_path_factory.mktemp("ckpt") / "swinir_tiny.safetensors")


@pytest.fixture(scope="module")
def compact_ckpt(tmp_path_factory):
    """A real SRVGGNetCompact (Real-ESRGAN's small net): spandrel loads it, but no preset claims it."""
    pytest.importorskip("spandrel")
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    m = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2)
    return save_safetensors(m, tmp_path_factory.mktemp("ckpt") / "compact_tiny.safetensors")


@pytest.fixture()
def small_data(tmp_path):
    """Three small real images (Set5 crops) as an HQ folder."""
    return image_folder("Set5", tmp_path / "hq", 3, (0, 0, 64, 64))


# ---------------------------------------------------------------------------------------------
# errors before work
# ---------------------------------------------------------------------------------------------
def test_missing_data_folder(tmp_path, swinir_ckpt, capsys):
    out = tmp_path / "run"
    argv = cli(
        "train", backbone=swinir_ckpt, data=tmp_path / "nope", task="denoise:25", out=out, prior_cache=tmp_path / "pc"
    )
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "--data folder" in err and "does not exist" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_empty_data_folder(tmp_path, swinir_ckpt, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = tmp_path / "run"
    argv = cli(
        "train", backbone=swinir_ckpt, data=tmp_path / "empty", task="denoise:25", out=out, prior_cache=tmp_path / "pc"
    )
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "holds no images" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_unclaimed_backbone_needs_targets(tmp_path, compact_ckpt, small_data, capsys):
    out = tmp_path / "run"
    argv = cli("train", backbone=compact_ckpt, data=small_data, task="sr:2", out=out, prior_cache=tmp_path / "pc")
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "no plugin claims" in err and "--targets" in err and "SRVGGNetCompact" in err
    assert not out.exists() and not (tmp_path / "pc").exists()


def test_bad_target_pattern_is_named(tmp_path, swinir_ckpt, small_data, capsys):
    out = tmp_path / "run"
    argv = cli(
        "train",
        backbone=swinir_ckpt,
        targets="layerz.*",
        data=small_data,
        task="denoise:25",
        out=out,
        prior_cache=tmp_path / "pc",
    )
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "'layerz.*'" in err and "matched no module" in err
    assert not out.exists()


def test_missing_backbone_and_sam_checkpoint(tmp_path, swinir_ckpt, small_data, capsys):
    common = ["--data", str(small_data), "--task", "denoise:25", "--out", str(tmp_path / "run")]
    code, _, err = run_cli(["train", "--backbone", str(tmp_path / "missing.pth"), *common], capsys)
    assert code == 1 and "missing.pth does not exist" in err
    code, _, err = run_cli(["train", "--backbone", str(swinir_ckpt), "--provider", "sam", *common], capsys)
    assert code == 1 and "--provider-checkpoint" in err
    code, _, err = run_cli(
        ["train", "--backbone", str(swinir_ckpt), "--sam-checkpoint", str(tmp_path / "sam.pth"), *common], capsys
    )
    assert code == 1 and "sam.pth does not exist" in err
    code, _, err = run_cli(["train", "--arch", "swinir", *common], capsys)
    assert code == 1 and "no backbone" in err
    code, _, err = run_cli(["train", "--arch", "rrdb", "--weights", str(swinir_ckpt), *common], capsys)
    assert code == 1 and "not a 'rrdb'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag,value,needle",
    [
        ("--task", "blur:3", "task must be"),
        ("--task", "sr:1", "task must be"),
        ("--iters", "0", "positive integer"),
        ("--lr", "-1", "positive number"),
        ("--batch", "two", "positive integer"),
        ("--fusion", "add", "invalid choice"),
    ],
)
def test_bad_flags_are_refused_by_the_parser(tmp_path, swinir_ckpt, small_data, capsys, flag, value, needle):
    argv = [*cli("train", backbone=swinir_ckpt, data=small_data, task="denoise:25", out=tmp_path / "run"), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_sr_patch_must_divide_by_scale(tmp_path, swinir_ckpt, small_data, capsys):
    argv = cli("train", backbone=swinir_ckpt, data=small_data, task="sr:4", patch=30, out=tmp_path / "run")
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and "not divisible by the scale 4" in err


# ---------------------------------------------------------------------------------------------
# real runs
# ---------------------------------------------------------------------------------------------
def _train_argv(ckpt, data, out, cache, *extra):
    argv = cli("train", backbone=ckpt, data=data, task="denoise:25", out=out, prior_cache=cache, patch=32, batch=2)
    return argv + cli(lr="1e-3", segments=8, log_every=1, no_progress=True) + list(extra)


def test_train_writes_delta_logs_and_resumes(tmp_path, swinir_ckpt, small_data, capsys):
    from safetensors.torch import load_file

    import spt_adapter
    from spt_adapter.files.format import read_adapter_header

    out, cache = tmp_path / "run", tmp_path / "priors"
    code, stdout, err = run_cli(
        _train_argv(swinir_ckpt, small_data, out, cache, "--iters", "3", "--val", str(small_data)), capsys
    )
    assert code == 0, err
    for name in ("spt_adapter.safetensors", "train_state.safetensors", "train_log.csv", "train_log.json", "README.md"):
        assert (out / name).is_file(), name
        assert str(out / name) in stdout  # every output path is printed
    meta, entries = read_adapter_header(out / "spt_adapter.safetensors")
    assert all(".spt_unit." in k for k in entries)
    training = json.loads(meta["training"])
    assert training["step"] == 3 and training["task"] == "denoise:25"
    config = json.loads(meta["config"])
    assert config["targets"] == ["layers.*"] and config["preset"] == "swinir"  # the plugin's preset
    assert json.loads(meta["prior"])["provider"]["method"] == "slic"
    # no --encoding: the library default (an edge map, docs/results.md), recorded for eval and --resume
    assert config["prior"]["encoding"] == "boundary" and config["fusion"] == "concat"
    assert training["encoding"] == "boundary"
    log = json.loads((out / "train_log.json").read_text())
    assert [r["step"] for r in log["history"]] == [1, 2, 3] and "val_psnr" in log["history"][-1]
    assert any(cache.rglob("*.sptc"))  # priors went through the cache
    first = load_file(out / "spt_adapter.safetensors")

    # the backbone file is untouched and the delta loads onto it
    bb = spt_adapter.load_backbone(swinir_ckpt)
    spt_adapter.load_adapter(bb.model, out / "spt_adapter.safetensors")

    # a second run into the same folder is refused, nothing overwritten
    code, _, err = run_cli(_train_argv(swinir_ckpt, small_data, out, cache, "--iters", "5"), capsys)
    assert code == 1 and "--resume" in err
    assert load_file(out / "spt_adapter.safetensors").keys() == first.keys()

    code, _, err = run_cli(_train_argv(swinir_ckpt, small_data, out, cache, "--iters", "5", "--resume"), capsys)
    assert code == 0, err
    meta, _ = read_adapter_header(out / "spt_adapter.safetensors")
    assert json.loads(meta["training"])["step"] == 5
    log = json.loads((out / "train_log.json").read_text())
    assert [r["step"] for r in log["history"]] == [1, 2, 3, 4, 5]
    second = load_file(out / "spt_adapter.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)

    code, _, err = run_cli(
        _train_argv(swinir_ckpt, small_data, tmp_path / "fresh", cache, "--iters", "2", "--resume"), capsys
    )
    assert code == 1 and "holds no spt_adapter.safetensors" in err


def _recorded_encodings(adapter: Path) -> tuple[str, str]:
    """(config.prior["encoding"], the encoding the last run used) of an adapter file."""
    from spt_adapter.files.format import read_adapter_header

    meta, _ = read_adapter_header(adapter)
    return json.loads(meta["config"])["prior"]["encoding"], json.loads(meta["training"])["encoding"]


def test_pool_fusion_trains_on_label_maps(tmp_path, swinir_ckpt, small_data, capsys):
    out, cache = tmp_path / "run", tmp_path / "priors"
    code, _, err = run_cli(_train_argv(swinir_ckpt, small_data, out, cache, "--iters", "1", "--fusion", "pool"), capsys)
    assert code == 0, err
    assert _recorded_encodings(out / "spt_adapter.safetensors") == ("label", "label")


@pytest.mark.parametrize("encoding", ["boundary", "onehot:2"])
def test_pool_fusion_refuses_other_encodings_before_any_work(tmp_path, swinir_ckpt, small_data, capsys, encoding):
    out, cache = tmp_path / "run", tmp_path / "priors"
    code, _, err = run_cli(
        _train_argv(swinir_ckpt, small_data, out, cache, "--fusion", "pool", "--encoding", encoding), capsys
    )
    assert code == 1 and "fusion 'pool'" in err and "needs encoding 'label'" in err and repr(encoding) in err
    assert not out.exists() and not cache.exists()


def test_resume_keeps_the_recorded_encoding(tmp_path, swinir_ckpt, small_data, capsys):
    from safetensors.torch import load_file

    out, cache = tmp_path / "run", tmp_path / "priors"
    code, _, err = run_cli(
        _train_argv(swinir_ckpt, small_data, out, cache, "--iters", "1", "--encoding", "label"), capsys
    )
    assert code == 0, err
    before = load_file(out / "spt_adapter.safetensors")
    # an explicit, different --encoding is refused; the adapter is left as it was
    code, _, err = run_cli(
        _train_argv(swinir_ckpt, small_data, out, cache, "--iters", "2", "--resume", "--encoding", "boundary"), capsys
    )
    assert code == 1 and "--resume" in err and "encoding 'label', not 'boundary'" in err
    after = load_file(out / "spt_adapter.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    # no --encoding: the adapter's own (label), not the library default (boundary)
    code, _, err = run_cli(_train_argv(swinir_ckpt, small_data, out, cache, "--iters", "2", "--resume"), capsys)
    assert code == 0, err
    assert _recorded_encodings(out / "spt_adapter.safetensors") == ("label", "label")
    assert json.loads((out / "train_log.json").read_text())["history"][-1]["step"] == 2


def test_resume_of_an_adapter_without_a_recorded_encoding_means_label(tmp_path, swinir_ckpt):
    """Adapters written before the default changed may record no encoding: they were trained on label maps."""
    from types import SimpleNamespace

    import spt_adapter
    from spt_adapter.commands.train import _resume_config_check
    from spt_adapter.core.config import SPTConfig

    path = tmp_path / "old.safetensors"
    model = spt_adapter.inject(
        spt_adapter.load_backbone(swinir_ckpt).model, config=SPTConfig(targets=["layers.*"], prior={"provider": "slic"})
    )
    spt_adapter.save_adapter(model, path)
    args = SimpleNamespace(targets=None, fusion=None, encoding=None)
    _resume_config_check(args, path)
    assert args.encoding == "label"
    with pytest.raises(spt_adapter.SPTError, match="encoding 'label', not 'boundary'"):
        _resume_config_check(SimpleNamespace(targets=None, fusion=None, encoding="boundary"), path)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, swinir_ckpt, small_data):
    """train_units(stop_at=2) + resume gives the uninterrupted run's delta (same samples, same
    Adam moments restored from the safetensors state file, same learning-rate curve)."""
    from safetensors.torch import load_file

    import spt_adapter
    from spt_adapter.commands.builders import make_dataset
    from spt_adapter.prior import PriorCache, make_provider
    from spt_adapter.training.train import TrainSettings, train_units

    provider = make_provider("slic", n_segments=8)
    cache = PriorCache(tmp_path / "priors")
    settings = TrainSettings(iters=4, batch=2, lr=1e-3, progress=False, log_every=1)

    def fresh():
        torch.manual_seed(0)
        return spt_adapter.inject(spt_adapter.load_backbone(swinir_ckpt).model)

    dataset = make_dataset(small_data, "denoise:25", provider, cache, train=True, patch=32)
    train_units(fresh(), dataset, settings, out_dir=tmp_path / "a")
    train_units(fresh(), dataset, settings, out_dir=tmp_path / "b", stop_at=2)
    assert json.loads((tmp_path / "b" / "train_log.json").read_text())["history"][-1]["step"] == 2
    model = spt_adapter.load_adapter(
        spt_adapter.load_backbone(swinir_ckpt).model, tmp_path / "b" / "spt_adapter.safetensors"
    )
    train_units(model, dataset, settings, out_dir=tmp_path / "b", resume=True)
    a = load_file(tmp_path / "a" / "spt_adapter.safetensors")
    b = load_file(tmp_path / "b" / "spt_adapter.safetensors")
    # both runs on this machine with the same batches: only the Adam state's float32 round trip
    # through the state file could differ, and it is exact
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_sam_prior_is_recorded_and_required_by_eval(tmp_path, swinir_ckpt, small_data, capsys):
    """--sam-checkpoint: SAM (segment-anything's classes at a toy size, saved and reloaded like a
    real checkpoint) makes the priors; the adapter records it; eval then asks for the checkpoint."""
    pytest.importorskip("segment_anything")
    from spt_adapter.files.format import read_adapter_header
    from spt_adapter.prior.tiny import make_tiny_sam_checkpoint

    sam = make_tiny_sam_checkpoint(tmp_path / "sam_tiny.pth")
    out, cache = tmp_path / "run", tmp_path / "priors"
    argv = _train_argv(swinir_ckpt, small_data, out, cache, "--iters", "2")
    argv = [a for a in argv if a not in ("--segments", "8")] + ["--sam-checkpoint", str(sam)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    meta, _ = read_adapter_header(out / "spt_adapter.safetensors")
    assert json.loads(meta["prior"])["provider"]["provider"] == "sam"
    evargs = cli(
        "eval",
        backbone=swinir_ckpt,
        adapter=out,
        data=small_data,
        prior_cache=cache,
        out=tmp_path / "ev",
        no_progress=True,
    )
    code, _, err = run_cli(evargs, capsys)
    assert code == 1 and "trained with SAM priors" in err and "--provider-checkpoint" in err
    code, stdout, err = run_cli(evargs + ["--sam-checkpoint", str(sam)], capsys)
    assert code == 0, err
    assert "| **mean (3)**" in stdout


class _DeviceRecordingPlugin:
    """An in-process plugin whose provider (the real SLIC underneath) records the device it is built for."""

    def __init__(self):
        self.devices = []

    @hookimpl
    def spt_adapter_mask_providers(self):
        from spt_adapter.plugins.types import ProviderSpec, Setting
        from spt_adapter.prior import ClassicalMaskProvider

        def build(settings, *, checkpoint, model_type, device):
            self.devices.append(device)
            return ClassicalMaskProvider("slic", **settings)

        return [ProviderSpec("test-device", build, {"n_segments": Setting(int, 8, minimum=2)}, "records its device")]


def test_every_provider_is_built_for_the_training_device(tmp_path, swinir_ckpt, small_data, capsys):
    """Not only SAM: a plugin provider (which may run a network) is built on the device training uses."""
    from spt_adapter.plugins.manager import get_plugin_manager

    plugin = _DeviceRecordingPlugin()
    get_plugin_manager().register(plugin, name="test-device-plugin")
    try:
        out, cache = tmp_path / "run", tmp_path / "priors"
        argv = _train_argv(swinir_ckpt, small_data, out, cache, "--iters", "1")
        argv = [a for a in argv if a not in ("--segments", "8")] + ["--provider", "test-device"]
        code, _, err = run_cli(argv, capsys)
    finally:
        get_plugin_manager().unregister(name="test-device-plugin")
    assert code == 0, err
    assert [str(d) for d in plugin.devices] == ["cpu"]
