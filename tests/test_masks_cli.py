"""`spt-adapter masks` end to end, through the real entry point and real files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _data import DATA  # small crops of the test sets, committed (tests/data)
from _helpers import cli
from spt_adapter.cli import main
from spt_adapter.commands.masks import shard_of
from spt_adapter.data.datasets import PairedPriorDataset
from spt_adapter.data.images import list_images
from spt_adapter.deploy.shards import shard_key
from spt_adapter.plugins.hookspecs import hookimpl
from spt_adapter.prior import ClassicalMaskProvider, PriorCache


@pytest.fixture()
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("samcli") / "sam_vit_tiny.pth"
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "tools" / "make_tiny_sam.py"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_slic_computes_then_reuses(folder, tmp_path, capsys):
    cache = tmp_path / "c"
    assert main(["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--no-progress"]) == 0
    assert "computed 3, reused 0, failed 0" in capsys.readouterr().err
    assert main(["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--no-progress"]) == 0
    assert "computed 0, reused 3, failed 0" in capsys.readouterr().err
    # the default encoding is boundary (what `train` reads by default): those priors are cached already
    assert main(cli("masks", folder, provider="slic", cache=cache, encoding="boundary", no_progress=True)) == 0
    err = capsys.readouterr().err
    assert "computed 0, reused 3, failed 0" in err and "encoded from cached masks" not in err
    assert (
        main(
            ["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--encoding", "label", "--no-progress"]
        )
        == 0
    )
    assert "reused 3 (3 encoded from cached masks)" in capsys.readouterr().err


def test_bad_images_are_reported_and_skipped(folder, tmp_path, capsys):
    (folder / "zero.png").write_bytes(b"")
    (folder / "junk.png").write_bytes(b"garbage")
    rc = main(["masks", str(folder), "--provider", "felzenszwalb", "--cache", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "computed 3, reused 0, failed 2" in err
    assert "zero.png" in err and "empty" in err and "junk.png" in err and "cannot be read" in err
    assert (
        main(["masks", str(folder), "--provider", "slic", "--cache", str(tmp_path / "c"), "--no-progress", "--strict"])
        == 1
    )


def test_sharding_env_and_flags(folder, tmp_path, capsys, monkeypatch):
    assert shard_of(10, None, None, env={"WORLD_SIZE": "4", "RANK": "3"}) == (4, 3)
    assert shard_of(10, 2, 1, env={"WORLD_SIZE": "4", "RANK": "3"}) == (2, 1)
    cache = tmp_path / "c"
    for rank in ("0", "1"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        assert main(["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--no-progress"]) == 0
    err = capsys.readouterr().err
    counts = [sum(shard_key(p.name, 2) == r for p in list_images(folder)) for r in (0, 1)]
    assert f"shard 0/2: {counts[0]} of 3 images" in err and f"shard 1/2: {counts[1]} of 3 images" in err
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK")
    assert main(["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--no-progress"]) == 0
    assert "computed 0, reused 3" in capsys.readouterr().err
    assert main(cli("masks", folder, provider="slic", cache=cache, num_shards="2", shard_index="2")) == 1
    assert "--shard-index must be in 0..1" in capsys.readouterr().err


def test_shards_pick_images_by_name_so_a_file_added_between_runs_moves_no_other(folder, tmp_path, capsys):
    """Shard 0 runs, a picture is added to the folder, shard 1 runs: every picture of the first listing is
    still cached by one shard (by position, the new file shifted the others and some were never done)."""
    import shutil

    work = tmp_path / "in"
    shutil.copytree(folder, work)
    before = list_images(work)
    # a name that sorts first and lands in shard 1: by position it would have pushed shard 0's files over
    added = next(f"a{i}_new.png" for i in range(1000) if shard_key(f"a{i}_new.png", 2) == 1)
    cache = tmp_path / "c"
    assert main(cli("masks", work, provider="slic", cache=cache, num_shards="2", shard_index="0")) == 0
    rng = np.random.default_rng(0)  # content of its own: the cache is keyed by content, not by name
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(work / added)
    assert main(cli("masks", work, provider="slic", cache=cache, num_shards="2", shard_index="1")) == 0
    capsys.readouterr()
    os.remove(work / added)  # what is left to compute for the first listing: nothing
    assert main(cli("masks", work, provider="slic", cache=cache)) == 0
    assert f"computed 0, reused {len(before)}" in capsys.readouterr().err


def test_degrade_matches_dataset_keys(folder, tmp_path, capsys):
    cache = tmp_path / "c"
    argv = cli(
        "masks",
        folder,
        provider="slic",
        set="n_segments=20",
        cache=cache,
        degrade="denoise:25",
        seed="3",
        no_progress=True,
    )
    assert main(argv) == 0
    pc = PriorCache(cache)
    ds = PairedPriorDataset(folder, "denoise:25", pc, ClassicalMaskProvider("slic", n_segments=20), seed=3, train=False)
    for i in range(len(ds)):
        ds[i]
    assert pc.stats == {"prior_hits": 3, "mask_hits": 0, "computed": 0, "corrupt": 0, "old_format": 0}


@pytest.mark.parametrize("noise", ["spt", "kair"])
def test_grey_masks_are_the_ones_a_grey_backbone_looks_up(folder, tmp_path, capsys, noise):
    """--grey (and --noise kair, eval's default for grey backbones): the cache keys are the grey LQ
    images a 1-channel dataset computes its priors on; colour masks of the same files are not."""
    cache = tmp_path / "c"
    base = cli("masks", folder, provider="slic", cache=cache, degrade="denoise:25", no_progress=True)
    assert main(base + ["--grey", "--noise", noise]) == 0
    assert "grey" in capsys.readouterr().err
    pc = PriorCache(cache)
    ds = PairedPriorDataset(
        folder, "denoise:25", pc, ClassicalMaskProvider("slic"), train=False, channels=1, noise=noise
    )
    for i in range(len(ds)):
        assert ds[i]["lq"].shape[0] == 1
    assert pc.stats["prior_hits"] == 3 and pc.stats["computed"] == 0
    colour = PriorCache(tmp_path / "colour")
    argv = cli(
        "masks", folder, provider="slic", cache=tmp_path / "colour", degrade="denoise:25", noise=noise, no_progress=True
    )
    assert main(argv) == 0
    ds = PairedPriorDataset(
        folder, "denoise:25", colour, ClassicalMaskProvider("slic"), train=False, channels=1, noise=noise
    )
    ds[0]
    assert colour.stats["prior_hits"] == 0 and colour.stats["computed"] == 1
    assert main(["masks", str(folder), "--provider", "slic", "--cache", str(cache), "--noise", "kair"]) == 1
    assert "--noise kair draws denoising noise" in capsys.readouterr().err


def test_sam_tiny_checkpoint(folder, tmp_path, tiny_ckpt, capsys):
    args = cli(
        "masks",
        folder,
        provider="sam",
        checkpoint=tiny_ckpt,
        set="points_per_side=4",
        cache=tmp_path / "c",
        batch="2",
        no_progress=True,
    )
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "sam vit_tiny" in err and "computed 3, reused 0, failed 0" in err
    assert main(args) == 0
    assert "computed 0, reused 3, failed 0" in capsys.readouterr().err
    # an explicit, matching model type gives the same cache keys
    assert main(args + ["--model-type", "vit_tiny"]) == 0
    assert "computed 0, reused 3, failed 0" in capsys.readouterr().err


def test_user_errors_are_one_line(folder, tmp_path, tiny_ckpt, capsys):
    base = ["masks", str(folder), "--cache", str(tmp_path / "c")]
    assert main(base + ["--provider", "sam", "--checkpoint", str(tmp_path / "nope.pth")]) == 1
    err = capsys.readouterr().err
    assert "segment-anything#model-checkpoints" in err and err.count("\n") == 1
    assert main(base + ["--provider", "sam"]) == 1
    assert "needs --provider-checkpoint" in capsys.readouterr().err
    assert main(base + ["--provider", "sam", "--checkpoint", str(tiny_ckpt), "--model-type", "vit_b"]) == 1
    err = capsys.readouterr().err
    assert "'vit_tiny'" in err and "'vit_b'" in err
    assert main(base + ["--provider", "slic", "--encoding", "nope"]) == 1
    assert main(base + ["--provider", "slic", "--set", "bogus=1"]) == 1
    assert "provider 'slic' has no setting 'bogus'" in capsys.readouterr().err
    assert main(base + ["--provider", "slic", "--degrade", "blur:2"]) == 1


def test_console_script_on_real_images(tmp_path):
    exe = Path(sys.executable).with_name("spt-adapter")
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "spt_adapter.cli"]),
        "masks",
        str(DATA / "Set5"),
        "--provider",
        "slic",
        "--prior-cache",
        str(tmp_path / "c"),
        "--progress",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "computed 5, reused 0, failed 0" in out.stderr
    assert "img/s" in out.stderr  # tqdm progress with rate


@pytest.mark.parametrize("setting", ["n_segments=abc", "n_segments=-5", "n_segments=0", "compactness=nan"])
def test_bad_settings_refused_before_any_image_is_read(tmp_path, setting, capsys, monkeypatch):
    """One line naming the setting, exit 1, and no image opened (read_image is never called)."""
    import spt_adapter.data.images as images

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "a.png")
    opened = []
    monkeypatch.setattr(images, "read_image", lambda *a, **k: opened.append(a) or pytest.fail("an image was read"))
    assert (
        main(["masks", str(d), "--provider", "slic", "--set", setting, "--cache", str(tmp_path / "c"), "--no-progress"])
        == 1
    )
    err = capsys.readouterr().err
    name = setting.split("=")[0]
    assert f"provider 'slic': setting {name}=" in err and err.count("\n") == 1, err
    assert not opened and not list((tmp_path / "c").rglob("*.sptc")) if (tmp_path / "c").exists() else True


def test_unknown_provider_lists_the_installed_ones(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["masks", str(folder), "--provider", "quickshift", "--cache", str(tmp_path / "c")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown mask provider 'quickshift'; installed: felzenszwalb, sam, sam2, slic" in err


class _Plugin:
    """An in-process plugin offering one provider built from the real SLIC, optionally broken."""

    def __init__(self, mode):
        self.mode = mode

    @hookimpl
    def spt_adapter_mask_providers(self):
        from spt_adapter.plugins.types import ProviderSpec, Setting
        from spt_adapter.prior import LabelMasks

        mode = self.mode
        if mode == "hook":
            raise RuntimeError("cannot list providers")

        class Provider(ClassicalMaskProvider):
            def generate(self, image):
                if mode == "generate":
                    raise ValueError("segmenter exploded")
                labels = self.segment(image)
                return LabelMasks.from_labels(labels[:, :-2] if mode == "size" else labels)

        return [
            ProviderSpec(
                "test-" + mode,
                lambda s, **kw: Provider("slic", **s),
                {"n_segments": Setting(int, 8, minimum=2)},
                "a test provider",
            )
        ]


@pytest.fixture()
def registered():
    from spt_adapter.plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    names = []

    def register(mode):
        plugin = _Plugin(mode)
        pm.register(plugin, name=f"plugin-{mode}")
        names.append(f"plugin-{mode}")

    yield register
    for name in names:
        pm.unregister(name=name)


def test_a_provider_raising_in_generate_is_named_and_others_still_work(folder, tmp_path, registered, capsys):
    registered("generate")
    registered("ok")
    cache = tmp_path / "c"
    # failing on every image is the provider's fault, not the images': exit 1 with the count (issue 19)
    assert main(["masks", str(folder), "--provider", "test-generate", "--cache", str(cache), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "the provider failed on every image it ran on (3 of 3)" in err
    assert (
        "failed 3" in err
        and err.count("provider 'test-generate' (plugin 'plugin-generate') failed: ValueError: segmenter exploded") == 3
    ), err
    assert (
        main(["masks", str(folder), "--provider", "test-generate", "--cache", str(cache), "--no-progress", "--strict"])
        == 1
    )
    assert not list(cache.rglob("*.sptc"))
    assert main(cli("masks", folder, provider="test-ok", set="n_segments=6", cache=cache, no_progress=True)) == 0
    assert "computed 3" in capsys.readouterr().err


def test_a_plugin_raising_in_the_provider_hook_is_named_and_others_still_work(folder, tmp_path, registered, capsys):
    registered("hook")
    assert main(["masks", str(folder), "--provider", "slic", "--cache", str(tmp_path / "c"), "--no-progress"]) == 0
    with pytest.raises(SystemExit):
        main(["masks", str(folder), "--provider", "test-hook", "--cache", str(tmp_path / "c")])
    assert (
        "plugin 'plugin-hook' failed to list its providers: RuntimeError: cannot list providers"
        in capsys.readouterr().err
    )
    assert main(["plugins", "--no-register"]) == 1
    assert "PROVIDERS FAILED in plugin plugin-hook: RuntimeError: cannot list providers" in capsys.readouterr().out


def test_masks_of_the_wrong_size_stop_the_run_before_anything_is_cached(folder, tmp_path, registered, capsys):
    registered("size")
    cache = tmp_path / "c"
    assert main(["masks", str(folder), "--provider", "test-size", "--cache", str(cache), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "returned 32x38 masks for a 32x40 image" in err and "plugin-size" in err
    assert not list(cache.rglob("*.sptc"))
