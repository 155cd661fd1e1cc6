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


from _archs import tiny_esrgan as esrgan  # noqa: E402
from _archs import tiny_swinir as swinir
from _helpers import randomise
from _tolerance import float32_atol, float64_reference  # noqa: E402


def inputs(batch: int = 1):
    g = torch.Generator().manual_seed(7)
    lq = torch.rand(batch, 3, 16, 16, generator=g)
    prior = torch.randint(1, 5, (batch, 1, 16, 16), generator=g).float() / 4
    return lq, prior


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


@pytest.mark.parametrize(
    "version,ok",
    [
        ("0.17.1", False),
        ("0.20.0", False),
        ("0.21.0", True),
        ("0.21.2", True),
        ("0.21.3.dev0", True),
        ("0.22.0", False),
        ("1.0.0", False),
    ],
)
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
    pm = peft.get_peft_model(
        base, spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL)
    )
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
    pm = peft.get_peft_model(
        swinir(),
        spt_peft.SPTPeftConfig(
            target_modules=r"layers\.\d+\.residual_group", hidden=4, fusion="concat", example_input_shape=SMALL
        ),
    )
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
    pm = peft.get_peft_model(
        base, spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL)
    )
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


# ---------------------------------------------------------------------------------------------
# distilled adapters (a prior student inside the adapter, issue 14) through PEFT
# ---------------------------------------------------------------------------------------------
STUDENT = {"width": 8, "depth": 3}
DISTILLED = {"kind": "distilled", "teacher": {"provider": "classical", "method": "slic"}}


def student_params(pm, adapter: str = "default"):
    return [p for n, p in sorted(pm.named_parameters()) if f".spt_students.{adapter}." in n]


def peft_distilled():
    pm = peft_esrgan(student=STUDENT, prior=DISTILLED)
    randomise(student_params(pm), seed=3)
    return pm


def distilled_file(path: Path) -> Path:
    """A distilled adapter written by the core (units and student perturbed away from their init)."""
    model = spt_adapter.inject(
        esrgan(), targets="model.1.sub.*", config=spt_adapter.SPTConfig(hidden=4, student=STUDENT, prior=DISTILLED)
    )
    randomise([p for _, p in model.unit_parameters()], seed=4)
    assert any(k.startswith("spt_student.") for k, _ in model.unit_parameters())
    return model.save_adapter(path)


def test_distilled_config_builds_a_trainable_student_on_the_tuner():
    from spt_adapter.core.student import PriorStudent

    lq, _ = inputs(batch=2)
    with torch.no_grad():
        expected = esrgan()(lq)
    pm = peft.get_peft_model(
        esrgan(),
        spt_peft.SPTPeftConfig(
            target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL, student=STUDENT, prior=DISTILLED
        ),
    )
    student = pm.base_model.student()
    assert isinstance(student, PriorStudent) and student is pm.base_model.spt_students["default"]
    assert pm.peft_config["default"].student == {"in_channels": 3, "width": 8, "depth": 3}  # validated, defaults
    assert not any(isinstance(m, PriorStudent) for m in pm.get_base_model().modules())  # not in the backbone
    with torch.no_grad():
        assert torch.equal(pm(lq), expected)  # no prior needed; zero-initialised units: exact identity
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert {f"base_model.spt_students.default.{n}" for n, _ in student.named_parameters()} <= trainable
    assert all(".spt_units.default." in n or ".spt_students.default." in n for n in trainable)
    # PEFT's own freezing pass over the whole PeftModel keeps units and student trainable
    pm.base_model._mark_only_adapters_as_trainable(pm)
    assert {n for n, p in pm.named_parameters() if p.requires_grad} == trainable
    # one step with non-zero units: the restoration loss reaches the student through the prior
    randomise(unit_params(pm))
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    opt = torch.optim.SGD([p for p in pm.parameters() if p.requires_grad], lr=0.5)
    (pm(lq) - torch.rand_like(expected)).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in pm.named_parameters() if not torch.equal(p, before[n])}
    assert any(".spt_students.default." in n for n in changed) and changed <= trainable


def test_distilled_peft_forward_equals_load_adapter_of_the_same_file(tmp_path):
    path = distilled_file(tmp_path / "a.safetensors")
    core = spt_adapter.load_adapter(esrgan(), path)
    spt_peft.spt_to_peft(path, tmp_path / "peft")
    pm = peft.PeftModel.from_pretrained(esrgan(), tmp_path / "peft")
    lq, _ = inputs(batch=2)
    with torch.no_grad():
        expected = core(lq)
        out = pm(lq)
        base = esrgan()(lq)
    # the same modules with the same tensors run the same float32 ops in the same order in this
    # process (student logits -> sigmoid -> the units): bit-for-bit equal, no tolerance needed
    assert torch.equal(out, expected) and not torch.allclose(out, base)
    # and the prior the units read is the student's: hiding the student and passing its prior gives the same
    tuner = pm.base_model
    with torch.no_grad():
        prior = tuner.student()(lq)
        hidden = tuner.spt_students.pop("default")
        try:
            assert torch.equal(pm(lq, spt_prior=prior), out)
        finally:
            tuner.spt_students["default"] = hidden


def test_prior_given_to_a_distilled_peft_adapter_is_refused():
    pm = peft_distilled()
    randomise(unit_params(pm))
    lq, prior = inputs()
    with torch.no_grad():
        out = pm(lq)
        expected = esrgan()(lq)
    with pytest.raises(PriorError, match=r"'default' carries a distilled prior.*peft_model\(x\) without spt_prior="):
        pm(lq, spt_prior=prior)
    with pytest.raises(PriorError, match="distilled prior"):
        with pm.use_prior(prior):
            pass
    state = pm.base_model._spt_state
    assert state.prior is None and pm.base_model._spt_stack == []  # nothing leaks from the refused calls
    with torch.no_grad():
        assert torch.equal(pm(lq), out)
    with pm.disable_adapter(), torch.no_grad():
        assert torch.equal(pm(lq), expected)  # the backbone exactly: neither student nor units run
        assert torch.equal(pm(lq, spt_prior=prior), expected)  # as SPTModel: disabled, a prior is not refused
    with torch.no_grad():
        assert torch.equal(pm(lq), out)


def test_distilled_save_pretrained_from_pretrained_onto_a_fresh_backbone(tmp_path):
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors import safe_open

    pm = peft_distilled()
    randomise(unit_params(pm))
    lq, _ = inputs(batch=2)
    with torch.no_grad():
        out = pm(lq)
    pm.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    student = {k for k in saved if k.startswith("base_model.spt_students.")}
    assert student == {f"base_model.spt_students.{n}" for n, _ in pm.base_model.student().named_parameters()}
    assert not any(".default." in k for k in saved)  # the adapter name is not part of the file
    assert json.loads((tmp_path / "adapter_config.json").read_text())["student"] == {
        "in_channels": 3,
        "width": 8,
        "depth": 3,
    }

    fresh = esrgan()
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(lq), out)
    assert not any(p.requires_grad for p in loaded.parameters())  # inference mode: the student too
    # a second adapter loaded for training: its student trains (set_requires_grad), the first one's stays frozen
    loaded.load_adapter(tmp_path, adapter_name="more", is_trainable=True)
    assert all(p.requires_grad for p in student_params(loaded, "more"))
    assert not any(p.requires_grad for p in student_params(loaded, "default"))
    again = peft.PeftModel.from_pretrained(esrgan(), tmp_path, adapter_name="other", is_trainable=True)
    assert all(p.requires_grad for p in student_params(again, "other"))
    with torch.no_grad():
        assert torch.equal(again(lq), out)

    # PEFT's state-dict functions carry the student under the adapter name of the target model
    state = get_peft_model_state_dict(pm)
    assert set(state) == set(saved) and all(torch.equal(state[k], saved[k]) for k in saved)
    target = peft.get_peft_model(
        esrgan(),
        spt_peft.SPTPeftConfig(
            target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL, student=STUDENT, prior=DISTILLED
        ),
        adapter_name="mine",
    )
    result = set_peft_model_state_dict(target, state, adapter_name="mine")
    assert not [k for k in result.missing_keys if ".spt_" in k] and not result.unexpected_keys
    with torch.no_grad():
        assert torch.equal(target(lq), out)


def test_distilled_checkpoint_without_its_student_is_refused_and_the_backbone_kept(tmp_path):
    from safetensors.torch import load_file, save_file

    peft_distilled().save_pretrained(tmp_path)
    weights = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if ".spt_students." not in k}, str(weights))
    base = esrgan()
    lq, _ = inputs()
    with torch.no_grad():
        expected = base(lq)
    modules = [(n, type(m)) for n, m in base.named_modules()]
    with pytest.raises(spt_adapter.AdapterFileError, match=r"lacks 6 prior-student tensor\(s\).*spt_students"):
        peft.PeftModel.from_pretrained(base, tmp_path)
    assert [(n, type(m)) for n, m in base.named_modules()] == modules and not base._forward_pre_hooks
    with torch.no_grad():
        assert torch.equal(base(lq), expected)


def test_distilled_and_plain_adapters_side_by_side_delete_and_unload(tmp_path):
    from spt_adapter.core.student import PriorStudent

    base = esrgan()
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    modules = [(n, type(m)) for n, m in base.named_modules()]
    lq, prior = inputs()
    pm = peft.get_peft_model(
        base, spt_peft.SPTPeftConfig(target_modules=["sub.0", "sub.1"], hidden=4, example_input_shape=SMALL)
    )
    randomise(unit_params(pm), seed=1)
    plain = run(pm, lq, prior)
    for name, seed in (("distilled", 2), ("d2", 5)):
        pm.add_adapter(
            name,
            spt_peft.SPTPeftConfig(
                target_modules=["sub.1"], hidden=4, example_input_shape=SMALL, student=STUDENT, prior=DISTILLED
            ),
        )
        randomise([p for n, p in pm.named_parameters() if f".{name}." in n], seed=seed)
    assert pm.active_adapters == ["default"] and torch.equal(run(pm, lq, prior), plain)  # adding does not switch
    assert not any(p.requires_grad for p in student_params(pm, "distilled"))  # inactive: frozen, like its units
    pm.set_adapter("distilled")
    assert all(p.requires_grad for p in student_params(pm, "distilled"))
    assert not any(p.requires_grad for p in student_params(pm, "d2"))
    with torch.no_grad():
        distilled = pm(lq)
    assert not torch.equal(distilled, plain)
    # PEFT can activate several adapters at once; a distilled one runs alone (SPTModel: one active adapter)
    with pytest.raises(PriorError, match=r"'distilled' carries a distilled prior and runs alone.*set_adapter"):
        pm.base_model.set_adapter(["default", "distilled"])
    assert pm.active_adapters == ["distilled"]
    with torch.no_grad():
        assert torch.equal(pm(lq), distilled)
    # each adapter's folder holds its own student only
    pm.save_pretrained(tmp_path)
    from safetensors import safe_open

    for sub, has_student in (("", False), ("distilled", True), ("d2", True)):
        with safe_open(str(tmp_path / sub / "adapter_model.safetensors"), "pt") as fh:
            assert any(k.startswith("base_model.spt_students.") for k in fh.keys()) == has_student
    pm.delete_adapter("d2")
    assert list(pm.base_model.spt_students) == ["distilled"]
    pm.delete_adapter("default")
    assert pm.active_adapters == ["distilled"]
    with torch.no_grad():
        assert torch.equal(pm(lq), distilled)
    backbone = pm.unload()
    assert backbone is base and [(n, type(m)) for n, m in backbone.named_modules()] == modules
    assert not any(isinstance(m, PriorStudent) for m in backbone.modules()) and len(pm.base_model.spt_students) == 0
    assert backbone.state_dict().keys() == reference.keys()
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in reference.items())
    with torch.no_grad():
        assert torch.equal(backbone(lq), esrgan()(lq))  # no hook, no student left behind


def test_distilled_file_to_peft_folder_and_back_is_identical(tmp_path):
    from safetensors.torch import load_file

    path = distilled_file(tmp_path / "a.safetensors")
    spt_peft.spt_to_peft(path, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["student"] == {"in_channels": 3, "width": 8, "depth": 3} and config["prior"] == DISTILLED
    spt_peft.peft_to_spt(tmp_path / "peft", esrgan(), tmp_path / "b.safetensors")
    a, b = load_file(str(path)), load_file(str(tmp_path / "b.safetensors"))
    assert any(k.startswith("spt_student.") for k in a)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta_a, _ = spt_adapter.read_adapter_header(path)
    meta_b, _ = spt_adapter.read_adapter_header(tmp_path / "b.safetensors")
    assert meta_b["student"] == meta_a["student"] and meta_b["fingerprint"] == meta_a["fingerprint"]
    # the same config; the targets pattern comes back as the names it matched (PEFT records exact names)
    cfg_a, cfg_b = spt_adapter.read_adapter_config(path), spt_adapter.read_adapter_config(tmp_path / "b.safetensors")
    matched = [t["path"] for t in json.loads(meta_a["fingerprint"])["targets"]]
    assert cfg_a.targets == ["model.1.sub.*"] and cfg_b.targets == matched and len(matched) > 1
    assert cfg_b.replace(targets=cfg_a.targets) == cfg_a
    lq, _ = inputs()
    direct = spt_peft.load_peft_adapter(esrgan(), tmp_path / "peft")
    with torch.no_grad():
        assert torch.equal(direct(lq), spt_adapter.load_adapter(esrgan(), path)(lq))


def test_student_key_conversion():
    core = "spt_student.body.0.weight"
    assert spt_peft.core_key_to_peft(core) == "base_model.spt_students.body.0.weight"
    assert spt_peft.peft_key_to_core(spt_peft.core_key_to_peft(core)) == core
    for bad in ("base_model.spt_students.", "base_model.model.model.1.sub.0.weight"):
        with pytest.raises(spt_adapter.AdapterFileError, match="not an SPT unit or prior-student tensor"):
            spt_peft.peft_key_to_core(bad)
    with pytest.raises(spt_adapter.AdapterFileError, match="not an SPT unit or prior-student tensor"):
        spt_peft.core_key_to_peft("spt_student.")


def test_from_pretrained_onto_other_weights_is_refused_as_a_delta_file_is(tmp_path):
    """The config records the sha256 of the backbone the units were made on; PeftModel.from_pretrained onto
    the same architecture with other weights is one BackboneHashMismatchError, the model untouched. A folder
    written before the field existed (no backbone_sha256) loads unchecked."""
    from spt_adapter.errors import BackboneHashMismatchError
    from spt_adapter.files.fingerprint import backbone_sha256

    pm = peft_esrgan(prior={"provider": "classical", "encoding": "label"})
    out = run(pm)
    pm.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["backbone_sha256"] == backbone_sha256(esrgan())
    other = esrgan()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(BackboneHashMismatchError, match="weights differ from those it was trained on"):
        peft.PeftModel.from_pretrained(other, tmp_path)
    assert other.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    config["backbone_sha256"] = None  # an older folder
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    peft.PeftModel.from_pretrained(esrgan(), tmp_path)
    assert torch.equal(run(peft.PeftModel.from_pretrained(esrgan(), tmp_path)), out)
