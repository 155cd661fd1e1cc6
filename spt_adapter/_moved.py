"""Old import paths of modules that moved, kept working for one release with a DeprecationWarning.

``spt_adapter.training`` held restore, evaluate, export and image I/O until 0.1; they now live where a
newcomer looks for them (``inference/``, ``data/``, ``commands/builders.py``, ``demo.py``). Importing an
old name gives the new module itself (one module object, not a copy) and warns once per name. The
facade installs :class:`MovedFinder` when ``spt_adapter`` is imported; the aliases go in the next
release (CHANGELOG, "Deprecated").
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: old module name -> new module name
MOVED = {
    "spt_adapter.training.restore": "spt_adapter.inference.restore",
    "spt_adapter.training.evaluate": "spt_adapter.inference.evaluate",
    "spt_adapter.training.export": "spt_adapter.inference.export",
    "spt_adapter.training.exported": "spt_adapter.inference.exported",
    "spt_adapter.training.metrics": "spt_adapter.inference.metrics",
    "spt_adapter.training.data": "spt_adapter.data.datasets",
    "spt_adapter.training.images": "spt_adapter.data.images",
    "spt_adapter.training.builders": "spt_adapter.commands.builders",
    "spt_adapter.training.demo": "spt_adapter.demo",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        warnings.warn(
            f"{spec.name} moved to {self.new}; the old name is an alias that goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        return None  # the new module ran already


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedFinder())
