"""Repository contracts: CI runs the README's test command; packaging as DESIGN.md says."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_exactly_the_readme_test_command():
    main_job, test_cmd = _readme_commands()
    assert "spt-adapter demo" in main_job and "pytest" in test_cmd
    ci = (ROOT / ".ci" / "run").read_text()
    ci_lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert test_cmd.replace('"', "") in [line.replace('"', "") for line in ci_lines]


def test_dependencies_are_pinned_ranges_and_extras_exist():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in meta["dependencies"]:
        assert re.search(r"(==|<=|<)", req), f"unpinned dependency {req}"
    extras = meta["optional-dependencies"]
    for name in ("sam", "basicsr", "hub", "peft", "spandrel", "all", "test"):
        assert name in extras
    assert any(r.startswith("basicsr-fixed") for r in extras["basicsr"])
    assert not any("spandrel-extra-arches" in r for r in extras["all"] + extras["spandrel"])
    assert meta["scripts"]["spt-adapter"] == "spt_adapter.cli:main"


def test_integrations_install_under_the_package_not_top_level(tmp_path):
    code = ("import importlib.util, spt_adapter.integrations as i; "
            "print(importlib.util.find_spec('integrations') is None, i.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "spt_adapter.integrations"]


def test_core_imports_no_training_framework(tmp_path):
    code = ("import sys, spt_adapter; import spt_adapter.model, spt_adapter.delta, spt_adapter.inject; "
            "bad = [m for m in ('basicsr', 'huggingface_hub', 'peft', 'spandrel', 'segment_anything') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"SPT_ADAPTER_DISABLE_PLUGINS": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
