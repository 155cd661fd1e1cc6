"""BasicSR integration: ``model_type: SPTSRModel`` and ``type: SPTPairedImageDataset`` for
BasicSR's own ``train_pipeline``; see docs/integrations.md.

Importing this package does not import BasicSR; :func:`register` (or the plugin hook
``spt_adapter_register_framework``, or importing ``.model``) does.
"""


def register() -> list[str]:
    """Register SPTSRModel and SPTPairedImageDataset with BasicSR's registries (idempotent)."""
    from . import dataset, model  # noqa: F401  (registration happens at import)

    return ["basicsr:MODEL_REGISTRY.SPTSRModel", "basicsr:DATASET_REGISTRY.SPTPairedImageDataset"]
