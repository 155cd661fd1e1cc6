"""A distilled prior: a student network inside the adapter learns a teacher provider's prior of the
clean images, so inference needs no segmenter (issue 14)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import spt_adapter
from _data import DATA  # small crops of the test sets, committed (tests/data)
from _helpers import cli, save_safetensors
from spt_adapter.cli import main
from spt_adapter.core.keys import FILE_STUDENT_SEGMENT, is_adapter_file_key, split_student_file_key, student_file_key
from spt_adapter.core.student import PriorStudent, check_student
from spt_adapter.errors import ConfigError, DataError, PriorError, SPTError

spandrel = pytest.importorskip("spandrel")
from spandrel.architectures.DnCNN import DnCNN  # noqa: E402

TARGETS = ["model.2", "model.4"]


def _dncnn(seed: int = 0, in_nc: int = 3, nb: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return DnCNN(in_nc=in_nc, out_nc=in_nc, nc=8, nb=nb, act_mode="R").eval()


def _distilled(backbone, **student) -> spt_adapter.SPTModel:
    cfg = spt_adapter.SPTConfig(
        targets=TARGETS,
        hidden=8,
        student={"width": 8, "depth": 3, **student},
        prior={"kind": "distilled", "teacher": {"provider": "classical", "method": "slic"}},
    )
    torch.manual_seed(1)
    return spt_adapter.inject(backbone, config=cfg)


def _perturb(model) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, p in model.unit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


# ------------------------------------------------------------------------------------ core


def test_student_settings_are_validated_with_bounds():
    assert check_student(None) is None
    assert check_student({}) == {"in_channels": 3, "width": 16, "depth": 4}
    for bad in ({"width": 0}, {"width": 257}, {"depth": 1}, {"in_channels": True}, {"widht": 8}, [8]):
        with pytest.raises(ConfigError):
            check_student(bad)
    with pytest.raises(ConfigError, match="pool"):
        spt_adapter.SPTConfig(targets=["x"], fusion="pool", student={})
    cfg = spt_adapter.SPTConfig(targets=["x"], student={"width": 4})
    assert spt_adapter.SPTConfig.from_json(cfg.to_json()).student == {"in_channels": 3, "width": 4, "depth": 4}


def test_student_keys_are_adapter_keys():
    assert student_file_key("body.0.weight") == f"{FILE_STUDENT_SEGMENT}.body.0.weight"
    assert split_student_file_key("spt_student.body.0.weight") == "body.0.weight"
    assert split_student_file_key("model.2.spt_unit.fuse.0.weight") is None
    assert is_adapter_file_key("spt_student.body.0.weight") and is_adapter_file_key("a.spt_unit.b")
    assert not is_adapter_file_key("model.2.weight") and not is_adapter_file_key("spt_student.")


def test_fresh_distilled_adapter_is_the_backbone_bit_for_bit():
    bb = _dncnn()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        ref = bb(x)
        model = _distilled(bb)
        out, logits = model(x, return_prior_logits=True)
    assert torch.equal(out, ref) and torch.equal(model(x), ref)  # zero-initialised units: exact identity
    assert logits.shape == (2, 1, 20, 24)
    assert model.student() is not None and model.student().out_channels == 1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("spt_students.default.") for n in trainable)
    assert all(".spt_units." in n or n.startswith("spt_students.") for n in trainable)


def test_prior_given_to_a_distilled_adapter_is_refused():
    model = _distilled(_dncnn())
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(PriorError, match="distilled prior.*without prior="):
        model(x, prior=torch.ones(1, 1, 16, 16))
    with pytest.raises(PriorError, match="distilled prior"):
        with model.use_prior(torch.ones(1, 1, 16, 16)):
            pass
    with pytest.raises(PriorError, match="reads \\(B, 3, H, W\\)"):
        model(torch.rand(1, 1, 16, 16)) if False else model.student()(torch.rand(1, 1, 16, 16))
    plain = spt_adapter.inject(_dncnn(), targets=TARGETS)
    with pytest.raises(PriorError, match="return_prior_logits"):
        plain(x, prior=torch.ones(1, 1, 16, 16), return_prior_logits=True)


def test_the_student_makes_the_prior_the_units_read():
    model = _distilled(_dncnn())
    _perturb(model)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
        prior = model.student()(x)
        model.spt_students["keep"] = model.spt_students.pop("default")  # hide the student: a plain adapter
        by_hand = model(x, prior=prior)
    assert torch.equal(out, by_hand)


def test_student_round_trip_save_load_exact(tmp_path):
    model = _distilled(_dncnn())
    _perturb(model)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    path = model.save_adapter(tmp_path / "a.safetensors")
    meta, entries = spt_adapter.read_adapter_header(path)
    assert int(meta["format_version"]) >= 2  # schema 2 brought the student
    students = sorted(k for k in entries if k.startswith("spt_student."))
    assert students == sorted(student_file_key(n) for n, _ in model.student().named_parameters())
    assert json.loads(meta["student"]) == {
        "settings": {"depth": 3, "in_channels": 3, "width": 8},
        "teacher": {"method": "slic", "provider": "classical"},
    }
    loaded = spt_adapter.load_adapter(_dncnn(), path)  # same weights, fresh modules
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    for (k1, p1), (k2, p2) in zip(model.unit_parameters(), loaded.unit_parameters(), strict=True):
        assert k1 == k2 and torch.equal(p1, p2)
    # the same through a folder (from_pretrained) and the model card
    model.save_pretrained(tmp_path / "folder")
    again = spt_adapter.from_pretrained(_dncnn(), tmp_path / "folder")
    with torch.no_grad():
        assert torch.equal(again(x), want)
    card = (tmp_path / "folder" / "README.md").read_text()
    assert "distilled" in card.lower() and "slic" in card


def test_a_delta_missing_its_student_is_refused(tmp_path):
    from safetensors.torch import load_file

    from spt_adapter.errors import AdapterFileError
    from spt_adapter.files.format import adapter_metadata, serialize

    model = _distilled(_dncnn())
    path = model.save_adapter(tmp_path / "a.safetensors")
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("spt_student.")}
    broken = tmp_path / "b.safetensors"
    broken.write_bytes(serialize(tensors, adapter_metadata(model)))
    bb = _dncnn()
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    with pytest.raises(AdapterFileError, match="missing.*spt_student"):
        spt_adapter.load_adapter(bb, broken)
    assert set(bb.state_dict()) == set(before)  # untouched


def test_deleting_or_ejecting_drops_the_student():
    model = _distilled(_dncnn())
    model.add_adapter("plain", spt_adapter.SPTConfig(targets=TARGETS))
    assert model.student("default") is not None and model.student("plain") is None
    assert not any(p.requires_grad for p in model.student("default").parameters())  # "plain" is active
    model.delete_adapter("default")
    assert "default" not in model.spt_students
    model.eject()
    assert len(model.spt_students) == 0


# ------------------------------------------------------------------------------------ data


class Recording:
    """A real provider (SLIC) that records every image it is given."""

    def __init__(self):
        from spt_adapter.prior import ClassicalMaskProvider

        self.inner = ClassicalMaskProvider("slic", n_segments=20)
        self.seen: list[np.ndarray] = []

    def generate(self, image):
        self.seen.append(np.array(image, copy=True))
        return self.inner.generate(image)

    def identity(self):
        return {**self.inner.identity(), "recording": True}


def _hq_folder(tmp_path, n=2, size=48):
    from PIL import Image

    folder = tmp_path / "hq"
    folder.mkdir()
    for p in sorted((DATA / "Set5").glob("*.png"))[:n]:
        Image.open(p).convert("RGB").crop((0, 0, size, size)).save(folder / p.name)
    return folder


@pytest.mark.parametrize("task", ["denoise:25", "sr:4"])
def test_the_teacher_only_ever_sees_hq_images(tmp_path, task):
    from spt_adapter.data.datasets import PairedPriorDataset

    folder = _hq_folder(tmp_path)
    teacher = Recording()
    ds = PairedPriorDataset(folder, task, cache=None, teacher=teacher, patch_size=8, train=True)
    gts, lqs = zip(*(ds.pair(i) for i in range(len(ds))), strict=True)
    for i in range(len(ds)):
        item = ds[i]
        assert "prior" not in item and item["teacher_prior"].shape == (1,) + tuple(item["lq"].shape[1:])
    assert len(teacher.seen) == len(ds)
    for img in teacher.seen:
        assert any(img.shape == g.shape and img.tobytes() == g.tobytes() for g in gts)  # a GT image, byte-equal
        assert not any(img.shape == q.shape and img.tobytes() == q.tobytes() for q in lqs)
    with pytest.raises(DataError, match="teacher= alone"):
        PairedPriorDataset(folder, task, teacher=teacher, provider=teacher.inner)


def test_sr_teacher_map_is_the_gt_map_nearest_downsampled(tmp_path):
    from spt_adapter.data.datasets import PairedPriorDataset
    from spt_adapter.prior import encode_masks

    folder = _hq_folder(tmp_path, n=1)
    teacher = Recording()
    ds = PairedPriorDataset(folder, "sr:4", cache=None, teacher=teacher, train=False)
    item = ds[0]
    gt = ds.pair(0)[0]
    full = encode_masks(teacher.inner.generate(gt), kind="boundary", shape=gt.shape[:2])
    assert torch.equal(item["teacher_prior"], torch.from_numpy(full[:, 2::4, 2::4].astype(np.float32)))


# ------------------------------------------------------------------------------------ training


def test_train_units_student_steps_then_joint(tmp_path):
    from spt_adapter.data.datasets import PairedPriorDataset
    from spt_adapter.training.train import TrainSettings, train_units

    folder = _hq_folder(tmp_path, n=2, size=32)
    ds = PairedPriorDataset(folder, "denoise:25", cache=None, teacher=Recording(), patch_size=16)
    model = _distilled(_dncnn())
    units0 = {k: p.detach().clone() for k, p in model.unit_parameters() if not k.startswith("spt_student.")}
    student0 = {k: p.detach().clone() for k, p in model.student().named_parameters()}
    s = TrainSettings(iters=6, batch=2, lr=1e-2, student_steps=3, progress=False, log_every=1, amp=False)
    assert s.total_steps == 9  # the student-only steps come in addition to iters
    calls = []
    # training forwards only: saving a checkpoint measures the backbone's scale and channels under no_grad
    hook = model.base_model.register_forward_hook(lambda *a: calls.append(1) if torch.is_grad_enabled() else None)
    result = train_units(model, ds, s, out_dir=tmp_path / "run", stop_at=3)
    assert calls == []  # the student-only steps never run the backbone
    units = dict(model.unit_parameters())
    assert all(torch.equal(units[k], v) for k, v in units0.items())  # student alone: units untouched
    assert any(not torch.equal(p, student0[k]) for k, p in model.student().named_parameters())
    assert [set(r) - {"step", "loss", "lr", "seconds"} for r in result.history] == [{"distill_loss"}] * 3
    assert all(r["loss"] == pytest.approx(r["distill_loss"], rel=1e-6) for r in result.history)
    meta, _ = spt_adapter.read_adapter_header(tmp_path / "run" / "spt_adapter.safetensors")
    assert json.loads(meta["training"])["student_steps"] == 3 and json.loads(meta["training"])["step"] == 3
    result = train_units(model, ds, s, out_dir=tmp_path / "run", resume=True)
    hook.remove()
    assert result.step == 9 and len(calls) == 6  # 6 joint steps, each one backbone forward
    assert [r["step"] for r in result.history] == list(range(1, 10))
    units = dict(model.unit_parameters())
    assert any(not torch.equal(units[k], v) for k, v in units0.items())  # joint: the units learn
    joint = result.history[-1]
    assert joint["loss"] == pytest.approx(joint["restoration_loss"] + 0.1 * joint["distill_loss"], rel=1e-5)
    meta, entries = spt_adapter.read_adapter_header(tmp_path / "run" / "spt_adapter.safetensors")
    assert any(k.startswith("spt_student.") for k in entries)


def test_a_distilled_adapter_refuses_an_lq_prior_dataset(tmp_path):
    from spt_adapter.data.datasets import PairedPriorDataset
    from spt_adapter.prior import ClassicalMaskProvider
    from spt_adapter.training.train import TrainSettings, train_units

    folder = _hq_folder(tmp_path, n=2, size=32)
    ds = PairedPriorDataset(folder, "denoise:25", provider=ClassicalMaskProvider("slic", n_segments=10), patch_size=16)
    with pytest.raises(SPTError, match="teacher=PROVIDER"):
        train_units(_distilled(_dncnn()), ds, TrainSettings(iters=1, batch=2, progress=False))
    with pytest.raises(ConfigError, match="student_steps"):
        TrainSettings(iters=3, student_steps=-1)


def test_lr_runs_over_the_student_steps_then_afresh_over_iters():
    from spt_adapter.training.train import TrainSettings, lr_at

    s = TrainSettings(iters=10, student_steps=4, lr=1e-3, min_lr_ratio=0.0)
    curve = [lr_at(k, s) for k in range(s.total_steps)]
    assert curve[0] == pytest.approx(1e-3) and curve[3] < curve[1] < curve[0]  # cosine over the 4 student steps
    assert curve[4] == pytest.approx(1e-3) and curve[13] < curve[5]  # then afresh over the 10 joint steps
    plain = TrainSettings(iters=10, lr=1e-3, min_lr_ratio=0.0)
    assert curve[4:] == pytest.approx([lr_at(k, plain) for k in range(10)])


def test_tiny_sam_teacher_end_to_end(tmp_path):
    pytest.importorskip("segment_anything")
    from spt_adapter.data.datasets import PairedPriorDataset
    from spt_adapter.prior import make_provider
    from spt_adapter.prior.tiny import make_tiny_sam_checkpoint
    from spt_adapter.training.train import TrainSettings, train_units

    ckpt = make_tiny_sam_checkpoint(tmp_path / "sam_vit_tiny.pth")
    sam = make_provider(
        "sam",
        ckpt,
        model_type="vit_tiny",
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    folder = _hq_folder(tmp_path, n=2, size=32)
    ds = PairedPriorDataset(folder, "denoise:25", cache=tmp_path / "pc", teacher=sam, patch_size=16)
    cfg = spt_adapter.SPTConfig(
        targets=TARGETS,
        hidden=8,
        student={"width": 8, "depth": 3},
        prior={"kind": "distilled", "teacher": sam.identity(), "encoding": "boundary"},
    )
    model = spt_adapter.inject(_dncnn(), config=cfg)
    train_units(
        model, ds, TrainSettings(iters=2, batch=2, progress=False, student_steps=1, amp=False), out_dir=tmp_path / "run"
    )
    path = tmp_path / "run" / "spt_adapter.safetensors"
    assert json.loads(spt_adapter.read_adapter_header(path)[0]["student"])["teacher"]["model_type"] == "vit_tiny"
    loaded = spt_adapter.load_adapter(_dncnn(), path)  # no SAM needed to run it
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


# ------------------------------------------------------------------------------------ command line


@pytest.fixture()
def dncnn_ckpt(tmp_path):
    # spandrel detects a DnCNN with 8 or more convs
    return save_safetensors(_dncnn(nb=8), tmp_path / "dncnn.safetensors")


def _train(ckpt, data, out, cache, *extra, **flags):
    """``train`` of the DnCNN's two target convs on ``data`` (denoise:25, 16-px patches, batch 2, CPU), then
    ``flags`` (as ``cli`` spells them) and ``extra``."""
    argv = cli("train", backbone=ckpt, targets=TARGETS, data=data, task="denoise:25", out=out, prior_cache=cache)
    return argv + cli(patch=16, batch=2, no_progress=True, device="cpu", **flags) + list(extra)


def test_cli_trains_a_distilled_adapter_and_eval_needs_no_provider(tmp_path, dncnn_ckpt, capsys):
    data = _hq_folder(tmp_path, n=2, size=32)
    out, cache = tmp_path / "run", tmp_path / "pc"
    argv = _train(
        dncnn_ckpt, data, out, cache, prior="distilled", teacher="slic", iters=3, student_steps=1, student_width=8
    )
    assert main(argv) == 0
    path = out / "spt_adapter.safetensors"
    meta, entries = spt_adapter.read_adapter_header(path)
    assert any(".spt_unit." in k for k in entries) and any(k.startswith("spt_student.") for k in entries)
    cfg = spt_adapter.read_adapter_config(path)
    assert cfg.student == {"in_channels": 3, "width": 8, "depth": 4}
    assert cfg.prior["kind"] == "distilled" and cfg.prior["teacher"]["method"] == "slic"
    capsys.readouterr()
    before = sorted(p.name for p in cache.rglob("*") if p.is_file())
    argv = cli("eval", backbone=dncnn_ckpt, adapter=out, data=data, out=tmp_path / "ev", prior_cache=cache)
    assert main(argv + cli(no_progress=True, crops=0)) == 0
    assert (tmp_path / "ev" / "eval.md").exists()
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before  # no segmenter ran
    # restore runs it the same way: no provider, no checkpoint, no segmenter
    argv = cli("restore", data, backbone=dncnn_ckpt, adapter=out, out=tmp_path / "restored", prior_cache=cache)
    assert main(argv + ["--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "restored").glob("*.png")) == sorted(p.name for p in data.glob("*.png"))
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before
    code = main(
        cli(
            "eval", backbone=dncnn_ckpt, adapter=out, data=data, provider="slic", out=tmp_path / "ev2", no_progress=True
        )
    )
    assert code == 1 and "distilled prior" in capsys.readouterr().err
    # resuming with another teacher is refused before any step
    code = main(_train(dncnn_ckpt, data, out, cache, prior="distilled", teacher="felzenszwalb", iters=4, resume=True))
    assert code == 1 and "distilled from teacher" in capsys.readouterr().err
    code = main(_train(dncnn_ckpt, data, out, cache, "--iters", "4", "--resume"))
    assert code == 1 and "--prior distilled" in capsys.readouterr().err
    distilled = {"prior": "distilled", "teacher": "slic", "iters": 4}
    code = main(_train(dncnn_ckpt, data, out, cache, **distilled, student_steps=2, resume=True))
    assert code == 1 and "--student-steps 1" in capsys.readouterr().err
    # without --student-steps a resumed run keeps its own (1), not the default 400
    assert main(_train(dncnn_ckpt, data, out, cache, **distilled, resume=True)) == 0
    training = json.loads(spt_adapter.read_adapter_header(path)[0]["training"])
    assert training["step"] == 5 and training["student_steps"] == 1 and training["iters"] == 4


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--teacher", "slic"], "--teacher is for --prior distilled"),
        (["--prior", "distilled"], "needs --teacher"),
        (["--prior", "distilled", "--teacher", "slic", "--provider", "slic"], "drop --provider"),
        (["--prior", "distilled", "--teacher", "sam"], "--provider-checkpoint"),
        (["--prior", "distilled", "--teacher", "no_such_provider"], "no_such_provider"),
        (["--student-steps", "5"], "--student-steps is for --prior distilled"),
    ],
)
def test_cli_bad_distillation_flags_fail_before_training(tmp_path, dncnn_ckpt, capsys, extra, needle):
    data = _hq_folder(tmp_path, n=1, size=32)
    out = tmp_path / "run"
    code = main(_train(dncnn_ckpt, data, out, tmp_path / "pc", "--iters", "5", *extra))
    assert code == 1 and needle in capsys.readouterr().err
    assert not (out / "spt_adapter.safetensors").exists()


def test_cli_teacher_without_hq_images_fails_before_training(tmp_path, dncnn_ckpt, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(
        _train(dncnn_ckpt, empty, tmp_path / "run", tmp_path / "pc", "--prior", "distilled", "--teacher", "slic")
    )
    assert code == 1 and "holds no images" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_student_shapes_are_checked_against_the_header_before_anything_is_built(tmp_path):
    """A config whose student contradicts the student tensors in the file (forged width or depth) is
    refused from the header alone, like the units' shapes; the shapes the check expects are exactly
    those a real PriorStudent has."""
    from spt_adapter.core.student import student_parameter_shapes
    from spt_adapter.files.format import FORMAT_VERSION, read_adapter_header, serialize

    for settings in ({"in_channels": 1, "width": 8, "depth": 2}, {"in_channels": 3, "width": 16, "depth": 5}):
        real = {k: tuple(v.shape) for k, v in PriorStudent.from_config(settings, 2).state_dict().items()}
        assert student_parameter_shapes(settings, 2) == real
    model = _distilled(_dncnn())
    good = tmp_path / "good.safetensors"
    spt_adapter.save_adapter(model, good)
    meta, _ = read_adapter_header(good)
    from safetensors import safe_open

    with safe_open(str(good), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    forged = dict(meta)
    cfg = json.loads(meta["config"])
    cfg["student"] = {**cfg["student"], "width": 200}  # within the setting's bounds, not the tensors' shapes
    forged["config"] = json.dumps(cfg, sort_keys=True)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(serialize(tensors, forged))
    with pytest.raises(spt_adapter.AdapterFileError, match="spt_student"):
        spt_adapter.load_adapter(_dncnn(), bad)
    assert FORMAT_VERSION >= 2


def test_cli_defaults_are_the_settings_the_benchmarks_validated(tmp_path):
    """--prior distilled: 400 student-only steps (in addition to --iters), distill weight 0.1, width 16;
    units at lr 1e-3 (benchmarks/quality.py --lr)."""
    from spt_adapter.cli import build_parser
    from spt_adapter.commands.train import _check_distilled_args

    base = ["train", "--backbone", "b.pth", "--data", "d", "--task", "denoise:25", "--out", str(tmp_path / "r")]
    args = build_parser().parse_args(base + ["--prior", "distilled", "--teacher", "slic"])
    _check_distilled_args(args)
    assert (args.student_steps, args.distill_weight, args.student_width, args.lr) == (400, 0.1, 16, 1e-3)
    args = build_parser().parse_args(base)
    _check_distilled_args(args)
    assert args.student_steps == 0 and args.lr == 1e-3
