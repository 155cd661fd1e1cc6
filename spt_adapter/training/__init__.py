"""Data, images, metrics, training, evaluation, restoration and the demo: the layer above the files.

`images` (reading, grey/colour conversion, bicubic resize, the one image-suffix list), `data`
(tasks, degradations, the paired dataset with priors), `metrics` (PSNR/SSIM as the field computes
them), `train` (the units-only training loop, checkpoints, resume), `evaluate` (backbone vs +SPT
tables), `builders` (what the CLI assembles from arguments: backbone, provider, cache, dataset) and
`demo`. Commands are thin argparse wrappers over these functions.
"""
