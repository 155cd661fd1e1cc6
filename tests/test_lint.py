"""Lint, format and types are part of the test command (`.ci/run` fails on a violation): ruff's
rules F, B, UP, I and its formatter over the code base, mypy over the package (configured in
pyproject.toml)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:  # the test extra pins it: an install without it is broken
        pytest.fail(f"{module} is not installed: pip install -e '.[all,test]'")


def test_ruff_check():
    _need("ruff")
    proc = _run("ruff", "check", "--no-cache", "--output-format", "concise")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_ruff_format():
    _need("ruff")
    proc = _run("ruff", "format", "--check", "--no-cache")
    assert proc.returncode == 0, "run `ruff format` on these files:\n" + proc.stdout[-6000:] + proc.stderr[-2000:]


def test_mypy():
    _need("mypy")
    proc = _run("mypy", timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_lint_rules_cover_the_code_base():
    """The configuration names every source folder and the rules the project chose."""
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    include = " ".join(tool["ruff"]["include"])
    for folder in ("spt_adapter", "integrations", "benchmarks", "tests", "tools", "examples"):
        assert f"{folder}/" in include, folder
    assert set(tool["ruff"]["lint"]["select"]) >= {"F", "B", "UP", "I"}
    assert tool["mypy"]["files"] == ["spt_adapter"]
    # the code that reads untrusted files: mypy checks the bodies of its unannotated functions too
    strict = {m for o in tool["mypy"]["overrides"] if o.get("check_untyped_defs") for m in o["module"]}
    assert strict >= {"spt_adapter.core", "spt_adapter.core.*", "spt_adapter.files", "spt_adapter.files.*"}


def test_ruff_check_fails_on_a_violation(tmp_path):
    """The check can fail: an unused import and a loop-variable closure are reported."""
    _need("ruff")
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nfns = [lambda: i for i in range(3)]\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--select",
            "F,B",
            "--output-format",
            "concise",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "F401" in proc.stdout and "B023" in proc.stdout


def test_the_typed_view_of_sptpeftconfig_lists_its_fields():
    """spt_adapter/peft/config.py builds SPTPeftConfig with dataclasses.make_dataclass (its unit fields are
    SPTConfig's) and shows the type checker a class declaring the same fields: the two must agree."""
    pytest.importorskip("peft")
    import dataclasses

    from spt_adapter.peft import SPTPeftConfig

    tree = ast.parse((ROOT / "spt_adapter" / "peft" / "config.py").read_text())
    declared = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "SPTPeftConfig":
            declared = {
                s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    runtime = {f.name for f in dataclasses.fields(SPTPeftConfig)}
    from peft import PeftConfig

    runtime -= {f.name for f in dataclasses.fields(PeftConfig)}
    assert declared == runtime, (sorted(declared - runtime), sorted(runtime - declared))
