"""Load a script of benchmarks/ or tools/ (not a package) as a module, with its folder importable
while it loads (the benchmarks import their siblings, e.g. ``_quality_data``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "benchmarks"):
    where = str(ROOT / folder)
    sys.path.insert(0, where)
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
        assert spec is not None and spec.loader is not None, name
        mod = importlib.util.module_from_spec(spec)
        # registered before it runs, as importlib's recipe does: a dataclass under `from __future__ import
        # annotations` looks its module up in sys.modules (without this, loading _quality_data alone failed)
        sys.modules[name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[name]
            raise
        return mod
    finally:
        sys.path.remove(where)
