"""The backbone fingerprint an adapter file records and checks: per target module its class and
parameter shapes, the sha256 of the backbone's weights, and what the backbone does to an image (scale,
input and output channels, measured by one small forward pass), each compared on load with a message
that names the first difference."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn as nn

from ..core.config import SPTConfig
from ..core.keys import (
    get_logical_module,
    logical_named_modules,
    logical_state,
    see_through,
)
from ..core.model import SPTModel
from ..errors import BackboneHashMismatchError, FingerprintMismatchError


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


def _probe_side(root: nn.Module) -> int:
    """A small input side every backbone takes: 16, or a multiple of its window / size multiple."""
    found = [1]
    for m in root.modules():
        for attr in ("window_size", "padder_size"):
            v = getattr(m, attr, None)
            found += [v] if isinstance(v, int) and not isinstance(v, bool) and v > 0 else []
            found += [x for x in v if isinstance(x, int) and x > 0] if isinstance(v, (tuple, list)) else []
    multiple = math.lcm(*found)
    return multiple * max(1, -(-16 // multiple))


def backbone_io(model: nn.Module) -> dict[str, int] | None:
    """What the backbone does to an image, measured by one small forward pass of the backbone alone
    (units disabled): ``{"scale", "in_channels", "out_channels"}``. None when it cannot be measured
    (no convolution, a forward that needs more than an image, an output that is not an image)."""
    root = model.base_model if isinstance(model, SPTModel) else model
    first = next((m for m in root.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        return None
    side = _probe_side(root)
    if side > 256:
        return None
    param = next(iter(root.parameters()), None)
    x = torch.full(
        (1, first.in_channels, side, side),
        0.5,
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else "cpu",
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(model, SPTModel):
                with model.disable_adapter():
                    out = model(x)
            else:
                out = model(x)
    except Exception:  # a backbone that needs more than an image (a noise-level map, ...): not measured
        return None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out) or out.dim() != 4 or out.shape[-1] % side or out.shape[-2] != out.shape[-1]:
        return None
    return {"scale": out.shape[-1] // side, "in_channels": int(first.in_channels), "out_channels": int(out.shape[1])}


def fingerprint(
    model: nn.Module, targets: list[str], channels: dict[str, int] | None = None, with_hash: bool = False
) -> dict[str, Any]:
    root = model.base_model if isinstance(model, SPTModel) else model
    entries = []
    for name in targets:
        entry = {"path": name, **_module_fingerprint(get_logical_module(root, name))}
        if channels is not None:
            entry["channels"] = channels[name]
        entries.append(entry)
    fp: dict[str, Any] = {"targets": entries, "backbone_class": type(root).__name__}
    io = backbone_io(model)
    if io is not None:
        fp["io"] = io
    if with_hash:
        fp["backbone_sha256"] = backbone_sha256(root)
    return fp


_IO_WORDS = {
    "scale": "upscales x{}",
    "in_channels": "takes {}-channel images",
    "out_channels": "gives {}-channel images",
}


def _task_scale(task: Any) -> int | None:
    if not isinstance(task, str):
        return None
    kind, _, arg = task.partition(":")
    if kind in ("sr", "paired"):
        return int(arg) if arg.isdigit() and int(arg) > 0 else None
    return 1 if kind == "denoise" else None  # the tasks `spt-adapter train` and the shims record


def check_backbone_io(model: nn.Module, recorded: dict[str, Any], config: SPTConfig) -> None:
    """The backbone's scale and channels (measured) against the adapter's: the recorded ``io`` (files
    from issue 19 on) and the recorded task's scale (older files too). Independent of the weights
    hash, so ``check_backbone_hash=False`` cannot let an x1 colour adapter through an x2 or grey net."""
    want = dict(recorded.get("io") or {}) if isinstance(recorded.get("io"), dict) else {}
    task = (config.prior or {}).get("task")
    task_scale = _task_scale(task)
    if not want and task_scale is None:
        return
    have = backbone_io(model)
    if have is None:
        return
    diffs = [
        (k, want[k], have[k]) for k in ("scale", "in_channels", "out_channels") if k in want and want[k] != have[k]
    ]
    if not diffs and task_scale is not None and "scale" not in want and have["scale"] != task_scale:
        diffs = [("scale", task_scale, have["scale"])]
    if diffs:
        said = "; ".join(
            f"the adapter's backbone {_IO_WORDS[k].format(a)}, this one {_IO_WORDS[k].format(b)}" for k, a, b in diffs
        )
        made = f" (the adapter was trained for task {task})" if task else ""
        raise FingerprintMismatchError(
            f"the adapter was made for another kind of backbone: {said}{made}; use the "
            "backbone it was trained on (no override loads an adapter across these)"
        )


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
                raise FingerprintMismatchError(
                    f"module {path!r} has no parameter {pname!r} (adapter expects shape {shape}){hint}"
                )
            if list(got) != list(shape):
                raise FingerprintMismatchError(
                    f"module {path!r} parameter {pname!r} has shape {list(got)} but the adapter expects {list(shape)}{hint}"
                )
        extra = sorted(set(have["params"]) - set(entry["params"]))
        if extra:
            raise FingerprintMismatchError(
                f"module {path!r} has parameter {extra[0]!r} the adapter's backbone lacked{hint}"
            )
    check_backbone_io(model, recorded, config)
    want = recorded.get("backbone_sha256")
    if check_hash and want:
        got = backbone_sha256(root)
        if got != want:
            raise BackboneHashMismatchError(
                f"the backbone's weights differ from those the adapter was trained on (sha256 {got[:12]}... != "
                f"{want[:12]}...)"
            )
