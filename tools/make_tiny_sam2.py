#!/usr/bin/env python
"""Write a tiny random-weight SAM 2 checkpoint (model type ``tiny_test``), built with SAM 2's own
classes and config; see spt_adapter/prior/sam2.py. Never used for results.

    python tools/make_tiny_sam2.py /tmp/sam2_tiny_test.pt
    spt-adapter masks ../shared/data/Set5 --provider sam2 --provider-checkpoint /tmp/sam2_tiny_test.pt \
        --provider-set points_per_side=8 --prior-cache /tmp/c
"""

import sys

from spt_adapter.prior.sam2 import main

if __name__ == "__main__":
    sys.exit(main())
