#!/usr/bin/env python
"""Write a tiny random-weight SAM checkpoint (model_type ``vit_tiny``), built from
segment-anything's own classes; see spt_adapter/prior/tiny.py.

    python tools/make_tiny_sam.py /tmp/sam_vit_tiny.pth
    spt-adapter masks ../shared/data/McMaster --provider sam --provider-model-type vit_tiny \
        --provider-checkpoint /tmp/sam_vit_tiny.pth --prior-cache /tmp/c
"""

import sys

from spt_adapter.prior.tiny import main

if __name__ == "__main__":
    sys.exit(main())
