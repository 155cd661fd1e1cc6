"""The plugin system: entry points, hooks, failures that name the plugin, the disable switch,
and a real third-party distribution installed into the environment."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import spt_adapter
from spt_adapter.errors import LayoutError, PluginError, TargetError
from spt_adapter.plugins import manager as plugins
from spt_adapter.plugins.hookspecs import hookimpl
from spt_adapter.plugins.types import LayoutSpec, ModelClaim

REPO = Path(__file__).resolve().parents[1]
BUILTIN = {"basicsr", "kair", "restormer", "spandrel"}  # the integrations; the built-in providers are plugin "prior"


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch):
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def _fake_entry_points(monkeypatch, tmp_path, modules: dict[str, str], keep_real: bool = True):
    """Entry points of the group = the real ones plus modules written to tmp_path (faked metadata)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = list(metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)) if keep_real else []
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        eps.append(metadata.EntryPoint(name=name, value=name, group=plugins.ENTRY_POINT_GROUP))
        sys.modules.pop(name, None)
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group=None: [e for e in eps if e.group == group])


def _run_plugins_command(**kw) -> int:
    from spt_adapter.commands import plugins as command

    return command.run(
        argparse.Namespace(hooks=True, presets=kw.get("presets", False), no_register=kw.get("no_register", True))
    )


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


def test_builtin_shims_load_through_entry_points():
    pm = plugins.get_plugin_manager()
    report = plugins.plugin_report()
    assert BUILTIN <= set(report.loaded), report.failed
    assert not report.failed
    for name in BUILTIN:
        assert pm.get_plugin(name).__name__ == f"spt_adapter.integrations.{name}.plugin"
        assert "spt-adapter" in report.loaded[name]  # loaded from the installed distribution's metadata


def test_disable_env_turns_autoload_off(monkeypatch, capsys):
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    plugins.reset_plugin_manager()
    pm = plugins.get_plugin_manager()
    assert pm.list_name_plugin() == [] and plugins.plugin_report().disabled
    with pytest.raises(TargetError, match="no plugin claims a Tiny"):
        spt_adapter.inject(Tiny())
    assert _run_plugins_command() == 0
    assert "autoload is disabled" in capsys.readouterr().out


def test_a_plugin_that_fails_to_import_is_reported_by_name_and_others_load(monkeypatch, tmp_path, capsys):
    _fake_entry_points(monkeypatch, tmp_path, {"spt_broken_plugin": "raise ImportError('needs libfoo')\n"})
    plugins.get_plugin_manager()
    report = plugins.plugin_report()
    assert "spt_broken_plugin" in report.failed and "needs libfoo" in report.failed["spt_broken_plugin"]
    assert BUILTIN <= set(report.loaded)
    assert _run_plugins_command() == 1
    out = capsys.readouterr().out
    assert "spt_broken_plugin FAILED: spt_broken_plugin: ImportError: needs libfoo" in out
    assert "spandrel" in out


def test_check_pending_catches_a_misspelt_hookimpl(monkeypatch, tmp_path):
    _fake_entry_points(
        monkeypatch,
        tmp_path,
        {
            "spt_typo_plugin": """
        from spt_adapter.plugins.hookspecs import hookimpl

        @hookimpl
        def spt_adapter_claim_modle(model):
            return None
    """
        },
    )
    with pytest.raises(PluginError, match="spt_adapter_claim_modle"):
        plugins.get_plugin_manager()


def test_a_plugin_raising_in_a_hook_names_itself():
    class Exploding:
        @hookimpl(tryfirst=True)
        def spt_adapter_claim_model(self, model):
            raise RuntimeError("boom")

    pm = plugins.get_plugin_manager()
    pm.register(Exploding(), name="exploding")
    try:
        with pytest.raises(
            PluginError, match="plugin 'exploding' failed in hook spt_adapter_claim_model: RuntimeError: boom"
        ):
            spt_adapter.inject(Tiny())
    finally:
        pm.unregister(name="exploding")


def test_register_framework_failure_names_the_plugin_and_others_still_register():
    class Broken:
        @hookimpl
        def spt_adapter_register_framework(self):
            raise ValueError("registry is read-only")

    pm = plugins.get_plugin_manager()
    pm.register(Broken(), name="broken_fw")
    try:
        done = plugins.register_frameworks()
        assert "spandrel" in done and "broken_fw" not in done
        assert "registry is read-only" in plugins.plugin_report().register_failed["broken_fw"]
        with pytest.raises(PluginError, match="plugin 'broken_fw' failed in hook spt_adapter_register_framework"):
            plugins.register_frameworks(raise_errors=True)
    finally:
        pm.unregister(name="broken_fw")


def test_claim_hook_gives_targets_channels_and_is_recorded_in_the_adapter(tmp_path):
    class TinyClaims:
        @hookimpl(tryfirst=True)
        def spt_adapter_claim_model(self, model):
            if isinstance(model, Tiny):
                return ModelClaim(integration="tests", preset="tiny", targets=["a"], channels={"a": 4})
            return None

    pm = plugins.get_plugin_manager()
    pm.register(TinyClaims(), name="tiny_claims")
    try:
        model = spt_adapter.inject(Tiny())
        assert model.spt_targets["default"] == ["a"]
        config = model.spt_config["default"]
        assert (config.integration, config.preset) == ("tests", "tiny")
        path = model.save_adapter(tmp_path / "tiny.safetensors")
        meta, _ = spt_adapter.read_adapter_header(path)
        assert (meta["integration"], meta["preset"]) == ("tests", "tiny")
    finally:
        pm.unregister(name="tiny_claims")


def test_describe_layout_hook_picks_the_tuple_element():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return (torch.zeros(1), y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.out = nn.Conv2d(5, 3, 1)

        def forward(self, x):
            return self.out(self.pair(x)[1])

    class Layouts:
        @hookimpl
        def spt_adapter_describe_layout(self, model, name, module):
            return LayoutSpec(kind="map", tuple_index=1) if isinstance(module, Pair) else None

    net = Net()
    with pytest.raises(LayoutError, match="spt_adapter_describe_layout"):  # without the hook: no tuple element
        spt_adapter.inject(net, targets="pair")
    pm = plugins.get_plugin_manager()
    pm.register(Layouts(), name="layouts")
    try:
        x = torch.rand(1, 3, 8, 8)
        expected = net(x)
        model = spt_adapter.inject(net, targets="pair")
        assert model.spt_targets["default"] == ["pair"]
        assert torch.equal(model(x, prior=torch.rand(1, 1, 8, 8)), expected)
    finally:
        pm.unregister(name="layouts")


def test_read_checkpoint_hook_kair_bare_state_dict(tmp_path):
    from spandrel.architectures.DRUNet import DRUNet

    net = DRUNet(in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=1)
    path = tmp_path / "drunet_bare.pth"
    torch.save(net.state_dict(), path)
    state = plugins.call_hook("spt_adapter_read_checkpoint", path=str(path))
    assert list(state) == list(net.state_dict())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_read_checkpoint_never_unpickles_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"params": Evil()}, fh)
    with pytest.raises(PluginError, match="forbidden"):
        spt_adapter.load_backbone(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_third_party_distribution_installed_into_the_environment(tmp_path):
    src = REPO / "examples" / "third_party_plugin"
    pip = [sys.executable, "-m", "pip"]
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "-q", str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    try:
        trace = tmp_path / "trace.txt"
        env = dict(os.environ, SPT_EXAMPLE_TRACE=str(trace))
        env.pop(plugins.DISABLE_ENV, None)
        script = textwrap.dedent(f"""
            import torch, spt_adapter
            from safetensors.torch import save_file
            from spt_example_plugin.plugin import TinyNet
            from spt_adapter.plugins.manager import call_hook, plugin_report, register_frameworks
            net = TinyNet()
            model = spt_adapter.inject(net)
            assert model.spt_targets["default"] == ["blocks.0", "blocks.1"], model.spt_targets
            assert model.spt_config["default"].preset == "tinynet"
            save_file(TinyNet().state_dict(), {str(tmp_path / "w.tiny")!r})
            assert set(call_hook("spt_adapter_read_checkpoint", path={str(tmp_path / "w.tiny")!r})) == set(TinyNet().state_dict())
            assert register_frameworks()["example"] == ["example:TinyNet"]
            assert "spt-example-plugin" in plugin_report().loaded["example"]
        """)
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        called = set(trace.read_text().split())
        assert called == {
            "spt_adapter_claim_model",
            "spt_adapter_describe_layout",
            "spt_adapter_read_checkpoint",
            "spt_adapter_register_framework",
        }
        # its mask provider, through the real entry point and `spt-adapter masks` in another process
        images = tmp_path / "imgs"
        images.mkdir()
        from PIL import Image
        from skimage import data

        Image.fromarray(data.astronaut()[::8, ::8]).save(images / "astronaut.png")
        Image.fromarray(data.coffee()[::8, ::8]).save(images / "coffee.png")
        masks = [
            sys.executable,
            "-m",
            "spt_adapter.cli",
            "masks",
            str(images),
            "--provider",
            "watershed",
            "--prior-cache",
            str(tmp_path / "cache"),
            "--no-progress",
            "--strict",
        ]
        run = subprocess.run(
            [*masks, "--provider-set", "markers=30", "--encoding", "label"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0 and "computed 2" in run.stderr, run.stderr[-3000:]
        assert {"spt_adapter_mask_providers", "WatershedProvider.generate"} <= set(trace.read_text().split())
        from spt_adapter.prior import LabelMasks, PriorCache, encode_masks

        sys.path.insert(0, str(src))
        try:
            from spt_example_plugin.plugin import WatershedProvider
        finally:
            sys.path.remove(str(src))
        img = np.asarray(Image.open(images / "astronaut.png").convert("RGB"))
        mine = WatershedProvider(30, 0.001)
        expected = encode_masks(mine.generate(img), "label")
        cache = PriorCache(tmp_path / "cache")
        np.testing.assert_array_equal(cache.get_or_compute(img, mine, "label"), expected)
        assert cache.stats["prior_hits"] == 1  # the subprocess cached it under the provider's identity
        assert isinstance(mine.generate(img), LabelMasks) and len(np.unique(expected)) > 10
        bad = subprocess.run([*masks, "--set", "markers=abc"], env=env, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1 and "provider 'watershed': setting markers='abc' is invalid" in bad.stderr
        failing = subprocess.run(
            masks, env={**env, "SPT_EXAMPLE_FAIL_GENERATE": "1"}, capture_output=True, text=True, timeout=300
        )
        assert (
            failing.returncode == 1 and "provider 'watershed' (plugin 'example') failed: RuntimeError" in failing.stderr
        )
        listing = subprocess.run(
            [sys.executable, "-m", "spt_adapter.cli", "plugins"], env=env, capture_output=True, text=True, timeout=300
        )
        assert listing.returncode == 0, listing.stdout + listing.stderr
        for name in BUILTIN | {"example"}:
            assert any(line.startswith(name) for line in listing.stdout.splitlines()), listing.stdout
        assert "spt_example_plugin.plugin (spt-example-plugin 0.1.0)" in listing.stdout
        assert "  watershed      plugin example: compact watershed" in listing.stdout
        assert "  slic           plugin prior: " in listing.stdout
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", "spt-example-plugin"], capture_output=True, timeout=300)
    assert "example" not in {ep.name for ep in metadata.entry_points(group=plugins.ENTRY_POINT_GROUP)}
