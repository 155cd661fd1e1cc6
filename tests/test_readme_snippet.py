"""The README's plain-PyTorch block runs as written, end to end from an image file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _archs import tiny_swinir

ROOT = Path(__file__).resolve().parents[1]


def test_readme_plain_pytorch_block_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("spandrel")
    from skimage import data

    net = tiny_swinir(window_size=8)
    torch.save(net.state_dict(), tmp_path / "swinir_x2.pth")
    Image.fromarray(data.astronaut()[100:156, 150:222]).save(tmp_path / "photo.png")
    block = re.search(r"## Plain PyTorch\n.*?```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert scope["out"].shape == (1, 3, 112, 144)
    assert scope["restored"].shape == (112, 144, 3) and scope["restored"].dtype == np.uint8
    assert (tmp_path / "swinir_x2_spt.safetensors").is_file() and (tmp_path / "priors").is_dir()
