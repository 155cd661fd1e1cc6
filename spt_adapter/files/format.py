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
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open

from .._io import atomic_write_bytes
from ..core.config import SCHEMA_VERSION, SPTConfig
from ..errors import AdapterFileError, ConfigError, FingerprintMismatchError
from ..core.keys import get_logical_module, logical_named_modules, logical_state, see_through, is_adapter_file_key
from ..core.model import SPTModel
from ..version import __version__

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
_DTYPE_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_REQUIRED_KEYS = ("format", "format_version", "library_version", "config", "fingerprint")


# ---------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------
def _module_fingerprint(module: nn.Module) -> dict[str, Any]:
    base = see_through(module)
    params = {}
    for name, p in logical_state(base, params_only=True):
        params[name] = list(p.shape)
    return {"class": type(base).__name__, "params": params}


def backbone_sha256(model: nn.Module) -> str:
    """sha256 over the backbone's state dict (names, dtypes, shapes, bytes), units excluded."""
    root = model.base_model if isinstance(model, SPTModel) else model
    h = hashlib.sha256()
    for name, tensor in sorted(logical_state(root), key=lambda kv: kv[0]):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(model: nn.Module, targets: list[str], channels: dict[str, int] | None = None,
                with_hash: bool = False) -> dict[str, Any]:
    root = model.base_model if isinstance(model, SPTModel) else model
    entries = []
    for name in targets:
        entry = {"path": name, **_module_fingerprint(get_logical_module(root, name))}
        if channels is not None:
            entry["channels"] = channels[name]
        entries.append(entry)
    fp: dict[str, Any] = {"targets": entries, "backbone_class": type(root).__name__}
    if with_hash:
        fp["backbone_sha256"] = backbone_sha256(root)
    return fp


def _expected_from(config: SPTConfig) -> str:
    if config.preset or config.integration:
        return f" (the adapter was made for preset {config.preset!r} of integration {config.integration!r})"
    return ""


def check_fingerprint(model: nn.Module, recorded: dict[str, Any], config: SPTConfig, check_hash: bool = True) -> None:
    """Raise :class:`FingerprintMismatchError` naming the first module/shape that differs."""
    root = model.base_model if isinstance(model, SPTModel) else model
    hint = _expected_from(config)
    names = {n for n, _ in logical_named_modules(root)}
    for entry in recorded.get("targets", []):
        path = entry["path"]
        if path not in names:
            raise FingerprintMismatchError(
                f"the adapter adapts module {path!r} ({entry['class']}) but this {type(root).__name__} has no such "
                f"module{hint}"
            )
        have = _module_fingerprint(get_logical_module(root, path))
        if have["class"] != entry["class"]:
            raise FingerprintMismatchError(
                f"module {path!r} is a {have['class']} here but the adapter was made for a {entry['class']}{hint}"
            )
        for pname, shape in entry["params"].items():
            got = have["params"].get(pname)
            if got is None:
                raise FingerprintMismatchError(f"module {path!r} has no parameter {pname!r} (adapter expects shape {shape}){hint}")
            if list(got) != list(shape):
                raise FingerprintMismatchError(
                    f"module {path!r} parameter {pname!r} has shape {list(got)} but the adapter expects {list(shape)}{hint}"
                )
        extra = sorted(set(have["params"]) - set(entry["params"]))
        if extra:
            raise FingerprintMismatchError(f"module {path!r} has parameter {extra[0]!r} the adapter's backbone lacked{hint}")
    want = recorded.get("backbone_sha256")
    if check_hash and want:
        got = backbone_sha256(root)
        if got != want:
            raise FingerprintMismatchError(
                f"the backbone's weights differ from those the adapter was trained on (sha256 {got[:12]}... != "
                f"{want[:12]}...); pass check_backbone_hash=False to load it anyway"
            )


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
_TORCH_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                 torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                 torch.bool: "BOOL"}


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
        header[key] = {"dtype": _TORCH_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def adapter_tensors(model: SPTModel, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """The unit tensors of one adapter under their file keys (CPU, contiguous, un-aliased)."""
    return {k: p.detach().to("cpu").contiguous().clone() for k, p in model.unit_parameters(adapter_name)}


def adapter_metadata(model: SPTModel, adapter_name: str | None = None, backbone_hash: bool = True,
                     extra: dict[str, str] | None = None) -> dict[str, str]:
    adapter_name = adapter_name or model.active_adapter
    config = model.spt_config[adapter_name]
    targets = model.spt_targets[adapter_name]
    channels = {}
    for name in targets:
        layer = get_logical_module(model.base_model, name)
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
        meta[STUDENT_KEY] = json.dumps({"settings": config.student, "teacher": (config.prior or {}).get("teacher")},
                                       sort_keys=True)
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise AdapterFileError(f"extra metadata must map strings to strings, got {key!r}: {type(value).__name__}")
        if key in meta:
            raise AdapterFileError(f"extra metadata key {key!r} is reserved")
        meta[key] = value
    return meta


def save_adapter(model: SPTModel, path: str | os.PathLike, adapter_name: str | None = None,
                 backbone_hash: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Write one adapter's units to ``path`` as a safetensors delta, atomically."""
    if not isinstance(model, SPTModel):
        raise AdapterFileError(f"save_adapter needs an SPTModel (from spt_adapter.inject), got {type(model).__name__}")
    path = Path(path)
    if path.suffix in (".pth", ".pt", ".ckpt", ".bin", ".pkl"):
        raise AdapterFileError(f"{path}: adapters are safetensors files; use a .safetensors name")
    tensors = adapter_tensors(model, adapter_name)
    meta = adapter_metadata(model, adapter_name, backbone_hash, metadata)
    return atomic_write_bytes(path, serialize(tensors, meta))


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def read_adapter_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, Any]]:
    """Read and check an adapter file's header without loading tensors or executing anything.

    Returns ``(metadata, tensor_entries)``. Raises :class:`AdapterFileError` naming the problem.
    """
    path = Path(path)
    if not path.exists():
        raise AdapterFileError(f"adapter file {path} does not exist")
    if path.is_dir():
        raise AdapterFileError(f"{path} is a folder; pass the adapter's .safetensors file")
    size = path.stat().st_size
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
            raise AdapterFileError(f"{path}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit; not a valid adapter")
        if 8 + header_len > size:
            raise AdapterFileError(f"{path} is truncated: header of {header_len} bytes but the file has {size} bytes")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFileError(f"{path}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict):
        raise AdapterFileError(f"{path} has no metadata; it is a safetensors file but not an SPT adapter")
    bad = [k for k, v in meta.items() if not isinstance(v, str)]
    if bad:
        raise AdapterFileError(f"{path}: metadata values must be strings; {bad[0]!r} is not")
    if meta.get("format") != FORMAT_NAME:
        raise AdapterFileError(f"{path} is not an SPT adapter (metadata format={meta.get('format')!r}, expected {FORMAT_NAME!r})")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise AdapterFileError(f"{path}: adapter metadata lacks {missing}")
    try:
        version = int(meta["format_version"])
    except ValueError:
        raise AdapterFileError(f"{path}: format_version {meta['format_version']!r} is not an integer") from None
    if version > FORMAT_VERSION:
        raise AdapterFileError(
            f"{path} uses adapter schema version {version}, written by spt-adapter {meta['library_version']}; this "
            f"spt-adapter ({__version__}) reads schema versions up to {FORMAT_VERSION}: upgrade spt-adapter"
        )
    data_size = size - 8 - header_len
    for key, entry in header.items():
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise AdapterFileError(f"{path}: tensor entry {key!r} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_SIZES or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise AdapterFileError(f"{path}: tensor {key!r} has an invalid dtype or shape")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise AdapterFileError(f"{path}: tensor {key!r} has invalid data offsets")
        numel = 1
        for s in shape:
            numel *= s
        if offsets[1] - offsets[0] != numel * _DTYPE_SIZES[dtype] or offsets[0] < 0 or offsets[1] > data_size:
            raise AdapterFileError(f"{path} is truncated or corrupt: tensor {key!r} lies outside the file's data")
        if not is_adapter_file_key(key):
            raise AdapterFileError(f"{path}: tensor {key!r} is not an SPT unit tensor; adapter files hold only units "
                                   "(and a distilled prior's student)")
    return meta, header


def _fingerprint_is_well_formed(fp: Any) -> bool:
    if not isinstance(fp, dict) or not isinstance(fp.get("targets"), list) or not fp["targets"]:
        return False
    for e in fp["targets"]:
        if not (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("class"), str)
                and isinstance(e.get("params"), dict)
                and all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in e["params"].values())
                and (("channels" not in e) or (isinstance(e["channels"], int) and e["channels"] > 0))):
            return False
    return "backbone_sha256" not in fp or isinstance(fp["backbone_sha256"], str)


def _parse_json(path: Path, meta: dict[str, str], key: str) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from None


def read_adapter_config(path: str | os.PathLike) -> SPTConfig:
    """The SPTConfig stored in an adapter file (header only)."""
    meta, _ = read_adapter_header(path)
    try:
        return SPTConfig.from_json(meta["config"])
    except ConfigError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None


def add_adapter_with_tensors(model: nn.Module, adapter_name: str, config: SPTConfig, names: list[str],
                             channels: dict[str, int] | None, tensors: dict[str, torch.Tensor], source: str,
                             example_input=None) -> SPTModel:
    """Build an adapter's units on ``model`` (a backbone or an SPTModel) and fill them from ``tensors``
    (file keys ``<target>.spt_unit.<param>``). Every key and shape is checked before the first copy;
    on any error ``model`` is left as it was."""
    created = not isinstance(model, SPTModel)
    wrapped = SPTModel(model) if created else model
    added = False
    try:
        wrapped.add_adapter(adapter_name, config, example_input=example_input, _channels=channels, _names=names)
        added = True
        expected = dict(wrapped.unit_parameters(adapter_name))
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise AdapterFileError(f"{source}: unit tensors do not match the units (missing {missing[:3]}, "
                                   f"unexpected {unexpected[:3]})")
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


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = "default",
                 check_backbone_hash: bool = True, device: str | torch.device | None = None) -> SPTModel:
    """Load an adapter file onto ``model`` (an untouched backbone, or an SPTModel to add to).

    The header is read and checked first (format, schema, fingerprint against ``model``), then the
    tensors. On any error ``model`` is left as it was.
    """
    path = Path(path)
    meta, entries = read_adapter_header(path)
    try:
        config = SPTConfig.from_json(meta["config"])
    except ConfigError as exc:
        raise AdapterFileError(f"{path}: {exc}") from None
    fp = _parse_json(path, meta, "fingerprint")
    if not _fingerprint_is_well_formed(fp):
        raise AdapterFileError(f"{path}: metadata 'fingerprint' is malformed")
    check_fingerprint(model, fp, config, check_hash=check_backbone_hash)
    names = [e["path"] for e in fp["targets"]]
    channels = {e["path"]: int(e["channels"]) for e in fp["targets"] if "channels" in e}
    if isinstance(model, SPTModel) and adapter_name in model.spt_config:
        raise AdapterFileError(f"the model already has an adapter named {adapter_name!r}; pass another adapter_name")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors' own checks
        raise AdapterFileError(f"{path} is corrupt: {exc}") from None
    wrapped = add_adapter_with_tensors(model, adapter_name, config, names, channels or None, tensors, source=str(path))
    if device is not None:
        wrapped.to(device)
    return wrapped
