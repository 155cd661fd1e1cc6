"""SPT as a PEFT method, on real spandrel architectures (ESRGAN/RRDB maps, SwinIR tokens)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

peft = pytest.importorskip("peft")

import spt_adapter  # noqa: E402
from spt_adapter.errors import PriorError, SPTError, TargetError  # noqa: E402

spt_peft = pytest.importorskip("spt_adapter.peft")  # raises SPTError on an unsupported peft: a real failure

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SMALL = [1, 3, 16, 16]  # probe input: keeps the width probe pass cheap


from _tolerance import float32_atol, float64_reference  # noqa: E402
from _archs import tiny_esrgan as esrgan, tiny_swinir as swinir  # noqa: E402


def inputs(batch: int = 1):
    g = torch.Generator().manual_seed(7)
    lq = torch.rand(batch, 3, 16, 16, generator=g)
    prior = torch.randint(1, 5, (batch, 1, 16, 16), generator=g).float() / 4
    return lq, prior


def randomise(params, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def unit_params(pm):
    return [p for n, p in sorted(pm.named_parameters()) if ".spt_units." in n]


def peft_esrgan(**kw):
    config = spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL, **kw)
    pm = peft.get_peft_model(esrgan(), config)
    randomise(unit_params(pm))
    return pm


def run(pm, lq=None, prior=None):
    if lq is None:
        lq, prior = inputs()
    with torch.no_grad():
        return pm(lq, spt_prior=prior)


# ---------------------------------------------------------------------------------------------
# registration and version guard
# ---------------------------------------------------------------------------------------------
def test_registered_once_in_peft_tables():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    assert PeftType.SPT is PeftType("SPT") and PeftType.SPT == "SPT" and "SPT" in list(PeftType)
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.SPT] is spt_peft.SPTPeftConfig
    assert PEFT_TYPE_TO_CONFIG_MAPPING["SPT"] is spt_peft.SPTPeftConfig  # the string a saved config holds
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.SPT] is spt_peft.SPTPeftModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.SPT] == "spt_"
    n_members = len(list(PeftType))
    spt_peft._register()  # idempotent
    assert spt_peft._add_peft_type_member() is PeftType.SPT and len(list(PeftType)) == n_members
    assert spt_peft.SPTPeftConfig().peft_type is PeftType.SPT


@pytest.mark.parametrize("version,ok", [("0.17.1", False), ("0.20.0", False), ("0.21.0", True), ("0.21.2", True),
                                        ("0.21.3.dev0", True), ("0.22.0", False), ("1.0.0", False)])
def test_version_guard(version, ok):
    if ok:
        assert spt_peft.check_peft_version(version) == version
    else:
        with pytest.raises(SPTError, match=r"supports peft>=0\.21,<0\.22 but peft .* is installed: pip install"):
            spt_peft.check_peft_version(version)


def test_import_refuses_an_unsupported_peft_before_touching_it():
    import subprocess
    import sys

    code = (
        "import peft, spt_adapter\n"
        "peft.__version__ = '0.20.0'\n"
        "try:\n"
        "    import spt_adapter.peft\n"
        "except spt_adapter.SPTError as exc:\n"
        "    from peft.utils import PeftType\n"
        "    print('REFUSED', exc, 'SPT' in PeftType._member_map_)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "REFUSED spt_adapter.peft supports peft>=0.21,<0.22 but peft 0.20.0 is installed" in res.stdout
    assert res.stdout.strip().endswith("False")  # PeftType left untouched


def test_installed_peft_is_in_the_supported_range():
    assert spt_peft.check_peft_version() == peft.__version__


# ---------------------------------------------------------------------------------------------
# get_peft_model / forward / disable / save / load
# ---------------------------------------------------------------------------------------------
def test_get_peft_model_identity_then_trainable_units_only():
    base = esrgan()
    lq, prior = inputs()
    with torch.no_grad():
        expected = base(lq)
    pm = peft.get_peft_model(base, spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL))
    assert isinstance(pm.base_model, spt_peft.SPTPeftModel)
    assert pm.peft_config["default"].unit_channels == {"model.1.sub.0": 8, "model.1.sub.1": 8}
    assert torch.equal(run(pm, lq, prior), expected)  # zero-initialised units: exact identity
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all(".spt_units.default." in n for n in trainable)
    # one optimiser step changes only units
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.5)
    pm.train()
    loss = (pm(lq, spt_prior=prior) - torch.rand_like(expected)).pow(2).mean()
    loss.backward()
    opt.step()
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".spt_units." in n for n in changed)


def test_disable_adapter_gives_backbone_output():
    pm = peft_esrgan()
    lq, prior = inputs()
    with torch.no_grad():
        expected = esrgan()(lq)
    out = run(pm, lq, prior)
    assert not torch.allclose(out, expected)
    with pm.disable_adapter(), torch.no_grad():
        assert torch.equal(pm(lq), expected)  # no prior needed
        assert torch.equal(pm(lq, spt_prior=prior), expected)
    assert torch.equal(run(pm, lq, prior), out)


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    pm = peft_esrgan(prior={"provider": "classical", "encoding": "label"})
    out = run(pm)
    pm.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and all(k.startswith("base_model.model.model.1.sub.") and ".spt_units." in k for k in keys)
    assert not any(".default." in k for k in keys)  # the adapter name is not part of the file
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "SPT" and config["unit_channels"] == {"model.1.sub.0": 8, "model.1.sub.1": 8}

    loaded = peft.PeftModel.from_pretrained(esrgan(), tmp_path)
    assert torch.equal(run(loaded), out)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode by default
    again = peft.PeftModel.from_pretrained(esrgan(), tmp_path, adapter_name="other", is_trainable=True)
    assert torch.equal(run(again), out)
    assert any(p.requires_grad for n, p in again.named_parameters() if ".spt_units.other." in n)


def test_swinir_tokens_through_peft(tmp_path):
    lq, prior = inputs(batch=2)
    with torch.no_grad():
        expected = swinir()(lq)
    pm = peft.get_peft_model(swinir(), spt_peft.SPTPeftConfig(target_modules=r"layers\.\d+\.residual_group",
                                                               hidden=4, fusion="concat",
                                                               example_input_shape=SMALL))
    assert torch.equal(run(pm, lq, prior), expected)
    randomise(unit_params(pm))
    out = run(pm, lq, prior)
    assert not torch.allclose(out, expected)
    pm.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(swinir(), tmp_path)
    assert torch.equal(run(loaded, lq, prior), out)
    with loaded.disable_adapter(), torch.no_grad():
        assert torch.equal(loaded(lq), expected)


def test_default_targets_from_the_spandrel_plugin():
    pm = peft.get_peft_model(esrgan(), spt_peft.SPTPeftConfig(hidden=4))
    config = pm.peft_config["default"]
    assert config.preset == "rrdb" and set(config.unit_channels) == {"model.1.sub.0", "model.1.sub.1"}


def test_prior_errors_and_use_prior():
    pm = peft_esrgan()
    lq, prior = inputs()
    with pytest.raises(PriorError, match="needs a prior.*spt_prior"):
        with torch.no_grad():
            pm(lq)
    with pytest.raises(PriorError, match="channel"):
        run(pm, lq, torch.rand(1, 2, 16, 16))
    with pytest.raises(PriorError, match="batch size"):
        run(pm, lq, torch.rand(2, 1, 16, 16))
    with pytest.raises(PriorError, match="NaN"):
        run(pm, lq, torch.full((1, 1, 16, 16), float("nan")))
    state = pm.base_model._spt_state
    assert state.prior is None and pm.base_model._spt_stack == []  # nothing leaks from failed calls
    out = run(pm, lq, prior)
    assert state.prior is None
    with pm.use_prior(prior), torch.no_grad():
        assert torch.equal(pm(lq), out)
    assert state.prior is None


def test_target_errors_leave_model_untouched():
    base = esrgan()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(TargetError, match="matched no module"):
        peft.get_peft_model(base, spt_peft.SPTPeftConfig(target_modules=["no_such_block"]))
    with pytest.raises(TargetError, match="overlap"):
        peft.get_peft_model(base, spt_peft.SPTPeftConfig(target_modules=r"model\.1\.sub(\.0)?"))
    assert not any(isinstance(m, spt_peft.SPTPeftLayer) for m in base.modules())
    assert base.state_dict().keys() == before.keys()


def test_multiple_adapters_and_unload():
    base = esrgan()
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    pm = peft.get_peft_model(base, spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL))
    randomise(unit_params(pm), seed=1)
    first = run(pm)
    pm.add_adapter("second", spt_peft.SPTPeftConfig(target_modules=["sub.1"], hidden=4, example_input_shape=SMALL))
    randomise([p for n, p in pm.named_parameters() if ".spt_units.second." in n], seed=2)
    assert torch.equal(run(pm), first)  # adding does not switch
    pm.set_adapter("second")
    second = run(pm)
    assert not torch.equal(second, first)
    pm.set_adapter("default")
    assert torch.equal(run(pm), first)
    pm.delete_adapter("second")
    assert torch.equal(run(pm), first)
    backbone = pm.unload()
    assert backbone is base and not any(isinstance(m, spt_peft.SPTPeftLayer) for m in backbone.modules())
    assert backbone.state_dict().keys() == reference.keys()
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in reference.items())
    lq, _ = inputs()
    with torch.no_grad():
        assert torch.equal(backbone(lq), esrgan()(lq))  # no hook left behind


def test_merge_is_refused_clearly():
    pm = peft_esrgan()
    with pytest.raises(SPTError, match="cannot be merged"):
        pm.merge_and_unload()


# ---------------------------------------------------------------------------------------------
# files written through PEFT and through save_adapter load into each other
# ---------------------------------------------------------------------------------------------
def test_key_conversion_is_bijective():
    core = "model.1.sub.0.spt_unit.encoder.0.weight"
    assert spt_peft.core_key_to_peft(core) == "base_model.model.model.1.sub.0.spt_units.encoder.0.weight"
    assert spt_peft.peft_key_to_core(spt_peft.core_key_to_peft(core)) == core


def test_core_file_loads_into_peft(tmp_path):
    core_model = spt_adapter.inject(esrgan(), targets="model.1.sub.*", config=spt_adapter.SPTConfig(hidden=4))
    randomise([p for _, p in core_model.unit_parameters()])
    lq, prior = inputs()
    with torch.no_grad():
        expected = core_model(lq, prior=prior)
    core_model.save_adapter(tmp_path / "a.safetensors")
    spt_peft.spt_to_peft(tmp_path / "a.safetensors", tmp_path / "peft")
    pm = peft.PeftModel.from_pretrained(esrgan(), tmp_path / "peft")
    assert torch.equal(run(pm, lq, prior), expected)


def test_peft_folder_loads_into_core(tmp_path):
    pm = peft_esrgan()
    lq, prior = inputs()
    expected = run(pm, lq, prior)
    pm.save_pretrained(tmp_path / "peft")
    spt_peft.peft_to_spt(tmp_path / "peft", esrgan(), tmp_path / "a.safetensors")
    model = spt_adapter.load_adapter(esrgan(), tmp_path / "a.safetensors")  # fingerprint + sha256 checked
    with torch.no_grad():
        assert torch.equal(model(lq, prior=prior), expected)
    direct = spt_peft.load_peft_adapter(esrgan(), tmp_path / "peft")
    with torch.no_grad():
        assert torch.equal(direct(lq, prior=prior), expected)
    # and back again: core -> PEFT gives the same outputs through PEFT
    spt_peft.spt_to_peft(tmp_path / "a.safetensors", tmp_path / "peft2")
    assert torch.equal(run(peft.PeftModel.from_pretrained(esrgan(), tmp_path / "peft2"), lq, prior), expected)


def test_committed_fixture_through_peft(tmp_path):
    spec = importlib.util.spec_from_file_location("spt_make_fixture_peft", FIXTURES / "make_fixture.py")
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    from safetensors.torch import load_file

    expected = load_file(str(FIXTURES / "adapter_v1_expected.safetensors"))
    spt_peft.spt_to_peft(FIXTURES / "adapter_v1.safetensors", tmp_path)
    pm = peft.PeftModel.from_pretrained(mf.build_backbone(), tmp_path)
    out = run(pm, expected["lq"], expected["prior"])
    # float64 reference on this machine (tests/_tolerance.py): the recording comes from another CPU
    ref = float64_reference(pm, expected["lq"], spt_prior=expected["prior"])
    tol = float32_atol(pm, ref)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol)
    torch.testing.assert_close(expected["output"].double(), ref, rtol=0, atol=tol)


def test_foreign_peft_folder_is_refused(tmp_path):
    from peft import LoraConfig

    lora = peft.get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=["0"], r=2))
    lora.save_pretrained(tmp_path)
    with pytest.raises(spt_adapter.AdapterFileError, match="'LORA' adapter, not an SPT one"):
        spt_peft.load_peft_adapter(esrgan(), tmp_path)
