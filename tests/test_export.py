"""Exporting backbone + SPT adapter as one ONNX / TorchScript file: parity with PyTorch at sizes other
than the traced one (DnCNN, SwinIR-light, Restormer; units reading a provider's prior and a distilled
student), the metadata in the file, refusals before anything is written, `spt-adapter export`,
`spt-adapter restore --backbone FILE` (onnxruntime) and restore sharded over two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spt_adapter
from _helpers import cli, save_safetensors
from spt_adapter.cli import main
from spt_adapter.errors import ExportError
from spt_adapter.inference.export import PARITY_ATOL, export, parity

pytest.importorskip("spandrel")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
sys.path.insert(0, str(Path(__file__).parent))
from _archs import restormer, swinir_light  # noqa: E402


def _dncnn():
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    return DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R")  # spandrel detects >= 8


#: name -> (builder, targets, (h, w) x 2 parity sizes: one a multiple of the size multiple, one not)
BACKBONES = {
    "dncnn": (_dncnn, ["model.2", "model.4"], [(20, 28), (33, 17)]),
    "swinir_light": (swinir_light, ["layers.*.residual_group"], [(24, 40), (21, 35)]),
    "restormer": (restormer, ["encoder_level1", "latent", "decoder_level1"], [(32, 24), (27, 37)]),
}


def _adapted(tmp_path, name: str, student: bool):
    """A random-weight backbone loaded through spt_adapter.load_backbone (its descriptor gives the size
    multiple) with perturbed units (+ a student): the adapter changes the output."""
    build, targets, _ = BACKBONES[name]
    torch.manual_seed(0)
    bb = spt_adapter.load_backbone(save_safetensors(build().eval(), tmp_path / f"{name}.safetensors"))
    cfg = spt_adapter.SPTConfig(
        targets=targets,
        hidden=8,
        student={"width": 8, "depth": 3} if student else None,
        prior={"provider": {"provider": "classical", "method": "slic"}, "encoding": "boundary", "task": "denoise:25"},
    )
    model = spt_adapter.inject(bb.model.eval(), config=cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval(), bb.descriptor


@pytest.mark.parametrize("student", [False, True], ids=["provider_prior", "student"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_exported_files_match_pytorch_at_other_sizes(tmp_path, name, student):
    model, desc = _adapted(tmp_path, name, student)
    sizes = BACKBONES[name][2]
    # the adapter matters: without it the output differs far beyond the parity bound
    x = torch.rand(1, 3, *sizes[1])
    p = None if student else (torch.rand(1, 1, *sizes[1]) > 0.5).float()
    from spt_adapter.inference.restore import _run, size_multiple

    m = size_multiple(model, desc)
    with torch.no_grad():
        adapted, _ = _run(model, x, p, multiple=m, backbone_only=False, half=False)
        plain, _ = _run(model, x, p, multiple=m, backbone_only=True, half=False)
    assert float((adapted - plain).abs().max()) > 20 * PARITY_ATOL
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        path = export(model, tmp_path / f"{name}{suffix}", descriptor=desc)
        worst = parity(path, fmt, model, descriptor=desc, sizes=sizes)
        assert worst <= PARITY_ATOL, f"{name} {fmt}: max |diff| {worst}"
        from spt_adapter.inference.exported import load_exported

        runner = load_exported(path)
        assert runner.kind == ("student" if student else "prior")
        assert runner.meta["inputs"] == ("image" if student else "image,prior")
        assert runner.meta["scale"] == str(2 if name == "swinir_light" else 1)
        assert json.loads(runner.meta["fingerprint"])["backbone_sha256"] == spt_adapter.backbone_sha256(model)
    # batch: dynamic, except where the backbone's own code freezes it under tracing (SwinIR's
    # window_reverse takes int(B)): that file is exported for one image per call, and its runner
    # feeds a batch one image at a time
    runner = load_exported(tmp_path / f"{name}.onnx")
    assert runner.meta["batch"] == ("1" if name == "swinir_light" else "dynamic")
    xb = torch.rand(2, 3, *sizes[0])
    pb = None if student else (torch.rand(2, 1, *sizes[0]) > 0.5).float()
    out = runner(xb, pb)
    with torch.no_grad():
        ref = torch.cat(
            [
                _run(
                    model,
                    xb[i : i + 1],
                    None if pb is None else pb[i : i + 1],
                    multiple=m,
                    backbone_only=False,
                    half=False,
                )[0]
                for i in range(2)
            ]
        )
    assert float((out.clamp(0, 1) - ref.clamp(0, 1)).abs().max()) <= PARITY_ATOL


def test_onnx_metadata_props_and_torchscript_extra_files(tmp_path):
    model, desc = _adapted(tmp_path, "dncnn", student=False)
    path = export(model, tmp_path / "d.onnx", descriptor=desc)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "spt-adapter-export" and props["inputs"] == "image,prior"
    assert props["prior_channels"] == "1" and props["prior_encoding"] == "boundary" and props["task"] == "denoise:25"
    assert props["scale"] == "1" and props["channels"] == "3"
    assert json.loads(props["prior"])["provider"]["method"] == "slic"
    assert json.loads(props["config"])["fusion"] == "concat"
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image", "prior"]
    ts = export(model, tmp_path / "d.pt", descriptor=desc)
    extra = {"spt_adapter.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)
    ts_meta = json.loads(extra["spt_adapter.json"])
    # the same metadata but the checksum, which is of each file's own content
    assert ts_meta.pop("content_sha256") != props.pop("content_sha256") and ts_meta == props


def test_refusals_name_the_cause_and_write_nothing(tmp_path):
    build, targets, _ = BACKBONES["dncnn"]
    torch.manual_seed(0)
    pool = spt_adapter.inject(build().eval(), config=spt_adapter.SPTConfig(targets=targets, fusion="pool"))
    for name in ("p.onnx", "p.pt"):
        with pytest.raises(ExportError, match="fusion 'pool'"):
            export(pool, tmp_path / name)
    torch.manual_seed(0)
    area = spt_adapter.inject(build().eval(), config=spt_adapter.SPTConfig(targets=targets, prior_resize="area"))
    with pytest.raises(ExportError, match="prior_resize 'area'"):
        export(area, tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="cannot tell the export format"):
        export(area, tmp_path / "a.bin")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["onnx", "pt"])
def test_float16_export_on_the_cpu_matches_pytorch_and_swinir_is_refused(tmp_path, suffix):
    """half=True traces and checks float16 on the model's device, here the CPU (it was refused off
    CUDA, so the float16 path had never run): a DnCNN with units and a student reproduces the float32
    PyTorch model within 1e-2 at other sizes, and its file says float16. SwinIR, whose code makes its
    attention mask in float32 at run time, cannot be traced in float16: one line naming float16, and
    nothing written."""
    from spt_adapter.inference.exported import load_exported

    model, descriptor = _adapted(tmp_path, "dncnn", True)
    out = tmp_path / f"half.{suffix}"
    export(model, out, descriptor=descriptor, half=True)
    runner = load_exported(out)
    assert runner.dtype == "float16" and runner.meta["dtype"] == "float16"
    fmt = "onnx" if suffix == "onnx" else "torchscript"
    worst = parity(out, fmt, model, descriptor=descriptor, sizes=BACKBONES["dncnn"][2])
    assert 0 < worst <= 1e-2  # float16 differs from float32, within the export's tolerance
    from spt_adapter.inference.exported import restore_exported
    from spt_adapter.inference.restore import restore

    image = (np.random.default_rng(0).random((45, 67, 3)) * 255).astype(np.uint8)
    reference = restore(model, image, descriptor=descriptor).astype(int)
    for tile in (None, 48):  # restore through the float16 file, whole and tiled: within one 8-bit level
        assert np.abs(restore_exported(runner, image, tile=tile).astype(int) - reference).max() <= 1, tile
    swinir, swin_descriptor = _adapted(tmp_path, "swinir_light", True)
    with pytest.raises(ExportError, match="in float16: .*export float32") as err:
        export(swinir, tmp_path / f"swin.{suffix}", descriptor=swin_descriptor, half=True)
    assert "\n" not in str(err.value) and not (tmp_path / f"swin.{suffix}").exists()


def test_a_frozen_shape_branch_is_caught_before_writing(tmp_path):
    """A backbone whose forward takes a Python branch on the input size: tracing freezes it, the
    check at other sizes sees the difference, and the file is not written."""

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y * 0.5 if x.shape[-1] > 30 else y

    with pytest.raises(ExportError, match="does not reproduce"):
        export(Branchy().eval(), tmp_path / "b.pt")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# the commands
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A DnCNN checkpoint, a distilled adapter and a provider (SLIC) adapter for it, five photos."""
    from skimage import data

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    ckpt = save_safetensors(_dncnn().eval(), root / "dncnn.safetensors")
    out = {"root": root, "ckpt": ckpt}
    for kind, student in (("student", True), ("slic", False)):
        model, _ = _adapted(root, "dncnn", student)
        cfg = model.spt_config["default"]
        cfg.prior = {
            "provider": {"provider": "classical", "method": "slic", "settings": {"n_segments": 12}},
            "encoding": "boundary",
            "task": "denoise:25",
            "channels": 3,
        }
        model.base_model.load_state_dict(spt_adapter.load_backbone(ckpt).model.state_dict(), strict=False)
        out[kind] = spt_adapter.save_adapter(model, root / f"{kind}.safetensors")
    inputs = root / "in"
    inputs.mkdir()
    img = data.astronaut()
    for i, (h, w) in enumerate([(40, 48), (37, 29), (30, 30), (26, 41), (33, 35)]):
        Image.fromarray(img[50 * i : 50 * i + h, 60 : 60 + w]).save(inputs / f"p{i}.png")
    out["inputs"] = inputs
    return out


def _pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


@pytest.mark.parametrize("kind", ["student", "slic"])
def test_export_command_and_restore_from_the_exported_file(files, tmp_path, kind, capsys):
    onnx_file = tmp_path / "m.onnx"
    assert (
        main(["export", "--backbone", str(files["ckpt"]), "--adapter", str(files[kind]), "--out", str(onnx_file)]) == 0
    )
    assert "inputs: image" in capsys.readouterr().err
    ref, got = tmp_path / "ref", tmp_path / "onnx"
    common = ["--no-progress", "--prior-cache", str(tmp_path / "cache")]
    assert main([*cli("restore", files["inputs"], backbone=files["ckpt"], adapter=files[kind], out=ref), *common]) == 0
    assert main(["restore", str(files["inputs"]), "--backbone", str(onnx_file), "--out", str(got), *common]) == 0
    err = capsys.readouterr().err
    assert "exported onnx" in err and "5 restored" in err
    a, b = _pngs(ref), _pngs(got)
    assert list(a) == list(b) and len(a) == 5
    for name in a:  # outputs differ by float32 rounding (<= 1e-4 before 8-bit rounding): at most one level
        assert a[name].shape == b[name].shape and np.abs(a[name].astype(int) - b[name].astype(int)).max() <= 1
    # tiled through onnxruntime: a CNN's tiles give its whole-image output
    assert (
        main(
            [
                *cli("restore", files["inputs"], backbone=onnx_file, out=tmp_path / "t", tile="30", tile_overlap="20"),
                *common,
            ]
        )
        == 0
    )
    for name, arr in _pngs(tmp_path / "t").items():
        assert np.abs(arr.astype(int) - b[name].astype(int)).max() <= 1
    # TorchScript runs through the same path
    ts = tmp_path / "m.pt"
    assert main(["export", "--backbone", str(files["ckpt"]), "--adapter", str(files[kind]), "--out", str(ts)]) == 0
    assert main(["restore", str(files["inputs"]), "--backbone", str(ts), "--out", str(tmp_path / "ts"), *common]) == 0
    for name, arr in _pngs(tmp_path / "ts").items():
        assert np.abs(arr.astype(int) - a[name].astype(int)).max() <= 1


def test_command_refusals_are_one_line(files, tmp_path, capsys):
    def refused(argv, expect):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err

    pool_model = spt_adapter.inject(
        spt_adapter.load_backbone(files["ckpt"]).model, config=spt_adapter.SPTConfig(targets=["model.2"], fusion="pool")
    )
    pool = spt_adapter.save_adapter(pool_model, tmp_path / "pool.safetensors")
    refused(
        ["export", "--backbone", str(files["ckpt"]), "--adapter", str(pool), "--out", str(tmp_path / "x.onnx")],
        "fusion 'pool'",
    )
    refused(
        ["export", "--backbone", str(files["ckpt"]), "--adapter", str(pool), "--out", str(tmp_path / "x.zip")],
        "cannot tell the export format",
    )
    assert not (tmp_path / "x.onnx").exists()
    onnx_file = export(
        spt_adapter.load_adapter(spt_adapter.load_backbone(files["ckpt"]).model, files["student"]), tmp_path / "s.onnx"
    )
    refused(
        cli("restore", files["inputs"], backbone=onnx_file, adapter=files["student"], out=tmp_path / "o"),
        "--adapter does not apply to an exported file",
    )
    refused(
        cli("restore", files["inputs"], backbone=onnx_file, provider="slic", out=tmp_path / "o"),
        "distilled prior",
    )
    (tmp_path / "fake.onnx").write_bytes(b"not onnx")
    refused(
        ["restore", str(files["inputs"]), "--backbone", str(tmp_path / "fake.onnx"), "--out", str(tmp_path / "o")],
        "onnxruntime cannot load it",
    )
    restore = cli("restore", files["inputs"], backbone=files["ckpt"], adapter=files["student"], out=tmp_path / "o")
    refused(restore + cli(num_shards=2, shard_index=2), "--shard-index")


def test_restore_sharded_over_two_processes_writes_each_output_once(files, tmp_path):
    out = tmp_path / "sharded"
    restore = cli("restore", files["inputs"], backbone=files["ckpt"], adapter=files["student"])
    argv = [sys.executable, "-m", "spt_adapter.cli", *restore, *cli(out=out, no_progress=True, skip_existing=True)]
    env = {**os.environ, "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(argv, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    done = sorted(int(e.split(" restored")[0].split()[-1]) for e in errs)
    # 5 inputs split by a hash of their output names (p0, p1 -> shard 0; p2-p4 -> shard 1), each once
    assert done == [2, 3] and "shard 0/2" in errs[0] and "shard 1/2" in errs[1]
    assert main(restore + cli(out=tmp_path / "one", no_progress=True)) == 0
    sharded, single = _pngs(out), _pngs(tmp_path / "one")
    assert list(sharded) == list(single) == [f"p{i}.png" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == list(single)  # no temporaries left behind
    for name in single:
        assert np.array_equal(sharded[name], single[name])
    # rerun one shard with --skip-existing: its outputs exist, nothing is rewritten
    again = subprocess.run(argv, env={**env, "RANK": "1"}, stderr=subprocess.PIPE, text=True, timeout=300)
    assert again.returncode == 0 and "0 restored, 3 skipped" in again.stderr


@pytest.mark.parametrize("src,dst", [((21, 35), (3, 5)), ((24, 40), (24, 40)), ((17, 9), (40, 23)), ((64, 48), (8, 6))])
def test_traced_prior_resize_is_torch_nearest_exact(src, dst):
    """Under tracing the unit resizes its prior with index gathers (the ONNX exporter has no
    nearest-exact): the same pixels as F.interpolate(mode="nearest-exact"), up and down."""
    from spt_adapter.core.unit import _nearest_exact_gather

    prior = torch.arange(2 * src[0] * src[1], dtype=torch.float32).reshape(1, 2, *src)
    want = torch.nn.functional.interpolate(prior, size=dst, mode="nearest-exact")
    assert torch.equal(_nearest_exact_gather(prior, dst), want)


def test_hat_exports_to_both_formats_and_dat_onnx_is_refused_by_name(tmp_path):
    """HAT (spandrel) with units and a student exports to ONNX and TorchScript and matches PyTorch at
    other sizes; DAT exports to TorchScript, but onnxruntime cannot run its exported position bias
    (a LayerNormalization over a zero-size axis once the window size is dynamic): one ExportError
    naming the cause and the other format, nothing written -- not the runtime's own error."""
    from _archs import dat, hat

    for name, build, targets in (("hat", hat, ["layers.*.residual_group"]), ("dat", dat, ["layers.*"])):
        torch.manual_seed(0)
        if name == "hat":
            bb = spt_adapter.load_backbone(save_safetensors(build().eval(), tmp_path / f"{name}.safetensors"))
            net, descriptor = bb.model, bb.descriptor
        else:  # spandrel does not detect a DAT this small from its weights: the module itself
            net, descriptor = build(), None
        cfg = spt_adapter.SPTConfig(targets=targets, hidden=8, student={"width": 8, "depth": 3})
        model = spt_adapter.inject(net.eval(), config=cfg).eval()
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for _, p in model.unit_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
        formats = ("onnx", "pt") if name == "hat" else ("pt",)
        for suffix in formats:
            out = tmp_path / f"{name}.{suffix}"
            export(model, out, descriptor=descriptor)
            fmt = "onnx" if suffix == "onnx" else "torchscript"
            assert parity(out, fmt, model, descriptor=descriptor, sizes=[(24, 20), (19, 29)]) <= PARITY_ATOL
        if name == "dat":
            with pytest.raises(ExportError, match="does not run at .*try the other format: torchscript") as err:
                export(model, tmp_path / "dat.onnx", descriptor=descriptor)
            assert "\n" not in str(err.value)
            assert not (tmp_path / "dat.onnx").exists()
