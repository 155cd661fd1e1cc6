"""What the BasicSR, KAIR and Restormer launchers share: user errors end as one line and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from spt_adapter.errors import SPTError


def fail(message: object) -> int:
    """Print ``message`` as the launchers' one-line error and return their exit status."""
    print(f"spt-adapter: error: {message}", file=sys.stderr)
    return 2


def run_reporting_errors(run: Callable[[], object]) -> int:
    """Run a framework's training entry point; an SPTError (options, backbone file, prior) becomes
    one line and exit status 2 instead of a traceback."""
    try:
        run()
    except SPTError as exc:
        return fail(exc)
    return 0
