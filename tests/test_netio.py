"""The resume-delta finder and the units-only EMA builder shared by the BasicSR and Restormer shims
(integrations/_netio.py), on real delta files written by ``spt_adapter.save_adapter``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import spt_adapter
from spt_adapter.core.config import SPTConfig
from spt_adapter.integrations._netio import (
    build_units_only_ema,
    ema_decay_deferred,
    find_resume_deltas,
    load_backbone_state,
    logical_state,
    resolve_backbone_path,
)
from spt_adapter.integrations._options import SPTOptions

pytest.importorskip("spandrel")
from _archs import ARCHS  # noqa: E402

BUILD, TARGETS, _ = ARCHS["rrdb"]


def _options() -> SPTOptions:
    return SPTOptions(config=SPTConfig(targets=TARGETS, hidden=4))


def _trained(backbone: Path, seed: int):
    """An SPT net on the backbone file, with units moved away from their initial values."""
    net = BUILD(0)
    load_backbone_state(net, torch.load(backbone, weights_only=True))
    spt = spt_adapter.inject(net, config=_options().config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in spt.unit_parameters():
            p.add_(torch.randn(p.shape, generator=gen))
    return spt


def _units(net) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in net.unit_parameters()}


@pytest.fixture
def backbone(tmp_path) -> Path:
    path = tmp_path / "backbone.pth"
    torch.save(BUILD(0).state_dict(), path)
    return path


def test_find_resume_deltas_and_the_backbone_recorded_in_them(tmp_path, backbone):
    models = tmp_path / "experiments" / "models"
    models.mkdir(parents=True)
    meta = {"basicsr_backbone": str(backbone)}
    spt_adapter.save_adapter(_trained(backbone, 1), models / "net_g_4.safetensors", metadata=meta)
    spt_adapter.save_adapter(_trained(backbone, 2), models / "net_g_ema_4.safetensors", metadata=meta)
    spt_adapter.save_adapter(_trained(backbone, 3), models / "net_g_ema_2.safetensors", metadata=meta)
    pth = str(models / "net_g_4.pth")  # what BasicSR / Restormer set pretrain_network_g to on resume

    found = find_resume_deltas(pth)
    assert found == {"net_g": str(models / "net_g_4.safetensors"), "net_g_ema": str(models / "net_g_ema_4.safetensors")}
    assert resolve_backbone_path(None, pth, found, "basicsr_backbone") == str(backbone)
    assert resolve_backbone_path(None, pth, found, "restormer_backbone") is None  # each shim reads its own key
    assert resolve_backbone_path("given.pth", pth, found, "basicsr_backbone") == "given.pth"

    (models / "net_g_ema_4.safetensors").unlink()
    assert find_resume_deltas(pth) == {"net_g": str(models / "net_g_4.safetensors")}

    # not a resume: the .pth exists, no delta beside it, or no path at all
    assert find_resume_deltas(str(backbone)) == {}
    assert find_resume_deltas(str(models / "net_g_2.pth")) == {}
    assert find_resume_deltas(None) == {}
    assert resolve_backbone_path(None, str(backbone), {}, "basicsr_backbone") == str(backbone)


def test_ema_decay_deferred_holds_zero_and_restores():
    train = {"ema_decay": 0.999}
    with ema_decay_deferred(train) as decay:
        assert decay == 0.999 and train["ema_decay"] == 0
    assert train["ema_decay"] == 0.999
    with pytest.raises(RuntimeError):
        with ema_decay_deferred(train):
            raise RuntimeError("parent failed")
    assert train["ema_decay"] == 0.999
    unset: dict = {}
    with ema_decay_deferred(unset) as decay:
        assert decay == 0
    assert unset == {"ema_decay": 0}


def _load_from(backbone: Path):
    return lambda net: load_backbone_state(net, torch.load(backbone, weights_only=True), source=str(backbone))


def test_build_units_only_ema_copies_live_units_onto_the_frozen_backbone(backbone):
    before = hashlib.sha256(backbone.read_bytes()).hexdigest()
    live = _trained(backbone, 1)
    ema = build_units_only_ema(lambda: BUILD(7).train(), _load_from(backbone), _options(), None, live, "cpu")

    assert ema is not live and not any(m.training for m in ema.modules())  # make_net gave a net in train mode
    mine, theirs = dict(ema.unit_parameters()), dict(live.unit_parameters())
    assert mine.keys() == theirs.keys() and mine
    for key in mine:
        assert torch.equal(mine[key], theirs[key]) and mine[key].data_ptr() != theirs[key].data_ptr()
    # the backbone is the checkpoint's, bit for bit (BUILD(7) started from other weights), and frozen
    state = torch.load(backbone, weights_only=True)
    ema_backbone = logical_state(ema)
    assert ema_backbone.keys() == state.keys()
    assert all(torch.equal(ema_backbone[k], state[k]) for k in state)
    assert not any(p.requires_grad for k, p in ema.named_parameters() if ".spt_units." not in k)
    assert hashlib.sha256(backbone.read_bytes()).hexdigest() == before


def test_build_units_only_ema_takes_units_from_the_resume_delta(tmp_path, backbone):
    saved = _trained(backbone, 2)
    delta = spt_adapter.save_adapter(saved, tmp_path / "net_g_ema_4.safetensors")
    live = _trained(backbone, 1)
    ema = build_units_only_ema(lambda: BUILD(7).train(), _load_from(backbone), _options(), str(delta), live, "cpu")

    assert not any(m.training for m in ema.modules())
    mine, want, other = _units(ema), _units(saved), _units(live)
    assert mine.keys() == want.keys()
    assert all(torch.equal(mine[k], want[k]) for k in want)
    assert any(not torch.equal(mine[k], other[k]) for k in other)
    state = torch.load(backbone, weights_only=True)
    assert all(torch.equal(logical_state(ema)[k], state[k]) for k in state)
