"""Using a trained adapter: restore, evaluate, export, the exported-file runner, metrics."""
