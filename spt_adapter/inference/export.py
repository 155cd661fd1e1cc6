"""Export a backbone with its active SPT adapter as one ONNX or TorchScript file.

    import spt_adapter
    spt_adapter.export(model, "swinir_spt.onnx")              # or "swinir_spt.pt" (TorchScript)

The file holds the backbone, the active adapter's units and, for a distilled adapter, its prior
student: ``image -> image`` (so does an adapter whose units read no prior, kind ``no-prior``). A LoRA
adapter (``fusion="lora"``) is merged into a copy of the backbone's weights first: the file is the plain
network, as fast as the frozen one, and matches the unmerged model within the parity tolerance. An
adapter that reads a provider's prior exports as
``(image, prior) -> image``; the prior's channels, provider and encoding are in the file's metadata
(ONNX ``metadata_props``; TorchScript ``_extra_files["spt_adapter.json"]``), with the scale, the
image channels, the task, the backbone fingerprint and ``content_sha256``, the checksum of the file's
own graph and weights that both runners verify before the first image
(:mod:`spt_adapter.deploy.checksum`). Height, width and batch are dynamic: the
graph pads its input to the size multiple the backbone needs (reflect; the prior: replicate, as
:func:`spt_adapter.inference.restore.restore` does) and crops the output back, so any size from
that multiple up runs. float32 by default; ``half=True`` exports float16 weights and inputs.

Everything that cannot be exported is refused by name before anything is written (the ``pool``
fusion: its region averages have data-dependent shapes; ``prior_resize="area"``: adaptive pooling to
a dynamic size). The exported program is then run at two sizes that differ from the traced one and
compared with the PyTorch model; a file that does not reproduce it is refused, not written. A
backbone whose code freezes the batch size when traced (SwinIR's ``window_reverse`` takes
``int(B)``) is exported for one image per call (metadata ``batch: 1``, a fixed batch axis in ONNX);
its runner (:mod:`spt_adapter.inference.exported`) feeds a batch one image at a time.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._io import atomic_write_bytes, remove_stale_temporaries_of, write_once_bytes
from ..core.layer import iter_layers
from ..core.lora import LoraUnit
from ..core.model import SPTModel
from ..deploy.checksum import CHECKSUM_KEY, onnx_content_sha256, onnx_with_entry, torchscript_content_sha256
from ..errors import ExportError
from ..version import __version__
from .exported import EXPORT_FORMAT, METADATA_FILE, load_exported, measured_radius
from .restore import _run, input_channels, minimum_tile, receptive_radius, size_multiple, window_size

__all__ = ["EXPORT_FORMAT", "FORMATS", "METADATA_FILE", "export", "export_info", "format_of"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
#: max |exported - PyTorch| allowed when an export is checked (float32 outputs on [0, 1])
PARITY_ATOL = 1e-4


def format_of(path: str | Path, fmt: str | None = None) -> str:
    """The export format: ``fmt`` when given, else from the suffix (``.onnx``; ``.pt``/``.ts``/``.torchscript``)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportError(f"export format must be one of {FORMATS}, got {fmt!r}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".ts", ".torchscript", ".pth"):
        return "torchscript"
    raise ExportError(
        f"cannot tell the export format from {Path(path).name!r}: name it .onnx or .pt, or pass "
        "format='onnx' / 'torchscript'"
    )


class _Deployable(nn.Module):
    """What is exported: pad to the backbone's size multiple, run backbone + units (+ student), crop."""

    def __init__(self, model: nn.Module, kind: str, multiple: int) -> None:
        super().__init__()
        self.model = model
        self.kind = kind  # "backbone", "student", "no-prior" or "prior"
        self.multiple = multiple

    def _net(self, x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        model: Any = self.model
        if self.kind == "backbone":
            if isinstance(model, SPTModel):
                with model.disable_adapter():
                    return model.base_model(x)
            return model(x)
        state = model._spt_state
        if self.kind == "student":
            prior = torch.sigmoid(model.student().logits(x))
        with state.using(prior):
            return model.base_model(x)

    def forward(self, image: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        h, w = image.shape[-2], image.shape[-1]
        x, p = image, prior
        m = self.multiple
        if m > 1:
            ph, pw = (m - h % m) % m, (m - w % m) % m
            x = F.pad(image, [0, pw, 0, ph], mode="reflect")
            if p is not None:
                k = p.shape[-2] // h
                p = F.pad(p, [0, pw * k, 0, ph * k], mode="replicate")
        out = self._net(x, p)
        s = out.shape[-2] // x.shape[-2]
        return out[:, :, : h * s, : w * s]


def _kind(model: nn.Module) -> str:
    if not isinstance(model, SPTModel) or model.active_adapter is None:
        return "backbone"
    if not model.spt_config[model.active_adapter].reads_prior:
        return "no-prior"  # units that read no prior: image -> image, nothing to compute beside it
    return "student" if model.student() is not None else "prior"


def _is_lora(model: nn.Module) -> bool:
    """Whether ``model``'s active adapter is LoRA (``fusion="lora"``): exported merged into the weights."""
    if not isinstance(model, SPTModel) or model.active_adapter is None:
        return False
    return model.spt_config[model.active_adapter].fusion == "lora"


def merged_lora_backbone(model: SPTModel) -> nn.Module:
    """A copy of ``model``'s backbone with its active LoRA adapter merged into the weights (peft's
    ``merge``: ``W + alpha / r * B A`` per target) and the wrappers gone: the plain network, which runs in
    the frozen network's time. ``model`` itself is not changed."""
    twin = copy.deepcopy(model)
    active = str(twin.active_adapter)
    for _, layer in iter_layers(twin.base_model):
        if active in layer.spt_units:
            cast(LoraUnit, layer.spt_units[active]).merge_into_target()
    return twin.eject().eval()


def _prior_channels(model: nn.Module) -> int:
    spt = cast(SPTModel, model)
    return spt.spt_config[str(spt.active_adapter)].prior_channels


def _refusals(model: nn.Module, fmt: str) -> None:
    """Refuse, by name, what cannot be exported (before any tracing)."""
    if not isinstance(model, nn.Module):
        raise ExportError(f"export needs a torch.nn.Module (a backbone or an SPTModel), got {type(model).__name__}")
    if isinstance(model, SPTModel) and model.active_adapter is not None:
        cfg = model.spt_config[model.active_adapter]
        if cfg.fusion == "pool":
            raise ExportError(
                f"adapter {model.active_adapter!r} uses fusion 'pool' (features averaged per prior region: "
                "torch.unique gives data-dependent shapes), which cannot be exported; retrain with "
                "fusion concat or sft"
            )
        if cfg.prior_resize == "area" and fmt == "onnx":
            raise ExportError(
                f"adapter {model.active_adapter!r} resizes its prior with prior_resize 'area' "
                "(adaptive pooling to a size known only at run time), which ONNX cannot express; "
                "export it as TorchScript"
            )


def export_info(
    model: nn.Module, *, descriptor: Any = None, task: str | None = None, half: bool = False, scale: int | None = None
) -> dict[str, str]:
    """The metadata written into an exported file (string keys and values)."""
    from ..files.fingerprint import backbone_sha256
    from ..files.format import adapter_metadata, prior_record

    kind = _kind(model)
    radius = receptive_radius(model)
    meta = {
        "format": EXPORT_FORMAT,
        "library_version": __version__,
        "inputs": "image,prior" if kind == "prior" else "image",
        "kind": kind,
        "channels": str(input_channels(model, descriptor)),
        "size_multiple": str(size_multiple(model, descriptor)),
        "minimum_tile": str(minimum_tile(model, descriptor)),
        "window": str(window_size(model) or ""),
        "receptive_radius": "" if radius is None else str(radius),
        "dtype": "float16" if half else "float32",
        "scale": str(scale or ""),
    }
    if kind == "backbone":
        root = model.base_model if isinstance(model, SPTModel) else model
        meta.update(
            {
                "backbone_class": type(root).__name__,
                "backbone_sha256": backbone_sha256(root),
                "prior": "{}",
                "task": task or "",
            }
        )
        return meta
    spt = cast(SPTModel, model)
    adapter = adapter_metadata(spt, task=task)
    cfg = spt.spt_config[str(spt.active_adapter)]
    prior = prior_record(cfg.prior, task)
    fp = json.loads(adapter["fingerprint"])
    meta.update(
        {
            "adapter_name": str(spt.active_adapter),
            "config": adapter["config"],
            "fingerprint": adapter["fingerprint"],
            "backbone_class": fp.get("backbone_class", ""),
            "backbone_sha256": fp.get("backbone_sha256", ""),
            "prior": json.dumps(prior, sort_keys=True),
            "prior_channels": str(cfg.prior_channels),
            "prior_encoding": str(prior.get("encoding") or ("label" if kind == "prior" else "")),
            "task": str(prior.get("task") or ""),
        }
    )
    return meta


def _example_size(multiple: int, minimum: int) -> tuple[int, int]:
    """A traced size that is a multiple of the backbone's size multiple (the graph pads to it) and
    equal to no common training size (SwinIR takes another branch at its ``img_size``)."""
    m = max(multiple, 1)
    base = max(3 * m, math.ceil(minimum / m) * m, 24 if m == 1 else m)
    return base + (3 if m == 1 else 0), base + (5 if m == 1 else m)


def _check_sizes(h: int, w: int, multiple: int, minimum: int) -> list[tuple[int, int]]:
    """Two check sizes that differ from the traced one: one a multiple of the size multiple, one not."""
    m = max(multiple, 1)
    lo = max(minimum, m, 8)
    first = (h + m, w + 2 * m) if m > 1 else (h + 6, w + 4)
    second = (max(lo, h - m) + (m // 2 + 1 if m > 1 else 1), w + m + (3 if m > 2 else 1))
    return [first, second]


def _inputs(
    kind: str, channels: int, prior_channels: int, size: tuple[int, int], device, dtype, seed: int = 0, batch: int = 1
):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, *size, generator=g).to(device=device, dtype=dtype)
    if kind != "prior":
        return (x,)
    p = (torch.rand(batch, prior_channels, *size, generator=g) > 0.5).to(device=device, dtype=dtype)
    return (x, p)


def _onnx_bytes(wrapper: nn.Module, example: tuple, names: list[str], dynamic_batch: bool = True) -> bytes:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install 'spt-adapter[onnx]'") from None
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "out_height", 3: "out_width"}}
    if "prior" in names:
        dynamic["prior"] = {0: "batch", 2: "prior_height", 3: "prior_width"}
    if not dynamic_batch:
        for axes in dynamic.values():
            del axes[0]
    buf = io.BytesIO()
    target: Any = buf  # the TorchScript-based exporter writes to a file object too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            target,
            dynamo=False,
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    return buf.getvalue()


def _with_onnx_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key in sorted(meta):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, meta[key]
    proto.doc_string = "spt-adapter export: backbone + SPT units; see metadata_props"
    return proto.SerializeToString()


def _torchscript_bytes(wrapper: nn.Module, example: tuple, meta: dict[str, str]) -> bytes:
    """The traced archive with ``meta`` and the checksum of its own content (saved twice: the
    checksum covers every entry but the metadata, and must not change when the metadata does)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)

        def save(meta: dict[str, str]) -> bytes:
            buf = io.BytesIO()
            torch.jit.save(traced, buf, _extra_files={METADATA_FILE: json.dumps(meta, sort_keys=True)})
            return buf.getvalue()

        digest = torchscript_content_sha256(save(meta))
        data = save({**meta, CHECKSUM_KEY: digest})
    if torchscript_content_sha256(data) != digest:
        raise ExportError("torch.jit.save wrote a different archive for the same program twice; nothing was written")
    return data


def _with_onnx_checksum(data: bytes) -> bytes:
    """The ONNX file with the checksum of its graph appended to its metadata (:mod:`spt_adapter.deploy.checksum`)."""
    return onnx_with_entry(data, CHECKSUM_KEY, onnx_content_sha256(data))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


@torch.no_grad()
def export(
    model: nn.Module,
    path: str | Path,
    *,
    format: str | None = None,
    half: bool = False,
    descriptor: Any = None,
    task: str | None = None,
    scale: int | None = None,
    check: bool = True,
    overwrite: bool = True,
) -> Path:
    """Write ``model`` (a backbone, or an :class:`SPTModel` with its active adapter) to ``path`` as one
    ONNX or TorchScript file (``format``, else from the suffix) and return the path.

    ``descriptor`` (spandrel's) gives the size requirements; ``task`` is recorded when the adapter
    records none. With ``check`` (the default) the exported program is run at two sizes other than
    the traced one and must match the PyTorch model within :data:`PARITY_ATOL` (float32) before the
    file is written atomically; :class:`ExportError` names whatever fails, and nothing is written.
    ``overwrite=False`` refuses a ``path`` that exists, also one made while the export ran (`spt-adapter
    export` passes it unless ``--overwrite``). Temporary files of an earlier export to ``path`` cut short
    by kill -9 are removed.
    """
    path = Path(path)
    fmt = format_of(path, format)
    _refusals(model, fmt)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; export writes one file")
    if not path.parent.is_dir() and str(path.parent):
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    if fmt == "onnx":
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            raise ExportError("ONNX export needs the onnx package: pip install 'spt-adapter[onnx]'")
        if check and importlib.util.find_spec("onnxruntime") is None:
            raise ExportError(
                "checking an ONNX export runs it with onnxruntime, which is not installed: pip install "
                "'spt-adapter[onnx]' (or pass check=False / --no-check)"
            )
    if not overwrite and os.path.lexists(path):
        raise ExportError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    remove_stale_temporaries_of(path, older_than=time.time() - 60)
    kind = _kind(model)
    was_training = model.training
    model.eval()
    try:
        multiple = size_multiple(model, descriptor)
        minimum = minimum_tile(model, descriptor)
        channels = input_channels(model, descriptor)
        prior_channels = _prior_channels(model) if kind == "prior" else 0
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        merged = _is_lora(model)
        net: nn.Module = merged_lora_backbone(cast(SPTModel, model)) if merged else model
        if half:
            net = (net if merged else copy.deepcopy(model)).half()
        dtype = torch.float16 if half else torch.float32
        wrapper = _Deployable(net, "backbone" if merged else kind, multiple).eval()
        size = _example_size(multiple, minimum)
        example = _inputs(kind, channels, prior_channels, size, device, dtype)
        names = ["image", "prior"] if kind == "prior" else ["image"]
        what = f"{type(model.base_model if isinstance(model, SPTModel) else model).__name__}"
        try:
            if scale is None:
                out = wrapper(*example)
                scale = int(out.shape[-2] // size[0])
            meta = export_info(model, descriptor=descriptor, task=task, half=half, scale=scale)
            # "" when one changed pixel moves the output farther than the convolutions' sum (Restormer)
            meta["receptive_radius"] = measured_radius(_Deployable(model, kind, multiple).eval(), meta, minimum, device)

            def build(batch: str) -> bytes:
                meta["batch"] = batch
                if fmt == "onnx":
                    return _with_onnx_checksum(
                        _with_onnx_metadata(_onnx_bytes(wrapper, example, names, batch == "dynamic"), meta)
                    )
                return _torchscript_bytes(wrapper, example, meta)

            data = build("dynamic")
        except ExportError:
            raise
        except Exception as exc:  # the exporter's own error, named
            hint = "" if descriptor is not None else " (pass descriptor= so its size requirements are known)"
            if half and "dtype" in str(exc):
                hint = (
                    " (in float16: its code mixes float32 tensors it makes at run time into the graph; export float32)"
                )
            raise ExportError(f"{what} cannot be exported to {fmt}: {_first_line(exc)}{hint}") from None
        if check:
            sizes = _check_sizes(*size, multiple, minimum)
            tol = PARITY_ATOL if not half else 1e-2
            worst = parity(data, fmt, model, descriptor=descriptor, sizes=sizes)
            if not worst <= tol:
                raise ExportError(
                    f"the {fmt} export of {what} does not reproduce the PyTorch model: max |difference| "
                    f"{worst:.3g} > {tol:g} at sizes other than the traced one (a shape-dependent branch "
                    "was frozen by tracing); nothing was written"
                )
            if not parity(data, fmt, model, descriptor=descriptor, sizes=sizes[:1], batch=2) <= tol:
                # the backbone's code freezes the batch size (SwinIR's window_reverse: int(B)): the file
                # takes one image per call and its runner feeds a batch one image at a time
                data = build("1")
                worst = parity(data, fmt, model, descriptor=descriptor, sizes=sizes)
                if not worst <= tol:
                    raise ExportError(
                        f"the {fmt} export of {what} does not reproduce the PyTorch model (max "
                        f"|difference| {worst:.3g}); nothing was written"
                    )
    finally:
        model.train(was_training)
    try:
        if overwrite:
            return atomic_write_bytes(path, data)
        if not write_once_bytes(path, data):
            raise ExportError(f"{path} was created while the export ran; it is kept and nothing was written")
        return path
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc} (nothing was changed there)") from None


@torch.no_grad()
def parity(
    data: bytes | str | Path,
    fmt: str,
    model: nn.Module,
    *,
    descriptor: Any = None,
    sizes: list[tuple[int, int]],
    seed: int = 1,
    batch: int = 1,
) -> float:
    """Max |exported - PyTorch| over images of ``sizes`` (outputs clamped to [0, 1], as restore
    writes them); the reference is the PyTorch forward :func:`spt_adapter.inference.restore.restore`
    runs (padded to the size multiple, cropped back)."""
    try:
        runner = load_exported(data, fmt=fmt, slow_half_ok=True)  # small sizes: float16 on a CPU is fine here
    except ExportError as exc:  # its load-time run at the minimum tile failed: the runtime refuses the graph
        if "does not run at" not in str(exc):
            raise
        other = " (try the other format: torchscript)" if fmt == "onnx" else ""
        raise ExportError(f"the exported {fmt} file: {exc}{other}; nothing was written") from None
    kind = _kind(model)
    multiple = size_multiple(model, descriptor)
    channels = input_channels(model, descriptor)
    prior_channels = _prior_channels(model) if kind == "prior" else 0
    device = next((t.device for t in model.parameters()), torch.device("cpu"))
    dtype = torch.float16 if runner.dtype == "float16" else torch.float32
    worst = 0.0
    for i, size in enumerate(sizes):
        inputs = _inputs(kind, channels, prior_channels, size, device, torch.float32, seed=seed + i, batch=batch)
        p = inputs[1] if kind == "prior" else None
        ref = torch.cat(
            [
                _run(
                    model,
                    inputs[0][b : b + 1],
                    None if p is None else p[b : b + 1],
                    multiple=multiple,
                    backbone_only=kind == "backbone",
                    half=False,
                )[0]
                for b in range(batch)
            ]
        )
        try:
            got = runner(inputs[0].to(dtype), None if p is None else p.to(dtype))
        except Exception as exc:  # the runtime refuses the exported graph (DAT's position bias in onnxruntime)
            other = " (try the other format: torchscript)" if fmt == "onnx" else ""
            raise ExportError(
                f"the exported {fmt} file does not run at {size[0]}x{size[1]}: {_first_line(exc)}{other}; "
                "nothing was written"
            ) from None
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"the {fmt} export gives shape {tuple(got.shape)} at {size}, PyTorch {tuple(ref.shape)}")
        worst = max(worst, float((got.detach().float().cpu().clamp(0, 1) - ref.cpu().clamp(0, 1)).abs().max()))
    return worst
