"""spandrel integration: load any checkpoint spandrel detects; presets for its architectures.

``spt_adapter.load_backbone(path)`` uses it; see :mod:`spt_adapter.backbones.load`.
"""
