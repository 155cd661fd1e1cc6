"""tools/convert_dncnn_mat.py: MatConvNet simplenn DnCNN (MATLAB v7.3 = HDF5) -> KAIR-layout safetensors.

The fixtures are written with h5py the way MATLAB writes a v7.3 file: a cell array of object
references to layer structs, char arrays as uint16, numeric arrays with their axes reversed, and a
trailing singleton axis dropped. The reference forward is computed from the MATLAB-order arrays
directly, so a wrong axis order fails the comparison.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

h5py = pytest.importorskip("h5py")
ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("convert_dncnn_mat", ROOT / "tools" / "convert_dncnn_mat.py")
convert_dncnn_mat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(convert_dncnn_mat)


def _chars(text: str) -> np.ndarray:
    return np.array([[ord(c)] for c in text], dtype=np.uint16)


def write_simplenn(path: Path, layers: list[dict]) -> None:
    """Write ``layers`` (dicts of type/name/weights in MATLAB axis order/...) as MATLAB v7.3 would."""
    with h5py.File(path, "w") as f:
        refs_group = f.create_group("#refs#")
        refs = []
        for i, spec_ in enumerate(layers):
            g = refs_group.create_group(f"layer{i}")
            g["type"] = _chars(spec_["type"])
            g["name"] = _chars(spec_.get("name", f"layer{i + 1}"))
            for key in ("pad", "stride", "leak"):
                if key in spec_:
                    g[key] = np.array([[spec_[key]]], dtype=np.float64)
            if "weights" in spec_:
                wrefs = []
                for j, arr in enumerate(spec_["weights"]):
                    arr = np.asarray(arr, dtype=np.float32)
                    while arr.ndim > 2 and arr.shape[-1] == 1:  # MATLAB drops trailing singletons
                        arr = arr[..., 0]
                    d = refs_group.create_dataset(f"w{i}_{j}", data=arr.T)  # column-major: reversed axes
                    wrefs.append(d.ref)
                g.create_dataset("weights", data=np.array(wrefs, dtype=h5py.ref_dtype).reshape(2, 1))
            refs.append(g.ref)
        net = f.create_group("net")
        net.create_dataset("layers", data=np.array(refs, dtype=h5py.ref_dtype).reshape(-1, 1))


def matlab_dncnn(channels: int, width: int = 8, convs: int = 8, seed: int = 0, kernel: int = 3) -> list[dict]:
    """A random DnCNN in MatConvNet layout (8 convs: the fewest spandrel detects as a DnCNN)."""
    rng = np.random.default_rng(seed)
    layers, c_in = [], channels
    for i in range(convs):
        c_out = channels if i == convs - 1 else width
        # MatConvNet order (H, W, C_in, C_out); a non-symmetric kernel catches a swapped H/W
        w = rng.standard_normal((kernel, kernel, c_in, c_out)).astype(np.float32) * 0.3
        b = rng.standard_normal((1, c_out)).astype(np.float32) * 0.1
        layers.append({"type": "conv", "weights": [w, b], "pad": (kernel - 1) // 2, "stride": 1})
        if i != convs - 1:
            layers.append({"type": "relu", "leak": 0})
        c_in = c_out
    return layers


def reference_forward(layers: list[dict], x: torch.Tensor) -> torch.Tensor:
    """MatConvNet's forward from the MATLAB-order arrays, then input - residual."""
    y = x
    for spec_ in layers:
        if spec_["type"] == "relu":
            y = F.relu(y)
        else:
            w, b = spec_["weights"]
            weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
            y = F.conv2d(y, weight, torch.from_numpy(b.ravel()), padding=spec_["pad"])
    return x - y


@pytest.mark.parametrize("channels", [1, 3])
def test_converted_network_matches_matconvnet_forward(tmp_path, channels):
    import spt_adapter

    layers = matlab_dncnn(channels)
    write_simplenn(tmp_path / "net.mat", layers)
    out = tmp_path / "net.safetensors"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "convert_dncnn_mat.py"), str(tmp_path / "net.mat"), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    model, _ = spt_adapter.load_backbone(out)
    assert type(model).__name__ == "DnCNN"
    x = torch.rand(1, channels, 13, 17, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(layers, x), rtol=0, atol=1e-5)


def _refused(tmp_path, layers, match):
    write_simplenn(tmp_path / "bad.mat", layers)
    with pytest.raises(convert_dncnn_mat.ConversionError, match=match):
        convert_dncnn_mat.convert(tmp_path / "bad.mat")


def test_foreign_layers_are_refused_by_name(tmp_path):
    layers = matlab_dncnn(1)
    layers[1] = {"type": "pool", "name": "pool7"}
    _refused(tmp_path, layers, r"pool7 has type 'pool'")
    layers = matlab_dncnn(1)
    layers[1] = {"type": "relu", "leak": 0.2, "name": "lrelu"}
    _refused(tmp_path, layers, r"lrelu is a leaky ReLU")
    layers = matlab_dncnn(1)
    layers[2]["stride"] = 2
    _refused(tmp_path, layers, r"stride or dilation")
    layers = matlab_dncnn(1)
    layers[0]["pad"] = 0
    _refused(tmp_path, layers, r"'same' padding")
    _refused(tmp_path, matlab_dncnn(1)[:-1], r"a DnCNN is conv \(relu conv\)\*")  # ends on a relu
    layers = matlab_dncnn(1)
    layers[-1]["weights"][0] = layers[-1]["weights"][0][:, :, :, :1].repeat(3, axis=3)  # 1 in, 3 out
    layers[-1]["weights"][1] = np.zeros((1, 3), np.float32)
    _refused(tmp_path, layers, r"reads 1 channels and writes 3")


def test_files_that_are_not_matlab_v73_are_refused(tmp_path):
    (tmp_path / "old.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(convert_dncnn_mat.ConversionError, match="not a MATLAB v7.3"):
        convert_dncnn_mat.convert(tmp_path / "old.mat")
    with h5py.File(tmp_path / "other.mat", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(convert_dncnn_mat.ConversionError, match="holds no net.layers"):
        convert_dncnn_mat.convert(tmp_path / "other.mat")


def test_a_refused_file_writes_nothing(tmp_path):
    layers = matlab_dncnn(1)
    layers[1] = {"type": "bnorm", "name": "bn2"}
    write_simplenn(tmp_path / "bad.mat", layers)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"kept")
    result = subprocess.run(  # --overwrite: an existing output is refused first without it
        [
            sys.executable,
            str(ROOT / "tools" / "convert_dncnn_mat.py"),
            str(tmp_path / "bad.mat"),
            str(out),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "bn2 has type 'bnorm'" in result.stderr
    assert out.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mat", "out.safetensors"]


DNCNN_ROOT = os.environ.get("SPT_DNCNN_ROOT")


@pytest.mark.skipif(not DNCNN_ROOT, reason="opt-in: set SPT_DNCNN_ROOT to a cszn/DnCNN checkout")
@pytest.mark.parametrize("name, channels", [("GD_Color_Blind", 3), ("GD_Gray_Blind", 1), ("DnCNN3", 1)])
def test_published_models_convert(name, channels):
    state = convert_dncnn_mat.convert(Path(DNCNN_ROOT) / "model" / f"{name}.mat")
    assert len(state) == 40  # 20 convs, batch norm merged
    assert state["model.0.weight"].shape == (64, channels, 3, 3)
    assert state["model.38.weight"].shape == (channels, 64, 3, 3)
