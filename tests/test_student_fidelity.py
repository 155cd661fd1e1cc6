"""benchmarks/student_fidelity.py: the student's average precision against its teacher on the
validation split (how the ladder's --student-steps is chosen), self-contained: a MatConvNet CDnCNN-B
written the way MATLAB writes one, the committed test crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from _data import DATA
from _scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


_load = load_script


@pytest.fixture(scope="module")
def fidelity():
    return _load("student_fidelity")


def test_average_precision_ranks_the_teachers_pixels(fidelity):
    target = np.zeros((4, 5))
    target[1, 2] = target[3, 0] = 1
    assert fidelity.average_precision(target * 0.9 + 0.05, target) == pytest.approx(1.0)
    constant = fidelity.average_precision(np.zeros((4, 5)), target)  # ties in index order: positions 8, 16
    assert constant == pytest.approx((1 / 8 + 2 / 16) / 2)
    worst = fidelity.average_precision(1 - target, target)  # the teacher's pixels ranked last
    assert worst == pytest.approx((1 / 19 + 2 / 20) / 2)
    assert np.isnan(fidelity.average_precision(np.ones(3), np.zeros(3)))


def test_quick_run_on_a_converted_cdncnnb_prints_every_row(fidelity, tmp_path, capsys):
    convert_test = _load("test_convert_dncnn_mat", "tests")
    (tmp_path / "model").mkdir()
    convert_test.write_simplenn(
        tmp_path / "model" / "GD_Color_Blind.mat", convert_test.matlab_dncnn(3, width=64, convs=20, seed=3)
    )
    out = tmp_path / "f.json"
    argv = ["--task", "cdncnnb", "--dncnn-root", str(tmp_path), "--data", str(DATA), "--quick"]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--students", "2x4:3", "--json", str(out)]
    assert fidelity.main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"].split(" ")[0] for r in rows] == ["constant", "gradient", "gradient", "student"]
    base = rows[0]["ap"]
    assert 0 < base < 0.5  # boundaries are a minority of the pixels
    assert 0 < rows[3]["ap"] <= 1 and rows[3]["bce"] > 0
    assert 0 < rows[3]["flops_share"] < 0.01  # a 2x4 student beside a 20-conv, 64-wide DnCNN
    assert "| student 2x4, 3 steps alone |" in printed and "validation images" in printed


def test_bad_student_spec_is_refused_by_name(fidelity, capsys):
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--task", "cdncnnb", "--dncnn-root", "x", "--students", "6-24:400"])
    assert "DEPTHxWIDTH:STEPS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--task", "kair"])
    assert "--kair-root" in capsys.readouterr().err
