"""Issue 12.8: every writer records one metadata schema, and every reader reads every writer's file.

Writers: core ``save_adapter``, the `spt-adapter train` CLI, the BasicSR, KAIR and Restormer shims
(their real save methods, called on a stand-in for the framework model: the frameworks' training
loops are exercised in tests/test_integrations_*.py) and PEFT conversion (``peft_to_spt``).
Readers: ``load_adapter``, ``read_adapter_config``, `spt-adapter eval`, the model card,
``from_pretrained`` and ``spt_to_peft``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import spt_adapter
from spt_adapter.cli import main
from spt_adapter.files.format import PRIOR_KEY, prior_record, read_adapter_config, read_adapter_header

pytest.importorskip("spandrel")

from test_reliability import _ckpt, _images  # noqa: E402  (tiny SwinIR checkpoints and images)

SPT_BLOCK = {
    "prior": {"provider": "classical", "method": "slic", "settings": {"n_segments": 6}, "encoding": "boundary"}
}


def _backbone(ckpt: Path):
    return spt_adapter.load_backbone(ckpt).model


def _shim_net(ckpt: Path):
    from spt_adapter.integrations._netio import attach_units
    from spt_adapter.integrations._options import parse_spt_block

    options = parse_spt_block(dict(SPT_BLOCK), "spt")
    return options, attach_units(_backbone(ckpt), options)


def write_core(ckpt: Path, out: Path) -> Path:
    model = spt_adapter.inject(
        _backbone(ckpt),
        config=spt_adapter.SPTConfig(
            targets=["layers.*.residual_group"],
            prior={"provider": "classical", "method": "slic", "settings": {"n_segments": 6}, "encoding": "boundary"},
        ),
    )
    return model.save_adapter(out / "core.safetensors", task="denoise:25")


def write_cli(ckpt: Path, out: Path, data: Path) -> Path:
    run = out / "cli_run"
    assert (
        main(
            [
                "train",
                "--backbone",
                str(ckpt),
                "--data",
                str(data),
                "--task",
                "denoise:25",
                "--out",
                str(run),
                "--prior-cache",
                str(out / "pc"),
                "--patch",
                "16",
                "--batch",
                "1",
                "--iters",
                "1",
                "--segments",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    return run / "spt_adapter.safetensors"


def write_basicsr(ckpt: Path, out: Path) -> Path:
    pytest.importorskip("basicsr")
    from spt_adapter.integrations.basicsr.model import SPTSRModel

    _, net = _shim_net(ckpt)
    fake = SimpleNamespace(
        opt={"path": {"models": str(out / "basicsr")}, "network_g": {"type": "SwinIR"}, "scale": 2},
        spt_backbone=str(ckpt),
    )
    return Path(SPTSRModel.save_delta(fake, net, "net_g_ema_latest.safetensors", -1))


def write_kair(ckpt: Path, out: Path) -> Path:
    from spt_adapter.integrations.kair.model import make_model_class

    options, net = _shim_net(ckpt)
    options.backbone = str(ckpt)
    cls = make_model_class(type("ModelPlain", (), {}))
    fake = SimpleNamespace(spt=options, opt={"scale": 1, "datasets": {"train": {"sigma": 25}}})
    (out / "kair").mkdir()
    cls.save_network(fake, str(out / "kair"), net, "G", 5)
    return out / "kair" / "5_G.safetensors"


def write_restormer(ckpt: Path, out: Path) -> Path:
    from spt_adapter.integrations.restormer.model import make_model_class

    _, net = _shim_net(ckpt)
    cls = make_model_class(type("ImageCleanModel", (), {}))
    (out / "restormer").mkdir()
    fake = SimpleNamespace(
        opt={"path": {"models": str(out / "restormer")}, "scale": 1, "datasets": {"train": {"sigma_range": [25, 25]}}},
        spt_backbone=str(ckpt),
        net_g=net,
        save_training_state=lambda *a: None,
    )
    cls.save(fake, 0, 7)
    return out / "restormer" / "net_g_7.safetensors"


def write_peft(ckpt: Path, out: Path) -> Path:
    pytest.importorskip("peft")
    import spt_adapter.peft as spt_peft

    core = write_core(ckpt, out)
    spt_peft.spt_to_peft(core, out / "peft_folder")
    return spt_peft.peft_to_spt(out / "peft_folder", _backbone(ckpt), out / "from_peft.safetensors")


WRITERS = ["core", "cli", "basicsr", "kair", "restormer", "peft"]
TASKS = {
    "core": "denoise:25",
    "cli": "denoise:25",
    "basicsr": "sr:2",
    "kair": "denoise:25",
    "restormer": "denoise:25",
    "peft": "denoise:25",
}  # PEFT conversion keeps the recorded task


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    data = _images(root / "hq", n=2)
    x1, x2 = _ckpt(root / "x1.safetensors"), _ckpt(root / "x2.safetensors", scale=2)
    return {"root": root, "data": data, "x1": x1, "x2": x2}


def _write(name: str, files) -> tuple[Path, Path]:
    ckpt = files["x2"] if name == "basicsr" else files["x1"]
    out = files["root"] / name
    out.mkdir(exist_ok=True)
    fn = {
        "core": write_core,
        "basicsr": write_basicsr,
        "kair": write_kair,
        "restormer": write_restormer,
        "peft": write_peft,
    }.get(name)
    path = write_cli(ckpt, out, files["data"]) if name == "cli" else fn(ckpt, out)
    return path, ckpt


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_records_the_one_schema_and_every_reader_reads_it(writer, files, tmp_path, capsys):
    path, ckpt = _write(writer, files)
    meta, _ = read_adapter_header(path)
    prior = json.loads(meta[PRIOR_KEY])
    # one schema: the provider's identity nested, the encoding beside it, and the task where known
    assert isinstance(prior["provider"], dict) and prior["provider"]["provider"] == "classical"
    assert prior["provider"]["method"] == "slic" and prior["provider"]["settings"]["n_segments"] == 6
    assert prior["encoding"] == "boundary"
    assert prior.get("task") == TASKS[writer]
    assert prior_record(prior) == prior  # already in the schema
    config = read_adapter_config(path)
    assert config.prior == prior and json.loads(meta["config"])["prior"] == prior
    assert set(meta) >= {
        "format",
        "format_version",
        "library_version",
        "config",
        "fingerprint",
        PRIOR_KEY,
        "integration",
        "preset",
        "adapter_name",
    }

    # readers: load_adapter / from_pretrained (a folder) / model card / spt_to_peft / eval
    backbone = _backbone(ckpt)
    model = spt_adapter.load_adapter(backbone, path)
    assert len(model.unit_names()) >= 1
    folder = tmp_path / "shared"
    folder.mkdir()
    shutil.copy(path, folder / "spt_adapter.safetensors")
    assert spt_adapter.from_pretrained(_backbone(ckpt), folder).unit_names() == model.unit_names()
    from spt_adapter.files.model_card import render_model_card

    card = render_model_card(path)
    assert "`classical / slic`" in card and "`boundary`" in card
    if writer != "peft":
        pytest.importorskip("peft")
        import spt_adapter.peft as spt_peft

        spt_peft.spt_to_peft(path, tmp_path / "peft")
        assert (tmp_path / "peft" / "adapter_config.json").is_file()
    argv = [
        "eval",
        "--backbone",
        str(ckpt),
        "--adapter",
        str(path),
        "--data",
        str(files["data"]),
        "--out",
        str(tmp_path / "ev"),
        "--prior-cache",
        str(files["root"] / "pc"),
        "--crops",
        "0",
        "--no-progress",
    ]
    if TASKS[writer] is None:
        argv += ["--task", "denoise:25"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, err
    assert (tmp_path / "ev" / "eval.csv").is_file()


def test_older_flat_prior_layout_is_read_in_the_one_schema():
    flat = {"provider": "sam", "model_type": "vit_b", "checkpoint": "sam.pth", "settings": {}, "encoding": "label"}
    assert prior_record(flat) == {
        "provider": {"provider": "sam", "model_type": "vit_b", "checkpoint": "sam.pth", "settings": {}},
        "encoding": "label",
    }
    assert prior_record({"note": "user text"}, task="sr:4") == {"note": "user text", "task": "sr:4"}
    assert prior_record(None) == {}


def test_task_of_framework_options():
    from spt_adapter.integrations._options import task_of

    assert task_of({"scale": 4}) == "sr:4"
    assert task_of({"scale": 1, "datasets": {"train": {"sigma": 15}}}) == "denoise:15"
    assert task_of({"scale": 1, "datasets": {"train": {"sigma_range": [15, 50]}}}) is None  # blind: no one task
    assert task_of({}) is None
