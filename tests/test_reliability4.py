"""Bad input and faults, round 4 (issue 26): export, exported files, the DnCNN converter and shards
never lose a file or restore garbage; 16-bit images keep their bits. Each test names the class it
guards (lost files, silent wrong results, hangs, tracebacks, accepted nonsense) and fails without its
fix."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _helpers import one_line_error as _one_line_error
from _helpers import run_cli as _run

pytest.importorskip("spandrel")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


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
def _export_with_photos(root: Path, sizes: list[tuple[int, int]], names: list[str]) -> dict[str, Path]:
    """``_dncnn()`` exported as ONNX (backbone alone) into ``root``, and random photos of ``sizes`` named
    ``names`` (PNG) in ``root / "in"``."""
    from PIL import Image

    from spt_adapter.inference.export import export

    onnx_file = export(_dncnn(), root / "dn.onnx", check=False)
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in zip(names, sizes, strict=True):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
    return {"onnx": onnx_file, "inputs": inputs}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A x1 colour DnCNN exported as ONNX (backbone alone) and a folder of three small photos."""
    return _export_with_photos(tmp_path_factory.mktemp("exported"), [(20, 24), (17, 31), (26, 19)], ["p0", "p1", "p2"])


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


# ---------------------------------------------------------------------------------------------
# hangs
# ---------------------------------------------------------------------------------------------
def test_hang_a_float16_torchscript_export_runs_in_float32_on_the_cpu(tmp_path):
    from spt_adapter.inference.export import export
    from spt_adapter.inference.exported import load_exported

    model = _dncnn()
    path = export(model, tmp_path / "half.pt", half=True, check=False)
    runner = load_exported(path)
    assert runner.meta["dtype"] == "float16" and "float32 on the CPU" in runner.note
    x = torch.rand(1, 3, 20, 24)
    out = runner(x)
    assert out.dtype == torch.float32  # float16 on a CPU ran ~70x slower than float32
    with torch.no_grad():
        assert float((out - model(x)).abs().max()) < 1e-2  # float16 weights, float32 arithmetic


def _train_setup(tmp_path):
    from test_reliability import _ckpt, _images, _train_argv

    return [
        str(a)
        for a in _train_argv(
            _ckpt(tmp_path / "sw.safetensors"), _images(tmp_path / "hq"), tmp_path / "run", tmp_path / "cache"
        )
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_alone(tmp_path, timeout: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "WORLD_SIZE": "2",
        "RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "SPT_DIST_TIMEOUT": timeout,
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "spt_adapter.cli", *_train_setup(tmp_path), "--no-progress"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_hang_train_without_its_peer_says_it_waits_and_gives_up_after_the_timeout(tmp_path):
    proc = _train_alone(tmp_path, "3")
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert "waits at 127.0.0.1" in err and "for the other 1 process(es)" in err
    last = err.strip().splitlines()[-1]
    assert "did not join" in last and "within 3 s" in last and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_hang_sigterm_while_train_waits_for_its_peer_stops_it_at_once(tmp_path):
    import time

    proc = _train_alone(tmp_path, "600")
    assert proc.stderr is not None
    deadline = time.monotonic() + 200
    seen = ""
    while "waits at" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "waits at" in seen, seen
    time.sleep(1)  # inside torch's rendezvous now
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("SIGTERM was swallowed while train waited for its peer")
    assert proc.returncode == -signal.SIGTERM


def test_nonsense_train_started_with_sigterm_ignored_keeps_ignoring_it():
    from spt_adapter.commands.train import sigterm_as_interrupt

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        with pytest.raises(KeyboardInterrupt):  # a run that does not ignore it still stops
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            with sigterm_as_interrupt():
                signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# tracebacks and misleading messages
# ---------------------------------------------------------------------------------------------
def _with_meta(src: Path, dst: Path, edits: dict[str, str]) -> Path:
    """``src`` (an ONNX export) with metadata fields edited; its graph bytes, and so its checksum, kept."""
    import onnx

    proto = onnx.load(str(src))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(edits)
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]
    dst.write_bytes(proto.SerializeToString())
    return dst


@pytest.mark.parametrize(
    "edits,words",
    [
        ({"size_multiple": "0"}, "size_multiple='0' is not a whole number"),
        ({"channels": "abc"}, "channels='abc' is not a whole number"),
        ({"channels": "1"}, "says 1, but the graph reads 3-channel images"),
        ({"dtype": "float16"}, "says float16, but the graph takes tensor(float)"),
        ({"scale": "3"}, "says x3, but the graph gives x1"),
        ({"minimum_tile": "-7"}, "minimum_tile='-7' is not a whole number"),
        ({"prior": "{"}, "prior='{' is not a JSON object"),
        ({"kind": "prior", "inputs": "image,prior", "prior_channels": "1"}, "does not match the graph"),
        ({"kind": "student", "inputs": "image,prior"}, "contradicts kind 'student'"),
    ],
    ids=["multiple0", "channels_abc", "channels1", "dtype", "scale", "min_tile", "prior_json", "kind", "inputs"],
)
def test_trace_exported_metadata_is_checked_against_the_graph_on_load(exported, tmp_path, capsys, edits, words):
    pytest.importorskip("onnx")
    bad = _with_meta(exported["onnx"], tmp_path / "bad.onnx", edits)
    code, _, err = _run(["restore", exported["inputs"], "--backbone", bad, "--out", tmp_path / "o"], capsys)
    assert code == 1 and words in _one_line_error(err)
    assert not (tmp_path / "o").exists()


def test_trace_the_torch_free_runner_checks_metadata_too(exported, tmp_path):
    pytest.importorskip("onnx")
    bad = _with_meta(exported["onnx"], tmp_path / "bad.onnx", {"size_multiple": "0"})
    result = _deploy(exported["inputs"], "--backbone", bad, "--out", tmp_path / "o")
    assert result.returncode == 1 and "size_multiple='0'" in _one_line_error(result.stderr)


def test_trace_torchscript_metadata_is_checked_against_the_module(tmp_path):
    import io
    import json
    import zipfile

    from spt_adapter.errors import ExportError
    from spt_adapter.inference.export import export
    from spt_adapter.inference.exported import load_exported

    path = export(_dncnn(), tmp_path / "dn.pt", check=False)
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    for edits, words in (
        ({"kind": "prior", "inputs": "image,prior", "prior_channels": "1"}, "does not match the graph"),
        ({"channels": "1"}, "does not run at 1x1 as its metadata describes it"),
        ({"scale": "2"}, "says x2, but the graph gives x1"),
    ):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.endswith("extra/spt_adapter.json"):
                    data = json.dumps({**json.loads(data), **edits}).encode()
                dst.writestr(zipfile.ZipInfo(info.filename), data)
        (tmp_path / "bad.pt").write_bytes(buf.getvalue())
        with pytest.raises(ExportError, match=words):
            load_exported(tmp_path / "bad.pt")


def test_trace_onnxruntime_running_out_of_memory_says_to_tile(exported):
    """An allocation failure (here raised by the session as onnxruntime raises it: its own
    RuntimeException class, 'Failed to allocate memory') becomes one line naming --tile."""
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from spt_adapter.deploy.onnx_restore import load_onnx, restore_image
    from spt_adapter.errors import RestoreError

    net = load_onnx(exported["onnx"])

    class Exhausted:
        def run(self, *_a, **_k):
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for 1 GB")

    net.session = Exhausted()
    with pytest.raises(RestoreError, match=r"not enough memory to run a 30x40 input whole.*--tile 512"):
        restore_image(net, np.zeros((30, 40, 3), np.uint8))


def test_trace_a_checkpoint_whose_tensors_do_not_fit_the_sized_network_is_one_line(tmp_path, capsys):
    state = _dncnn().state_dict()
    state["model.4.weight"] = torch.zeros(8, 5, 3, 3)  # spandrel sizes DnCNN from model.0: this one cannot load
    bad = tmp_path / "odd.pth"
    torch.save(state, bad)
    for argv in (["inspect", bad], ["export", "--backbone", bad, "--no-adapter", "--out", tmp_path / "x.pt"]):
        code, _, err = _run(argv, capsys)
        line = _one_line_error(err)
        assert code == 1 and "do not fit the network spandrel sized from it" in line and "model.4.weight" in line


def test_trace_a_prior_with_negative_strides_is_taken_as_it_reads():
    import spt_adapter

    model = spt_adapter.inject(_dncnn(), config=spt_adapter.SPTConfig(targets=["model.2"], hidden=4)).eval()
    image = np.random.default_rng(0).integers(0, 256, (12, 14, 3), dtype=np.uint8)
    prior = np.zeros((1, 12, 14), np.float32)
    prior[:, :, :5] = 1
    flipped = prior[:, :, ::-1]  # a view with a negative stride
    out = spt_adapter.restore(model, image, flipped)
    np.testing.assert_array_equal(out, spt_adapter.restore(model, image, flipped.copy()))


def test_trace_an_onehot_encoding_for_an_export_read_with_another_is_one_line(tmp_path, capsys, exported):
    import spt_adapter
    from spt_adapter.inference.export import export

    cfg = spt_adapter.SPTConfig(
        targets=["model.2"],
        hidden=4,
        prior={"provider": {"provider": "classical", "method": "slic"}, "encoding": "boundary", "task": "denoise:25"},
    )
    model = spt_adapter.inject(_dncnn(), config=cfg).eval()
    onnx_file = export(model, tmp_path / "prior.onnx", check=False)
    argv = ["restore", exported["inputs"], "--backbone", onnx_file, "--out", tmp_path / "o", "--encoding", "onehot"]
    code, _, err = _run(argv, capsys)
    line = _one_line_error(err)
    assert code == 1 and "--encoding onehot gives 8 prior channel(s)" in line and "exported for 1 (boundary)" in line


def test_trace_the_converter_names_a_dagnn_file_a_layer_without_weights_and_a_huge_declared_array(tmp_path):
    h5py = pytest.importorskip("h5py")
    from test_convert_dncnn_mat import matlab_dncnn, write_simplenn

    dag = tmp_path / "dag.mat"  # MatConvNet DagNN: net.layers is a struct of fields, net.params the weights
    with h5py.File(dag, "w") as f:
        layers = f.create_group("net/layers")
        for key in ("block", "inputs", "name", "outputs", "params", "type"):
            layers[key] = np.zeros((1, 1))
        f.create_group("net/params")
    layers = matlab_dncnn(1)
    del layers[2]["weights"]
    write_simplenn(tmp_path / "noweights.mat", layers)
    huge = tmp_path / "huge.mat"
    write_simplenn(huge, matlab_dncnn(1))
    with h5py.File(huge, "r+") as f:  # the first conv's weight declares 10^10 values in a file of a few kB
        ref = f[f["net"]["layers"][0, 0]]["weights"][0, 0]
        name = f[ref].name
        del f[name]
        f.create_dataset(name, shape=(100000, 100000), dtype="f4", chunks=(64, 64))
    assert huge.stat().st_size < 1_000_000
    for mat, words in (
        (dag, "a MatConvNet DagNN network"),
        (tmp_path / "noweights.mat", "has no weights"),
        (huge, "declares shape (100000, 100000)"),
    ):
        result = _convert(mat, tmp_path / f"{mat.stem}.safetensors")
        assert result.returncode == 1 and words in _one_line_error(result.stderr), result.stderr


# ---------------------------------------------------------------------------------------------
# accepted nonsense
# ---------------------------------------------------------------------------------------------
def test_nonsense_export_refuses_a_task_that_is_none_or_not_the_backbones(tmp_path, capsys, dncnn_pth):
    from spt_adapter.cli import main

    base = ["export", "--backbone", dncnn_pth, "--no-adapter", "--no-check"]
    with pytest.raises(SystemExit) as usage:  # argparse: exit 2, one line naming --task
        main([str(a) for a in [*base, "--out", tmp_path / "a.pt", "--task", "blur:3"]])
    assert usage.value.code == 2 and "blur:3" in capsys.readouterr().err
    code, _, err = _run([*base, "--out", tmp_path / "b.pt", "--task", "sr:4"], capsys)
    assert code == 1 and "--task sr:4 needs a x4 backbone" in _one_line_error(err)
    assert not (tmp_path / "a.pt").exists() and not (tmp_path / "b.pt").exists()


def test_nonsense_restore_and_export_check_the_adapters_recorded_task_against_the_backbone(
    tmp_path, capsys, dncnn_pth, exported
):
    import spt_adapter

    cfg = spt_adapter.SPTConfig(
        targets=["model.2"],
        hidden=4,
        student={"width": 4, "depth": 2},
        prior={"teacher": {"provider": "classical", "method": "slic"}, "encoding": "boundary", "task": "sr:3"},
    )
    model = spt_adapter.inject(spt_adapter.load_backbone(dncnn_pth).model, config=cfg)
    adapter = tmp_path / "sr3.safetensors"
    model.save_adapter(adapter)
    for argv in (
        ["restore", exported["inputs"], "--backbone", dncnn_pth, "--adapter", adapter, "--out", tmp_path / "o"],
        ["export", "--backbone", dncnn_pth, "--adapter", adapter, "--out", tmp_path / "x.pt"],
    ):
        code, _, err = _run(argv, capsys)
        line = _one_line_error(err)
        assert code == 1 and "was trained for sr:3" in line and "needs a x3 backbone" in line, line
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


def test_trace_a_header_whose_encoding_contradicts_its_prior_channels_blames_the_file(tmp_path):
    """Before: it loaded, and the first image failed with a message blaming the prior."""
    import json

    import spt_adapter
    from _archs import tiny_esrgan
    from spt_adapter.errors import AdapterFileError
    from test_reliability import _fresh_adapter, _rewrite

    path, header = _fresh_adapter(tmp_path, prior={"provider": "classical", "method": "slic", "encoding": "label"})
    meta = header["__metadata__"]
    config = json.loads(meta["config"])
    config["prior"]["encoding"] = "onehot:4"  # 4 channels; the units read 1
    meta["config"] = json.dumps(config, sort_keys=True)
    meta["prior"] = json.dumps(config["prior"], sort_keys=True)
    bad = _rewrite(path, tmp_path / "bad.safetensors", header)
    assert spt_adapter.load_adapter(tiny_esrgan(), path) is not None
    with pytest.raises(AdapterFileError, match=r"encoding 'onehot:4' makes 4 channel\(s\), but .* prior_channels 1"):
        spt_adapter.load_adapter(tiny_esrgan(), bad)


def test_trace_misleading_messages_name_the_real_cause(tmp_path):
    from spt_adapter.deploy.images import read_image_full_depth
    from spt_adapter.deploy.tiling import check_tile_stride
    from spt_adapter.errors import AdapterFileError, ImageError, RestoreError
    from spt_adapter.files.format import read_adapter_header

    with pytest.raises(RestoreError, match="the tile overlap must be 0 or more pixels, got -8"):
        check_tile_stride(64, -8)  # was: "use a tile of at least -7 pixels"
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="is not a regular file .a pipe, socket or device.; images are files"):
        read_image_full_depth(fifo)  # was: "no such image file"
    short = tmp_path / "short.safetensors"
    short.write_bytes((100).to_bytes(8, "little") + b"{" * 96)  # 104 bytes; the header needs 108
    with pytest.raises(AdapterFileError, match="announces a 100-byte header, but the file holds 104 bytes"):
        read_adapter_header(short)


def test_nonsense_train_says_the_length_of_a_run_with_student_steps_before_step_1(tmp_path, capsys):
    """--student-steps come on top of --iters: `--student-steps 100000 --iters 3` silently ran 100,003
    steps; the total is now the line before the first step."""
    argv = [
        *_train_setup(tmp_path),
        "--prior",
        "distilled",
        "--teacher",
        "slic",
        "--student-steps",
        "3",
        "--no-progress",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "steps: 5 in all: 3 that train the student alone (--student-steps), then 2 with the units (--iters)" in out


@pytest.mark.parametrize("fault", ["missing", "extra"])
def test_nonsense_the_peft_route_refuses_missing_or_extra_tensors(tmp_path, fault):
    """Before: PeftModel.from_pretrained loaded them with PEFT's generic warning, a unit left at its
    initial value."""
    import shutil

    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file, save_file

    import spt_adapter.peft as spt_peft
    from _archs import tiny_esrgan
    from spt_adapter.errors import SPTError
    from test_reliability3 import _peft_folder, _state

    good = _peft_folder(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    tensors = load_file(str(good / "adapter_model.safetensors"))
    if fault == "missing":
        del tensors[sorted(tensors)[0]]
    else:
        name = sorted(tensors)[0]
        tensors[name.replace("sub.0", "sub.9")] = tensors[name].clone()  # a unit on a module that has none
    save_file(tensors, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    backbone = tiny_esrgan()
    before = _state(backbone)
    words = "lacks 1 unit tensor" if fault == "missing" else "holds 1 tensor(s) no unit of this backbone has"
    with pytest.raises(SPTError, match="unit tensors"):  # spt_adapter's own reader counted them already
        spt_peft.load_peft_adapter(backbone, bad)
    with pytest.raises(SPTError, match=re.escape(words)):  # PEFT's own entry point
        peft.PeftModel.from_pretrained(backbone, bad)
    assert set(_state(backbone)) == set(before)
    assert spt_peft.load_peft_adapter(tiny_esrgan(), good) is not None  # the folder as written loads


def test_wrong_eval_says_on_one_line_that_16_bit_ground_truth_is_scored_at_16_bits(tmp_path, capsys, dncnn_pth):
    pytest.importorskip("cv2")  # Pillow reads 16-bit colour PNGs at 8 bits
    from PIL import Image

    from spt_adapter.deploy.outputs import png16_bytes

    data = tmp_path / "gt"
    data.mkdir()
    (data / "deep.png").write_bytes(png16_bytes(_photo16(24, 28)))
    Image.fromarray(np.full((24, 28, 3), 90, np.uint8)).save(data / "flat.png")
    argv = ["eval", "--no-adapter", "--backbone", dncnn_pth, "--data", data, "--task", "denoise:25"]
    code, _, err = _run([*argv, "--out", tmp_path / "ev", "--no-progress"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "16-bit" in ln]  # scoring at 16 bits: tests/test_sixteen_bit_eval.py
    assert len(lines) == 1 and "1 16-bit ground-truth image(s) (deep.png) scored at 16 bits" in lines[0]
