"""SPTModel behaviour: priors, named adapters, layouts, fall-through, dtype, BatchNorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import spt_adapter
from _archs import ARCHS
from spt_adapter import LayoutError, PriorError, SPTConfig, TargetError
from spt_adapter.plugins.hookspecs import hookimpl
from spt_adapter.plugins.manager import get_plugin_manager
from spt_adapter.plugins.types import LayoutSpec


def swinir():
    build, targets, shape = ARCHS["swinir_light"]
    return build(0), targets, torch.rand(*shape)


def label_prior(b=1, h=16, w=16, channels=1):
    return torch.randint(0, 4, (b, channels, h, w), generator=torch.Generator().manual_seed(0)).float() / 4


def perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)


def test_prior_errors_are_clear_and_raised_before_compute():
    backbone, targets, x = swinir()
    model = spt_adapter.inject(backbone, targets)
    calls = []
    handle = backbone.conv_first.register_forward_hook(lambda *a: calls.append(1))
    cases = [
        (None, "prior is missing"),
        (label_prior(b=2), "batch size 2 but the input has batch size 1"),
        (label_prior(channels=3), "3 channel"),
        (torch.full((1, 1, 16, 16), float("nan")), "NaN or Inf"),
        (torch.full((1, 1, 16, 16), float("inf")), "NaN or Inf"),
        (torch.rand(16, 16), r"shape \(B, C_p, H, W\)"),
        (np.zeros((1, 1, 16, 16), dtype=np.complex64), "NumPy dtype"),
        ([[0.0]], "torch.Tensor"),
    ]
    for prior, message in cases:
        with pytest.raises(PriorError, match=message):
            model(x, prior=prior)
    assert calls == [], "the backbone ran before the prior was checked"
    handle.remove()
    # integer and bool label maps are accepted, priors of another resolution are resized
    model(x, prior=torch.randint(0, 3, (1, 1, 16, 16)))
    model(x, prior=torch.rand(1, 1, 7, 9))


def test_use_prior_context_for_trainers_that_call_net_themselves():
    backbone, targets, x = swinir()
    model = spt_adapter.inject(backbone, targets)
    perturb(model)
    prior = label_prior()
    expected = model(x, prior=prior)
    with model.use_prior(prior):
        assert torch.equal(model(x), expected)
    with pytest.raises(PriorError, match="missing"):
        model(x)
    with pytest.raises(PriorError, match="NaN"):
        with model.use_prior(torch.full((1, 1, 4, 4), float("nan"))):
            pass


def test_named_adapters_disable_and_delete():
    backbone, targets, x = swinir()
    with torch.no_grad():
        reference = backbone(x)
    prior = label_prior()
    model = spt_adapter.inject(backbone, targets, adapter_name="a")
    perturb(model)
    out_a = model(x, prior=prior)
    model.add_adapter("b", SPTConfig(fusion="concat"), targets="layers.0.residual_group")
    assert model.active_adapter == "b" and model.adapters == ["a", "b"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".spt_units.b." in n for n in trainable)
    assert torch.equal(model(x, prior=prior), reference)  # fresh "b" is an identity
    model.set_adapter("a")
    assert torch.equal(model(x, prior=prior), out_a)
    with model.disable_adapter():
        assert torch.equal(model(x), reference)
    with pytest.raises(TargetError, match="exists already"):
        model.add_adapter("a")
    with pytest.raises(TargetError, match="no adapter named 'c'"):
        model.set_adapter("c")
    model.delete_adapter("a")
    assert model.active_adapter == "b"
    # layer 1 had only adapter "a": it is unwrapped again
    assert not isinstance(backbone.layers[1].residual_group, spt_adapter.SPTLayer)
    assert isinstance(backbone.layers[0].residual_group, spt_adapter.SPTLayer)
    assert torch.equal(model(x, prior=prior), reference)


def test_inject_twice_through_the_sptmodel_adds_an_adapter():
    backbone, targets, x = swinir()
    model = spt_adapter.inject(backbone, targets)
    same = spt_adapter.inject(model, targets, adapter_name="second")
    assert same is model and model.adapters == ["default", "second"]
    with pytest.raises(TargetError, match="already carries SPT layers"):
        spt_adapter.inject(backbone, targets)


def test_attribute_fall_through_dtype_and_parameter_report(capsys):
    backbone, targets, x = swinir()
    model = spt_adapter.inject(backbone, targets)
    assert model.upscale == backbone.upscale and model.conv_first is backbone.conv_first
    with pytest.raises(AttributeError):
        _ = model.does_not_exist
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    out = model(x.double(), prior=label_prior())
    assert out.dtype == torch.float64
    line = model.print_trainable_parameters()
    trainable, total = model.get_nb_trainable_parameters()
    assert f"trainable params: {trainable:,}" in line and f"all params: {total:,}" in capsys.readouterr().out
    assert trainable == sum(p.numel() for _, p in model.unit_parameters())


def test_eject_restores_requires_grad_flags():
    backbone, targets, x = swinir()
    backbone.conv_first.weight.requires_grad_(False)
    model = spt_adapter.inject(backbone, targets)
    assert not any(
        p.requires_grad
        for p in backbone.parameters()
        if p is not None and all(p is not q for q in (u for _, u in model.unit_parameters()))
    )
    model.eject()
    assert backbone.conv_first.weight.requires_grad is False
    assert backbone.conv_last.weight.requires_grad is True if hasattr(backbone, "conv_last") else True
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n != "conv_first.weight")


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.tail(self.bn(self.head(x)))


def test_frozen_backbone_runs_in_eval_mode_while_units_train():
    net = BNNet()
    net.drop = nn.Dropout(0.5)
    net.forward = lambda x: net.tail(net.drop(net.bn(net.head(x))))
    net.train()
    stats = net.bn.running_mean.clone()
    model = spt_adapter.inject(net, "head").train()
    x, prior = torch.rand(2, 3, 8, 8) * 5, torch.rand(2, 1, 8, 8)
    assert torch.equal(model(x, prior=prior), model(x, prior=prior)), "dropout noise in the frozen backbone"
    assert torch.equal(net.bn.running_mean, stats)
    assert model.training and all(u.training for _, u in model.base_model.head.spt_units.named_modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    back = model.train().eject()
    assert back.training and back.drop.training and back.bn.training, "eject restores the original modes"


class TokenNet(nn.Module):
    """Returns tokens from a block called without any spatial size argument."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Linear(8, 8)
        self.pair = PairBlock()
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        b, _, h, w = x.shape
        t = self.block(self.head(x).flatten(2).transpose(1, 2))
        y = t.transpose(1, 2).reshape(b, 8, h, w)
        y, _ = self.pair(y)
        return self.tail(y)


class PairBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x), x.mean()


class LayoutPlugin:
    @hookimpl
    def spt_adapter_describe_layout(self, model, name, module):
        if name == "block":
            return LayoutSpec(kind="tokens", spatial_size=lambda args, kwargs, out: (round(out.shape[1] ** 0.5),) * 2)
        if name == "pair":
            return LayoutSpec(tuple_index=0)
        return None


def test_layout_errors_name_the_module_and_a_plugin_resolves_them():
    net = TokenNet()
    x, prior = torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)
    reference = net(x)
    with pytest.raises(
        LayoutError,
        match=r"'block' returns tokens of shape \(1, 4096, 8\).*L=4096 in the call \(Tensor\(1, 4096, 8\)\)",
    ):
        spt_adapter.inject(net, "block")
    with pytest.raises(LayoutError, match="'pair' returns a tuple of 2 elements"):
        spt_adapter.inject(net, "pair")
    assert not any(isinstance(m, spt_adapter.SPTLayer) for m in net.modules())
    pm = get_plugin_manager()
    plugin = LayoutPlugin()
    pm.register(plugin, name="test-layout")
    try:
        model = spt_adapter.inject(net, ["block", "pair"])
        assert torch.equal(model(x, prior=prior), reference)
        perturb(model)
        assert not torch.equal(model(x, prior=prior), reference)
    finally:
        pm.unregister(plugin)


def test_swinir_tokens_take_their_size_from_x_size():
    backbone, targets, _ = swinir()
    x = torch.rand(1, 3, 16, 24)  # non-square: H*W must come from the x_size argument, not sqrt(L)
    model = spt_adapter.inject(backbone, targets)
    perturb(model)
    seen = []
    unit = model.base_model.layers[0].residual_group.spt_units["default"]
    unit.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    model(x, prior=torch.rand(1, 1, 16, 24))
    assert seen == [(1, 24, 16, 24)]


def test_no_targets_and_no_claim_is_a_clear_error():
    with pytest.raises(TargetError, match="no plugin claims a BNNet; pass targets="):
        spt_adapter.inject(BNNet())


def test_numpy_priors_from_the_cache_go_straight_into_the_model():
    """PriorCache.get_or_compute returns a NumPy (C, H, W) float32 array: the forward call takes it as it
    is (batch dimension added and expanded, moved to the input's dtype), with the output the tensor gives."""
    backbone, targets, x = swinir()
    model = spt_adapter.inject(backbone, targets)
    perturb(model)
    prior = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
    expected = model(x, prior=torch.from_numpy(prior)[None])
    assert torch.equal(model(x, prior=prior), expected)
    assert torch.equal(model(x, prior=prior[None]), expected)
    x2 = torch.cat([x, x])
    # one (C, H, W) prior serves the whole batch: the same as the tensor repeated per sample
    assert torch.equal(model(x2, prior=prior), model(x2, prior=torch.from_numpy(prior)[None].repeat(2, 1, 1, 1)))
    with pytest.raises(PriorError, match="batch size 1 but the input has batch size 2"):
        model(x2, prior=prior[None])
    # a float64 prior follows the float32 input (no dtype error inside the unit)
    assert torch.equal(model(x, prior=prior.astype(np.float64)), expected)
