"""The names of the prior encodings and how many channels each makes.

An adapter records the encoding its units were trained on, and its units read that many prior channels,
so the names and their channel counts belong to the adapter's description (core): the file layer checks a
recorded encoding against ``prior_channels`` on load, and :mod:`spt_adapter.prior.encode` (which makes
the encodings) re-exports these.
"""

from __future__ import annotations

from ..errors import PriorError

ENCODINGS = ("label", "onehot", "boundary")


def parse_encoding(encoding: str) -> tuple[str, dict]:
    """``"label"``, ``"boundary"``, ``"onehot"`` or ``"onehot:K"`` -> (kind, kwargs)."""
    kind, _, arg = str(encoding).partition(":")
    if kind not in ENCODINGS:
        raise PriorError(f"unknown prior encoding {encoding!r}; choose one of label, onehot[:K], boundary")
    if arg:
        if kind != "onehot":
            raise PriorError(f"encoding {kind!r} takes no argument (got {encoding!r})")
        try:
            k = int(arg)
        except ValueError:
            raise PriorError(f"onehot:K needs an integer K, got {encoding!r}") from None
        if k < 1:
            raise PriorError(f"onehot:K needs K >= 1, got {encoding!r}")
        return kind, {"k": k}
    return kind, {}


def encoding_channels(encoding: str) -> int:
    """How many prior channels ``encoding`` makes (``onehot`` without K: 8)."""
    kind, kw = parse_encoding(encoding)
    return kw.get("k", 8) if kind == "onehot" else 1
