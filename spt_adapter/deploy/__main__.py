"""``python -m spt_adapter.deploy``: :func:`spt_adapter.deploy.cli.main`."""

import sys

from .cli import main

sys.exit(main())
