"""Repository contracts: CI runs the README's test command; packaging as DESIGN.md says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

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
    code = (
        "import importlib.util, spt_adapter.integrations as i; "
        "print(importlib.util.find_spec('integrations') is None, i.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "spt_adapter.integrations"]


def test_core_imports_no_training_framework(tmp_path):
    code = (
        "import sys, spt_adapter; import spt_adapter.core.model, spt_adapter.files.format, spt_adapter.core.planning; "
        "bad = [m for m in ('basicsr', 'huggingface_hub', 'peft', 'spandrel', 'segment_anything') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"SPT_ADAPTER_DISABLE_PLUGINS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# import direction (DESIGN.md "Layout"): commands -> training / inference (siblings that never import
# each other) -> data -> files / prior / presets & backbones -> core -> plugin specs, types and manager ->
# errors; deploy (the torch-free runner) sits just above errors. Function-local imports count, and no
# module of ours is imported by a name in a string (test below).
# ---------------------------------------------------------------------------------------------
_BASE = {"spt_adapter.errors", "spt_adapter.version", "spt_adapter._io", "spt_adapter.pixels"}
_SPECS = {
    "spt_adapter.plugins",
    "spt_adapter.plugins.hookspecs",
    "spt_adapter.plugins.types",
    "spt_adapter.plugins.manager",
}


def _group(module: str) -> str:
    if module in _BASE:
        return "base"
    if module in _SPECS:
        return "specs"
    for prefix, group in (
        ("spt_adapter.deploy", "deploy"),
        ("spt_adapter.core", "core"),
        ("spt_adapter.files", "files"),
        ("spt_adapter.prior", "prior"),
        ("spt_adapter.backbones", "presets"),
        ("spt_adapter.peft", "peft"),
        ("spt_adapter.data", "data"),
        ("spt_adapter.training", "training"),
        ("spt_adapter.inference", "inference"),
        ("spt_adapter.commands", "commands"),
        ("spt_adapter.cli", "commands"),
        ("spt_adapter.demo", "commands"),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return group
    if module in ("spt_adapter", "spt_adapter._moved"):
        return "facade"
    raise AssertionError(f"module {module} belongs to no layer: add it to DESIGN.md and to this test")


#: what each layer may import (besides itself)
_ALLOWED = {
    "base": {"base"},
    "specs": {"base"},
    "deploy": {"base"},
    "core": {"base", "specs"},
    "files": {"base", "specs", "core"},
    "prior": {"base", "specs", "core"},
    "presets": {"base", "specs", "core"},
    "peft": {"base", "specs", "core", "files"},
    "data": {"base", "specs", "deploy", "core", "prior"},
    "training": {"base", "specs", "deploy", "core", "files", "prior", "presets", "data"},
    "inference": {"base", "specs", "deploy", "core", "files", "prior", "presets", "data"},
    "commands": {
        "base",
        "specs",
        "deploy",
        "core",
        "files",
        "prior",
        "presets",
        "data",
        "training",
        "inference",
        "peft",
    },
    "facade": {
        "base",
        "specs",
        "deploy",
        "core",
        "files",
        "presets",
        "prior",
        "data",
        "training",
        "inference",
        "peft",
        "commands",
    },
}


def _package_modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "spt_adapter").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("spt_adapter.integrations"):
                found.add(name)
                continue
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("spt_adapter"):
                found.add(name)
    found.discard(module)
    return found


def test_imports_go_down_the_layers_only_and_form_no_cycle():
    modules = _package_modules()
    graph = {m: _imports(m, p, set(modules)) for m, p in modules.items()}
    upward = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if d.startswith("spt_adapter.integrations"):
                upward.append(f"{m} imports {d} (integrations are reached through the plugin manager only)")
            elif _group(d) != _group(m) and _group(d) not in _ALLOWED[_group(m)]:
                upward.append(f"{m} ({_group(m)}) imports {d} ({_group(d)})")
    assert not upward, "\n".join(upward)
    # no cycle, package facades excluded (a package __init__ re-exporting its children is not a cycle)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in graph.get(m, ()):
            if d == "spt_adapter" or d not in graph:
                continue
            if state.get(d) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join(stack[stack.index(d) :] + [d])
                    if d in stack
                    else f"import cycle through {d}"
                )
            if not state.get(d):
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m) and m != "spt_adapter":
            visit(m, [m])


def test_the_import_rule_test_catches_an_upward_import(tmp_path):
    """The parser above sees function-local and relative imports (else the rule could not fail)."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from ..training import train\n    from .layer import SPTLayer\n")
    known = {"spt_adapter.core.layer", "spt_adapter.training", "spt_adapter.training.train", "spt_adapter.core.mod"}
    assert _imports("spt_adapter.core.mod", path, known) == {"spt_adapter.training.train", "spt_adapter.core.layer"}
    assert "training" not in _ALLOWED["core"]


# ---------------------------------------------------------------------------------------------
# self-contained tests: every test reads the images committed under tests/data
# ---------------------------------------------------------------------------------------------
_OUTSIDE = re.compile(r"parents\[2\] / \"shared\"|\"shared\" / \"data\"|\.\./shared/data")


def test_no_test_reads_data_outside_the_repository():
    """A test that reads ../shared/data skips on a bare clone; tests/data has crops of the same sets."""
    offenders = [
        f"{p.name}:{n}"
        for p in sorted((ROOT / "tests").glob("*.py"))
        if p.name != "test_repo.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not offenders, f"tests read data outside the repository: {offenders}"
    for sub in ("Set5", "Set14", "CBSD68", "McMaster"):
        assert len(list((ROOT / "tests" / "data" / sub).glob("*.png"))) >= 3, sub
    total = sum(p.stat().st_size for p in (ROOT / "tests" / "data").rglob("*") if p.is_file())
    assert total < 600_000, f"tests/data holds {total} bytes: keep the committed test images small"


def test_a_skip_for_missing_test_data_fails_the_run(pytester):
    """conftest.py turns a skip whose reason says the test images are missing into a failure."""
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        test_x="""
        import pytest

        def test_data():
            pytest.skip("test images not found at ../shared/data")

        def test_gpu():
            pytest.skip("needs a CUDA GPU")
    """
    )
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1, skipped=1)
    assert "skipped for missing test data" in result.stdout.str()


#: a module longer than this says at its top why it is one module (a line "Size: ..." in its docstring)
MODULE_LINES = 500


def test_no_module_over_500_lines_without_a_reason_at_its_top():
    import ast

    roots = [ROOT / "spt_adapter", ROOT / "integrations", ROOT / "benchmarks", ROOT / "tools"]
    unexplained = []
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) <= MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.startswith("Size: ") and len(line) > 20 for line in doc.splitlines()):
            unexplained.append(f"{path.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    assert not unexplained, (
        f"modules over {MODULE_LINES} lines with no 'Size: <reason>' line in their docstring (split them, or "
        f"say why they are one module): {unexplained}"
    )


def test_every_folder_of_the_package_sits_in_one_layer():
    """A newcomer can tell a module's layer from its folder: no folder mixes layers (plugins/ holds the
    specs below core; the presets and checkpoint loading above core are in backbones/)."""
    layers: dict[str, set[str]] = {}
    for module, path in _package_modules().items():
        if path.parent == ROOT / "spt_adapter":
            continue  # the package's top-level modules: base helpers, the CLI and the facade
        folder = str(path.parent.relative_to(ROOT))
        layers.setdefault(folder, set()).add(_group(module))
    mixed = {folder: sorted(groups) for folder, groups in layers.items() if len(groups) > 1}
    assert not mixed, f"folders mixing layers: {mixed}"


def test_no_module_of_ours_is_imported_by_a_name_in_a_string():
    """Every edge between our modules is an import statement the layer test above sees: no
    ``importlib.import_module("spt_adapter...")``, relative ``import_module(".x", ...)`` or ``__import__``
    (the one exception is the alias table of moved modules, spt_adapter/_moved.py, which only maps old
    names onto modules that are imported normally elsewhere)."""
    import ast

    offenders = []
    for module, path in sorted(_package_modules().items()):
        if module == "spt_adapter._moved":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name not in ("import_module", "__import__"):
                continue
            first = node.args[0] if node.args else None
            text = ast.unparse(first) if first is not None else ""
            if "spt_adapter" in text or text.startswith(("'.", '".', "f'.", 'f".')) or "__name__" in text:
                offenders.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "imports through a string:\n" + "\n".join(offenders)


def test_moved_modules_import_by_their_old_names_with_a_warning():
    """spt_adapter.training held restore, evaluate, export, images, data, builders and the demo; the old
    names give the very same module objects for one release, with a DeprecationWarning naming the new."""
    import importlib
    import warnings

    from spt_adapter._moved import MOVED

    for old, new in MOVED.items():
        assert (ROOT / (new.replace(".", "/") + ".py")).is_file(), new
        assert not (ROOT / (old.replace(".", "/") + ".py")).exists(), f"{old} exists as a file and as an alias"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            aliased = importlib.import_module(old)
        assert aliased is importlib.import_module(new)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old


def test_every_subcommand_module_is_listed_by_the_cli():
    """cli.commands() is the explicit list of subcommands (no discovery by name): every commands/ module that
    defines run() and HELP is in it, and nothing else is."""
    import importlib

    from spt_adapter import cli

    found = set()
    for path in (ROOT / "spt_adapter" / "commands").glob("*.py"):
        if path.stem.startswith("_"):
            continue
        module = importlib.import_module(f"spt_adapter.commands.{path.stem}")
        if hasattr(module, "run") and hasattr(module, "HELP"):
            found.add(path.stem)
    assert set(cli.commands()) == found
