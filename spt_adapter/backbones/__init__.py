"""Backbones above core: architecture presets (``presets``: which modules of a known architecture get
units, used by the built-in shims to claim models) and checkpoint loading (``load``: a model-zoo file
through the claiming plugin and spandrel). ``spt_adapter.load_backbone`` is the public entry point.
This package's ``__init__`` imports nothing."""
