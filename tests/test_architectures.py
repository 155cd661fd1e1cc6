"""The core contracts on real architectures (spandrel; Restormer from spandrel-extra-arches)."""

from __future__ import annotations

import pytest
import torch

import spt_adapter
from _archs import ARCHS

FUSIONS = ["sft", "concat", "pool"]


def _prior(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = shape
    labels = torch.randint(0, 6, (b, 1, h, w), generator=g).float()
    return labels / 6


def _input(shape, seed=2):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_identity_eject_train_save_load(arch, tmp_path):
    build, targets, shape = ARCHS[arch]
    backbone = build(0)
    x, prior = _input(shape), _prior(shape)
    with torch.no_grad():
        reference = backbone(x)
    original = {k: v.clone() for k, v in backbone.state_dict().items()}
    original_tree = [(n, type(m)) for n, m in backbone.named_modules()]
    fusion = FUSIONS[list(ARCHS).index(arch) % 3]  # every fusion covered across architectures

    model = spt_adapter.inject(backbone, targets=targets, config=spt_adapter.SPTConfig(fusion=fusion))
    assert model.spt_targets["default"], arch
    with torch.no_grad():
        assert torch.equal(model(x, prior=prior), reference), "a fresh adapter must be an exact identity"

    # only spt_ parameters train
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".spt_units." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        out = model(x, prior=prior)
        loss = (out - torch.zeros_like(out)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "optimizer steps changed nothing"
    assert all(".spt_units." in n for n in changed), sorted(changed - {n for n in changed if ".spt_units." in n})[:3]
    with torch.no_grad():
        trained = model(x, prior=prior)
    assert not torch.equal(trained, reference)

    # the delta holds only unit tensors and is bounded by their count
    path = tmp_path / f"{arch}.safetensors"
    spt_adapter.save_adapter(model, path)
    meta, entries = spt_adapter.read_adapter_header(path)
    assert all(".spt_unit." in k for k in entries)
    n_unit = sum(p.numel() for _, p in model.unit_parameters())
    assert sum(1 for _ in entries) == sum(1 for _ in model.unit_parameters())
    assert path.stat().st_size <= 4 * n_unit + 64 * 1024, "file larger than the units need"

    # eject restores the exact original module tree and state dict
    ejected = model.eject()
    assert ejected is backbone
    assert [(n, type(m)) for n, m in ejected.named_modules()] == original_tree
    state = ejected.state_dict()
    assert list(state) == list(original)
    for k, v in original.items():
        assert torch.equal(state[k], v) and state[k].dtype == v.dtype and state[k].device == v.device, k

    # load onto a fresh backbone built with another seed, then given the original weights
    fresh = build(123)
    fresh.load_state_dict(original)
    loaded = spt_adapter.load_adapter(fresh, path)
    with torch.no_grad():
        assert torch.equal(loaded(x, prior=prior), trained)
