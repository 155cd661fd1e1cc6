"""The SPT mechanism itself, with no files, no data and no training framework.

`config` (SPTConfig and the schema version), `unit` (the SPT unit: prior encoder, fusion and the
zero-initialised residual), `layout` (feature maps and token sequences), `targets` (pattern matching
and nearest names), `keys` (the one map between wrapped and logical module/parameter names),
`layer` (the wrapper that keeps `base_layer` and runs the units), `planning` (targets -> plan: the
one planner every injection path uses) and `model` (SPTModel, inject, eject, named adapters).
Core imports only `spt_adapter.errors`, `spt_adapter.plugins.{hookspecs,types,manager}` and itself.
"""
