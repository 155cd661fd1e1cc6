"""The checksum an exported file carries of its own graph and weights (no PyTorch, no onnx package).

`spt-adapter export` records ``content_sha256`` in the file's metadata; both runners recompute it
before the first image and refuse a file whose content does not match: a weight edited after export
(one tensor x10 restored 5 dB garbage with exit 0) or a foreign graph given our metadata.

What is hashed:

- ONNX: the bytes of the ``graph`` field (field 7: nodes, initializers, inputs, outputs) of the
  ``ModelProto``, read with a minimal protobuf walk of the top-level fields. The checksum is appended
  as one more ``metadata_props`` entry (field 14) after the rest of the file, so adding it changes no
  byte that is hashed.
- TorchScript: every entry of the zip archive but the metadata (``extra/spt_adapter.json``) and
  torch's random ``.data/serialization_id``, by name (archive folder stripped) and content.
"""

from __future__ import annotations

import hashlib
import io
import zipfile

from ..errors import ExportError

__all__ = ["CHECKSUM_KEY", "onnx_content_sha256", "onnx_with_entry", "torchscript_content_sha256", "verify"]

#: the metadata key holding the checksum
CHECKSUM_KEY = "content_sha256"
_GRAPH_FIELD, _METADATA_FIELD = 7, 14


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def onnx_content_sha256(data: bytes) -> str:
    """sha256 of the ``graph`` field bytes of a serialized ONNX ``ModelProto``; ValueError when the
    bytes are not a well-formed protobuf message or hold no graph."""
    digest = hashlib.sha256()
    pos, found = 0, False
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("a field runs past the end of the file")
            if field == _GRAPH_FIELD:
                digest.update(data[pos : pos + length])
                found = True
            pos += length
        else:
            raise ValueError(f"unknown protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("a field runs past the end of the file")
    if not found:
        raise ValueError("the file holds no graph")
    return digest.hexdigest()


def _string_field(number: int, text: str) -> bytes:
    raw = text.encode("utf-8")
    return _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw


def onnx_with_entry(data: bytes, key: str, value: str) -> bytes:
    """``data`` with one more ``metadata_props`` entry appended (protobuf merges repeated fields in any
    order: no other byte changes)."""
    entry = _string_field(1, key) + _string_field(2, value)
    return data + _encode_varint(_METADATA_FIELD << 3 | 2) + _encode_varint(len(entry)) + entry


def torchscript_content_sha256(data: bytes) -> str:
    """sha256 over a TorchScript archive's entries (names without the archive folder, and contents)
    except the metadata and torch's random serialization id."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in sorted(z.namelist(), key=lambda n: n.split("/", 1)[-1]):
            inner = name.split("/", 1)[-1]
            if inner.startswith("extra/") or inner == ".data/serialization_id" or name.endswith("/"):
                continue
            content = z.read(name)
            digest.update(f"{inner}\0{len(content)}\0".encode())
            digest.update(content)
    return digest.hexdigest()


def verify(meta: dict[str, str], data: bytes, fmt: str, source: str) -> None:
    """Refuse ``data`` unless its content matches the ``content_sha256`` its metadata records."""
    recorded = meta.get(CHECKSUM_KEY)
    if not recorded:
        raise ExportError(
            f"{source} records no checksum of its weights (written by spt-adapter {meta.get('library_version') or '?'}, "
            "before exports carried one, or its metadata was copied onto another graph): export it again"
        )
    try:
        actual = onnx_content_sha256(data) if fmt == "onnx" else torchscript_content_sha256(data)
    except (ValueError, zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"{source}: cannot read its content to check it ({exc})") from None
    if actual != recorded:
        raise ExportError(
            f"{source}: its graph or weights are not the ones exported (checksum {actual[:12]}..., the file "
            f"records {recorded[:12]}...): the file was changed after export, or its metadata was copied "
            "from another export; export it again"
        )
