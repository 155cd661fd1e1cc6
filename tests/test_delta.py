"""Adapter files: contents, metadata, fingerprints, atomic writes, and hostile/malformed input."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as st_save

import spt_adapter
from _archs import ARCHS
from spt_adapter import AdapterFileError, FingerprintMismatchError, SPTConfig
from spt_adapter.files.format import FORMAT_VERSION, adapter_metadata, adapter_tensors, read_adapter_header


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    build, targets, shape = ARCHS["swinir_light"]
    backbone = build(0)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = spt_adapter.inject(backbone, targets, config=SPTConfig(prior={"provider": "slic", "encoding": "label"}))
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path_factory.mktemp("delta") / "swinir.safetensors"
    model.save_adapter(path)
    x = torch.rand(*shape)
    prior = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        out = model(x, prior=prior)
    model.eject()
    return dict(build=build, state=state, path=path, x=x, prior=prior, out=out, targets=targets)


def fresh(trained, seed=7):
    b = trained["build"](seed)
    b.load_state_dict(trained["state"])
    return b


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}, [type(m) for m in module.modules()]


def unchanged(module, snap):
    state, types = snap
    now = module.state_dict()
    return (
        list(now) == list(state)
        and all(torch.equal(now[k], v) for k, v in state.items())
        and [type(m) for m in module.modules()] == types
    )


def test_metadata_is_strings_with_sorted_config_and_fingerprint(trained):
    meta, entries = read_adapter_header(trained["path"])
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "spt-adapter" and meta["format_version"] == str(FORMAT_VERSION)
    assert meta["library_version"] == spt_adapter.__version__
    config = json.loads(meta["config"])
    assert meta["config"] == json.dumps(config, sort_keys=True, separators=(",", ":"))
    # the flat {"provider": "slic"} given to inject is written in the one schema (files.format.prior_record)
    assert SPTConfig.from_json(meta["config"]).prior == {"provider": {"provider": "slic"}, "encoding": "label"}
    fp = json.loads(meta["fingerprint"])
    assert [t["path"] for t in fp["targets"]] == ["layers.0.residual_group", "layers.1.residual_group"]
    assert fp["targets"][0]["class"] == "BasicLayer" and fp["targets"][0]["params"]
    assert len(fp["backbone_sha256"]) == 64
    assert json.loads(meta["prior"]) == {"encoding": "label", "provider": {"provider": "slic"}}
    assert all(k.startswith("layers.") and ".spt_unit." in k for k in entries)


def test_save_is_deterministic(trained, tmp_path):
    model = spt_adapter.load_adapter(fresh(trained), trained["path"])
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    model.save_adapter(a)
    model.save_adapter(b)
    assert a.read_bytes() == b.read_bytes() == trained["path"].read_bytes()


def test_load_adapter_under_another_name_and_as_method(trained):
    model = spt_adapter.load_adapter(fresh(trained), trained["path"], adapter_name="mine")
    assert model.adapters == ["mine"]
    model.load_adapter(trained["path"], adapter_name="again")
    with torch.no_grad():
        assert torch.equal(model(trained["x"], prior=trained["prior"]), trained["out"])
    with pytest.raises(AdapterFileError, match="already has an adapter named 'mine'"):
        model.load_adapter(trained["path"], adapter_name="mine")


def test_wrong_backbone_names_first_difference_and_leaves_model_as_it_was(trained):
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    from _archs import ARCHS as A

    other = SwinIR(
        upscale=2,
        img_size=16,
        window_size=8,
        depths=[2, 2],
        embed_dim=32,
        num_heads=[2, 2],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
    )  # same module names, other widths
    snap = snapshot(other)
    with pytest.raises(FingerprintMismatchError) as info:
        spt_adapter.load_adapter(other, trained["path"])
    assert "layers.0.residual_group" in str(info.value) and "shape" in str(info.value)
    assert unchanged(other, snap)
    rrdb = A["rrdb"][0](0)
    with pytest.raises(FingerprintMismatchError, match="no such module"):
        spt_adapter.load_adapter(rrdb, trained["path"])
    # same architecture, other weights: the sha256 check refuses unless told otherwise
    retrained = trained["build"](3)
    with pytest.raises(FingerprintMismatchError, match="check_backbone_hash=False"):
        spt_adapter.load_adapter(retrained, trained["path"])
    spt_adapter.load_adapter(retrained, trained["path"], check_backbone_hash=False)


def test_pickle_checkpoints_are_refused_without_running_code(trained, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Evil(), protocol=4))
    zipped = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1)}, zipped)
    for path in (raw, zipped):
        snap = snapshot(backbone := fresh(trained))
        with pytest.raises(AdapterFileError, match="pickle checkpoint"):
            spt_adapter.load_adapter(backbone, path)
        assert unchanged(backbone, snap)
    assert not marker.exists()


def _write_header(path, header: dict, payload=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty", "too short"),
        ("truncated", "truncated"),
        ("oversized", "exceeds"),
        ("garbage_json", "not valid JSON"),
        ("no_meta", "no metadata"),
        ("nonstring_meta", "must be strings"),
        ("foreign", "not an SPT adapter"),
        ("newer", "schema version 99.*upgrade"),
        ("non_unit_tensor", "not an SPT unit tensor"),
        ("folder", "is a folder"),
        ("bad_fingerprint", "fingerprint"),
        ("fingerprint_wrong_types", "fingerprint' is malformed"),
    ],
)
def test_malformed_files_are_refused_with_a_clear_message(trained, tmp_path, case, message):
    good = trained["path"].read_bytes()
    path = tmp_path / f"{case}.safetensors"
    meta, entries = read_adapter_header(trained["path"])
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(good[: len(good) - 100])
    elif case == "oversized":
        path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    elif case == "garbage_json":
        path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    elif case == "no_meta":
        path.write_bytes(st_save({"a.spt_unit.w": torch.zeros(2)}))
    elif case == "nonstring_meta":
        _write_header(path, {"__metadata__": {**meta, "format_version": 1}})
    elif case == "foreign":
        path.write_bytes(st_save({"w": torch.zeros(2)}, metadata={"format": "pt"}))
    elif case == "newer":
        path.write_bytes(st_save({}, metadata={**meta, "format_version": "99", "library_version": "9.0"}))
    elif case == "non_unit_tensor":
        path.write_bytes(st_save({"conv_first.weight": torch.zeros(2)}, metadata=meta))
    elif case == "folder":
        path.mkdir()
    elif case == "fingerprint_wrong_types":
        fp = json.loads(meta["fingerprint"])
        fp["targets"][0]["channels"] = "sixty"
        path.write_bytes(st_save({}, metadata={**meta, "fingerprint": json.dumps(fp)}))
    elif case == "bad_fingerprint":
        path.write_bytes(st_save({}, metadata={**meta, "fingerprint": "{not json"}))
    backbone = fresh(trained)
    snap = snapshot(backbone)
    with pytest.raises(AdapterFileError, match=message):
        spt_adapter.load_adapter(backbone, path)
    assert unchanged(backbone, snap)


def test_atomic_save_keeps_the_previous_file_on_failure(trained, tmp_path, monkeypatch):
    model = spt_adapter.load_adapter(fresh(trained), trained["path"])
    target = tmp_path / "adapter.safetensors"
    model.save_adapter(target)
    before = target.read_bytes()
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(1.0)

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(AdapterFileError, match="disk full"):  # one SPTError line, the old file kept
        model.save_adapter(target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors"], "temporary file left behind"
    with pytest.raises(AdapterFileError, match="safetensors"):
        model.save_adapter(tmp_path / "adapter.pth")
    with pytest.raises(AdapterFileError, match="does not exist"):
        model.save_adapter(tmp_path / "nope" / "a.safetensors")


def test_saved_files_get_the_usual_permissions(trained, tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "shared.safetensors"
        spt_adapter.load_adapter(fresh(trained), trained["path"]).save_adapter(target)
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_file_size_is_bounded_by_unit_parameters(trained):
    tensors = adapter_tensors(spt_adapter.load_adapter(fresh(trained), trained["path"]))
    n = sum(t.numel() for t in tensors.values())
    meta_bytes = len(json.dumps(adapter_metadata(spt_adapter.load_adapter(fresh(trained), trained["path"]))))
    assert trained["path"].stat().st_size <= 4 * n + meta_bytes + 8 * 1024


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_fuzzed_adapter_files_load_or_fail_cleanly(trained, tmp_path, data):
    good = bytearray(trained["path"].read_bytes())
    kind = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(good) - 1))
            good[i] = data.draw(st.integers(0, 255))
    elif kind == "cut":
        good = good[: data.draw(st.integers(0, len(good) - 1))]
    else:
        i = data.draw(st.integers(0, len(good)))
        good = good[:i] + data.draw(st.binary(max_size=64)) + good[i:]
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(bytes(good))
    backbone = fresh(trained)
    snap = snapshot(backbone)
    try:
        model = spt_adapter.load_adapter(backbone, path)
    except spt_adapter.SPTError:
        assert unchanged(backbone, snap)
    else:
        assert isinstance(model, spt_adapter.SPTModel)
