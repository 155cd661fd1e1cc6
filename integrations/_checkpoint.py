"""Reading model-zoo checkpoints safely (shared by the shims).

BasicSR, KAIR and Restormer store weights with ``torch.save``: a bare state dict, or a dict with
the weights under ``params`` / ``params_ema`` (BasicSR, Restormer, SwinIR/KAIR releases). Files are
opened with ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and plain
containers only, no code runs) or with safetensors; nothing falls back to a full unpickle.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from spt_adapter.errors import CheckpointError

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")
#: keys under which frameworks nest their weights, most useful first
NESTED_KEYS = ("params_ema", "params", "state_dict", "model", "net", "model_state_dict")

_cache_lock = threading.Lock()
_cache: dict[str, Any] = {}


def load_raw(path: str | os.PathLike) -> Any:
    """The object stored in ``path`` (cached for the last file read, so that several plugins asking
    in one ``spt_adapter_read_checkpoint`` call read it once)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    with _cache_lock:
        if _cache.get("key") == key:
            return _cache["value"]
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            value = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    elif suffix in PICKLE_SUFFIXES:
        try:
            value = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(
                f"{path} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); only plain tensor checkpoints are read, "
                "never arbitrary pickles"
            ) from None
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint suffix {suffix!r} (expected .pth, .pt, .ckpt or .safetensors)"
        )
    with _cache_lock:
        _cache.clear()
        _cache.update(key=key, value=value)
    return value


def is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items())
    )


def strip_module_prefix(state: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Drop DataParallel's ``module.`` prefix, keeping the order (KAIR pairs by position)."""
    return OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state.items())


def unwrap(obj: Any, param_key: str | None = None, path: str | os.PathLike = "") -> OrderedDict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint.

    ``param_key`` picks a nested key (``params`` or ``params_ema``); when it is absent and
    ``params`` exists, ``params`` is used (BasicSR's own fallback). With ``param_key=None`` the first
    of :data:`NESTED_KEYS` present wins, or ``obj`` itself if it is a bare state dict.
    """
    if is_state_dict(obj):
        return strip_module_prefix(obj)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    if param_key is not None:
        key = param_key if param_key in obj else ("params" if "params" in obj else None)
        if key is None:
            raise CheckpointError(f"checkpoint {path} has no {param_key!r} (keys: {sorted(map(str, obj))[:8]})")
        if not is_state_dict(obj[key]):
            raise CheckpointError(f"checkpoint {path}: {key!r} is not a state dict of tensors")
        return strip_module_prefix(obj[key])
    for key in NESTED_KEYS:
        if key in obj and is_state_dict(obj[key]):
            return strip_module_prefix(obj[key])
    raise CheckpointError(
        f"checkpoint {path} is neither a state dict nor has weights under one of {list(NESTED_KEYS)} "
        f"(keys: {sorted(map(str, obj))[:8]})"
    )


def read_state_dict(path: str | os.PathLike, param_key: str | None = None) -> OrderedDict[str, torch.Tensor]:
    """Read the weights of a BasicSR / KAIR / Restormer checkpoint (bare, ``params``, ``params_ema``)."""
    return unwrap(load_raw(path), param_key, path)
