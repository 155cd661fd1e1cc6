"""Smoke test of benchmarks/quality.py at a tiny budget (real images, real DnCNN, real units)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = pytest.mark.skipif(not (DATA / "CBSD68").is_dir(), reason="shared test images not present")


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    quality = _load("quality")
    out = tmp_path_factory.mktemp("quality")
    rc = quality.main(["--quick", "--cache-dir", str(out / "cache"), "--json", str(out / "r.json")])
    assert rc == 0
    return quality, out, json.loads((out / "r.json").read_text())


def test_quick_run_fills_every_row_of_the_ladder(quick_run):
    _, out, payload = quick_run
    res = payload["results"]
    assert set(res) == set("abcde")
    evals = set(res["a"]["-"])
    assert evals == {"CBSD68 σ=25", "CBSD68 σ=50 (unseen)"}
    for row in "bcd":
        assert set(res[row]) == {"concat", "sft", "pool"}
        for fusion in res[row]:
            for name in evals:
                (v,) = res[row][fusion][name]
                assert math.isfinite(v) and 5 < v < 60
    # training the units moves the result away from the frozen backbone
    assert any(res["b"][f]["CBSD68 σ=25"][0] != res["a"]["-"]["CBSD68 σ=25"][0] for f in res["b"])
    # the backbone was cached: a second run loads it instead of training again
    assert list((out / "cache").glob("backbone_dncnn_*.safetensors"))
    assert payload["regions_per_test_image"] > 1


def test_rows_of_a_seed_share_batches_and_differ_only_in_the_prior(quick_run):
    quality, _, _ = quick_run
    qd = sys.modules.get("_quality_data") or _load("_quality_data")
    img = qd.centre_crop(qd.load_rgb(DATA / "CBSD68" / "0003.png"), 96)
    seg = qd.Segmenter.parse("slic:region_px=100,compactness=10,sigma=1")
    cache = qd.LabelCache(Path(quick_run[1]) / "labels")
    pset = qd.build_priors([("x", img)], sigma=25, realisations=2, noise_base=1, seg=seg, cache=cache)
    s1 = quality.make_schedule(3, 4, 2, 32, pset)
    assert np.array_equal(s1, quality.make_schedule(3, 4, 2, 32, pset))
    assert not np.array_equal(s1, quality.make_schedule(4, 4, 2, 32, pset))
    lq_b, gt_b, p_b = quality.get_batch(s1[0], 32, pset, "lq")
    lq_c, gt_c, p_c = quality.get_batch(s1[0], 32, pset, "const")
    lq_d, _, p_d = quality.get_batch(s1[0], 32, pset, "oracle")
    assert (lq_b == lq_c).all() and (gt_b == gt_c).all() and (lq_b == lq_d).all()
    assert (p_c == 1).all() and p_b.shape == p_c.shape == (2, 1, 32, 32)
    # a real segmentation of the noisy input: many regions, not one (SLIC without smoothing collapses)
    assert len(np.unique(pset.lq_prior[0][0])) > 20
    assert not np.array_equal(pset.lq_prior[0][0], pset.oracle_prior)
    # the label cache returns the stored map
    again = qd.build_priors([("x", img)], sigma=25, realisations=2, noise_base=1, seg=seg, cache=cache)
    assert np.array_equal(again.lq_prior[0][1], pset.lq_prior[0][1])


def test_bad_arguments_are_refused():
    quality = _load("quality")
    with pytest.raises(SystemExit):
        quality.parse_args(["--rows", "abz"])
    with pytest.raises(SystemExit):
        quality.parse_args(["--rows", "abf"])  # f needs --sam-checkpoint
    with pytest.raises(ValueError):
        _load("_quality_data").Segmenter.parse("watershed:scale=3")
