"""The framework launchers' shared error handling: a user error is one line and exit status 2."""

from __future__ import annotations

import pytest

from spt_adapter.errors import ConfigError
from spt_adapter.integrations._launch import fail, run_reporting_errors


def test_spt_errors_become_one_line_and_status_2(capsys):
    def bad():
        raise ConfigError("spt.fusion must be one of ...")

    assert run_reporting_errors(bad) == 2
    assert capsys.readouterr().err == "spt-adapter: error: spt.fusion must be one of ...\n"
    assert run_reporting_errors(lambda: None) == 0
    assert fail("x") == 2


def test_other_errors_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run_reporting_errors(lambda: 1 / 0)


def test_launchers_report_a_missing_checkout_in_one_line(tmp_path, monkeypatch, capsys):
    from spt_adapter.integrations.kair import train as kair_train
    from spt_adapter.integrations.restormer import train as restormer_train

    opt = tmp_path / "opt.json"
    opt.write_text("{}")
    assert kair_train.main(["--opt", str(opt), "--kair-root", str(tmp_path)]) == 2
    assert "not found: run from a KAIR checkout" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPT_RESTORMER_ROOT_OVERRIDE", raising=False)
    assert restormer_train.main([]) == 2
    assert "not found: run from a Restormer checkout" in capsys.readouterr().err
