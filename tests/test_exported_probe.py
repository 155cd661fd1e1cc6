"""Exported files' receptive radius and minimum tile are verified on load by a probe the graph answers
(issue 26): one input pixel changed, how far the output moves; a run at the recorded minimum tile. Both
ONNX runners (``spt-adapter restore --backbone x.onnx`` and the torch-free ``python -m
spt_adapter.deploy``) and the TorchScript one share the probe (``deploy.onnx_restore.ExportedFile``)."""

from __future__ import annotations

import io
import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _helpers import one_line_error as _one_line_error
from _helpers import run_cli as _run

pytest.importorskip("spandrel")
pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).parent))
from test_reliability4 import _deploy, _dncnn, _export_with_photos, _with_meta  # noqa: E402  the reliability tests' own helpers


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A x1 colour DnCNN (8 convolutions: radius 8) exported as ONNX, and a 70x64 photo."""
    return _export_with_photos(tmp_path_factory.mktemp("probe"), [(70, 64)], ["p"])


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


def test_an_honest_export_passes_and_its_probe_is_one_small_forward(exported):
    from spt_adapter.deploy.onnx_restore import load_onnx

    net = load_onnx(exported["onnx"], threads=1)
    assert net.receptive_radius == 8
    calls = []
    run = net.run

    def counting(x, prior=None):
        calls.append(tuple(x.shape))
        return run(x, prior)

    net.run = counting  # type: ignore[method-assign]
    t = time.perf_counter()
    measured = net.probe_radius(lambda a: a)
    seconds = time.perf_counter() - t
    # one forward of two 19x19 images (2 * (8 + 1) + 1): the probe costs what a tiny input costs
    assert calls == [(2, 3, 19, 19)]
    assert seconds < 2.0  # milliseconds here; generous for a shared 2-core machine
    assert 1 <= measured <= 8  # the graph's pixels see their neighbours, never past the recorded radius


@pytest.mark.parametrize("runner", ["spt-adapter", "deploy"])
def test_a_radius_edited_down_is_refused_by_both_onnx_runners(exported, tmp_path, capsys, runner):
    bad = _with_meta(exported["onnx"], tmp_path / "bad.onnx", {"receptive_radius": "2"})
    if runner == "deploy":
        result = _deploy(exported["inputs"], "--backbone", bad, "--out", tmp_path / "o", "--tile", "40")
        code, err = result.returncode, result.stderr
    else:
        argv = ["restore", exported["inputs"], "--backbone", bad, "--out", tmp_path / "o", "--tile", "40"]
        code, _, err = _run(argv, capsys)
    line = _one_line_error(err)
    assert code == 1 and "receptive_radius='2'" in line and "moves outputs" in line and "seams" in line
    assert not (tmp_path / "o").exists()


def test_a_radius_edited_up_still_restores_correctly(exported, tmp_path, capsys):
    wide = _with_meta(exported["onnx"], tmp_path / "wide.onnx", {"receptive_radius": "12"})
    base = ["restore", exported["inputs"], "--no-progress"]
    code, _, err = _run([*base, "--backbone", exported["onnx"], "--out", tmp_path / "whole"], capsys)
    assert code == 0, err
    # a larger radius only widens the overlap (25 pixels): tiles of 40 still give the whole image's output
    code, _, err = _run([*base, "--backbone", wide, "--out", tmp_path / "tiled", "--tile", "40"], capsys)
    assert code == 0, err
    whole, tiled = _read(tmp_path / "whole" / "p.png"), _read(tmp_path / "tiled" / "p.png")
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_a_torchscript_radius_edited_down_is_refused(tmp_path):
    from spt_adapter.errors import ExportError
    from spt_adapter.inference.export import export
    from spt_adapter.inference.exported import load_exported

    path = export(_dncnn(), tmp_path / "dn.pt", check=False)
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))

    def edited(radius: str) -> Path:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.endswith("extra/spt_adapter.json"):
                    data = json.dumps({**json.loads(data), "receptive_radius": radius}).encode()
                dst.writestr(zipfile.ZipInfo(info.filename), data)
        out = tmp_path / f"r{radius}.pt"
        out.write_bytes(buf.getvalue())
        return out

    with pytest.raises(ExportError, match="receptive_radius='3' says an output pixel sees 3"):
        load_exported(edited("3"))
    assert load_exported(edited("20")).receptive_radius == 20


class _ReflectPadded(torch.nn.Module):
    """A graph that cannot run below 7x7 pixels: it reflect-pads by 6 before a 13x13 convolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 13)

    def forward(self, x):
        return self.conv(F.pad(x, (6, 6, 6, 6), mode="reflect"))


def test_a_minimum_tile_the_graph_cannot_run_at_is_refused(tmp_path, capsys, exported):
    from spt_adapter.deploy.onnx_restore import load_onnx
    from spt_adapter.errors import ExportError
    from spt_adapter.inference.export import export

    path = export(_ReflectPadded().eval(), tmp_path / "pad.onnx", check=False)
    assert load_onnx(_with_meta(path, tmp_path / "ok.onnx", {"minimum_tile": "7"})).minimum_tile == 7
    lie = _with_meta(path, tmp_path / "lie.onnx", {"minimum_tile": "4"})
    with pytest.raises(ExportError, match=r"minimum_tile='4' lets tiles of 4x4 pixels through, but the graph does not"):
        load_onnx(lie)
    result = _deploy(exported["inputs"], "--backbone", lie, "--out", tmp_path / "o")
    line = _one_line_error(result.stderr)
    assert result.returncode == 1 and "minimum_tile='4'" in line and "runs at 32x32" in line
    code, _, err = _run(["restore", exported["inputs"], "--backbone", lie, "--out", tmp_path / "o"], capsys)
    assert code == 1 and "minimum_tile='4'" in _one_line_error(err)


def test_attention_backbones_record_no_radius_and_are_not_probed_for_one(tmp_path):
    from _archs import small_swinir
    from spt_adapter.deploy.onnx_restore import load_onnx
    from spt_adapter.inference.export import export

    path = export(small_swinir().eval(), tmp_path / "sw.onnx", check=False)
    net = load_onnx(path)
    assert net.meta["receptive_radius"] == "" and net.receptive_radius is None
    assert net.probe_radius(lambda a: a) is None  # the whole image: tiling uses its default overlap
    # a number written into such a file is measured like any other, and refused when too small
    from spt_adapter.errors import ExportError

    with pytest.raises(ExportError, match="receptive_radius='1'"):
        load_onnx(_with_meta(path, tmp_path / "lie.onnx", {"receptive_radius": "1"}))


def test_export_records_no_radius_for_a_network_whose_field_its_convolutions_do_not_show(tmp_path):
    import spt_adapter
    from _archs import restormer
    from _helpers import save_safetensors
    from spt_adapter.deploy.onnx_restore import load_onnx
    from spt_adapter.inference.export import export
    from spt_adapter.inference.restore import receptive_radius

    bb = spt_adapter.load_backbone(save_safetensors(restormer().eval(), tmp_path / "r.safetensors"))
    assert receptive_radius(bb.model) is not None  # its channel attention (in its own code) is not in the sum
    net_file = load_onnx(export(bb.model.eval(), tmp_path / "r.onnx", descriptor=bb.descriptor, check=False))
    # one changed pixel moves the whole output: recorded as window attention is, and it loads
    assert net_file.meta["receptive_radius"] == "" and net_file.receptive_radius is None


def test_a_distilled_students_field_is_part_of_the_recorded_radius():
    import spt_adapter
    from spt_adapter.inference.restore import receptive_radius

    def injected(student):
        cfg = spt_adapter.SPTConfig(targets=["model.2"], hidden=4, student=student)
        return spt_adapter.inject(_dncnn(), config=cfg).eval()

    without = receptive_radius(injected(None))
    model = injected({"width": 4, "depth": 2})
    convs = sum(1 for m in model.student().modules() if isinstance(m, torch.nn.Conv2d))
    # the prior reaching a unit saw the student's field around it: each 3x3 convolution, one pixel more
    assert convs >= 2 and receptive_radius(model) == without + convs
