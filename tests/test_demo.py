"""`spt-adapter demo --quick`: the whole workflow runs, writes its table and pictures, caches the
backbone (the second run skips pretraining) and prints every output path."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

pytest.importorskip("matplotlib")
pytest.importorskip("spandrel")


@pytest.mark.slow
def test_demo_quick_runs_twice_with_cached_backbone(tmp_path):
    cache = tmp_path / "cache"
    env_cmd = [sys.executable, "-m", "spt_adapter.cli", "demo", "--quick", "--no-progress", "--cache-dir", str(cache)]
    first = subprocess.run([*env_cmd, "--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training a small SwinIR" in first.stdout
    assert "| **mean (2)**" in first.stdout and "astronaut" in first.stdout
    backbones = list((cache / "demo").glob("*.safetensors"))
    assert len(backbones) == 1
    for name in (
        "demo_side_by_side.png",
        "demo_training_curve.png",
        "eval/eval.md",
        "eval/eval.csv",
        "adapter/spt_adapter.safetensors",
    ):
        path = tmp_path / "one" / name
        assert path.is_file(), name
        assert str(path) in first.stdout  # every output path is printed
    side = Image.open(tmp_path / "one" / "demo_side_by_side.png")
    assert side.width > 3 * 64 and side.height > 2 * 40  # 4 panels x 2 held-out images
    assert any((cache / "priors").rglob("*.sptc"))
    from spt_adapter.demo import foreign_files

    assert foreign_files(tmp_path / "one") == []  # everything there is the demo's own: a rerun may replace it

    stamp = backbones[0].stat().st_mtime_ns
    second = subprocess.run([*env_cmd, "--out", str(tmp_path / "two")], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "backbone: cached" in second.stdout and "training a small SwinIR" not in second.stdout
    assert backbones[0].stat().st_mtime_ns == stamp
    # same seed, same cached backbone, same priors: the same table
    assert (tmp_path / "one" / "eval" / "eval.csv").read_text() == (tmp_path / "two" / "eval" / "eval.csv").read_text()

    # the prior encoding is the library default for the fusion: boundary, or label for pool
    from spt_adapter.files.format import read_adapter_config

    assert read_adapter_config(tmp_path / "one" / "adapter" / "spt_adapter.safetensors").prior["encoding"] == "boundary"
    pool = subprocess.run(
        [*env_cmd, "--out", str(tmp_path / "pool"), "--fusion", "pool"], capture_output=True, text=True, timeout=300
    )
    assert pool.returncode == 0, pool.stderr[-3000:]
    config = read_adapter_config(tmp_path / "pool" / "adapter" / "spt_adapter.safetensors")
    assert config.fusion == "pool" and config.prior["encoding"] == "label"


def test_demo_refuses_missing_sam_checkpoint(tmp_path, capsys):
    from spt_adapter.cli import main

    code = main(["demo", "--quick", "--out", str(tmp_path / "d"), "--sam-checkpoint", str(tmp_path / "no.pth")])
    assert code == 1 and "no.pth does not exist" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
