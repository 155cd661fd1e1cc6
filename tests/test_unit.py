"""SPTUnit, prior resizing, region averaging, layouts and SPTConfig validation."""

from __future__ import annotations

import json

import pytest
import torch

from spt_adapter import ConfigError, SPTConfig, SPTUnit
from spt_adapter.core.config import SCHEMA_VERSION
from spt_adapter.core.layout import find_spatial_size, map_to_tokens, tokens_to_map
from spt_adapter.core.unit import region_average, resize_prior


@pytest.mark.parametrize("fusion", ["sft", "concat", "pool"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fresh_unit_is_exact_identity_and_learns(fusion, dtype):
    unit = SPTUnit(12, SPTConfig(fusion=fusion)).to(dtype)
    feats = torch.randn(2, 12, 9, 7, dtype=dtype)
    prior = torch.randint(0, 5, (2, 1, 18, 14)).to(dtype) / 5
    assert torch.equal(unit(feats, prior), feats)
    out = unit(feats, prior)
    out.sum().backward()
    grads = [p.grad for p in unit.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, "no gradient reaches the unit"


def test_sft_and_concat_use_the_prior():
    for fusion in ("sft", "concat"):
        torch.manual_seed(0)
        unit = SPTUnit(4, SPTConfig(fusion=fusion))
        with torch.no_grad():
            for p in unit.parameters():
                p.normal_(0, 0.3)
        feats = torch.randn(1, 4, 8, 8)
        a = unit(feats, torch.zeros(1, 1, 8, 8))
        b = unit(feats, torch.ones(1, 1, 8, 8))
        assert not torch.allclose(a, b), fusion


def test_nearest_resize_keeps_label_values():
    labels = torch.randint(0, 7, (1, 1, 31, 29)).float() / 7
    for size in [(8, 8), (62, 58), (13, 40)]:
        out = resize_prior(labels, size, "nearest")
        assert out.shape[-2:] == size
        assert set(out.unique().tolist()) <= set(labels.unique().tolist())
    assert resize_prior(labels, (31, 29), "bilinear") is labels
    assert resize_prior(labels, (10, 10), "area").shape[-2:] == (10, 10)


def test_region_average_matches_a_per_region_loop():
    torch.manual_seed(0)
    feats = torch.randn(2, 3, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6)).float() / 4
    got = region_average(feats, labels)
    for b in range(2):
        for value in labels[b].unique():
            mask = labels[b] == value
            mean = feats[b][:, mask].mean(dim=1)
            assert torch.allclose(got[b][:, mask], mean[:, None].expand(-1, int(mask.sum())), atol=1e-6)


def test_tokens_round_trip_and_spatial_size_search():
    x = torch.randn(2, 6 * 5, 4)
    assert torch.equal(map_to_tokens(tokens_to_map(x, (6, 5))), x)
    assert find_spatial_size((x, (6, 5)), {}, 30) == (6, 5)
    assert find_spatial_size((x,), {"x_size": [5, 6]}, 30) == (5, 6)
    assert find_spatial_size((x, (4, 4), torch.Size([3, 10])), {}, 30) == (3, 10)
    assert find_spatial_size((x, (True, 30)), {}, 30) is None
    assert find_spatial_size((x, (7, 7)), {}, 30) is None


def test_config_validation_and_json_round_trip():
    cfg = SPTConfig(targets="layers.*", fusion="concat", hidden=8, prior={"provider": "slic", "n_segments": 24})
    assert cfg.targets == ["layers.*"]
    again = SPTConfig.from_json(cfg.to_json())
    assert again == cfg
    assert cfg.to_json() == json.dumps(json.loads(cfg.to_json()), sort_keys=True, separators=(",", ":"))
    for bad, message in [
        (dict(fusion="film"), "fusion must be one of"),
        (dict(hidden=0), "hidden must be a positive integer"),
        (dict(depth=True), "depth must be a positive integer"),
        (dict(prior_resize="cubic"), "prior_resize"),
        (dict(fusion="pool", prior_resize="bilinear"), "label map"),
        (dict(fusion="pool", prior_channels=3), "prior_channels must be 1"),
        (dict(targets=["a", ""]), "empty pattern"),
        (dict(targets=3), "pattern string"),
        (dict(prior={"x": object()}), "JSON-serialisable"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SPTConfig(**bad)
    with pytest.raises(ConfigError, match=r"unknown SPTConfig field\(s\) \['rank'\]"):
        SPTConfig.from_dict({"rank": 4})
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        SPTConfig.from_dict({"schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ConfigError, match="malformed"):
        SPTConfig.from_json("{")
