"""Adapter files: safetensors deltas holding only SPT unit tensors, with a checked header.

Layout of a file written by :func:`save_adapter`:

* tensors: ``<target>.spt_unit.<parameter>`` for every unit of one adapter, contiguous, on CPU;
  for an adapter with a distilled prior also ``spt_student.<parameter>`` (schema 2);
* ``__metadata__`` (all strings): ``format`` (``spt-adapter``), ``format_version``,
  ``library_version``, ``config`` (SPTConfig JSON, sorted keys), ``fingerprint`` (JSON: per target
  path, class and parameter shapes, unit width; optional sha256 of the backbone weights),
  ``prior`` (JSON), ``integration``, ``preset``, ``adapter_name``; with a distilled prior also
  ``student`` (JSON: the student's settings and the teacher that trained it, as in the config).

Loading parses the header itself (never pickle), checks format, schema and fingerprint, and only
then reads tensors.

Size: one file format read as one contract -- file names and metadata keys, the header schema, the
deterministic serialisation, every check a header and its tensors pass before a module is built, save
and load; the backbone fingerprint is in fingerprint.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

from .._io import atomic_write_bytes
from ..core.config import SCHEMA_VERSION, SPTConfig
from ..core.keys import (
    get_logical_module,
    is_adapter_file_key,
    split_student_file_key,
    split_unit_file_key,
)
from ..core.lora import lora_parameter_shapes
from ..core.model import SPTModel
from ..core.student import student_parameter_shapes
from ..core.unit import unit_parameter_shapes, unit_tensor_count
from ..errors import AdapterFileError, ConfigError, FingerprintMismatchError
from ..version import __version__
from .fingerprint import (  # re-exported: part of the file format's public face
    check_fingerprint,
    fingerprint,
)

FORMAT_NAME = "spt-adapter"
FORMAT_VERSION = SCHEMA_VERSION

# -- the one place that names files and metadata keys -----------------------------------------
#: the delta's name inside a folder (save_pretrained, `spt-adapter train --out`, Hub repos)
ADAPTER_FILENAME = "spt_adapter.safetensors"
#: the model card written beside it
MODEL_CARD_FILENAME = "README.md"
#: extra metadata key (JSON string) for what the adapter was trained on (task, data, step, ...)
TRAINING_KEY = "training"
#: metadata key (JSON string) describing how the prior is made
PRIOR_KEY = "prior"
#: metadata key (JSON string), only for a distilled prior: student settings + teacher identity
STUDENT_KEY = "student"
MAX_HEADER_BYTES = 100_000_000  # the safetensors limit
_DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
_REQUIRED_KEYS = ("format", "format_version", "library_version", "config", "fingerprint")
#: tensor dtypes a unit's (floating-point) parameters can be filled from
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,8}")


# ---------------------------------------------------------------------------------------------
# strict JSON: duplicate keys and NaN/Infinity tokens are refused (json.loads keeps the last
# duplicate silently, so two readers could disagree on what a file says)
# ---------------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not a JSON number")


def strict_json(text: str | bytes, what: str) -> Any:
    """``json.loads`` that refuses duplicate keys and NaN/Infinity; errors name ``what``."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        raise AdapterFileError(f"{what} has the key {exc.args[0]!r} twice; a file must say one thing") from None
    except RecursionError:
        raise AdapterFileError(f"{what} nests too deeply to be an adapter header") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digits limit, NaN tokens
        raise AdapterFileError(f"{what} is not valid JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------
# the recorded prior: one schema for every writer
# ---------------------------------------------------------------------------------------------
def prior_record(prior: dict[str, Any] | None, task: str | None = None) -> dict[str, Any]:
    """The prior description every writer records (``SPTConfig.prior`` and metadata ``prior``).

    Schema: ``{"provider": {"provider": NAME, ...identity...}, "encoding": ENC, "task": TASK}``
    (keys present when known). The provider's own keys (``method``, ``settings``, ``model_type``,
    ...) sit inside ``provider``, as :meth:`identity` of a mask provider returns them. Older files
    and the framework shims wrote them flat (``{"provider": "classical", "method": "slic", ...}``):
    those are moved inside, so every reader sees one layout. ``task`` overrides a recorded task.
    Any other free-form description (no ``provider`` key) is kept as it is.
    """
    out = dict(prior or {})
    provider = out.get("provider")
    if isinstance(provider, str):
        nested = {"provider": provider}
        for key in list(out):
            if key not in ("provider", "encoding", "task"):
                nested[key] = out.pop(key)
        out["provider"] = nested
    if task is not None:
        out["task"] = task
    return out


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
_TORCH_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors bytes with a deterministic header: keys sorted, tensors laid out in key order.

    (``safetensors.torch.save`` orders metadata by hash, so two saves of one adapter differ.)
    """
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        if t.dtype not in _TORCH_DTYPES:
            raise AdapterFileError(f"tensor {key!r} has dtype {t.dtype}, which adapter files do not store")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {
            "dtype": _TORCH_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def adapter_tensors(model: SPTModel, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The unit tensors of one adapter under their file keys (CPU, contiguous, un-aliased)."""
    return {k: p.detach().to("cpu").contiguous().clone() for k, p in model.unit_parameters(adapter_name)}


def adapter_metadata(
    model: SPTModel,
    adapter_name: str | None = None,
    backbone_hash: bool = True,
    extra: dict[str, str] | None = None,
    task: str | None = None,
) -> dict[str, str]:
    """The header metadata of one adapter: the one function every writer goes through (core
    :func:`save_adapter`, the BasicSR / KAIR / Restormer shims, PEFT conversion), so every file
    has the same keys and the same prior schema (:func:`prior_record`)."""
    adapter_name = adapter_name or model.active_adapter
    if adapter_name is None:
        raise AdapterFileError("the model has no adapter to save: add_adapter() or inject() first")
    config = model.spt_config[adapter_name]
    config = config.replace(prior=prior_record(config.prior, task))
    targets = model.spt_targets[adapter_name]
    channels = {}
    for name in targets:
        layer: Any = get_logical_module(model.base_model, name)  # an SPT wrapper (core's or PEFT's layer)
        channels[name] = layer.spt_units[adapter_name].channels
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "config": config.to_json(),
        "fingerprint": json.dumps(fingerprint(model, targets, channels, with_hash=backbone_hash), sort_keys=True),
        PRIOR_KEY: json.dumps(config.prior, sort_keys=True),
        "integration": config.integration or "",
        "preset": config.preset or "",
        "adapter_name": adapter_name,
    }
    if config.student is not None:
        meta[STUDENT_KEY] = json.dumps(
            {"settings": config.student, "teacher": (config.prior or {}).get("teacher")}, sort_keys=True
        )
    recorded = getattr(model, "_spt_training_records", {}).get(adapter_name)
    if recorded is not None and TRAINING_KEY not in (extra or {}):
        meta[TRAINING_KEY] = recorded  # loaded from a file: its record is kept on a re-save
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise AdapterFileError(f"extra metadata must map strings to strings, got {key!r}: {type(value).__name__}")
        if key in meta:
            raise AdapterFileError(f"extra metadata key {key!r} is reserved")
        meta[key] = value
    return meta


def save_adapter(
    model: SPTModel,
    path: str | os.PathLike,
    adapter_name: str | None = None,
    backbone_hash: bool = True,
    metadata: dict[str, str] | None = None,
    task: str | None = None,
) -> Path:
    """Write one adapter's units to ``path`` as a safetensors delta, atomically.

    ``task`` (``"sr:4"``, ``"denoise:25"``) is recorded in the prior description, where
    `spt-adapter eval` finds it. A failed write (disk full, read-only folder) leaves whatever was at
    ``path`` untouched and raises :class:`AdapterFileError` naming the cause."""
    if not isinstance(model, SPTModel):
        raise AdapterFileError(f"save_adapter needs an SPTModel (from spt_adapter.inject), got {type(model).__name__}")
    path = Path(path)
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin", ".pkl"):
        raise AdapterFileError(f"{path}: adapters are safetensors files; use a .safetensors name")
    if path.is_dir():
        raise AdapterFileError(f"{path} is a folder; save_adapter writes a file (use save_pretrained for a folder)")
    tensors = adapter_tensors(model, adapter_name)
    meta = adapter_metadata(model, adapter_name, backbone_hash, metadata, task=task)
    try:
        return atomic_write_bytes(path, serialize(tensors, meta))
    except OSError as exc:
        raise AdapterFileError(f"cannot write {path}: {exc.strerror or exc} (nothing was changed there)") from None


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def read_safetensors_header(path: str | os.PathLike, what: str = "adapter file") -> tuple[dict[str, Any], int]:
    """Read a safetensors file's header with the checks every unit file gets (a regular file, no
    pickle, the header length limit, strict JSON: no duplicate keys). Returns ``(header, data_size)``;
    :class:`AdapterFileError` names the problem."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AdapterFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise AdapterFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise AdapterFileError(f"{path} is a folder; pass the adapter's .safetensors file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block forever, a device never end
        raise AdapterFileError(f"{path} is not a regular file (a pipe, socket or device); adapters are files")
    size = st.st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if head[:2] == b"PK" or (head[:1] == b"\x80" and len(head) > 1 and head[1] in range(2, 6)):
            raise AdapterFileError(
                f"{path} is a PyTorch pickle checkpoint (.pth/.pt), not an SPT adapter; SPT adapters are "
                "safetensors files and pickle files are never loaded (use spt_adapter.load_backbone for a backbone)"
            )
        if len(head) < 8:
            raise AdapterFileError(f"{path} is too short ({size} bytes) to be a safetensors adapter file")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES:
            raise AdapterFileError(
                f"{path}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit; not a valid adapter"
            )
        if 8 + header_len > size:
            raise AdapterFileError(
                f"{path} is truncated: its 8-byte length prefix announces a {header_len}-byte header, but the "
                f"file holds {size} bytes in all (at least {8 + header_len} needed)"
            )
        raw = fh.read(header_len)
    header = strict_json(raw, f"{path}: the safetensors header")
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path}: the safetensors header is not a JSON object")
    return header, size - 8 - header_len


def check_tensor_entries(path: str | os.PathLike, entries: dict[str, Any], data_size: int) -> None:
    """Every tensor entry of a unit file's header: a floating-point dtype, a valid shape, data inside
    the file."""
    for key, entry in entries.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise AdapterFileError(f"{path}: tensor entry {key!r} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if (
            not isinstance(dtype, str)
            or dtype not in _DTYPE_SIZES
            or not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise AdapterFileError(f"{path}: tensor {key!r} has an invalid dtype or shape")
        if dtype not in _FLOAT_DTYPES:
            raise AdapterFileError(
                f"{path}: tensor {key!r} is stored as {dtype}, but unit parameters are floating "
                f"point ({', '.join(_FLOAT_DTYPES)}); the file is corrupt or was relabelled"
            )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise AdapterFileError(f"{path}: tensor {key!r} has invalid data offsets")
        numel = math.prod(shape)
        if offsets[1] - offsets[0] != numel * _DTYPE_SIZES[dtype] or offsets[0] < 0 or offsets[1] > data_size:
            raise AdapterFileError(f"{path} is truncated or corrupt: tensor {key!r} lies outside the file's data")


def read_adapter_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """Read and check an adapter file's header without loading tensors or executing anything.

    Returns ``(metadata, tensor_entries)``. Raises :class:`AdapterFileError` naming the problem.
    """
    path = Path(path)
    header, data_size = read_safetensors_header(path)
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path} has no metadata; it is a safetensors file but not an SPT adapter")
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise AdapterFileError(f"{path}: metadata values must be strings; {bad[0]!r} is not")
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(
            f"{path} is not an SPT adapter (metadata format={meta.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise AdapterFileError(f"{path}: adapter metadata lacks {missing}")
    if not _VERSION_TEXT.fullmatch(meta["format_version"]):
        raise AdapterFileError(
            f"{path}: format_version {meta['format_version']!r} is not a schema version "
            f"(a positive integer, 1 to {FORMAT_VERSION} here)"
        )
    version = int(meta["format_version"])
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            f"{path} uses adapter schema version {version}, written by spt-adapter {meta['library_version']}; this "
            f"spt-adapter ({__version__}) reads schema versions up to {FORMAT_VERSION}: upgrade spt-adapter"
        )
    check_tensor_entries(path, header, data_size)
    for key in header:
        if not is_adapter_file_key(key):
            raise AdapterFileError(
                f"{path}: tensor {key!r} is not an SPT unit tensor; adapter files hold only units "
                "(and a distilled prior's student)"
            )
    return meta, header


def _fingerprint_is_well_formed(fp: Any) -> bool:
    if not isinstance(fp, dict) or not isinstance(fp.get("targets"), list) or not fp["targets"]:
        return False
    for e in fp["targets"]:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and isinstance(e.get("class"), str)
            and isinstance(e.get("params"), dict)
            and all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in e["params"].values())
            and (("channels" not in e) or (isinstance(e["channels"], int) and e["channels"] > 0))
        ):
            return False
    return "backbone_sha256" not in fp or isinstance(fp["backbone_sha256"], str)


def _parse_json(path: Path, meta: dict[str, str], key: str) -> Any:
    return strict_json(meta[key], f"{path}: metadata {key!r}")


#: the tasks writers record (`spt-adapter train --task`, the framework shims' ``task_of``)
_TASK_TEXT = re.compile(r"denoise:(\d+(\.\d+)?)|sr:[2-8]")


def _config(path: str | os.PathLike, meta: dict[str, str]) -> SPTConfig:
    try:
        config = SPTConfig.from_dict(_parse_json(Path(path), meta, "config"))
    except ConfigError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None
    config = config.replace(prior=prior_record(config.prior))  # older and shim-written layouts, read as one
    # the prior is recorded twice (config.prior and metadata 'prior', from one config by every writer):
    # a file whose two records disagree says two things about how its prior is made
    if PRIOR_KEY in meta:
        recorded = _parse_json(Path(path), meta, PRIOR_KEY)
        if not isinstance(recorded, dict) or prior_record(recorded) != config.prior:
            raise AdapterFileError(
                f"{path}: metadata 'prior' ({meta[PRIOR_KEY][:120]}) and config.prior "
                f"({json.dumps(config.prior, sort_keys=True)[:120]}) disagree; the file is corrupt "
                "or was edited by hand"
            )
    task = config.prior.get("task")
    match = _TASK_TEXT.fullmatch(task) if isinstance(task, str) else None
    if task is not None and (match is None or (match.group(1) is not None and float(match.group(1)) > 255)):
        if not _other_task(task):
            raise AdapterFileError(
                f"{path}: recorded task {task!r} is not a task (expected 'denoise:<sigma 0..255>', "
                "'sr:<scale 2..8>', paired:<scale> or a degradation of docs/cli.md); the file is corrupt or "
                "was edited by hand"
            )
    encoding = config.prior.get("encoding")
    if isinstance(encoding, str) and encoding and config.prior_channels:
        # the units read as many prior channels as the recorded encoding makes: a file saying otherwise
        # would fail at the first image with a message blaming the prior, not the file
        from ..core.encodings import encoding_channels
        from ..errors import PriorError

        try:
            channels = encoding_channels(encoding)
        except PriorError as exc:
            raise AdapterFileError(f"{path}: recorded prior encoding: {exc}; the file is corrupt") from None
        if channels != config.prior_channels:
            raise AdapterFileError(
                f"{path}: the recorded prior encoding {encoding!r} makes {channels} channel(s), but the config's "
                f"units read prior_channels {config.prior_channels}; the file is corrupt or was edited by hand"
            )
    return config


#: one step of the newer task grammar as text (docs/cli.md, "Degradations"): numbers where numbers go and
#: the few words the grammar has; ``denoise:<sigma>`` and ``sr:<scale>`` alone are :data:`_TASK_TEXT`'s
_NUM, _INT = r"\d+(\.\d+)?", r"\d+"
_TASK_STEP = (
    rf"(denoise:{_NUM}|sr:[2-8](:bd)?|jpeg:{_INT}|blur:gauss:{_NUM}(:{_INT})?|poisson-gauss:{_NUM}:{_NUM}|paired:[1-8])"
)
#: a task of the newer grammar (``paired:<s>``, ``jpeg:30``, ``sr:4:bd``, ``blur:gauss:1.6+sr:4+jpeg:60``):
#: checked here by its shape — the file layer sits below the data layer that parses tasks, and a command
#: that uses the task (``eval``, ``restore``) parses it and names any value out of range
_TASK_GRAMMAR = re.compile(rf"{_TASK_STEP}(\+{_TASK_STEP})*")


def _other_task(task) -> bool:
    """Whether ``task`` reads as a task of the newer grammar; a lone ``denoise:S`` or ``sr:S`` is not one
    (:data:`_TASK_TEXT` alone decides those, so ``denoise:900`` and ``sr:banana`` stay refused)."""
    if not isinstance(task, str) or len(task) > 500 or _TASK_GRAMMAR.fullmatch(task) is None:
        return False
    return "+" in task or not re.fullmatch(r"denoise:.*|sr:[^:]*", task)


def read_adapter_config(path: str | os.PathLike) -> SPTConfig:
    """The SPTConfig stored in an adapter file (header only); ``.prior`` in :func:`prior_record`'s schema."""
    meta, _ = read_adapter_header(path)
    return _config(path, meta)


def check_units_against_header(
    path: str | os.PathLike, config: SPTConfig, fp: dict[str, Any], entries: dict[str, Any]
) -> dict[str, int]:
    """Check that the tensors listed in the header are exactly those the config's units have,
    before any module is built (so a forged ``depth`` or ``hidden`` costs nothing). Returns the
    unit width of every target (recorded, or read from the header's shapes)."""
    targets = [e["path"] for e in fp["targets"]]
    if len(set(targets)) != len(targets):
        raise AdapterFileError(f"{path}: metadata 'fingerprint' lists a target twice")
    per_target: dict[str, dict[str, list[int]]] = {t: {} for t in targets}
    student: dict[str, list[int]] = {}
    for key, entry in entries.items():
        unit_key = split_unit_file_key(key)
        if unit_key is None:  # the distilled prior's student (read_adapter_header admitted only these)
            student_key = split_student_file_key(key)
            assert student_key is not None
            student[student_key] = entry["shape"]
            continue
        target, param = unit_key
        if target not in per_target:
            raise AdapterFileError(f"{path}: tensor {key!r} belongs to {target!r}, which the fingerprint does not list")
        per_target[target][param] = entry["shape"]
    count = 2 if config.fusion == "lora" else unit_tensor_count(config)
    channels: dict[str, int] = {}
    for e in fp["targets"]:
        target, have = e["path"], per_target[e["path"]]
        if config.fusion == "lora":
            channels[target] = _check_lora_against_header(path, config, e, have)
            continue
        if len(have) != count:
            raise AdapterFileError(
                f"{path}: {target!r} has {len(have)} unit tensors but a {config.fusion!r} unit of "
                f"depth {config.depth} has {count}; the config does not match the tensors"
            )
        width = e.get("channels")
        if width is None:  # older files: the width is the last layer's output
            last = have.get("fuse.weight" if config.fusion == "sft" else "fuse.2.weight")
            width = (last[0] // (2 if config.fusion == "sft" else 1)) if last else 0
        if width < 1:
            raise AdapterFileError(f"{path}: cannot tell the unit width of {target!r} from the header")
        want = unit_parameter_shapes(width, config)
        for param, shape in sorted(want.items()):
            got = have.get(param)
            if got is None or tuple(got) != shape:
                raise AdapterFileError(
                    f"{path}: tensor {target}.spt_unit.{param} has shape {got} but the config (fusion {config.fusion!r}, "
                    f"hidden {config.hidden}, depth {config.depth}, prior_channels {config.prior_channels}, width "
                    f"{width}) needs {list(shape)}; the header contradicts itself"
                )
        channels[target] = width
    _check_student_against_header(path, config, student)
    return channels


def _check_lora_against_header(path, config: SPTConfig, entry: dict[str, Any], have: dict[str, list[int]]) -> int:
    """A LoRA target's tensors are exactly ``lora_A`` / ``lora_B`` of the rank the config records, on the
    target's weight shape as the fingerprint records it; returns the target's output width."""
    target = entry["path"]
    weight = entry.get("params", {}).get("weight")
    if entry.get("class") not in ("Conv2d", "Linear") or not isinstance(weight, list) or len(weight) not in (2, 4):
        raise AdapterFileError(
            f"{path}: LoRA target {target!r} is recorded as a {entry.get('class')!r} with weight {weight}; a LoRA "
            "adapter adapts Conv2d and Linear layers; the file is corrupt or was edited by hand"
        )
    want = lora_parameter_shapes(weight, config.hidden)
    if set(have) != set(want):
        raise AdapterFileError(
            f"{path}: {target!r} has unit tensors {sorted(have)[:3]} but a LoRA unit has {sorted(want)}; "
            "the config does not match the tensors"
        )
    for param, shape in sorted(want.items()):
        if tuple(have[param]) != shape:
            raise AdapterFileError(
                f"{path}: tensor {target}.spt_unit.{param} has shape {have[param]} but LoRA of rank "
                f"{config.hidden} on a {entry['class']} of weight {weight} needs {list(shape)}; the header "
                "contradicts itself"
            )
    return int(entry.get("channels") or weight[0])


def _check_student_against_header(path, config: SPTConfig, have: dict[str, list[int]]) -> None:
    """The student tensors in the header are exactly those ``config.student`` describes (shapes too)."""
    if config.student is None:
        if have:
            raise AdapterFileError(f"{path}: the file holds prior-student tensors but its config has no student")
        return
    want = student_parameter_shapes(config.student, config.prior_channels)
    if set(have) != set(want):
        missing = [f"spt_student.{k}" for k in sorted(set(want) - set(have))]
        unexpected = [f"spt_student.{k}" for k in sorted(set(have) - set(want))]
        raise AdapterFileError(
            f"{path}: the config's student needs {len(want)} tensors, the file has {len(have)} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); the config does not match the tensors"
        )
    for param, shape in sorted(want.items()):
        if tuple(have[param]) != shape:
            raise AdapterFileError(
                f"{path}: tensor spt_student.{param} has shape {have[param]} but the config's student "
                f"({config.student}, prior_channels {config.prior_channels}) needs {list(shape)}; "
                "the header contradicts itself"
            )


#: the largest magnitude a unit or student parameter may have: trained units stay far below 10; a
#: value of 1e4 (or 3e38, finite) is a corrupt or forged file whose output would be garbage or Inf
MAX_UNIT_ABS = 1000.0


def check_unit_tensor_values(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Unit/student tensors are floating point, finite and of sane magnitude (:data:`MAX_UNIT_ABS`);
    the error names the tensor. Every reader (adapter files, PEFT folders and checkpoints) calls it."""
    for key, t in sorted(tensors.items()):
        if not t.is_floating_point():
            raise AdapterFileError(f"{source}: tensor {key!r} has dtype {t.dtype}; unit parameters are floating point")
        if not bool(torch.isfinite(t).all()):
            raise AdapterFileError(
                f"{source}: tensor {key!r} holds NaN or Inf values; the adapter is corrupt "
                "(or was saved after training diverged)"
            )
        if t.numel() and float(t.detach().abs().max()) > MAX_UNIT_ABS:
            raise AdapterFileError(
                f"{source}: tensor {key!r} holds values up to {float(t.detach().abs().max()):.3g}, "
                f"beyond the {MAX_UNIT_ABS:g} no trained unit reaches; the adapter is corrupt"
            )


def read_unit_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checked adapter file; non-float, NaN, Inf or absurd values are refused, naming the
    tensor (:func:`check_unit_tensor_values`)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors' own checks
        raise AdapterFileError(f"{path} is corrupt: {exc}") from None
    check_unit_tensor_values(tensors, str(path))
    return tensors


def add_adapter_with_tensors(
    model: nn.Module,
    adapter_name: str,
    config: SPTConfig,
    names: list[str],
    channels: dict[str, int] | None,
    tensors: dict[str, torch.Tensor],
    source: str,
    example_input=None,
) -> SPTModel:
    """Build an adapter's units on ``model`` (a backbone or an SPTModel) and fill them from ``tensors``
    (file keys ``<target>.spt_unit.<param>``). Every key and shape is checked before the first copy;
    on any error ``model`` is left as it was."""
    created = not isinstance(model, SPTModel)
    wrapped = model if isinstance(model, SPTModel) else SPTModel(model)
    added = False
    try:
        wrapped.add_adapter(adapter_name, config, example_input=example_input, _channels=channels, _names=names)
        added = True
        expected = dict(wrapped.unit_parameters(adapter_name))
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise AdapterFileError(
                f"{source}: unit tensors do not match the units (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        for key, param in expected.items():
            if tuple(tensors[key].shape) != tuple(param.shape):
                raise FingerprintMismatchError(
                    f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)}, the unit expects {tuple(param.shape)}"
                )
        with torch.no_grad():
            for key, param in expected.items():
                param.copy_(tensors[key].to(dtype=param.dtype, device=param.device))
    except Exception:
        if created:
            wrapped.eject()
        elif added:
            wrapped.delete_adapter(adapter_name)
        raise
    return wrapped


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str = "default",
    check_backbone_hash: bool = True,
    device: str | torch.device | None = None,
) -> SPTModel:
    """Load an adapter file onto ``model`` (an untouched backbone, or an SPTModel to add to).

    The header is read and checked first (format, schema, fingerprint against ``model``), then the
    tensors. On any error ``model`` is left as it was.
    """
    path = Path(path)
    meta, entries = read_adapter_header(path)
    config = _config(path, meta)
    fp = _parse_json(path, meta, "fingerprint")
    if not _fingerprint_is_well_formed(fp):
        raise AdapterFileError(f"{path}: metadata 'fingerprint' is malformed")
    check_units_against_header(path, config, fp, entries)  # arithmetic only: nothing is built yet
    check_fingerprint(model, fp, config, check_hash=check_backbone_hash)
    names = [e["path"] for e in fp["targets"]]
    channels = {e["path"]: int(e["channels"]) for e in fp["targets"] if "channels" in e}
    if isinstance(model, SPTModel) and adapter_name in model.spt_config:
        raise AdapterFileError(f"the model already has an adapter named {adapter_name!r}; pass another adapter_name")
    tensors = read_unit_tensors(path)
    wrapped = add_adapter_with_tensors(model, adapter_name, config, names, channels or None, tensors, source=str(path))
    # the file's training record (task, data, steps) goes along when the adapter is saved again
    records = wrapped.__dict__.setdefault("_spt_training_records", {})
    records.pop(adapter_name, None)
    if TRAINING_KEY in meta:
        records[adapter_name] = meta[TRAINING_KEY]
    if device is not None:
        wrapped.to(device)
    return wrapped
