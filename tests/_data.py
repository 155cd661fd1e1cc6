"""The test images: small crops of the public test sets, committed under tests/data/ (made by
tools/make_test_images.py; origins in tests/data/README.md), in the folder layout of the full sets
(Set5/, Set14/, CBSD68/, McMaster/). Every test reads these, so a bare clone runs them all.

Tests that check a published number on a *full* set are opt-in: ``SPT_FULL_DATA`` names a folder
holding the full sets (the project's benchmark folder); without it they skip and say so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"


def full_data(*sets: str) -> Path:
    """The folder of the full test sets named by ``SPT_FULL_DATA``, or skip (opt-in)."""
    root = os.environ.get("SPT_FULL_DATA")
    if not root:
        pytest.skip(
            "opt-in: set SPT_FULL_DATA to a folder holding the full "
            + "/".join(sets)
            + " to check the published number"
        )
    path = Path(root)
    missing = [s for s in sets if not (path / s).is_dir()]
    if missing:
        pytest.fail(f"SPT_FULL_DATA={root} has no {', '.join(missing)} folder")
    return path
