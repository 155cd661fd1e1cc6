"""KAIR integration (cszn/KAIR is a repository, not a package): train SPT units with KAIR's own
``main_train_psnr.py`` from an ``"spt"`` block in the options JSON; read KAIR model-zoo checkpoints.

    cd KAIR && python -m spt_adapter.integrations.kair.train --opt options/train_spt.json

See docs/integrations.md.
"""
