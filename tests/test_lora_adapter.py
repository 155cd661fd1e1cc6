"""LoRA as an adapter kind (issue 28, item 4): ``inject(model, fusion="lora", hidden=r)`` puts peft's own LoRA
layer on each Conv2d / Linear target, and every tool of the package takes it as it takes SPT units: an exact
identity at start, only LoRA trains, the backbone untouched, a delta file of LoRA tensors alone that loads onto
the same backbone and is refused on other weights, export merged into the weights (the plain network's graph),
``spt-adapter train --fusion lora``, ``restore`` / ``eval`` with the file, the PEFT glue, the benchmark row
built through the package, and every refusal."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

import spt_adapter
from _helpers import image_folder, randomise, small_train_argv
from spt_adapter.cli import main
from spt_adapter.core.config import DEFAULT_FUSION, SCHEMA_VERSION, SPTConfig
from spt_adapter.core.lora import LoraUnit, lora_parameter_shapes
from spt_adapter.errors import AdapterFileError, ConfigError, FingerprintMismatchError, PriorError, TargetError

pytest.importorskip("peft")
spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402

NB = 8  # convs of the DnCNN below: 1 first, 6 hidden, 1 last
HIDDEN = [f"model.{2 * i}" for i in range(1, NB - 1)]


def _dncnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return DnCNN(in_nc=3, out_nc=3, nc=8, nb=NB, act_mode="R").eval()


def _x(seed: int = 1, size: tuple[int, int] = (20, 24)) -> torch.Tensor:
    return torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def _trained(model: spt_adapter.SPTModel, seed: int = 3) -> spt_adapter.SPTModel:
    """LoRA's B is zero at start; give both factors values, as training would."""
    randomise((p for _, p in model.unit_parameters()), seed, scale=0.2)
    return model


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# inject: identity, what trains, the backbone untouched
# ---------------------------------------------------------------------------------------------
def test_fresh_lora_is_an_exact_identity_on_the_preset_targets_and_records_its_settings():
    backbone = _dncnn()
    x = _x()
    with torch.no_grad():
        ref = backbone(x)
    model = spt_adapter.inject(backbone, preset="dncnn", fusion="lora", hidden=2)
    (cfg,) = model.spt_config.values()
    assert model.unit_names() == HIDDEN  # the preset's targets: every hidden conv
    assert (cfg.fusion, cfg.hidden, cfg.depth, cfg.lora_alpha, cfg.preset) == ("lora", 2, 1, 2.0, "dncnn")
    assert cfg.prior_channels == 0 and cfg.prior == {"kind": "none"} and cfg.schema_version == SCHEMA_VERSION == 4
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # B = 0: bit-identical
    units = [layer.spt_units["default"] for layer in model.base_model.modules() if hasattr(layer, "spt_units")]
    assert len(units) == len(HIDDEN) and all(isinstance(u, LoraUnit) for u in units)
    from peft.tuners.lora.layer import Conv2d as PeftLoraConv2d

    assert all(isinstance(u.lora, PeftLoraConv2d) for u in units)  # peft's own layer, not a copy of it
    with pytest.raises(PriorError, match="reads no prior"):
        model(x, prior=torch.ones(2, 1, 20, 24))


def test_counts_print_and_disable_adapter_behave_as_for_units(capsys):
    backbone = _dncnn()
    total = sum(p.numel() for p in backbone.parameters())
    model = _trained(spt_adapter.inject(backbone, preset="dncnn", fusion="lora", hidden=3))
    # rank r on a 3x3 conv of C in / C out: r*C*9 (A) + C*r (B), no biases
    want = sum(math.prod(s) for n in HIDDEN for s in lora_parameter_shapes((8, 8, 3, 3), 3).values())
    assert want == len(HIDDEN) * (3 * 8 * 9 + 8 * 3)
    assert model.get_nb_trainable_parameters() == (want, total + want)
    line = model.print_trainable_parameters()
    assert f"trainable params: {want:,}" in line and f"units/backbone: {100 * want / total:.3f}%" in line
    assert line in capsys.readouterr().out
    x = _x()
    with torch.no_grad():
        adapted = model(x)
        with model.disable_adapter():
            plain = model(x)
    fresh = _dncnn()
    with torch.no_grad():
        assert torch.equal(plain, fresh(x)) and not torch.allclose(adapted, plain, atol=1e-4)


def test_budget_picks_the_largest_rank_that_fits():
    per_rank = len(HIDDEN) * (8 * 9 + 8)  # one rank on every hidden conv
    model = spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", budget=3 * per_rank + per_rank // 2)
    (cfg,) = model.spt_config.values()
    assert cfg.hidden == 3 and cfg.lora_alpha == 3.0
    assert model.get_nb_trainable_parameters()[0] == 3 * per_rank
    with pytest.raises(ConfigError, match="below the smallest units"):
        spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", budget=per_rank - 1)


def test_training_moves_only_lora_and_eject_gives_the_untouched_backbone_back():
    backbone = _dncnn()
    before = _state(backbone)
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    model = spt_adapter.inject(backbone, preset="dncnn", fusion="lora", hidden=2)
    model.train()
    g = torch.Generator().manual_seed(5)
    clean = torch.rand(4, 3, 16, 16, generator=g)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
        assert with_grad and all(".spt_units.default.lora.lora_" in n for n in with_grad)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses  # LoRA learns the task
    plain = model.eject()
    assert plain is backbone and _same_state(before, _state(plain))  # its weights' bytes, names, dtypes
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags
    assert not any(isinstance(m, LoraUnit) for m in plain.modules())


def test_linear_targets_take_lora_too_and_merge_exactly():
    from spt_adapter.inference.export import merged_lora_backbone

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4)
    )
    x = torch.rand(2, 3, 6, 6)
    with torch.no_grad():
        ref = net(x)
    model = spt_adapter.inject(net, targets=["2", "4"], fusion="lora", hidden=2, example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    _trained(model)
    shapes = {k: tuple(p.shape) for k, p in model.unit_parameters()}
    assert shapes["2.spt_unit.lora.lora_A.default.weight"] == (2, 288)
    assert shapes["4.spt_unit.lora.lora_B.default.weight"] == (4, 2)
    plain = merged_lora_backbone(model)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5) and not torch.allclose(plain(x), ref, atol=1e-3)
    assert type(plain[2]) is nn.Linear and model.active_adapter == "default"  # the model keeps its LoRA


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------
def test_save_holds_only_lora_tensors_and_load_onto_a_fresh_backbone_gives_identical_outputs(tmp_path):
    model = _trained(spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", hidden=2, config=None))
    path = spt_adapter.save_adapter(model, tmp_path / "lora.safetensors")
    meta, entries = spt_adapter.read_adapter_header(path)
    assert len(entries) == 2 * len(HIDDEN)
    backbone_keys = set(_dncnn().state_dict())
    for key, entry in entries.items():
        target, param = key.split(".spt_unit.")
        assert target in HIDDEN and param in lora_parameter_shapes((8, 8, 3, 3), 2)
        assert tuple(entry["shape"]) == lora_parameter_shapes((8, 8, 3, 3), 2)[param]
        assert key not in backbone_keys and "base_layer" not in key
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == sorted(entries)  # the file holds nothing else
    cfg = json.loads(meta["config"])
    assert (cfg["fusion"], cfg["hidden"], cfg["lora_alpha"], cfg["targets"]) == ("lora", 2, 2.0, HIDDEN)
    assert meta["format_version"] == str(SCHEMA_VERSION)
    fp = json.loads(meta["fingerprint"])
    assert [t["path"] for t in fp["targets"]] == HIDDEN and len(fp["backbone_sha256"]) == 64
    assert spt_adapter.read_adapter_config(path).fusion == "lora"
    loaded = spt_adapter.load_adapter(_dncnn(), path)
    x = _x(seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # the file's size is the LoRA tensors' plus a header
    n = sum(math.prod(e["shape"]) for e in entries.values())
    assert path.stat().st_size < 4 * n + 16_000


def test_load_onto_other_weights_is_refused_and_the_model_is_left_as_it_was(tmp_path):
    path = spt_adapter.save_adapter(
        _trained(spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", hidden=1)), tmp_path / "l.safetensors"
    )
    other = _dncnn(seed=9)
    before = _state(other)
    with pytest.raises(FingerprintMismatchError, match="sha256"):
        spt_adapter.load_adapter(other, path)
    assert _same_state(before, _state(other)) and all(type(m) is not LoraUnit for m in other.modules())
    wide = DnCNN(in_nc=3, out_nc=3, nc=16, nb=NB, act_mode="R")
    with pytest.raises(FingerprintMismatchError, match="model.2"):
        spt_adapter.load_adapter(wide, path, check_backbone_hash=False)


def _rewrite(path, out, config_changes=None, drop=None):
    """A copy of an adapter file with its config edited or a tensor left out (a forged or damaged file)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if k != drop}
    if config_changes:
        meta["config"] = json.dumps({**json.loads(meta["config"]), **config_changes}, sort_keys=True)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_a_header_that_contradicts_its_lora_tensors_is_refused_before_anything_is_built(tmp_path):
    path = spt_adapter.save_adapter(
        spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", hidden=2), tmp_path / "l.safetensors"
    )
    forged = _rewrite(path, tmp_path / "rank.safetensors", {"hidden": 3})
    with pytest.raises(AdapterFileError, match=r"LoRA of rank 3 on a Conv2d .* header contradicts itself"):
        spt_adapter.load_adapter(_dncnn(), forged)
    missing = _rewrite(path, tmp_path / "gone.safetensors", drop="model.4.spt_unit.lora.lora_B.default.weight")
    with pytest.raises(AdapterFileError, match="'model.4' has unit tensors .* but a LoRA unit has"):
        spt_adapter.load_adapter(_dncnn(), missing)
    alpha = _rewrite(path, tmp_path / "alpha.safetensors", {"lora_alpha": -1})
    with pytest.raises(AdapterFileError, match="alpha.safetensors: lora_alpha must be a positive number"):
        spt_adapter.load_adapter(_dncnn(), alpha)


def test_a_reader_of_an_older_schema_refuses_a_lora_file_with_upgrade(tmp_path, monkeypatch):
    path = spt_adapter.save_adapter(
        spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", hidden=1), tmp_path / "l.safetensors"
    )
    cfg = json.loads(spt_adapter.read_adapter_header(path)[0]["config"])
    assert cfg["schema_version"] == 4
    # a reader that knows schema 3 at most refuses it, saying to upgrade (the released schema-3 reader also
    # refuses the unknown field lora_alpha with "upgrade it")
    from spt_adapter.core import config as config_module

    monkeypatch.setattr(config_module, "SCHEMA_VERSION", 3)
    with pytest.raises(ConfigError, match="schema version 4 is newer .* upgrade spt-adapter"):
        SPTConfig.from_dict(cfg)


# ---------------------------------------------------------------------------------------------
# export: merged into the weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_merges_lora_into_the_weights_and_leaves_the_model_as_it_was(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from spt_adapter.inference.exported import load_exported

    model = _trained(spt_adapter.inject(_dncnn(), preset="dncnn", fusion="lora", hidden=2))
    before = _state(model)
    path = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    spt_adapter.export(model, path)  # the export's own parity check runs against the unmerged model
    assert _same_state(before, _state(model))  # the user's model is not merged
    assert all(not u.lora.merged for u in model.modules() if isinstance(u, LoraUnit))
    runner = load_exported(path)
    assert runner.kind == "no-prior" and not runner.needs_prior and runner.meta["inputs"] == "image"
    for size in [(20, 24), (33, 17)]:
        x = _x(seed=11, size=size)
        with torch.no_grad():
            want = model(x)
        assert torch.allclose(runner(x), want, atol=1e-5), float((runner(x) - want).abs().max())
    if fmt == "onnx":
        import onnx

        lora_graph = onnx.load(str(path)).graph
        plain = tmp_path / "plain.onnx"
        spt_adapter.export(_dncnn(), plain)
        plain_graph = onnx.load(str(plain)).graph
        convs = [n for n in lora_graph.node if n.op_type == "Conv"]
        assert len(convs) == NB == sum(n.op_type == "Conv" for n in plain_graph.node)  # no extra nodes at all
        assert sorted(n.op_type for n in lora_graph.node) == sorted(n.op_type for n in plain_graph.node)


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------
def test_targets_lora_cannot_adapt_are_refused_in_one_line_before_anything_changes():
    backbone = _dncnn()
    flags = {n: p.requires_grad for n, p in backbone.named_parameters()}
    before = _state(backbone)
    with pytest.raises(TargetError, match=r"target 'model.3' is a ReLU") as info:
        spt_adapter.inject(backbone, targets=["model.2", "model.3"], fusion="lora", hidden=1)
    assert "\n" not in str(info.value)
    assert {n: p.requires_grad for n, p in backbone.named_parameters()} == flags and _same_state(
        before, _state(backbone)
    )
    assert not any(isinstance(m, LoraUnit) for m in backbone.modules())
    dilated = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    with pytest.raises(TargetError, match=r"target '0' \(Conv2d with dilation=\(2, 2\)\)"):
        spt_adapter.inject(dilated, targets="0", fusion="lora", hidden=1)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2))
    with pytest.raises(TargetError, match="groups=2"):
        spt_adapter.inject(grouped, targets="0", fusion="lora", hidden=2)
    reflect = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(TargetError, match="padding_mode='reflect'"):
        spt_adapter.inject(reflect, targets="0", fusion="lora", hidden=1)


def test_lora_settings_are_checked():
    with pytest.raises(ConfigError, match="lora_alpha is LoRA's scale: it needs fusion='lora'"):
        SPTConfig(lora_alpha=2.0)
    with pytest.raises(ConfigError, match="fusion='lora' has no depth"):
        SPTConfig(fusion="lora", depth=3)
    for bad in (0, -1.0, float("nan"), True, "2"):
        with pytest.raises(ConfigError, match="lora_alpha must be a positive number"):
            SPTConfig(fusion="lora", lora_alpha=bad)
    with pytest.raises(ConfigError, match="fusion='lora' reads no prior: a distilled prior"):
        SPTConfig(fusion="lora", student={"in_channels": 3, "width": 4, "depth": 2})
    with pytest.raises(ConfigError, match="fusion='lora' reads no prior: leave prior_channels at 0"):
        SPTConfig(fusion="lora", prior_channels=3)
    assert SPTConfig(fusion="lora", lora_alpha=4).lora_alpha == 4.0
    assert SPTConfig.from_json(SPTConfig(fusion="lora", hidden=2, lora_alpha=4).to_json()).lora_alpha == 4.0


def test_two_lora_adapters_active_on_one_layer_are_refused(tmp_path):
    peft = pytest.importorskip("peft")
    import spt_adapter.peft as spt_peft

    pm = peft.get_peft_model(_dncnn(), spt_peft.SPTPeftConfig(target_modules=["model.2"], fusion="lora", hidden=1))
    pm.add_adapter("other", spt_peft.SPTPeftConfig(target_modules=["model.2"], fusion="lora", hidden=1))
    pm.base_model.set_adapter(["default", "other"])
    with pytest.raises(TargetError, match=r"LoRA adapters \['default', 'other'\] are active together"):
        pm(_x())


# ---------------------------------------------------------------------------------------------
# the PEFT glue
# ---------------------------------------------------------------------------------------------
def test_the_peft_glue_trains_and_reloads_a_lora_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    import spt_adapter.peft as spt_peft

    backbone = _dncnn()
    x = _x()
    with torch.no_grad():
        ref = backbone(x)
    pm = peft.get_peft_model(backbone, spt_peft.SPTPeftConfig(target_modules=HIDDEN[:2], fusion="lora", hidden=2))
    with torch.no_grad():
        assert torch.equal(pm(x), ref)
    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = (pm(x) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(".lora.lora_" in n for n in trainable)
    pm.save_pretrained(tmp_path / "pm")
    again = peft.PeftModel.from_pretrained(_dncnn(), tmp_path / "pm")
    with torch.no_grad():
        assert torch.equal(again(x), pm(x)) and not torch.equal(pm(x), ref)
        with pm.disable_adapter():
            assert torch.equal(pm(x), ref)
        want = again(x)
    plain = again.merge_and_unload()  # peft's own call: LoRA merges into the weights, the wrappers go
    assert type(plain) is DnCNN and not any(isinstance(m, LoraUnit) for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(x), want, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def dncnn_ckpt(tmp_path):
    path = tmp_path / "dncnn.safetensors"
    save_file({k: v.contiguous() for k, v in _dncnn().state_dict().items()}, str(path))
    return path


def _hq(tmp_path, n=2, size=32):
    return image_folder("Set5", tmp_path / "hq", n, (0, 0, size, size))


def _train(ckpt, data, out, *extra):
    return small_train_argv(ckpt, data, out, *extra, iters=3)


def test_cli_trains_a_lora_file_that_loads_restores_evaluates_and_exports(tmp_path, dncnn_ckpt, capsys):
    data = _hq(tmp_path)
    out = tmp_path / "run"
    assert main(_train(dncnn_ckpt, data, out, "--fusion", "lora", "--hidden", "2", "--lora-alpha", "4")) == 0, (
        capsys.readouterr().err
    )
    said = capsys.readouterr().out
    assert "no prior" in said and "trainable params:" in said
    adapter = out / "spt_adapter.safetensors"
    cfg = spt_adapter.read_adapter_config(adapter)
    assert (cfg.fusion, cfg.hidden, cfg.lora_alpha, cfg.targets, cfg.preset) == ("lora", 2, 4.0, HIDDEN, "dncnn")
    loaded = spt_adapter.load_adapter(_dncnn(), adapter)  # onto the untouched backbone: the sha256 matches
    assert any(p.detach().abs().sum().item() > 0 for k, p in loaded.unit_parameters() if "lora_B" in k)  # trained
    common = ["--backbone", str(dncnn_ckpt), "--adapter", str(adapter), "--no-progress"]
    assert main(["restore", str(data), *common, "--out", str(tmp_path / "restored")]) == 0
    assert len(list((tmp_path / "restored").glob("*.png"))) == 2
    assert main(["eval", *common, "--data", str(data), "--out", str(tmp_path / "ev"), "--crops", "0"]) == 0
    onnx_path = tmp_path / "a.onnx"
    assert main(["export", "--backbone", str(dncnn_ckpt), "--adapter", str(adapter), "--out", str(onnx_path)]) == 0
    assert main(["restore", str(data), "--backbone", str(onnx_path), "--out", str(tmp_path / "r2")]) == 0
    assert len(list((tmp_path / "r2").glob("*.png"))) == 2
    # --resume keeps LoRA
    assert main(_train(dncnn_ckpt, data, out, "--iters", "4", "--resume")) == 0
    assert spt_adapter.read_adapter_config(adapter).fusion == "lora"


def test_cli_default_on_a_dncnn_is_its_presets_lora_and_the_lora_flags_are_checked(tmp_path, dncnn_ckpt, capsys):
    data = _hq(tmp_path)
    assert main(_train(dncnn_ckpt, data, tmp_path / "d", "--iters", "1")) == 0
    assert "unit: lora (hidden 1), the dncnn preset's default" in capsys.readouterr().err
    cfg = spt_adapter.read_adapter_config(tmp_path / "d" / "spt_adapter.safetensors")
    assert (cfg.fusion, cfg.hidden, cfg.targets, cfg.preset) == ("lora", 1, HIDDEN, "dncnn")
    assert main(_train(dncnn_ckpt, data, tmp_path / "e", "--iters", "1", "--lora-alpha", "2")) == 0
    assert spt_adapter.read_adapter_config(tmp_path / "e" / "spt_adapter.safetensors").lora_alpha == 2.0
    capsys.readouterr()
    assert main(_train(dncnn_ckpt, data, tmp_path / "e2", "--lora-alpha", "2", "--prior", "lq")) == 1
    assert "--lora-alpha is LoRA's scale: it needs --fusion lora (got --fusion concat)" in capsys.readouterr().err
    assert main(_train(dncnn_ckpt, data, tmp_path / "f", "--fusion", "lora", "--prior", "lq")) == 1
    assert "--fusion lora units read no prior" in capsys.readouterr().err
    assert main(_train(dncnn_ckpt, data, tmp_path / "g", "--fusion", "lora", "--targets", "model.3")) == 1
    assert "target 'model.3' is a ReLU" in capsys.readouterr().err


def test_cli_default_follows_the_preset_only_without_unit_flags_targets_or_a_prior(tmp_path, dncnn_ckpt):
    data = _hq(tmp_path)

    def trained(name, *flags):
        assert main(_train(dncnn_ckpt, data, tmp_path / name, "--iters", "1", *flags)) == 0
        return spt_adapter.read_adapter_config(tmp_path / name / "spt_adapter.safetensors")

    sized = trained("h", "--hidden", "2")
    assert (sized.fusion, sized.hidden) == ("lora", 2)
    assert trained("l", "--preset", "dncnn-light").fusion == "lora"
    # a unit flag, named targets or a prior: the package default (the concat unit), as before
    concat = trained("p", "--fusion", "concat")
    assert (concat.fusion, concat.hidden) == (DEFAULT_FUSION, 16)
    assert trained("q", "--depth", "2").fusion == DEFAULT_FUSION
    assert trained("t", "--targets", "model.2").fusion == DEFAULT_FUSION
    assert trained("s", "--prior", "lq").fusion == DEFAULT_FUSION
    # --resume keeps the run's own kind whatever the preset says
    assert main(_train(dncnn_ckpt, data, tmp_path / "p", "--iters", "2", "--resume")) == 0
    assert spt_adapter.read_adapter_config(tmp_path / "p" / "spt_adapter.safetensors").fusion == DEFAULT_FUSION


def test_the_preset_table_names_each_presets_default_unit():
    from spt_adapter.backbones.presets import PRESETS, preset_default_unit

    assert preset_default_unit("dncnn") == preset_default_unit("dncnn-light") == {"fusion": "lora", "hidden": 1}
    assert preset_default_unit("swinir") is None and preset_default_unit(None) is None
    assert all(p.default_unit is None or p.default_unit["fusion"] in ("lora", "lowrank", "concat") for p in PRESETS)
    unit = preset_default_unit("dncnn")
    unit["hidden"] = 99  # a copy: the table is not changed through it
    assert preset_default_unit("dncnn")["hidden"] == 1


def test_cli_lora_rank_defaults_to_one(tmp_path, dncnn_ckpt):
    data = _hq(tmp_path)
    assert main(_train(dncnn_ckpt, data, tmp_path / "r", "--fusion", "lora", "--iters", "1")) == 0
    cfg = spt_adapter.read_adapter_config(tmp_path / "r" / "spt_adapter.safetensors")
    assert (cfg.fusion, cfg.hidden, cfg.lora_alpha) == ("lora", 1, 1.0)


def test_inspect_counts_lora_from_the_targets_weights(dncnn_ckpt, capsys):
    assert main(["inspect", str(dncnn_ckpt), "--fusion", "lora", "--hidden", "2", "--depth", "0"]) == 0
    said = capsys.readouterr().out
    per = 2 * 8 * 9 + 8 * 2
    assert f"+{per:,} parameters" in said and f"add {per * len(HIDDEN):,} parameters" in said


# ---------------------------------------------------------------------------------------------
# the benchmark measures what users get
# ---------------------------------------------------------------------------------------------
def test_the_benchmarks_package_lora_row_equals_its_peft_lora_row_after_the_same_training():
    import importlib
    import sys

    import numpy as np

    from _scripts import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    compare = importlib.import_module("compare")
    from _ladder import make_schedule, train_model

    torch.manual_seed(0)
    net = DnCNN(in_nc=3, out_nc=3, nc=16, nb=6, act_mode="R").eval()
    for p in net.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(0)
    clean = [rng.random((24, 24, 3), dtype=np.float32) for _ in range(3)]
    noisy = [[np.clip(c + rng.normal(0, 0.1, c.shape).astype(np.float32), 0, 1)] for c in clean]
    pset = compare.qd.PriorSet(clean, noisy, names=["a", "b", "c"])
    sched = make_schedule(0, 6, 2, 12, pset)
    package, prior_a, extra = compare.build_row(net, "spt-lora", {"rank": "2"}, 0, 3)
    direct, prior_b, _ = compare.build_row(net, "lora", {"rank": "2"}, 0, 3)
    assert isinstance(package, spt_adapter.SPTModel) and extra["config"]["fusion"] == "lora"
    assert prior_a == prior_b == "none"
    assert compare.trainable(package, "spt-lora") == compare.trainable(direct, "lora")
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(package(x), direct(x))  # same layers, same seed: the same start
    for model in (package, direct):
        train_model(model, sched, pset, "none", 1e-2, 12)
    package.eval()
    direct.eval()
    with torch.no_grad():
        a, b, frozen = package(x), direct(x), net(x)
    assert not torch.allclose(a, frozen, atol=1e-4)  # both trained
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    # both merge to the same plain network
    with torch.no_grad():
        assert torch.allclose(compare.merged(package, "spt-lora")(x), compare.merged(direct, "lora")(x), atol=1e-5)
    assert compare.adapter_bytes(package, "spt-lora") > 0
