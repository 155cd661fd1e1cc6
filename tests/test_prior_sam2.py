"""SAM 2 provider over the real sam2 package (rf-sam-2), with a tiny random-weight SAM 2 built by
SAM 2's own config and classes (tools/make_tiny_sam2.py), saved to disk and loaded like Meta's
checkpoints. Its masks mean nothing; it runs the real code path."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sam2")

from spt_adapter.cli import main  # noqa: E402
from spt_adapter.errors import SamCheckpointError  # noqa: E402
from spt_adapter.prior import LabelMasks, PriorCache, encode_masks, make_provider  # noqa: E402
from spt_adapter.prior.sam2 import MODEL_CONFIGS, TINY_TEST_FILE, config_for, load_sam2  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEW = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


@pytest.fixture(scope="session")
def tiny2(tmp_path_factory):
    """Written by the tool, in a process whose sockets all fail: Hydra reads SAM 2's config offline."""
    out = tmp_path_factory.mktemp("sam2") / TINY_TEST_FILE
    code = (
        "import socket\n"
        "def no_network(*a, **k):\n    raise OSError('network disabled in this test')\n"
        "class NoNetwork(socket.socket):\n    connect = connect_ex = no_network\n"
        "socket.socket = NoNetwork; socket.create_connection = no_network\n"
        f"import runpy, sys; sys.argv = ['make_tiny_sam2.py', {str(out)!r}]\n"
        f"runpy.run_path({str(REPO / 'tools' / 'make_tiny_sam2.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "use --provider sam2 --provider-checkpoint" in done.stdout
    return out


@pytest.fixture(scope="session")
def images():
    from skimage import data

    return [np.ascontiguousarray(data.astronaut()[::8, ::8]), np.ascontiguousarray(data.coffee()[::8, ::8])]


def test_provider_gives_sam2s_own_masks_as_one_label_image(tiny2, images):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    provider = make_provider("sam2", checkpoint=tiny2, device="cpu", **FEW)
    got = provider.generate(images[0])
    stock = SAM2AutomaticMaskGenerator(load_sam2(tiny2, device="cpu"), **FEW).generate(images[0])
    assert isinstance(got, LabelMasks) and got.shape == images[0].shape[:2] and len(got) == len(stock) > 0
    expected = LabelMasks.from_masks(stock)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.area, expected.area)
    np.testing.assert_array_equal(got.score, expected.score)
    ident = provider.identity()
    assert ident["provider"] == "sam2" and ident["model_type"] == "tiny_test" and len(ident["checkpoint_sha256"]) == 64
    assert ident["settings"]["points_per_side"] == 4 and "points_per_batch" not in ident["settings"]
    assert ident["sam2"].startswith("rf-sam-2 ") or ident["sam2"].startswith("sam2 ")


def test_masks_command_end_to_end(tiny2, images, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    argv = [
        "masks",
        str(folder),
        "--provider",
        "sam2",
        "--checkpoint",
        str(tiny2),
        "--device",
        "cpu",
        "--cache",
        str(tmp_path / "c"),
        "--no-progress",
        "--strict",
        *[f"--set={k}={v}" for k, v in FEW.items()],
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "sam2 tiny_test" in err and "computed 2" in err
    assert main(argv) == 0 and "reused 2" in capsys.readouterr().err
    provider = make_provider("sam2", checkpoint=tiny2, device="cpu", **FEW)
    cache = PriorCache(tmp_path / "c")
    prior = cache.get_or_compute(images[1], provider)
    assert cache.stats["prior_hits"] == 1
    np.testing.assert_array_equal(prior, encode_masks(provider.generate(images[1]), "boundary"))
    assert main(argv[:-3] + ["--set", "points_per_side=0"]) == 1
    assert "provider 'sam2': setting points_per_side=" in capsys.readouterr().err


def test_config_from_the_checkpoint_name_or_given(tiny2, tmp_path):
    assert config_for("/x/sam2.1_hiera_tiny.pt")[1] == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert config_for("sam2_hiera_large.pt")[1] == "configs/sam2/sam2_hiera_l.yaml"
    assert config_for("sam2.1_hiera_base_plus.pt")[1] == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert config_for("anything.pt", "configs/sam2/sam2_hiera_s.yaml")[1] == "configs/sam2/sam2_hiera_s.yaml"
    assert set(MODEL_CONFIGS) >= {"sam2.1_hiera_tiny", "sam2.1_hiera_large", "tiny_test"}
    renamed = tmp_path / "weights.pt"
    renamed.write_bytes(tiny2.read_bytes())
    with pytest.raises(
        SamCheckpointError, match="cannot tell its model config from the file name; pass --provider-model-type"
    ):
        make_provider("sam2", checkpoint=renamed)
    assert make_provider("sam2", checkpoint=renamed, model_type="tiny_test").model_type == "tiny_test"
    with pytest.raises(SamCheckpointError, match="unknown SAM 2 model type 'hiera_x'"):
        make_provider("sam2", checkpoint=renamed, model_type="hiera_x")


def test_checkpoint_errors(tiny2, tmp_path):
    with pytest.raises(SamCheckpointError, match=r"does not fit model type 'sam2.1_hiera_tiny'.*first mismatch"):
        load_sam2(tiny2, "sam2.1_hiera_tiny", "cpu")
    with pytest.raises(SamCheckpointError, match=r"not found.*facebookresearch/sam2.*make_tiny_sam2.py"):
        make_provider("sam2", checkpoint=tmp_path / "sam2.1_hiera_tiny.pt")
    junk = tmp_path / "sam2.1_hiera_tiny.pt"
    junk.write_bytes(b"\x00not a torch file")
    with pytest.raises(SamCheckpointError, match="weights-only"):
        load_sam2(junk, device="cpu")


def test_sam2_missing_gives_the_extra(tiny2):
    code = (
        "import sys; sys.modules['sam2'] = None\n"
        "from spt_adapter.prior import make_provider\n"
        "from spt_adapter.errors import SamUnavailableError\n"
        f"try:\n    make_provider('sam2', checkpoint={str(tiny2)!r})\n"
        "except SamUnavailableError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "ERR" in out.stdout and "pip install spt-adapter[sam2]" in out.stdout, out.stderr
