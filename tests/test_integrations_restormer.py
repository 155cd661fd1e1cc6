"""Restormer shim: default targets on spandrel-extra-arches' Restormer, its checkpoints, the spt
YAML block; opt-in run of Restormer's own basicsr/train.py when SPT_RESTORMER_ROOT is set."""

from __future__ import annotations

import os

import pytest
import torch

yaml = pytest.importorskip("yaml")

import spt_adapter
from spt_adapter.integrations._options import parse_spt_block
from spt_adapter.integrations.restormer.model import priors_for
from spt_adapter.plugins import call_hook

pytest.importorskip("spandrel_extra_arches")
from spandrel_extra_arches.architectures.Restormer import Restormer  # noqa: E402


def _restormer():
    torch.manual_seed(0)
    return Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]).eval()


def test_restormer_defaults_identity_and_params_checkpoint(tmp_path):
    net = _restormer()
    torch.save({"params": net.state_dict()}, tmp_path / "restormer.pth")
    state = call_hook("spt_adapter_read_checkpoint", path=str(tmp_path / "restormer.pth"))
    assert list(state) == list(net.state_dict())
    model = spt_adapter.inject(net)
    assert model.spt_targets["default"] == ["encoder_level1", "encoder_level2", "encoder_level3", "latent",
                                            "decoder_level3", "decoder_level2", "decoder_level1", "refinement"]
    assert model.spt_config["default"].integration == "restormer"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        with model.disable_adapter():
            ref = model(x)
        assert torch.equal(model(x, prior=torch.rand(2, 1, 16, 16)), ref)


def test_spt_yaml_block():
    block = yaml.safe_load("""
spt:
  targets: [latent, refinement]
  fusion: concat
  prior: {provider: sam, checkpoint: sam_vit_b_01ec64.pth, model_type: vit_b, cache_dir: priors}
""")["spt"]
    options = parse_spt_block(block)
    assert options.config.targets == ["latent", "refinement"]
    assert options.config.prior == {"provider": "sam", "encoding": "label", "settings": {}, "model_type": "vit_b",
                                    "checkpoint": "sam_vit_b_01ec64.pth"}
    with pytest.raises(spt_adapter.ConfigError, match="checkpoint"):
        parse_spt_block({"prior": {"provider": "sam"}})
    with pytest.raises(spt_adapter.ConfigError, match="provider must be one of"):
        parse_spt_block({"prior": {"provider": "magic"}})


def test_priors_for_a_batch_use_the_cache_api(tmp_path):
    prior_api = pytest.importorskip("spt_adapter.prior")
    if not hasattr(prior_api, "PriorCache"):
        pytest.skip("spt_adapter.prior.PriorCache is not available yet")
    from spt_adapter.integrations._options import PriorSource

    spec = parse_spt_block({"prior": {"cache_dir": str(tmp_path), "provider": "classical", "method": "slic"}}).prior
    batch = torch.rand(2, 3, 24, 24)
    prior = priors_for(batch, PriorSource(spec))
    assert prior.shape[0] == 2 and prior.shape[-2:] == (24, 24)


RESTORMER_ROOT = os.environ.get("SPT_RESTORMER_ROOT")


@pytest.mark.slow
@pytest.mark.skipif(not RESTORMER_ROOT, reason="set SPT_RESTORMER_ROOT to a Restormer checkout")
def test_restormer_checkout_registers_sptimagecleanmodel():
    import subprocess
    import sys

    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "from spt_adapter.integrations.restormer.train import use_checkout_basicsr; use_checkout_basicsr(sys.path[0])\n"
        "from spt_adapter.plugins import register_frameworks\n"
        "done = register_frameworks(raise_errors=True)\n"
        "assert 'restormer' in done, done\n"
        "from basicsr.models import create_model, _model_modules\n"
        "assert any(hasattr(m, 'SPTImageCleanModel') for m in _model_modules)\n"
    ) % RESTORMER_ROOT
    proc = subprocess.run([sys.executable, "-c", code], cwd=RESTORMER_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
