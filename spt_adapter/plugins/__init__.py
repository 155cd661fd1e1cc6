"""The plugin layer: what plugins may answer, and how the package asks them.

`hookspecs` holds only the hook specifications; `types` the data types hooks return (ModelClaim,
LayoutSpec, ...); `manager` the pluggy manager (entry-point loading, `call_hook`, reports). All
three sit *below* core and import nothing of ours but errors; the presets and checkpoint loading,
which use core, are in :mod:`spt_adapter.backbones`. This package's ``__init__`` imports nothing, so
that importing the manager never pulls in core.
"""
