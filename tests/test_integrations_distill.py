"""The distilled-prior step the framework shims share (integrations/_distill.py) and the spt block's
``student``/``distill`` keys (integrations/_options.py), on a real spandrel DnCNN."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from spt_adapter.errors import ConfigError
from spt_adapter.integrations._distill import distilled_iteration, distilling, student_only_step
from spt_adapter.integrations._netio import attach_units, check_adapter_matches
from spt_adapter.integrations._options import DistillSpec, parse_spt_block
from spt_adapter.training.train import distill_loss

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402

BLOCK = {
    "targets": ["model.2", "model.4"],
    "hidden": 4,
    "student": {"width": 4, "depth": 2},
    "distill": {"weight": 0.5, "student_steps": 1},
    "prior": {"provider": "classical", "method": "slic"},
}


def _model(in_nc=3, block=BLOCK):
    torch.manual_seed(0)
    net = DnCNN(in_nc=in_nc, out_nc=in_nc, nc=8, nb=4, act_mode="R").eval()
    return attach_units(net, parse_spt_block(block))


class _Trainer:
    """What the shims wrap: an object with a pixel-loss attribute and an optimizer."""

    def __init__(self, model):
        self.net = model
        self.cri_pix = torch.nn.L1Loss()
        self.optimizer = torch.optim.Adam([p for _, p in model.unit_parameters()], lr=1e-2)
        self.loss = None

    def step(self, lq, gt):  # the framework's own step: forward, cri_pix, backward, optimizer step
        self.optimizer.zero_grad()
        self.loss = self.cri_pix(self.net(lq), gt)
        self.loss.backward()
        self.optimizer.step()


def test_the_spt_block_describes_a_distilled_prior():
    options = parse_spt_block(BLOCK)
    assert options.distilled and options.distill == DistillSpec(weight=0.5, student_steps=1)
    assert options.config.prior["kind"] == "distilled" and options.config.prior["teacher"]["method"] == "slic"
    assert options.config.prior_channels == 1  # the teacher's encoding (boundary)
    # the student reads what the network reads: 1 channel for a grey DnCNN
    assert _model(in_nc=1).spt_config["default"].student["in_channels"] == 1
    assert not parse_spt_block({"prior": {"provider": "slic"}}).distilled
    for block, message in (
        ({"distill": {"weight": 1}}, "spt.distill is for a distilled prior"),
        ({"student": {"in_channels": 3}}, r"unknown key\(s\) \['in_channels'\] in 'spt.student'"),
        ({"student": {}, "distill": {"student_steps": -1}}, "student_steps must be an integer >= 0"),
        ({"student": {}, "distill": {"weight": float("nan")}}, "weight must be a finite number"),
        ({"student": {}, "fusion": "pool"}, "spt: a distilled prior .* pool"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_spt_block(block)


def test_distilling_adds_the_weighted_bce_and_always_restores_the_loss():
    model = _model()
    trainer = _Trainer(model)
    original = trainer.cri_pix
    lq, gt = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    teacher = (torch.rand(2, 1, 12, 12) > 0.5).float()
    with distilling(model, trainer, "cri_pix", teacher, 0.5) as parts:
        out, logits = model(lq, return_prior_logits=True)
        total = trainer.cri_pix(out, gt)
    expected = original(out, gt) + 0.5 * distill_loss(logits, teacher)
    assert torch.allclose(total, expected) and torch.equal(parts["distill"], distill_loss(logits, teacher))
    assert trainer.cri_pix is original
    with pytest.raises(RuntimeError, match="boom"):
        with distilling(model, trainer, "cri_pix", teacher, 0.5):
            raise RuntimeError("boom")
    assert trainer.cri_pix is original and not model.student().body._forward_hooks  # hook removed too
    trainer.cri_pix = None
    with pytest.raises(ConfigError, match="pixel loss"):
        with distilling(model, trainer, "cri_pix", teacher, 0.5):
            pass


def test_student_only_steps_then_joint_steps():
    model = _model()
    trainer = _Trainer(model)
    spec = parse_spt_block(BLOCK).distill
    lq, gt = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    teacher = (torch.rand(2, 1, 12, 12) > 0.5).float()
    units = {k: p.detach().clone() for k, p in model.unit_parameters() if ".spt_unit." in k}
    student = {k: p.detach().clone() for k, p in model.unit_parameters() if k.startswith("spt_student.")}

    def step():
        trainer.step(lq, gt)

    with torch.no_grad():
        before = float(distill_loss(model.student().logits(lq), teacher))
    only, loss = distilled_iteration(model, spec, 1, lq, teacher, trainer.optimizer, trainer, "cri_pix", step)
    assert only and loss == pytest.approx(before, rel=1e-6)  # the loss the step was taken on
    now = dict(model.unit_parameters())
    assert all(torch.equal(now[k], v) for k, v in units.items()), "units must not move in student-only steps"
    assert any(not torch.equal(now[k], v) for k, v in student.items())
    assert trainer.loss is None, "the framework step (backbone forward) must not run in student-only steps"
    only, loss = distilled_iteration(model, spec, 2, lq, teacher, trainer.optimizer, trainer, "cri_pix", step)
    assert not only and loss is not None and trainer.loss is not None
    now = dict(model.unit_parameters())
    assert any(not torch.equal(now[k], v) for k, v in units.items())
    # no teacher in the batch: refused while the schedule needs one, else restoration loss only
    with pytest.raises(ConfigError, match="no 'teacher_prior'.*spt_teacher"):
        distilled_iteration(model, spec, 1, lq, None, trainer.optimizer, trainer, "cri_pix", step)
    plain = DistillSpec(weight=0, student_steps=0)
    assert distilled_iteration(model, plain, 5, lq, None, trainer.optimizer, trainer, "cri_pix", step) == (False, None)


def test_student_only_step_leaves_units_without_gradients():
    model = _model()
    optimizer = torch.optim.SGD([p for _, p in model.unit_parameters()], lr=0.1)
    loss = student_only_step(model, torch.rand(1, 3, 10, 10), torch.ones(1, 1, 10, 10), optimizer)
    assert loss > 0
    assert all(p.grad is None for k, p in model.unit_parameters() if ".spt_unit." in k)


def test_an_adapter_must_match_the_block_it_continues(tmp_path):
    path = tmp_path / "distilled.safetensors"
    spt_adapter.save_adapter(_model(), path)
    check_adapter_matches(str(path), parse_spt_block(BLOCK))
    other = dict(BLOCK, prior={"provider": "classical", "method": "felzenszwalb"})
    with pytest.raises(ConfigError, match="was distilled from teacher .*slic.* but spt.prior names .*felzenszwalb"):
        check_adapter_matches(str(path), parse_spt_block(other))
    with pytest.raises(ConfigError, match="has a distilled prior .* but the spt block asks for a provider prior"):
        check_adapter_matches(str(path), parse_spt_block({"targets": BLOCK["targets"], "prior": BLOCK["prior"]}))
    plain = tmp_path / "plain.safetensors"
    spt_adapter.save_adapter(_model(block={"targets": BLOCK["targets"], "hidden": 4}), plain)
    with pytest.raises(ConfigError, match="has no student .* asks for a distilled prior"):
        check_adapter_matches(str(plain), parse_spt_block(BLOCK))
    before = path.read_bytes()
    with pytest.raises(ConfigError):  # attach_units checks before it loads anything
        attach_units(DnCNN(in_nc=3, out_nc=3, nc=8, nb=4, act_mode="R"), parse_spt_block(other), adapter=str(path))
    assert path.read_bytes() == before


def test_the_spt_block_builds_any_installed_provider(tmp_path, monkeypatch):
    """The shims' prior block goes through the provider registry: a plugin's provider is named,
    its settings are checked when the block is read, and it makes the prior (cached)."""
    import numpy as np

    from spt_adapter.integrations._options import PriorSource
    from spt_adapter.plugins.hookspecs import hookimpl
    from spt_adapter.plugins.manager import get_plugin_manager
    from spt_adapter.plugins.types import ProviderSpec, Setting
    from spt_adapter.prior import ClassicalMaskProvider

    built = []

    class Plugin:
        @hookimpl
        def spt_adapter_mask_providers(self):
            def build(settings, *, checkpoint, model_type, device):
                built.append((settings, device))
                return ClassicalMaskProvider("felzenszwalb", scale=settings["scale"])

            return [ProviderSpec("test-block", build, {"scale": Setting(float, 100.0, minimum=1)}, "a test provider")]

    get_plugin_manager().register(Plugin(), name="test-block-plugin")
    try:
        with pytest.raises(ConfigError, match=r"spt\.prior\.settings: provider 'test-block'"):
            parse_spt_block({"prior": {"provider": "test-block", "settings": {"scale": 0}}})
        assert not built, "settings are checked before the provider is built"
        spec = parse_spt_block(
            {
                "prior": {
                    "provider": "test-block",
                    "settings": {"scale": 50},
                    "device": "cpu",
                    "cache_dir": str(tmp_path),
                }
            }
        ).prior
        image = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
        prior = PriorSource(spec)(image)
        assert prior.shape == (1, 24, 24) and built == [({"scale": 50.0}, "cpu")]
        assert list(tmp_path.rglob("*.sptc")), "the prior went through the cache"
        # cache_dir: ~ (images that never repeat, e.g. KAIR's random patches): the same prior, nothing written
        uncached = parse_spt_block({"prior": {"provider": "test-block", "settings": {"scale": 50}, "cache_dir": None}})
        assert uncached.prior.cache_dir is None
        workdir = tmp_path / "cwd"
        workdir.mkdir()
        monkeypatch.chdir(workdir)
        np.testing.assert_array_equal(PriorSource(uncached.prior)(image), prior)
        assert not list(workdir.iterdir())
    finally:
        get_plugin_manager().unregister(name="test-block-plugin")
