"""Conversions between PEFT folders and spt-adapter delta files, and loading a PEFT folder as an
SPTModel."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from .._io import atomic_write_bytes
from ..core import keys
from ..errors import AdapterFileError, ConfigError
from .config import (
    _CORE_UNIT,
    _PEFT_KEY_PREFIX,
    _PEFT_STUDENT_PREFIX,
    _PEFT_UNIT,
    PEFT_CONFIG_NAME,
    PEFT_TYPE_NAME,
    PEFT_WEIGHTS_NAME,
    SPTPeftConfig,
    _read_peft_config_json,
)


# ---------------------------------------------------------------------------------------------
# conversions between PEFT folders and spt-adapter files
# ---------------------------------------------------------------------------------------------
def peft_key_to_core(key: str) -> str:
    """``base_model.model.<target>.spt_units.<param>`` -> ``<target>.spt_unit.<param>``;
    ``base_model.spt_students.<param>`` -> ``spt_student.<param>`` (a distilled prior's student)."""
    if key.startswith(_PEFT_STUDENT_PREFIX) and len(key) > len(_PEFT_STUDENT_PREFIX):
        return keys.student_file_key(key[len(_PEFT_STUDENT_PREFIX) :])
    if not key.startswith(_PEFT_KEY_PREFIX) or _PEFT_UNIT not in key:
        raise AdapterFileError(f"tensor {key!r} is not an SPT unit or prior-student tensor of a PEFT adapter")
    return key[len(_PEFT_KEY_PREFIX) :].replace(_PEFT_UNIT, _CORE_UNIT, 1)


def core_key_to_peft(key: str) -> str:
    """``<target>.spt_unit.<param>`` -> ``base_model.model.<target>.spt_units.<param>``;
    ``spt_student.<param>`` -> ``base_model.spt_students.<param>``."""
    param = keys.split_student_file_key(key)
    if param is not None:
        return _PEFT_STUDENT_PREFIX + param
    if _CORE_UNIT not in key:
        raise AdapterFileError(f"tensor {key!r} is not an SPT unit or prior-student tensor")
    return _PEFT_KEY_PREFIX + key.replace(_CORE_UNIT, _PEFT_UNIT, 1)


def read_peft_folder(folder: str | os.PathLike) -> tuple[SPTPeftConfig, dict[str, torch.Tensor]]:
    """The config and unit tensors (PEFT keys) of a PEFT SPT adapter folder, with the checks
    ``load_adapter`` makes: strict JSON, header limits, floating-point, finite, sane tensors."""
    from safetensors import safe_open

    from ..files.format import check_tensor_entries, check_unit_tensor_values, read_safetensors_header

    folder = Path(folder)
    cfg_path, weights = folder / PEFT_CONFIG_NAME, folder / PEFT_WEIGHTS_NAME
    if not cfg_path.is_file() or not weights.is_file():
        raise AdapterFileError(
            f"{folder} is not a PEFT adapter folder (needs {PEFT_CONFIG_NAME} and {PEFT_WEIGHTS_NAME})"
        )
    data = _read_peft_config_json(cfg_path)
    if data.get("peft_type") != PEFT_TYPE_NAME:
        raise AdapterFileError(f"{folder} holds a PEFT {data.get('peft_type')!r} adapter, not an SPT one")
    known = {f.name for f in dataclasses.fields(SPTPeftConfig)}
    try:
        config = SPTPeftConfig(**{k: v for k, v in data.items() if k in known and k != "peft_type"})
    except ConfigError as exc:
        raise AdapterFileError(f"{cfg_path}: {exc}") from None
    header, data_size = read_safetensors_header(weights, "PEFT weights file")
    header.pop("__metadata__", None)
    check_tensor_entries(weights, header, data_size)
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as fh:
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:
        raise AdapterFileError(f"{weights} is corrupt: {exc}") from None
    check_unit_tensor_values(tensors, str(weights))
    return config, tensors


def _targets_in_order(file_keys, channels: dict | None) -> list[str]:
    found = []
    for key in file_keys:
        split = keys.split_unit_file_key(key)  # None for a prior student's tensor
        if split is not None and split[0] not in found:
            found.append(split[0])
    if channels:
        order = [n for n in channels if n in found]
        return order + [n for n in found if n not in order]
    return found


def load_peft_adapter(
    backbone: nn.Module, folder: str | os.PathLike, adapter_name: str = "default", example_input=None
):
    """Load a PEFT SPT adapter folder onto ``backbone`` as an :class:`~spt_adapter.SPTModel`.

    The units are rebuilt with the core from the recorded widths (``unit_channels``); a folder
    without them gets one probe pass. On error ``backbone`` is left as it was.
    """
    from ..files.format import add_adapter_with_tensors, check_units_against_header

    config, tensors = read_peft_folder(folder)
    core = {peft_key_to_core(k): v for k, v in tensors.items()}
    names = _targets_in_order(core, config.unit_channels)
    channels = {n: int(c) for n, c in (config.unit_channels or {}).items() if n in names} or None
    if channels is not None and set(channels) != set(names):
        channels = None
    spt_config = config.to_spt_config(names)
    if not names:
        raise AdapterFileError(f"{folder}: the PEFT weights hold no SPT unit tensors")
    # the tensors are exactly what the config's units have (shapes too), before anything is built
    fp = {"targets": [{"path": n, **({"channels": channels[n]} if channels else {})} for n in names]}
    check_units_against_header(folder, spt_config, fp, {k: {"shape": list(v.shape)} for k, v in core.items()})
    return add_adapter_with_tensors(
        backbone, adapter_name, spt_config, names, channels, core, source=str(folder), example_input=example_input
    )


def peft_to_spt(
    folder: str | os.PathLike, backbone: nn.Module, path: str | os.PathLike, backbone_hash: bool = True
) -> Path:
    """Convert a PEFT SPT adapter folder into an spt-adapter file (``save_adapter`` format).

    The file's fingerprint (and, with ``backbone_hash``, the weights' sha256) is taken from
    ``backbone``, the untouched backbone the adapter was trained on; it is left unchanged.
    """
    from ..files.format import save_adapter

    model = load_peft_adapter(backbone, folder)
    try:
        return save_adapter(model, path, backbone_hash=backbone_hash)
    finally:
        model.eject()


def spt_to_peft(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Convert an spt-adapter file into a PEFT folder loadable by ``peft.PeftModel.from_pretrained``.

    Needs no backbone: targets and unit widths come from the file's fingerprint. A distilled
    adapter's student (config and tensors) goes along.
    """
    from safetensors.torch import save as safetensors_save

    from ..files.format import (
        _fingerprint_is_well_formed,
        check_units_against_header,
        read_adapter_config,
        read_adapter_header,
        read_unit_tensors,
        strict_json,
    )

    meta, entries = read_adapter_header(path)
    config = read_adapter_config(path)
    fingerprint = strict_json(meta["fingerprint"], f"{path}: metadata 'fingerprint'")
    if not _fingerprint_is_well_formed(fingerprint):
        raise AdapterFileError(f"{path}: metadata 'fingerprint' is malformed")
    check_units_against_header(path, config, fingerprint, entries)
    names = [t["path"] for t in fingerprint["targets"]]
    channels = {t["path"]: int(t["channels"]) for t in fingerprint["targets"] if "channels" in t}
    tensors = {core_key_to_peft(k): v.contiguous() for k, v in read_unit_tensors(path).items()}
    peft_config = SPTPeftConfig.from_spt_config(config, names, channels if len(channels) == len(names) else None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = peft_config.to_dict()
    out = {k: (sorted(v) if isinstance(v, set) else v) for k, v in out.items()}
    out["peft_type"] = PEFT_TYPE_NAME
    atomic_write_bytes(folder / PEFT_WEIGHTS_NAME, safetensors_save(tensors, metadata={"format": "pt"}))
    atomic_write_bytes(folder / PEFT_CONFIG_NAME, json.dumps(out, indent=2, sort_keys=True).encode())
    return folder
