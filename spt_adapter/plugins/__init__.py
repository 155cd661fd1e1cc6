"""The plugin layer: what plugins may answer, and how the package asks them.

`hookspecs` holds only the hook specifications; `types` the data types hooks return (ModelClaim,
LayoutSpec, ...); `manager` the pluggy manager (entry-point loading, `call_hook`, reports). These
three sit *below* core and import nothing of ours but errors. `presets` (architecture presets the
built-in shims use to claim models) and `backbones` (loading a checkpoint through spandrel and the
claiming plugin) use core and sit above it. This package's ``__init__`` imports nothing, so that
importing the manager never pulls in core.
"""
