"""Issue 12.9: adapter headers that are valid JSON but hostile (config ranges, dtypes, shapes,
offsets, versions, duplicate keys) either load correctly or raise the package's own error, never
another exception, and never allocate more than a bounded amount of memory.

1,000+ examples per run (about 20-40 s on the project's 2-core CPU): most fail in the header checks,
the rest build a tiny unit. Memory is checked with the process's peak RSS (torch allocations are
not seen by tracemalloc): the whole run may add at most 256 MiB; the unchecked loader took 3.9 GB
for one ``depth=100000`` header.
"""

from __future__ import annotations

import json
import resource
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spt_adapter
from spt_adapter.errors import SPTError

EXAMPLES = 1100
BUDGET_KIB = 256 * 1024


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    torch.manual_seed(0)
    model = spt_adapter.inject(_Tiny(), config=spt_adapter.SPTConfig(targets=["a"], hidden=2, depth=1))
    path = model.save_adapter(tmp_path_factory.mktemp("fuzz") / "base.safetensors")
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return {"header": json.loads(data[8 : 8 + n]), "body": data[8 + n :], "dir": path.parent}


HOSTILE_INT = st.one_of(
    st.integers(-3, 5),
    st.sampled_from([0, -1, 2**31, 2**63, 10**12, 100_000, 10**40]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=3),
)
CONFIG_FIELDS = st.sampled_from(
    [
        "hidden",
        "depth",
        "prior_channels",
        "fusion",
        "prior_resize",
        "targets",
        "exclude",
        "schema_version",
        "prior",
        "integration",
        "preset",
        "library_version",
        "unknown",
    ]
)
DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "I64", "BOOL", "U8", "F8_E4M3", "X", ""])
VERSIONS = st.sampled_from(["1", "0", "-3", "2", "01", "1.0", " 1", "", "9" * 30, "１"])


@st.composite
def mutations(draw):
    """A list of (kind, arguments) changes to apply to the base header."""
    kinds = st.sampled_from(
        [
            "config",
            "dtype",
            "shape",
            "offsets",
            "version",
            "dup_meta",
            "dup_tensor",
            "dup_config",
            "channels",
            "drop_tensor",
            "fp_params",
            "none",
        ]
    )
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(kinds)
        if kind == "config":
            out.append((kind, draw(CONFIG_FIELDS), draw(HOSTILE_INT)))
        elif kind == "dtype":
            out.append((kind, draw(st.integers(0, 10)), draw(DTYPES)))
        elif kind == "shape":
            out.append((kind, draw(st.integers(0, 10)), draw(st.lists(HOSTILE_INT, max_size=5))))
        elif kind == "offsets":
            out.append((kind, draw(st.integers(0, 10)), [draw(HOSTILE_INT), draw(HOSTILE_INT)]))
        elif kind == "version":
            out.append((kind, draw(VERSIONS)))
        elif kind == "channels":
            out.append((kind, draw(HOSTILE_INT)))
        elif kind in ("drop_tensor", "dup_tensor"):
            out.append((kind, draw(st.integers(0, 10))))
        elif kind == "fp_params":
            out.append((kind, draw(st.lists(HOSTILE_INT, max_size=4))))
        else:
            out.append((kind,))
    return out


def _apply(base: dict, changes: list) -> bytes:
    header = json.loads(json.dumps(base["header"]))
    meta = header["__metadata__"]
    keys = sorted(k for k in header if k != "__metadata__")
    config = json.loads(meta["config"])
    fp = json.loads(meta["fingerprint"])
    dup_meta = dup_tensor = dup_config = None
    for change in changes:
        kind = change[0]
        if kind == "config":
            config[change[1]] = change[2]
        elif kind in ("dtype", "shape", "offsets"):
            field = {"dtype": "dtype", "shape": "shape", "offsets": "data_offsets"}[kind]
            entry = header.get(keys[change[1] % len(keys)])
            if entry is not None:
                entry[field] = change[2]
        elif kind == "version":
            meta["format_version"] = change[1]
        elif kind == "channels":
            fp["targets"][0]["channels"] = change[1]
        elif kind == "drop_tensor":
            header.pop(keys[change[1] % len(keys)], None)
        elif kind == "fp_params":
            first = next(iter(fp["targets"][0]["params"]))
            fp["targets"][0]["params"][first] = change[1]
        elif kind == "dup_meta":
            dup_meta = True
        elif kind == "dup_tensor":
            dup_tensor = keys[change[1] % len(keys)]
        elif kind == "dup_config":
            dup_config = True
    config_text = json.dumps(config, sort_keys=True)
    if dup_config:
        config_text = config_text[:-1] + ', "hidden": 2}'
    meta["config"] = config_text
    meta["fingerprint"] = json.dumps(fp, sort_keys=True)
    text = json.dumps(header)
    if dup_meta:
        text = text.replace('"format": ', '"format": "spt-adapter", "format": ', 1)
    if dup_tensor and dup_tensor in header:
        text = text.replace(
            f'"{dup_tensor}": ', f'"{dup_tensor}": {json.dumps(header[dup_tensor])}, "{dup_tensor}": ', 1
        )
    raw = text.encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + base["body"]


def test_hostile_headers_load_or_raise_our_error_within_bounded_memory(base):
    path = base["dir"] / "fuzz.safetensors"
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seen = {"loaded": 0, "refused": 0}

    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(mutations())
    def check(changes):
        path.write_bytes(_apply(base, changes))
        backbone = _Tiny()
        try:
            model = spt_adapter.load_adapter(backbone, path, check_backbone_hash=False)  # fresh random weights
        except SPTError:
            seen["refused"] += 1
            assert not any("spt_units" in n for n, _ in backbone.named_parameters())  # left untouched
            return
        seen["loaded"] += 1
        out = model(torch.rand(1, 3, 6, 6), prior=torch.rand(1, model.spt_config["default"].prior_channels, 6, 6))
        assert out.shape == (1, 3, 6, 6)

    check()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
    assert grown < BUDGET_KIB, f"peak RSS grew by {grown} KiB"
    print(f"fuzz: {seen}, peak RSS +{grown} KiB")
    assert seen["loaded"] > 0 and seen["refused"] > 500, seen  # both outcomes were exercised
