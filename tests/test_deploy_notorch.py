"""The torch-free runner (``python -m spt_adapter.deploy restore``): an exported ONNX file restored
with NumPy, Pillow and onnxruntime in a process where PyTorch cannot be imported, byte for byte as
``spt-adapter restore --backbone FILE.onnx`` and the PyTorch tiler (``restore_tensor``) restore it."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent))
from spt_adapter.cli import main as spt_main  # noqa: E402
from spt_adapter.deploy.cli import main as deploy_main  # noqa: E402
from spt_adapter.deploy.images import read_image  # noqa: E402
from spt_adapter.deploy.onnx_restore import load_onnx, restore_image  # noqa: E402
from spt_adapter.deploy.tiling import tile_starts  # noqa: E402
from spt_adapter.inference.export import export  # noqa: E402
from spt_adapter.inference.exported import load_exported  # noqa: E402
from spt_adapter.inference.restore import restore_tensor  # noqa: E402
from test_export import _adapted  # noqa: E402  (the small adapted backbones test_export exports)

ROOT = Path(__file__).resolve().parents[1]

#: runs spt_adapter.deploy.cli.main(argv) (or spt_adapter.cli.main) where any import of torch fails (and is recorded), then
#: prints what was attempted and whether torch ended up in sys.modules
_NO_TORCH = """
import json, sys
attempts = []
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _BlockTorch())
if sys.argv[2] == "deploy":
    from spt_adapter.deploy.cli import main
else:  # the `spt-adapter` command itself
    from spt_adapter.cli import main
rc = main(json.loads(sys.argv[1]))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("REPORT " + json.dumps({"rc": rc, "attempts": attempts, "loaded": loaded}))
"""


def _run_without_torch(argv: list[str], entry: str = "deploy") -> tuple[dict, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "SPT_ADAPTER_DISABLE_PLUGINS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, json.dumps(argv), entry], capture_output=True, text=True, env=env, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"the runner crashed: {proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("REPORT ") :]), proc.stderr


#: a descriptor asking for inputs padded to a multiple of 8 (as a windowed backbone's does): the DnCNN
#: export then pads and crops like SwinIR while staying a CNN with a finite receptive field
_MULTIPLE_8 = types.SimpleNamespace(size_requirements=types.SimpleNamespace(multiple_of=8, minimum=8))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """ONNX exports: a DnCNN with units and a distilled student (size multiple 8, radius 12), a SwinIR
    x2 with units and a student (attention: no radius; scale 2), the DnCNN with a provider prior;
    and an input folder: an RGB PNG of odd size, a grey PNG, an RGBA PNG and a file that is no image."""
    root = tmp_path_factory.mktemp("deploy")
    files = {}
    for name, student, desc in (("dncnn", True, _MULTIPLE_8), ("swinir_light", True, None), ("dncnn", False, None)):
        model, spandrel_desc = _adapted(root, name, student)
        key = f"{name}_{'student' if student else 'prior'}"
        files[key] = export(model, root / f"{key}.onnx", descriptor=desc or spandrel_desc)
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:45, 0:67]
    smooth = np.stack([128 + 90 * np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)], axis=2)
    odd = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)  # 67 wide, 45 high
    Image.fromarray(odd).save(inputs / "odd.png")
    Image.fromarray(odd[3:40, 5:58, 1]).save(inputs / "grey.png")  # mode L, 53x37
    rgba = np.concatenate([odd[:30, :35], np.full((30, 35, 1), 200, np.uint8)], axis=2)
    Image.fromarray(rgba).save(inputs / "rgba.png")
    (inputs / "notes.txt").write_text("not an image: the folder listing skips it\n")
    files["inputs"] = inputs
    return files


def _torch_tiler(path: Path, image_path: Path, tile, overlap) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch route: restore_tensor (torch padding, weights and accumulation) with the exported
    file's runner as the network; (float32 CHW output, uint8 HWC rounded with torch)."""
    runner = load_exported(path, threads=1)
    x = read_image(image_path, runner.channels).astype(np.float32) / 255.0
    out = restore_tensor(
        runner,  # type: ignore[arg-type]
        torch.from_numpy(x.transpose(2, 0, 1).copy()),
        multiple=runner.size_multiple,
        tile=tile,
        tile_overlap=overlap,
        minimum=runner.minimum_tile,
    )
    return out.numpy().copy(), out.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()


TILINGS = {"whole": [], "tiles_30_overlap_10": ["--tile", "30", "--tile-overlap", "10"], "tiles_40": ["--tile", "40"]}


@pytest.mark.parametrize("tiling", list(TILINGS))
@pytest.mark.parametrize("name", ["dncnn_student", "swinir_light_student"])
def test_the_torch_free_runner_writes_the_bytes_of_the_torch_route(exported, tmp_path, monkeypatch, name, tiling):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one onnxruntime thread in every route
    path, inputs, flags = exported[name], exported["inputs"], TILINGS[tiling]
    report, err = _run_without_torch(
        ["restore", str(inputs), "--backbone", str(path), "--out", str(tmp_path / "free"), "--threads", "1", *flags]
    )
    assert report == {"rc": 0, "attempts": [], "loaded": []}, err  # torch was never even asked for
    assert "3 restored" in err
    free = {p.name: p.read_bytes() for p in sorted((tmp_path / "free").iterdir())}
    assert list(free) == ["grey.png", "odd.png", "rgba.png"]  # notes.txt skipped, nothing else written
    # `spt-adapter restore --backbone FILE.onnx` writes the same files
    assert (
        spt_main(
            ["restore", str(inputs), "--backbone", str(path), "--out", str(tmp_path / "cli"), "--no-progress", *flags]
        )
        == 0
    )
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "cli").iterdir())} == free
    # and the PyTorch tiler (torch padding, weights, float32 accumulation, clamping, rounding) gives the
    # same pixels: every uint8 value equal, no tolerance
    runner = load_exported(path, threads=1)
    scale = int(runner.meta["scale"])
    tile = int(flags[1]) if flags else None
    overlap = int(flags[3]) if len(flags) > 2 else None
    for image in ("odd.png", "grey.png", "rgba.png"):
        got = np.asarray(Image.open(tmp_path / "free" / image))
        src = Image.open(inputs / image)
        assert got.shape == (src.size[1] * scale, src.size[0] * scale, 3)
        ref_float, ref = _torch_tiler(path, inputs / image, tile, overlap)
        assert ref.shape == got.shape and np.array_equal(ref, got), (image, np.abs(ref.astype(int) - got).max())
        # before rounding too: the NumPy tiler's float32 output (float input in, float out) is the
        # torch tiler's bit for bit, so no accumulation order differs (8-bit rounding could hide that)
        net = load_onnx(path, threads=1)
        x = read_image(inputs / image, net.channels).astype(np.float32) / 255.0
        free_float = restore_image(net, x, tile=tile, tile_overlap=overlap)
        assert np.array_equal(free_float, ref_float.transpose(1, 2, 0)), image
    if tile is not None:  # the odd image really was cut in several tiles on both axes
        size = tile // runner.size_multiple * runner.size_multiple
        padded = [-(-n // runner.size_multiple) * runner.size_multiple for n in (45, 67)]
        assert all(len(tile_starts(n, size, overlap or 32, runner.size_multiple)) > 1 for n in padded)


def test_tiling_with_a_short_overlap_changes_the_output(exported, tmp_path):
    """The tiled parity above is not the whole-image path twice: with an overlap below a CNN's
    receptive field the seams show, in both routes alike."""
    path, inputs = exported["dncnn_student"], exported["inputs"]
    assert deploy_main(["restore", str(inputs), "--backbone", str(path), "--out", str(tmp_path / "w"), "--quiet"]) == 0
    argv = ["restore", str(inputs), "--backbone", str(path), "--out", str(tmp_path / "t"), "--quiet"]
    assert deploy_main([*argv, "--tile", "24", "--tile-overlap", "8"]) == 0
    whole, tiled = (np.asarray(Image.open(tmp_path / d / "odd.png")) for d in ("w", "t"))
    assert np.abs(whole.astype(int) - tiled).max() > 0


def test_a_provider_prior_export_is_refused_on_one_line(exported, tmp_path):
    out = tmp_path / "out"
    report, err = _run_without_torch(
        ["restore", str(exported["inputs"]), "--backbone", str(exported["dncnn_prior"]), "--out", str(out)]
    )
    assert report["rc"] == 1 and report["attempts"] == [] and report["loaded"] == []
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "export kind 'prior'" in lines[0] and "classical (slic)" in lines[0] and "PyTorch" in lines[0], err
    assert not out.exists()  # refused before the output folder is made


def test_existing_outputs_are_kept_unless_overwrite(exported, tmp_path, capsys):
    path, inputs, out = exported["dncnn_student"], exported["inputs"], tmp_path / "out"
    out.mkdir()
    mine = out / "odd.png"
    # a finished output's size (odd.png is 67x45, the export x1): --skip-existing keeps only those
    Image.fromarray(np.zeros((45, 67), np.uint8)).save(mine)
    before = mine.read_bytes()
    argv = ["restore", str(inputs), "--backbone", str(path), "--out", str(out)]
    assert deploy_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds 1 of the outputs (odd.png)" in err, err
    assert mine.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["odd.png"]
    assert deploy_main([*argv, "--skip-existing", "--overwrite"]) == 1
    assert deploy_main([*argv, "--skip-existing"]) == 0  # kept; the other two written
    assert mine.read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["grey.png", "odd.png", "rgba.png"]
    assert "2 restored, 1 skipped" in capsys.readouterr().err
    (out / "grey.png").write_bytes(b"cut short")  # an interrupted output does not count as done
    assert deploy_main([*argv, "--skip-existing"]) == 0
    assert "1 restored, 2 skipped" in capsys.readouterr().err and mine.read_bytes() == before
    assert np.asarray(Image.open(out / "grey.png")).shape == (37, 53, 3)
    assert deploy_main([*argv, "--overwrite"]) == 0
    assert np.asarray(Image.open(mine)).shape == (45, 67, 3)


def test_usage_errors_and_refused_flags(exported, tmp_path, capsys):
    path, inputs = exported["dncnn_student"], exported["inputs"]
    base = ["restore", str(inputs), "--backbone", str(path), "--out", str(tmp_path / "o")]
    for extra, expect in (
        (["--tile-overlap", "4"], "--tile-overlap/--tile-blend need --tile N"),
        (["--tile", "4"], "--tile 4 is smaller than this backbone needs"),
        (["--tile", "24"], "--tile 24 must be larger than the tile overlap 32"),
        (["--tile", "24", "--tile-overlap", "8", "--tile-blend", "9"], "--tile-blend 9 exceeds the tile overlap 8"),
    ):
        assert deploy_main(base + extra) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exc:
        deploy_main(["restore", str(inputs), "--out", str(tmp_path / "o")])  # no --backbone
    assert exc.value.code == 2


def test_the_spt_adapter_command_without_torch_restores_onnx_and_names_what_is_missing(exported, tmp_path):
    """Installed without PyTorch, `spt-adapter restore --backbone FILE.onnx` is the torch-free runner;
    any other command says on one line that PyTorch is missing."""
    path, inputs = exported["dncnn_student"], exported["inputs"]
    argv = ["restore", str(inputs), "--backbone", str(path), "--tile", "30", "--tile-overlap", "10", "--no-progress"]
    report, err = _run_without_torch([*argv, "--out", str(tmp_path / "cli")], entry="cli")
    assert report == {"rc": 0, "attempts": ["torch"], "loaded": []}, err  # its one look, then no more
    assert deploy_main([*argv, "--out", str(tmp_path / "free"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["grey.png", "odd.png", "rgba.png"]
    for p in (tmp_path / "cli").iterdir():
        assert p.read_bytes() == (tmp_path / "free" / p.name).read_bytes()
    report, err = _run_without_torch(["train", "--backbone", str(path)], entry="cli")
    assert report["rc"] == 1 and len(err.strip().splitlines()) == 1 and "PyTorch is not installed" in err, err
