"""Run an exported file (:mod:`spt_adapter.inference.export`) the way :func:`restore` runs a model.

    runner = load_exported("swinir_spt.onnx")          # onnxruntime; or a TorchScript .pt export
    out = restore_exported(runner, read_image("photo.png"), tile=256)

ONNX files run through onnxruntime: no backbone checkpoint, no adapter file and no segmenter for a
distilled adapter (a provider-prior export still computes its prior with the provider its metadata
records). Tiling, blending and the output rules are those of :func:`restore`: an ONNX file is tiled
by the torch-free :mod:`spt_adapter.deploy` (whose NumPy tiler reproduces
:func:`~spt_adapter.inference.restore.restore_tensor` bit for bit), a TorchScript file is handed to
``restore_tensor`` as the network.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..deploy.checksum import verify
from ..deploy.onnx_restore import EXPORT_FORMAT, METADATA_FILE, ExportedFile, OnnxNetwork, load_onnx, restore_image
from ..deploy.onnx_restore import check_meta as _check_meta
from ..errors import ExportError, RestoreError

__all__ = [
    "EXPORT_FORMAT",
    "METADATA_FILE",
    "ExportedModel",
    "exported_format",
    "load_exported",
    "measured_radius",
    "restore_exported",
]


def exported_format(path: str | Path) -> str | None:
    """``onnx`` / ``torchscript`` when ``path`` is a file :func:`~spt_adapter.inference.export.export`
    wrote (an ``.onnx`` file; a TorchScript archive holding ``extra/spt_adapter.json``), else None."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return "onnx"
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                if any(n.endswith(f"/extra/{METADATA_FILE}") for n in z.namelist()):
                    return "torchscript"
        except (OSError, zipfile.BadZipFile):
            return None
    return None


class ExportedModel(ExportedFile):
    """An exported file ready to run: ``runner(x, prior=None)`` on (B,C,H,W) float tensors returns the
    output tensor; ``meta`` holds the file's metadata (:func:`~spt_adapter.inference.export.export_info`);
    the fields and call rules are :class:`~spt_adapter.deploy.onnx_restore.ExportedFile`'s."""

    def __init__(self, fmt: str, meta: dict[str, str], call, source: str) -> None:
        super().__init__(meta, source)
        self.format, self._call = fmt, call
        self.device = torch.device("cpu")
        #: the NumPy network of an ONNX file (:mod:`spt_adapter.deploy`): restore_exported tiles with it
        self.network: OnnxNetwork | None = None
        #: what the runner does differently from the file (a float16 file run in float32 on the CPU), or ""
        self.note = ""

    def run(self, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        return self._call(x, prior)

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    def to_numpy(self, out: Any) -> np.ndarray:
        return out.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(out) else super().to_numpy(out)

    def __repr__(self) -> str:
        return f"ExportedModel({self.source!r}, format={self.format}, kind={self.kind})"


def _onnx(data: bytes, source: str, threads: int | None, providers) -> ExportedModel:
    network = load_onnx(data, threads=threads, providers=providers, name=source)

    def call(x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        p = None if prior is None else prior.detach().cpu().numpy()
        return torch.from_numpy(network.run(x.detach().cpu().numpy(), p))

    runner = ExportedModel("onnx", network.meta, call, source)
    runner.network = network
    return runner


def _torchscript(data: bytes | str, source: str, device, slow_half_ok: bool = False) -> ExportedModel:
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()

    def load(extra: dict[str, str]):
        try:
            return torch.jit.load(io.BytesIO(raw), map_location=device, _extra_files=extra)
        except Exception as exc:
            raise ExportError(
                f"{source}: not a loadable TorchScript file ({str(exc).strip().splitlines()[0][:200]})"
            ) from None

    extra = {METADATA_FILE: ""}
    module = load(extra)
    try:
        meta = json.loads(extra[METADATA_FILE] or "{}")
    except json.JSONDecodeError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    _check_meta(meta, source)
    verify(meta, raw, "torchscript", source)
    dev = torch.device(device or "cpu")
    if meta.get("dtype") == "float16" and dev.type == "cpu":
        # float16 arithmetic on a CPU is emulated: a photo took hours (~70x float32). Its float16 weights
        # are exact in float32, so the file runs in float32 there -- when its program allows: a traced
        # program that casts to float16 itself cannot, and is refused with the reason (the export's own
        # check, on small sizes, runs it in float16: slow_half_ok)
        runner = _torchscript_runner(module.float(), meta, source, dev, torch.float32)
        runner.note = "float16 file run in float32 on the CPU (float16 on a CPU is ~70x slower)"
        try:
            runner.probe_run(torch.from_numpy)
        except ExportError:
            if not slow_half_ok:
                raise ExportError(
                    f"{source} is a float16 export: on the CPU float16 runs ~70x slower than float32, and "
                    "this file's program does not run in float32 (it casts to float16 itself): run it on "
                    "a CUDA device (--device cuda), or export it without --half for the CPU"
                ) from None
        else:
            runner.probe_radius(torch.from_numpy)
            return runner
        module = load({METADATA_FILE: ""})
    dtype = torch.float16 if meta.get("dtype") == "float16" else torch.float32
    runner = _torchscript_runner(module, meta, source, dev, dtype)
    runner.probe(torch.from_numpy)
    return runner


def _torchscript_runner(module, meta: dict[str, str], source: str, dev: torch.device, dtype) -> ExportedModel:
    """The runner of a loaded TorchScript export, its metadata checked against the module's inputs."""

    def call(x: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            args = (x.to(dev, dtype),) if prior is None else (x.to(dev, dtype), prior.to(dev, dtype))
            return module(*args)

    runner = ExportedModel("torchscript", meta, call, source)
    runner.device = dev
    names = [v.debugName().split(".")[0] for v in list(module.graph.inputs())[1:]]  # [0] is self
    param = next((t for t in module.parameters() if t.is_floating_point()), None)
    elem = "" if param is None else str(param.dtype).replace("torch.", "")
    if dtype != torch.float16 and meta.get("dtype") == "float16":
        elem = ""  # converted to float32 here; the file's own dtype was float16
    runner.check_graph({n: ([], elem if n == "image" else "") for n in names})
    return runner


def measured_radius(forward: Any, meta: dict[str, str], minimum: int, device: Any = None) -> str:
    """The receptive radius `spt-adapter export` records: ``meta``'s (the sum over the model's
    convolutions), or "" (the whole image, as for window attention) when one changed pixel moves the
    output of ``forward(image, prior)`` (the float32 model as exported) farther -- attention computed in
    a module's own code (Restormer's channel attention) is invisible to the sum. Measured as every
    runner probes the file on load (:func:`spt_adapter.deploy.onnx_restore.measure_reach`), so what
    is recorded passes that probe."""
    from ..deploy.onnx_restore import measure_reach

    recorded = meta.get("receptive_radius") or ""
    if not recorded:
        return ""

    def call(x: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        p = None if prior is None else torch.from_numpy(prior).to(device)
        with torch.no_grad():
            return forward(torch.from_numpy(x).to(device), p).detach().to("cpu", torch.float64).numpy()

    try:
        got = measure_reach(
            call,
            radius=int(recorded),
            channels=int(meta["channels"]),
            prior_channels=int(meta.get("prior_channels") or 0) if meta.get("kind") == "prior" else 0,
            multiple=int(meta.get("size_multiple") or 1),
            minimum=minimum,
        )
    except Exception:  # the model does not run at the probe's size: the export's own checks say why
        return recorded
    return "" if got is not None and got[0] > int(recorded) else recorded


def load_exported(
    source: bytes | str | Path,
    *,
    fmt: str | None = None,
    threads: int | None = None,
    providers: list[str] | None = None,
    device: Any = None,
    slow_half_ok: bool = False,
) -> ExportedModel:
    """Load an exported file (or its bytes, with ``fmt``) as an :class:`ExportedModel`. ``threads``:
    onnxruntime's intra-op threads; ``providers``: its execution providers (CPU by default);
    ``device``: where a TorchScript export runs. A float16 TorchScript file on the CPU runs in
    float32, or is refused when its program cannot (``slow_half_ok``: run it in float16 then)."""
    if isinstance(source, (bytes, bytearray)):
        if fmt is None:
            raise ExportError("load_exported(bytes) needs fmt='onnx' or 'torchscript'")
        name, data = "<exported bytes>", bytes(source)
    else:
        name = str(source)
        if not Path(source).is_file():
            raise ExportError(f"exported file {source} does not exist")
        fmt = fmt or exported_format(source)
        if fmt is None:
            raise ExportError(
                f"{source} is neither an .onnx file nor a TorchScript file written by `spt-adapter export`"
            )
        data = Path(source).read_bytes()
    if fmt == "onnx":
        return _onnx(data, name, threads, providers)
    if fmt == "torchscript":
        return _torchscript(data, name, device, slow_half_ok)
    raise ExportError(f"unknown export format {fmt!r}")


def prior_source_of(runner: ExportedModel, *, provider: Any = None, encoding: str | None = None, cache: Any = None):
    """Where the prior of an exported file comes from: none (backbone, an adapter that reads no prior,
    or a distilled student inside the file), or the provider and encoding its metadata records (``provider``/``encoding`` override)."""
    from .restore import PriorSource, provider_from_record

    if runner.kind == "backbone":
        return PriorSource("none", described="none (backbone alone)")
    if runner.kind == "no-prior":
        if provider is not None:
            raise RestoreError(
                f"{runner.source} reads no prior (it was trained with prior 'none'): drop the provider flags"
            )
        return PriorSource("no-prior", described="none (the adapter inside the file reads no prior)")
    if runner.kind == "student":
        if provider is not None:
            raise RestoreError(
                f"{runner.source} carries a distilled prior (its student is inside the file): drop the provider flags"
            )
        return PriorSource("student", described="the distilled student inside the file")
    if provider is None:
        provider = provider_from_record(dict(runner.prior.get("provider") or {}), runner.source)
    recorded = runner.meta.get("prior_encoding") or "label"
    if encoding and encoding != recorded:
        from ..prior.encode import encoding_channels

        if encoding_channels(encoding) != runner.prior_channels:
            raise RestoreError(
                f"--encoding {encoding} gives {encoding_channels(encoding)} prior channel(s), but "
                f"{runner.source} was exported for {runner.prior_channels} ({recorded}): drop --encoding, "
                f"or pass --encoding {recorded}"
            )
    encoding = encoding or recorded
    return PriorSource(
        "provider", provider=provider, encoding=encoding, cache=cache, described=f"{provider!r}, encoding {encoding}"
    )


def restore_exported(
    runner: ExportedModel,
    image,
    prior: Any = None,
    *,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_blend: int | None = None,
    info=None,
    channels: int | None = None,
    half: bool = False,
    backbone_only: bool = False,
    descriptor: Any = None,
    **_ignored,
) -> np.ndarray:
    """:func:`~spt_adapter.inference.restore.restore` for an exported file: the same image reading,
    tiling, clamping and uint8 rounding. An ONNX file runs through the torch-free
    :func:`spt_adapter.deploy.onnx_restore.restore_image` (so ``spt-adapter restore --backbone
    FILE.onnx`` and ``python -m spt_adapter.deploy restore`` write the same bytes); a TorchScript one
    through :func:`~spt_adapter.inference.restore.restore_tensor`. ``prior``: the whole image's prior
    (required when the file reads one; compute it with :func:`prior_source_of`)."""
    from ..deploy.tiling import default_blend_for, default_overlap_for, output_kind, to_image
    from .restore import _float_channels, restore_tensor

    if half:
        raise RestoreError(
            "--half is autocast for PyTorch models; an exported file runs in the dtype it was "
            "exported in (spt-adapter export --half)"
        )
    if backbone_only:
        raise RestoreError("an exported file holds its adapter inside: --no-adapter needs the backbone checkpoint")
    n_in = channels or runner.channels
    if n_in != runner.channels:
        raise RestoreError(f"{runner.source} takes {runner.channels}-channel images, not {n_in}")
    if runner.needs_prior and prior is None:
        raise RestoreError(f"{runner.source} reads a prior: compute it with the provider its metadata records")
    if runner.network is not None:
        p = prior.detach().cpu().numpy() if torch.is_tensor(prior) else prior
        return restore_image(
            runner.network, image, p, tile=tile, tile_overlap=tile_overlap, tile_blend=tile_blend, info=info
        )
    as_float = output_kind(image)
    x_np, _ = _float_channels(image, n_in, "image")
    overlap, blend = tile_overlap, tile_blend
    if tile is not None:
        radius = runner.receptive_radius
        overlap = default_overlap_for(radius) if overlap is None else overlap
        blend = default_blend_for(radius, overlap) if blend is None else blend
    network: Any = runner  # restore_tensor runs any callable (x, prior) -> output as the network
    out = restore_tensor(
        network,
        torch.from_numpy(x_np.transpose(2, 0, 1).copy()),
        prior if runner.needs_prior else None,
        multiple=runner.size_multiple,
        tile=tile,
        tile_overlap=overlap,
        tile_blend=blend,
        minimum=runner.minimum_tile,
        info=info,
    )
    return to_image(out.numpy(), as_float)
