"""Restoring through an exported file with NumPy, Pillow and onnxruntime: no PyTorch on this path.

`tiling` (tile placement, padding, blending, clamping and rounding: the arithmetic every restore
shares), `images` (reading image files, listing folders), `outputs` (inputs -> output paths, the
refusal to overwrite, atomic PNG writes), `onnx_restore` (an exported ONNX file in onnxruntime)
and `cli` (``python -m spt_adapter.deploy restore``). This layer imports only the base modules
(`errors`, `pixels`, `_io`, `version`); nothing here imports torch, and this file imports nothing
(the training layer reads images through `deploy.images` without loading onnxruntime).
"""
