"""benchmarks/gpu_suite.sh runs end to end in its CPU --dry-run mode (so the GPU run cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "suite"
    env = {**os.environ, "PYTHON": sys.executable, "SPT_ADAPTER_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    for step in ("env", "overhead", "prior_speed", "train_amp", "restore", "export"):
        row = next(line for line in summary.splitlines() if line.startswith(f"| {step} |"))
        assert row.split("|")[2].strip() == "0", row
        assert (out / f"{step}.md").stat().st_size > 0
    assert "dry run" in (out / "env.md").read_text()
    assert "mixed precision" in (out / "train_amp.md").read_text()
    assert "PSNR tiled vs whole" in (out / "restore.md").read_text()
    assert list((out / "restored_tiled").glob("*.png")) and list((out / "restored_whole").glob("*.png"))
    exported = (out / "export.md").read_text()
    assert "| onnx | float32 |" in exported and "| torchscript | float32 |" in exported
    assert "--half on this backbone: " in exported and "float16" in exported  # SwinIR: refused, by name
    assert list((out / "restored_torchscript").glob("*.png"))
