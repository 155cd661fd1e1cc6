"""Bad input and faults, round 4 (issue 26): export, exported files, the DnCNN converter and shards
never lose a file or restore garbage; 16-bit images keep their bits. Each test names the class it
guards (lost files, silent wrong results, hangs, tracebacks, accepted nonsense) and fails without its
fix."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spt_adapter.cli import main

pytest.importorskip("spandrel")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _dncnn(channels: int = 3, seed: int = 0):
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    torch.manual_seed(seed)
    return DnCNN(in_nc=channels, out_nc=channels, nc=8, nb=8, act_mode="R").eval()  # spandrel detects >= 8


@pytest.fixture
def dncnn_pth(tmp_path) -> Path:
    path = tmp_path / "dn.pth"
    torch.save(_dncnn().state_dict(), path)
    return path


# ---------------------------------------------------------------------------------------------
# lost files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_lost_export_never_writes_over_the_backbone_it_reads_even_with_overwrite(tmp_path, capsys, dncnn_pth, how):
    before = dncnn_pth.read_bytes()
    out = dncnn_pth
    if how == "symlink":
        out = tmp_path / "link.pt"
        out.symlink_to(dncnn_pth)
    elif how == "hardlink":
        out = tmp_path / "hard.pt"
        os.link(dncnn_pth, out)
    argv = ["export", "--backbone", dncnn_pth, "--no-adapter", "--format", "torchscript", "--out", out, "--overwrite"]
    code, _, err = _run(argv, capsys)
    assert code == 1 and "is the --backbone file" in _one_line_error(err)
    assert dncnn_pth.read_bytes() == before


def test_lost_export_refuses_an_existing_out_unless_overwrite(tmp_path, capsys, dncnn_pth):
    out = tmp_path / "mine.pt"
    out.write_bytes(b"a user's file")
    argv = ["export", "--backbone", dncnn_pth, "--no-adapter", "--out", out, "--no-check"]
    code, _, err = _run(argv, capsys)
    assert code == 1 and "already exists; pass --overwrite" in _one_line_error(err)
    assert out.read_bytes() == b"a user's file"
    code, _, err = _run([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert out.read_bytes()[:2] == b"PK"  # a TorchScript archive now


def test_lost_the_api_refuses_a_path_made_while_it_exported_when_overwrite_is_false(tmp_path, monkeypatch):
    from spt_adapter.errors import ExportError
    from spt_adapter.inference import export as export_module

    out = tmp_path / "x.pt"
    real = export_module._torchscript_bytes

    def racing(*a, **k):  # another process writes --out while this one traces
        out.write_bytes(b"theirs")
        return real(*a, **k)

    monkeypatch.setattr(export_module, "_torchscript_bytes", racing)
    with pytest.raises(ExportError, match="created while the export ran"):
        export_module.export(_dncnn(), out, check=False, overwrite=False)
    assert out.read_bytes() == b"theirs"


KILLED_EXPORT = """
import os, signal, sys, torch
import spt_adapter._io as io_
from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN
real = os.fsync
def die(fd):  # kill -9 in the middle of the atomic write: the temporary file is written, not renamed
    os.kill(os.getpid(), signal.SIGKILL)
io_.os.fsync = die
from spt_adapter.inference.export import export
export(DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R").eval(), sys.argv[1], check=False)
"""


def test_lost_kill_9_inside_exports_write_leaves_a_temporary_the_next_export_removes(tmp_path):
    out = tmp_path / "net.pt"
    result = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(out)], capture_output=True, text=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    stray = [p for p in tmp_path.iterdir() if p.name.startswith(".net.pt.") and p.name.endswith(".tmp")]
    assert len(stray) == 1 and not out.exists()
    (tmp_path / ".net.pt.notours.tmp").write_bytes(b"a user's hidden file")  # another naming: kept
    old = stray[0].stat().st_mtime - 120  # a write in progress touches its file; this one was killed
    os.utime(stray[0], (old, old))
    from spt_adapter.inference.export import export

    export(_dncnn(), out, check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".net.pt.notours.tmp", "net.pt"]


def _load_converter():
    spec = importlib.util.spec_from_file_location("convert_dncnn_mat", ROOT / "tools" / "convert_dncnn_mat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mat(path: Path, channels: int = 1) -> Path:
    pytest.importorskip("h5py")
    from test_convert_dncnn_mat import matlab_dncnn, write_simplenn

    write_simplenn(path, matlab_dncnn(channels))
    return path


def _convert(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "convert_dncnn_mat.py"), *map(str, argv)], capture_output=True, text=True
    )


def test_lost_the_converter_refuses_an_existing_output_unless_overwrite_and_its_input_always(tmp_path):
    mat = _mat(tmp_path / "net.mat")
    out = tmp_path / "net.safetensors"
    out.write_bytes(b"an earlier conversion")
    result = _convert(mat, out)
    assert result.returncode == 1 and "already exists; pass --overwrite" in _one_line_error(result.stderr)
    assert out.read_bytes() == b"an earlier conversion"
    assert _convert(mat, out, "--overwrite").returncode == 0 and out.read_bytes() != b"an earlier conversion"
    link = tmp_path / "same.safetensors"
    os.link(mat, link)  # the input under an output's name
    before = mat.read_bytes()
    result = _convert(mat, link, "--overwrite")
    assert result.returncode == 1 and "is the input" in _one_line_error(result.stderr)
    assert mat.read_bytes() == before


def test_lost_the_converter_names_a_missing_output_folder_before_converting(tmp_path):
    mat = _mat(tmp_path / "net.mat")
    result = _convert(mat, tmp_path / "nowhere" / "net.safetensors")
    assert result.returncode == 1 and "folder" in _one_line_error(result.stderr) and "does not exist" in result.stderr


# ---------------------------------------------------------------------------------------------
# silent wrong results
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A x1 colour DnCNN exported as ONNX (backbone alone) and a folder of three small photos."""
    from PIL import Image

    from spt_adapter.inference.export import export

    root = tmp_path_factory.mktemp("exported")
    onnx_file = export(_dncnn(), root / "dn.onnx", check=False)
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 24), (17, 31), (26, 19)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(inputs / f"p{i}.png")
    return {"onnx": onnx_file, "inputs": inputs}


def _deploy(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spt_adapter.deploy", "restore", *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.mark.parametrize("runner", ["spt-adapter", "deploy"])
def test_wrong_skip_existing_checks_an_exported_files_outputs_against_its_recorded_scale(
    exported, tmp_path, capsys, runner
):
    from PIL import Image

    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(out / "p0.png")  # p0 is 20x24: a x2-sized leftover
    argv = [exported["inputs"], "--backbone", exported["onnx"], "--out", out, "--skip-existing"]
    if runner == "deploy":
        result = _deploy(*argv)
        code, err = result.returncode, result.stderr
    else:
        code, _, err = _run(["restore", *argv, "--no-progress"], capsys)
    assert code == 0, err
    assert "3 restored, 0 skipped" in err and "redone" in err and "not the 24x20" in err
    assert Image.open(out / "p0.png").size == (24, 20)


def test_wrong_a_backbone_with_nan_weights_is_refused_on_load_by_every_command(tmp_path, capsys, exported):
    state = _dncnn().state_dict()
    state["model.2.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    torch.save(state, bad)
    for argv in (
        ["restore", exported["inputs"], "--backbone", bad, "--no-adapter", "--out", tmp_path / "o", "--no-progress"],
        ["export", "--backbone", bad, "--no-adapter", "--out", tmp_path / "x.pt"],
        ["inspect", bad],
    ):
        code, _, err = _run(argv, capsys)
        line = _one_line_error(err)
        assert code == 1 and "'model.2.weight' holds 1 NaN or Inf" in line, (argv[0], line)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


class _Blows(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) / 0.0  # a network that overflows on this input


def test_wrong_a_non_finite_output_is_never_returned_or_written(tmp_path):
    import spt_adapter
    from spt_adapter.deploy.tiling import restore_array
    from spt_adapter.errors import RestoreError

    image = np.full((12, 14, 3), 128, np.uint8)
    with pytest.raises(RestoreError, match="NaN or Inf"):
        spt_adapter.restore(_Blows().eval(), image, backbone_only=True)
    with pytest.raises(RestoreError, match="NaN or Inf"):  # the torch-free tiler: whole and tiled
        restore_array(lambda x, p: x / 0.0, np.ones((3, 12, 14), np.float32), tile=8, tile_overlap=2)


def test_wrong_an_input_added_between_two_shard_runs_moves_no_other_image_to_another_shard(tmp_path, capsys, exported):
    import shutil

    inputs = tmp_path / "in"
    shutil.copytree(exported["inputs"], inputs)
    for i in range(3, 7):
        shutil.copy(inputs / "p0.png", inputs / f"p{i}.png")
    out = tmp_path / "out"
    base = ["restore", inputs, "--backbone", exported["onnx"], "--out", out, "--no-progress", "--num-shards", "2"]
    assert _run([*base, "--shard-index", "0"], capsys)[0] == 0
    shutil.copy(inputs / "p0.png", inputs / "a_new.png")  # sorts first: a split by position shifts every image
    assert _run([*base, "--shard-index", "1"], capsys)[0] == 0
    names = sorted(p.name for p in out.iterdir())
    missing = {f"p{i}.png" for i in range(7)} - set(names)
    assert not missing, f"restored by no shard: {missing}"


def test_wrong_world_size_without_rank_is_refused_by_both_runners(tmp_path, capsys, exported, monkeypatch):
    argv = [exported["inputs"], "--backbone", exported["onnx"], "--out", tmp_path / "o"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    code, _, err = _run(["restore", *argv, "--no-progress"], capsys)
    assert code == 1 and "RANK (this process's index) is not set" in _one_line_error(err)
    result = _deploy(*argv)
    assert result.returncode == 1 and "RANK (this process's index) is not set" in _one_line_error(result.stderr)
    monkeypatch.setenv("WORLD_SIZE", "0")
    code, _, err = _run(["restore", *argv, "--no-progress"], capsys)
    line = _one_line_error(err)
    assert code == 1 and "WORLD_SIZE=0" in line and "--num-shards" not in line.split(":")[0]
    assert not (tmp_path / "o").exists()


def test_wrong_the_torch_free_runner_honours_world_size_and_rank(tmp_path, exported):
    out = tmp_path / "o"
    done = []
    for rank in ("0", "1"):
        result = _deploy(
            exported["inputs"], "--backbone", exported["onnx"], "--out", out, env={"WORLD_SIZE": "2", "RANK": rank}
        )
        assert result.returncode == 0, result.stderr
        assert f"shard {rank}/2" in result.stderr
        done.append(int(result.stderr.split(" restored")[0].split()[-1]))
    assert sum(done) == 3 and 0 not in done  # each image once, both shards worked
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]


def _tampered_onnx(path: Path, out: Path, *, times: float = 10.0) -> Path:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * times, init.name))
    out.write_bytes(proto.SerializeToString())
    return out


def test_wrong_a_tampered_or_foreign_onnx_export_is_refused_before_the_first_image(exported, tmp_path, capsys):
    pytest.importorskip("onnx")
    import onnx

    from spt_adapter.inference.export import export

    bad = _tampered_onnx(exported["onnx"], tmp_path / "tampered.onnx")
    foreign = tmp_path / "foreign.onnx"  # another network given a copy of ours' metadata, checksum included
    other = onnx.load(str(export(_dncnn(seed=5), tmp_path / "other.onnx", check=False)))
    del other.metadata_props[:]
    other.metadata_props.extend(onnx.load(str(exported["onnx"])).metadata_props)
    foreign.write_bytes(other.SerializeToString())
    for path in (bad, foreign):
        code, _, err = _run(["restore", exported["inputs"], "--backbone", path, "--out", tmp_path / "o"], capsys)
        assert code == 1 and "not the ones exported" in _one_line_error(err)
        result = _deploy(exported["inputs"], "--backbone", path, "--out", tmp_path / "o")
        assert result.returncode == 1 and "not the ones exported" in _one_line_error(result.stderr)
    assert not (tmp_path / "o").exists()


def test_wrong_a_tampered_torchscript_export_is_refused(tmp_path):
    import io
    import zipfile

    from spt_adapter.errors import ExportError
    from spt_adapter.inference.export import export
    from spt_adapter.inference.exported import load_exported

    path = export(_dncnn(), tmp_path / "dn.pt", check=False)
    load_exported(path)  # the file as written loads
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data/2"):  # a conv weight: every value x10
                data = (np.frombuffer(data, np.float32) * 10).astype(np.float32).tobytes()
            dst.writestr(info, data)
    (tmp_path / "bad.pt").write_bytes(buf.getvalue())
    with pytest.raises(ExportError, match="not the ones exported"):
        load_exported(tmp_path / "bad.pt")


@pytest.mark.parametrize("k", [1, 2], ids=["prior_at_image_size", "prior_at_twice_the_size"])
def test_wrong_a_swinir_prior_lands_on_its_pixels_through_the_api_as_through_restore(k):
    """SwinIR pads its input to a window multiple itself (check_image_size); the unit resized the
    unpadded prior over the padded grid, so model(x, prior=p) differed from restore() by up to 145
    levels with these perturbed units (3 with trained ones)."""
    import spt_adapter
    from _archs import swinir_light

    torch.manual_seed(0)
    cfg = spt_adapter.SPTConfig(targets=["layers.*.residual_group"], hidden=8)
    model = spt_adapter.inject(swinir_light().eval(), config=cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    h, w = 21, 27  # not multiples of the window (8)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    prior = np.zeros((1, h * k, w * k), np.float32)
    prior[:, :, : w * k // 2] = 1
    prior[:, : h * k // 3] = 1 - prior[:, : h * k // 3]
    reference = spt_adapter.restore(model, image, prior)
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)
    with torch.no_grad():
        out = model(x, prior=torch.from_numpy(prior)[None])
    api = np.round(out[0].clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(int)
    assert api.shape == reference.shape and np.abs(api - reference.astype(int)).max() <= 1
    assert "check_image_size" not in vars(model.base_model)  # the method is the backbone's own again


def _photo16(h: int = 18, w: int = 22, channels: int = 3) -> np.ndarray:
    """A 16-bit image whose values are not 8-bit levels scaled up (x257): its low byte carries data."""
    rng = np.random.default_rng(3)
    shape = (h, w, channels) if channels == 3 else (h, w)
    return rng.integers(1000, 64000, shape, dtype=np.uint16)


def _read16(path: Path) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return arr[:, :, ::-1] if arr.ndim == 3 else arr


@pytest.mark.parametrize("kind", ["rgb_png", "grey_tiff"])
def test_wrong_a_16_bit_input_comes_back_16_bit_from_restore(tmp_path, capsys, dncnn_pth, kind):
    pytest.importorskip("cv2")
    import spt_adapter
    from spt_adapter.deploy.outputs import png16_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    if kind == "rgb_png":
        image = _photo16()
        (folder / "photo.png").write_bytes(png16_bytes(image))
    else:
        tifffile = pytest.importorskip("tifffile")
        image = _photo16(channels=1)
        tifffile.imwrite(folder / "photo.tif", image)
    argv = ["restore", folder, "--backbone", dncnn_pth, "--no-adapter", "--out", tmp_path / "o", "--no-progress"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    got = _read16(tmp_path / "o" / "photo.png")
    assert got.dtype == np.uint16 and got.shape[:2] == image.shape[:2]
    model = spt_adapter.load_backbone(dncnn_pth).model
    want = spt_adapter.restore(model, image)  # the API: uint16 in, uint16 out, all 16 bits in the network
    assert want.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    assert np.any(got % 257 != 0)  # real 16-bit values, not 8-bit levels scaled up


def test_wrong_the_torch_free_runner_keeps_16_bits_and_says_when_it_cannot(tmp_path, exported):
    pytest.importorskip("cv2")
    from spt_adapter.deploy.outputs import png16_bytes

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "photo.png").write_bytes(png16_bytes(_photo16()))
    result = _deploy(folder, "--backbone", exported["onnx"], "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    got = _read16(tmp_path / "o" / "photo.png")
    assert got.dtype == np.uint16 and np.any(got % 257 != 0) and "8 bits" not in result.stderr
    # without OpenCV (Pillow reads 16-bit colour PNGs as 8 bits): one line says so
    blocker = tmp_path / "nocv2"
    blocker.mkdir()
    (blocker / "cv2.py").write_text("raise ImportError('blocked for this test')\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = _deploy(folder, "--backbone", exported["onnx"], "--out", tmp_path / "o8", env=env)
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if "written at 8 bits" in ln]
    assert len(lines) == 1 and "photo.png" in lines[0] and "opencv" in lines[0]
    assert _read16(tmp_path / "o8" / "photo.png").dtype == np.uint8
