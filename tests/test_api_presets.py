"""A preset and the units' size are first-class arguments (issue 28, item 5): ``inject(model, preset=...,
hidden=..., depth=...)``, ``load_backbone(path, preset=...)``, ``spt-adapter train --preset/--hidden/--depth``
(``--arch`` still parses), and ``spt-adapter inspect`` lists the parameters each preset gives."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import spt_adapter
from _data import DATA
from _helpers import cli
from spt_adapter.cli import main
from spt_adapter.core.unit import SPTUnit
from spt_adapter.errors import BackboneError, ConfigError, TargetError

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402


def _dncnn(nb: int = 8, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DnCNN(in_nc=1, out_nc=1, nc=16, nb=nb, act_mode="R").eval()


def _hidden_convs(net: torch.nn.Module) -> list[str]:
    return [f"model.{k}" for k, m in net.model._modules.items() if isinstance(m, torch.nn.Conv2d)][1:-1]


def _expected_unit_params(channels: int, hidden: int, depth: int, prior_channels: int) -> int:
    """The parameters of one concat unit, counted by hand from its layers (3x3 encoder convs, two 1x1 fuse
    convs; without a prior no encoder, and the first fuse conv reads the features alone)."""
    if prior_channels == 0:
        return (channels * hidden + hidden) + (hidden * channels + channels)
    encoder = (prior_channels * 9 * hidden + hidden) + (depth - 1) * (hidden * 9 * hidden + hidden)
    return encoder + ((channels + hidden) * hidden + hidden) + (hidden * channels + channels)


@pytest.fixture()
def dncnn_ckpt(tmp_path):
    path = tmp_path / "dncnn.safetensors"
    save_file({k: v.contiguous() for k, v in _dncnn().state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------------------------------------
# inject
# ---------------------------------------------------------------------------------------------
def test_inject_takes_a_preset_by_name():
    net = _dncnn()
    hidden = _hidden_convs(net)  # 8 hidden convs; dncnn-light takes those at 1/4, 1/2 and the end
    default = spt_adapter.inject(_dncnn())
    assert default.spt_config["default"].preset == "dncnn" and default.unit_names() == hidden
    light = spt_adapter.inject(net, preset="dncnn-light")
    cfg = light.spt_config["default"]
    assert cfg.preset == "dncnn-light" and cfg.integration is not None
    assert light.unit_names() == [hidden[len(hidden) // 4], hidden[len(hidden) // 2], hidden[-1]]
    assert cfg.targets == light.unit_names()
    # a second adapter on the same model by preset name
    light.add_adapter("full", preset="dncnn")
    assert light.unit_names("full") == hidden


def test_a_preset_that_does_not_recognise_the_model_is_refused_naming_those_that_do():
    net = _dncnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(TargetError) as exc:
        spt_adapter.inject(net, preset="swinir")
    msg = str(exc.value)
    assert "'swinir' does not recognise" in msg and "DnCNN" in msg and "dncnn, dncnn-light" in msg
    with pytest.raises(TargetError, match="'dncnn-lite' does not recognise"):  # a typo: the same list
        spt_adapter.inject(net, preset="dncnn-lite")
    # nothing was changed
    assert not any(type(m).__name__ == "SPTLayer" for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_preset_on_an_unclaimed_model_and_a_preset_with_targets_are_refused():
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    with pytest.raises(TargetError, match="no preset recognises a Sequential"):
        spt_adapter.inject(plain, preset="dncnn")
    with pytest.raises(TargetError, match="pass one of them"):
        spt_adapter.inject(_dncnn(), preset="dncnn-light", targets="model.2")


@pytest.mark.parametrize("hidden,depth", [(4, 1), (8, 2), (24, 3)])
def test_hidden_and_depth_size_the_units_as_computed(hidden, depth):
    net = _dncnn()
    names = _hidden_convs(net)
    spt = spt_adapter.inject(net, preset="dncnn", hidden=hidden, depth=depth)
    cfg = spt.spt_config["default"]
    assert (cfg.hidden, cfg.depth) == (hidden, depth)
    trainable, _ = spt.get_nb_trainable_parameters()
    assert trainable == len(names) * _expected_unit_params(16, hidden, depth, prior_channels=1)
    # and the same count without a prior: no encoder, so depth does not count
    free = spt_adapter.inject(_dncnn(), preset="dncnn", hidden=hidden, depth=depth, prior="none")
    assert free.get_nb_trainable_parameters()[0] == len(names) * _expected_unit_params(16, hidden, depth, 0)


def test_the_size_keywords_override_a_config_and_are_checked():
    cfg = spt_adapter.SPTConfig(hidden=32, depth=3, fusion="sft")
    spt = spt_adapter.inject(_dncnn(), config=cfg, hidden=8)
    got = spt.spt_config["default"]
    assert (got.hidden, got.depth, got.fusion) == (8, 3, "sft") and cfg.hidden == 32  # the caller's config is kept
    with pytest.raises(ConfigError, match="hidden must be a positive integer"):
        spt_adapter.inject(_dncnn(), hidden=0)
    with pytest.raises(ConfigError, match="depth 65 is beyond"):
        spt_adapter.inject(_dncnn(), depth=65)
    with pytest.raises(ConfigError, match="prior='lq'"):
        spt_adapter.inject(_dncnn(), prior="lq")


def test_a_preset_adapter_saves_and_loads_with_its_preset_and_size(tmp_path):
    spt = spt_adapter.inject(_dncnn(), preset="dncnn-light", hidden=6)
    for p in spt.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    path = spt.save_adapter(tmp_path / "a.safetensors")
    cfg = spt_adapter.read_adapter_config(path)
    assert (cfg.preset, cfg.hidden) == ("dncnn-light", 6)
    loaded = spt_adapter.load_adapter(_dncnn(), path)
    x, prior = torch.rand(1, 1, 24, 24), torch.rand(1, 1, 24, 24)
    assert torch.equal(loaded(x, prior=prior), spt(x, prior=prior))


# ---------------------------------------------------------------------------------------------
# load_backbone
# ---------------------------------------------------------------------------------------------
def test_load_backbone_takes_a_preset(dncnn_ckpt):
    default = spt_adapter.load_backbone(dncnn_ckpt)
    assert default.preset == "dncnn" and default.claim is not None
    assert default.claim.presets == ["dncnn", "dncnn-light"]
    light = spt_adapter.load_backbone(dncnn_ckpt, preset="dncnn-light")
    assert light.preset == "dncnn-light" and len(light.targets) == 3 and set(light.targets) < set(default.targets)
    spt = spt_adapter.inject(light.model, light.targets)
    assert spt.unit_names() == light.targets
    with pytest.raises(BackboneError, match=r"'rrdb' does not recognise the DnCNN in .*: dncnn, dncnn-light"):
        spt_adapter.load_backbone(dncnn_ckpt, preset="rrdb")


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _hq(tmp_path):
    from PIL import Image

    folder = tmp_path / "hq"
    folder.mkdir()
    for p in sorted((DATA / "Set5").glob("*.png"))[:2]:
        Image.open(p).convert("L").crop((0, 0, 32, 32)).save(folder / p.name)
    return folder


def _train(ckpt, data, out, *extra):
    argv = cli("train", backbone=ckpt, data=data, task="denoise:25", out=out, patch=16, batch=2, iters=2)
    return argv + cli(no_progress=True, device="cpu") + list(extra)


def test_train_takes_preset_hidden_and_depth(tmp_path, dncnn_ckpt, capsys):
    data = _hq(tmp_path)
    out = tmp_path / "run"
    argv = _train(dncnn_ckpt, data, out, "--preset", "dncnn-light", "--hidden", "5", "--depth", "3", "--segments", "8")
    argv += ["--prior-cache", str(tmp_path / "pc")]
    assert main(argv) == 0, capsys.readouterr().err
    cfg = spt_adapter.read_adapter_config(out / "spt_adapter.safetensors")
    light = spt_adapter.load_backbone(dncnn_ckpt, preset="dncnn-light")
    assert (cfg.preset, cfg.targets, cfg.hidden, cfg.depth) == ("dncnn-light", light.targets, 5, 3)
    tensors = spt_adapter.load_adapter(_dncnn(), out / "spt_adapter.safetensors").get_nb_trainable_parameters()[0]
    assert tensors == 3 * _expected_unit_params(16, 5, 3, prior_channels=1)
    # --resume keeps the run's size: another --depth is refused before any step
    capsys.readouterr()
    assert main(_train(dncnn_ckpt, data, out, "--depth", "2", "--segments", "8", "--resume")) == 1
    assert "trained with --depth 3" in capsys.readouterr().err


def test_train_arch_is_the_old_spelling_of_preset(tmp_path, dncnn_ckpt, capsys):
    out = tmp_path / "run"
    argv = _train(dncnn_ckpt, _hq(tmp_path), out)
    argv[1:3] = ["--arch", "dncnn-light", "--weights", str(dncnn_ckpt)]  # instead of --backbone CKPT
    assert main(argv) == 0, capsys.readouterr().err
    assert spt_adapter.read_adapter_config(out / "spt_adapter.safetensors").preset == "dncnn-light"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--preset", "swinir"], "--preset 'swinir'"),
        (["--preset", "nosuch"], "unknown --preset 'nosuch'"),
        (["--preset", "dncnn-light", "--targets", "model.2"], "pass one of them"),
    ],
)
def test_train_refuses_a_wrong_preset_before_any_work(tmp_path, dncnn_ckpt, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(_train(dncnn_ckpt, _hq(tmp_path), out, *extra)) == 1
    err = capsys.readouterr().err
    assert needle in err
    if "swinir" in extra:
        assert "the presets that recognise it: dncnn, dncnn-light" in err
    assert not out.exists()


def test_inspect_lists_each_presets_parameter_count(tmp_path, dncnn_ckpt, capsys):
    net = _dncnn()
    n_hidden = len(_hidden_convs(net))
    total = sum(p.numel() for p in net.parameters())
    assert main(["inspect", str(dncnn_ckpt), "--depth", "0", "--hidden", "8"]) == 0
    text = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  dncnn")}
    for name, units in (("dncnn", n_hidden), ("dncnn-light", 3)):
        free = units * _expected_unit_params(16, 8, 2, 0)
        with_prior = units * _expected_unit_params(16, 8, 2, 1)
        assert f"{units:>3} unit(s)" in lines[name]
        assert f"no prior: +{free:,} ({100 * free / total:.2f} %)" in lines[name]
        assert f"with a prior (depth 2): +{with_prior:,} ({100 * with_prior / total:.2f} %)" in lines[name]
    assert lines["dncnn"].endswith("<- default")
    # the matched-target rows follow --preset, and the count matches a built unit
    assert main(["inspect", str(dncnn_ckpt), "--depth", "0", "--preset", "dncnn-light", "--unit-depth", "3"]) == 0
    text = capsys.readouterr().out
    unit = sum(p.numel() for p in SPTUnit(16, spt_adapter.SPTConfig(hidden=16, depth=3)).parameters())
    assert unit == _expected_unit_params(16, 16, 3, 1)
    free = 3 * _expected_unit_params(16, 16, 3, 0)
    assert "match 3 module(s)" in text and f"add {3 * unit:,} parameters" in text
    assert f"without a prior (train's default --prior none: no encoder): {free:,} = {100 * free / total:.2f} %" in text


def test_budget_picks_the_widest_units_that_fit():
    net = _dncnn()
    total = sum(p.numel() for p in net.parameters())
    names = _hidden_convs(net)

    def count(hidden: int, prior_channels: int = 1) -> int:
        return len(names) * _expected_unit_params(16, hidden, 2, prior_channels)

    budget = count(7) + 5  # room for hidden 7, not for 8
    spt = spt_adapter.inject(_dncnn(), budget=budget)
    assert spt.spt_config["default"].hidden == 7 and spt.get_nb_trainable_parameters()[0] == count(7)
    assert count(8) > budget
    # a share of the backbone, without a prior, on another preset
    share = spt_adapter.inject(_dncnn(), preset="dncnn-light", prior="none", budget=0.05)
    hidden = share.spt_config["default"].hidden
    fits = 3 * _expected_unit_params(16, hidden, 2, 0)
    assert fits <= 0.05 * total < 3 * _expected_unit_params(16, hidden + 1, 2, 0)
    assert share.get_nb_trainable_parameters()[0] == fits
    # refusals, before anything changes
    with pytest.raises(ConfigError, match=r"below the smallest units .* \(hidden=1: "):
        spt_adapter.inject(net, budget=10)
    with pytest.raises(ConfigError, match="pass one of them"):
        spt_adapter.inject(net, budget=1000, hidden=4)
    with pytest.raises(ConfigError, match="0 < budget < 1"):
        spt_adapter.inject(net, budget=1.5)
    assert not any(type(m).__name__ == "SPTLayer" for m in net.modules())


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--fusion", "lowrank", "--segments", "8"], "--fusion lowrank: the units read no prior, so --segments"),
        (["--fusion", "lowrank", "--prior", "lq"], "drop --prior lq"),
    ],
)
def test_train_refuses_a_prior_for_units_that_read_none(tmp_path, dncnn_ckpt, capsys, extra, needle):
    out = tmp_path / "run"
    assert main(_train(dncnn_ckpt, _hq(tmp_path), out, *extra)) == 1
    assert needle in capsys.readouterr().err and not out.exists()


def test_inspect_shows_one_count_for_a_unit_kind_without_a_prior(dncnn_ckpt, capsys):
    from spt_adapter.core.planning import units_parameter_count

    assert main(["inspect", str(dncnn_ckpt), "--depth", "0", "--fusion", "lowrank", "--hidden", "4"]) == 0
    text = capsys.readouterr().out
    light = spt_adapter.load_backbone(dncnn_ckpt, preset="dncnn-light")
    cfg = spt_adapter.SPTConfig(fusion="lowrank", hidden=4)
    want = units_parameter_count({n: 16 for n in light.targets}, cfg)
    assert want == sum(
        p.numel() for _, p in spt_adapter.inject(light.model, light.targets, config=cfg).unit_parameters()
    )
    row = next(ln for ln in text.splitlines() if ln.startswith("  dncnn-light"))
    assert f"+{want:,} (" in row and "with a prior" not in row and "no prior:" not in row
