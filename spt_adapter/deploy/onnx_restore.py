"""Run a file written by `spt-adapter export` (ONNX) with onnxruntime and NumPy only: no PyTorch.

    from spt_adapter.deploy.images import read_image
    from spt_adapter.deploy.onnx_restore import load_onnx, restore_image
    net = load_onnx("dncnn_spt.onnx")                               # backbone + units (+ student)
    out = restore_image(net, read_image("photo.png"), tile=256)     # HxWx3 uint8 in, out

The image is read, tiled, blended, clamped and rounded exactly as ``spt-adapter restore`` does
(:mod:`spt_adapter.deploy.tiling`; ``spt-adapter restore --backbone FILE.onnx`` runs through here
too). Files whose prior comes from a mask provider (metadata ``kind`` = ``prior``) need that
provider, which needs the package's PyTorch code: the torch-free command refuses them
(:func:`check_torch_free`); exports with a distilled student, with an adapter that reads no prior
(kind ``no-prior``) or of the backbone alone read the image only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError, RestoreError
from .checksum import verify
from .tiling import float_channels, output_kind, restore_array, to_image

__all__ = [
    "ExportedFile",
    "EXPORT_FORMAT",
    "METADATA_FILE",
    "OnnxNetwork",
    "check_meta",
    "check_torch_free",
    "load_onnx",
    "restore_image",
]

#: the ``format`` value of an exported file's metadata
EXPORT_FORMAT = "spt-adapter-export"
#: the TorchScript extra file holding the metadata (the same keys as ONNX's metadata_props)
METADATA_FILE = "spt_adapter.json"
#: the largest recorded receptive radius the load-time probe verifies (its input is 2 * (radius + 1) + 1
#: pixels wide); a larger recording only makes tiles overlap more (>= 2 * 64 + 1 pixels) and is kept
RADIUS_PROBE_LIMIT = 64
#: a change of a float32 output (on [0, 1]) below this does not count as the probe's pixel being seen:
#: under half a 16-bit level, and above the rounding noise of convolution algorithms (Winograd) that
#: mix a few neighbouring pixels into every output; float16 files get 64x it
RADIUS_TOLERANCE = 5e-6


def check_meta(meta: dict[str, str], source: str) -> None:
    """Refuse a file that `spt-adapter export` did not write (no ``format`` metadata of ours)."""
    if meta.get("format") != EXPORT_FORMAT:
        raise ExportError(
            f"{source} was not written by `spt-adapter export` (no {EXPORT_FORMAT!r} metadata): restore "
            "reads its own exports only"
        )


class _MetaFields:
    """Reads an exported file's metadata fields, refusing a malformed one by name."""

    def __init__(self, meta: dict[str, str], source: str) -> None:
        self.meta, self.source = meta, source

    def bad(self, key: str, why: str) -> None:
        raise ExportError(
            f"{self.source}: metadata field {key}={self.meta.get(key)!r} {why}; the file was not written by "
            "`spt-adapter export` as it is (export it again)"
        )

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.meta.get(key, default)
        if value not in allowed:
            self.bad(key, f"is not one of {', '.join(repr(a) for a in allowed)}")
        return value

    def integer(self, key: str, low: int, high: int, default):
        text = str(self.meta.get(key, "") or "").strip()
        if not text:
            return default
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            self.bad(key, f"is not a whole number in {low}..{high}")
        return value

    def json_object(self, key: str) -> dict:
        try:
            value = json.loads(self.meta.get(key) or "{}")
        except (json.JSONDecodeError, RecursionError):
            value = None
        if not isinstance(value, dict):
            self.bad(key, "is not a JSON object")
        return value


class ExportedFile:
    """What every runner of an `spt-adapter export` file shares, whatever its runtime: the metadata
    (:func:`~spt_adapter.inference.export.export_info`) read into the fields the tiler needs, and the
    call rules -- a file that reads a prior refuses a call without one, a file traced for one image per
    call (``batch: 1``) is fed a batch one image at a time. A runtime supplies :meth:`run` (one call as
    traced) and :meth:`concat` (its arrays joined on the batch axis)."""

    format = ""

    def __init__(self, meta: dict[str, str], source: str) -> None:
        self.meta, self.source = meta, source
        #: while True (the load-time probe), a runtime keeps its own error log quiet
        self.quiet = False
        field = _MetaFields(meta, source)
        self.kind = field.choice("kind", ("backbone", "student", "no-prior", "prior"), "backbone")
        self.dtype = field.choice("dtype", ("float32", "float16"), "float32")
        field.choice("batch", ("dynamic", "1", ""), "")
        self.channels = field.integer("channels", 1, 4, 3)
        self.size_multiple = field.integer("size_multiple", 1, 4096, 1)
        self.minimum_tile = field.integer("minimum_tile", 1, 1 << 16, 1)
        self.receptive_radius = field.integer("receptive_radius", 0, 1 << 20, None)
        self.prior = field.json_object("prior")
        self.prior_channels = field.integer("prior_channels", 0, 4096, 0)
        #: the output size over the input size the export recorded (None: not recorded)
        self.scale: int | None = field.integer("scale", 1, 16, None)
        inputs = "image,prior" if self.kind == "prior" else "image"
        if meta.get("inputs", inputs) != inputs:
            field.bad("inputs", f"contradicts kind {self.kind!r} (which takes {inputs})")
        if self.kind == "prior" and self.prior_channels < 1:
            field.bad("prior_channels", "must be at least 1 for kind 'prior'")

    def check_graph(self, inputs: dict[str, tuple[list, str]]) -> None:
        """The metadata against the graph's own inputs (name -> (shape, element type); a dimension
        is an int when the graph fixes it): the inputs it takes, the image and prior channels, the
        dtype. A file whose metadata lies about them is refused by name, not run into a traceback."""
        field = _MetaFields(self.meta, self.source)
        if "image" not in inputs:
            raise ExportError(f"{self.source}: the graph has no 'image' input (inputs: {sorted(inputs)})")
        if ("prior" in inputs) != (self.kind == "prior"):
            field.bad("kind", f"{self.kind!r} does not match the graph, whose inputs are {sorted(inputs)}")
        shape, elem = inputs["image"]
        if len(shape) >= 2 and isinstance(shape[1], int) and shape[1] != self.channels:
            field.bad("channels", f"says {self.channels}, but the graph reads {shape[1]}-channel images")
        if elem and ("16" in elem) != (self.dtype == "float16"):
            field.bad("dtype", f"says {self.dtype}, but the graph takes {elem}")
        if "prior" in inputs:
            pshape = inputs["prior"][0]
            if len(pshape) >= 2 and isinstance(pshape[1], int) and pshape[1] != self.prior_channels:
                field.bad("prior_channels", f"says {self.prior_channels}, but the graph reads {pshape[1]}")

    def probe(self, array: Callable[[np.ndarray], Any]) -> None:
        """Check on load that the graph is what its metadata says (``array`` turns a float32 NumPy
        array into the runtime's): it runs at the recorded minimum tile (:meth:`probe_run`) and an
        output pixel sees no farther than the recorded receptive radius (:meth:`probe_radius`)."""
        self.probe_run(array)
        self.probe_radius(array)

    def probe_run(self, array: Callable[[np.ndarray], Any]) -> None:
        """Run the file once on a minimum-size input of zeros: it must run as the metadata describes it
        and give the recorded scale. When it fails there but runs on a larger input, the recorded
        minimum tile (or size multiple) is what is wrong, and the message says so."""
        m = max(self.minimum_tile, self.size_multiple)
        m = -(-m // self.size_multiple) * self.size_multiple
        try:
            out = self._zeros_run(array, m)
        except Exception as exc:
            first = _first_line(exc)
            larger = -(-max(4 * m, 32) // self.size_multiple) * self.size_multiple
            try:
                self._zeros_run(array, larger)
            except Exception:
                larger = 0
            if larger:  # runs larger: the recorded minimum is the lie
                field = "minimum_tile" if self.minimum_tile >= self.size_multiple else "size_multiple"
                raise ExportError(
                    f"{self.source}: metadata field {field}={self.meta.get(field)!r} lets tiles of {m}x{m} pixels "
                    f"through, but the graph does not run at {m}x{m} (it runs at {larger}x{larger}; "
                    f"{first}): tiles that small would fail mid-run; the metadata is "
                    "wrong (edited after export, or a smallest input export could not see)"
                ) from None
            raise ExportError(
                f"{self.source} does not run at {m}x{m} as its metadata describes it ({self.channels} channel(s), kind "
                f"{self.kind}, {self.dtype}, size multiple {self.size_multiple}): {first}"
            ) from None
        shape = tuple(out.shape)
        if len(shape) != 4 or shape[-2] % m or shape[-1] % m or shape[-2] // m != shape[-1] // m:
            raise ExportError(f"{self.source}: the graph maps a {m}x{m} input to shape {shape}, not an image")
        if self.scale is not None and shape[-2] // m != self.scale:
            _MetaFields(self.meta, self.source).bad(
                "scale", f"says x{self.scale}, but the graph gives x{shape[-2] // m}"
            )

    def _zeros_run(self, array: Callable[[np.ndarray], Any], m: int) -> Any:
        x = array(np.zeros((1, self.channels, m, m), np.float32))
        p = array(np.zeros((1, self.prior_channels, m, m), np.float32)) if self.needs_prior else None
        self.quiet = True  # a failure here is reported in one line: the runtime logs nothing of its own
        try:
            return self.run(x, p)
        finally:
            self.quiet = False

    def probe_radius(self, array: Callable[[np.ndarray], Any]) -> int | None:
        """The farthest (in input pixels, Chebyshev) an output pixel moves when one input pixel
        changes, measured on a ``2 * (radius + 1) + 1`` pixel input (two images, one forward; the prior,
        if any, is zeros in both); a recorded ``receptive_radius`` below it is refused: tiles would be
        cross-faded where they still differ, and the output would have seams. A larger recorded
        radius only makes tiles overlap more, and is kept. Nothing is measured for a file that records
        no radius (attention backbones: their field is the whole image, tiling uses the default
        overlap) or one above :data:`RADIUS_PROBE_LIMIT`. Changes below :data:`RADIUS_TOLERANCE` (on
        [0, 1] outputs; a float16 file's rounding is larger) do not count: a change too small to move a
        16-bit output leaves no seam. Returns the measured distance, or None when nothing was measured."""
        radius = self.receptive_radius
        try:
            got = measure_reach(
                lambda x, p: self.to_numpy(self(array(x), None if p is None else array(p))),
                radius=radius,
                channels=self.channels,
                prior_channels=self.prior_channels if self.needs_prior else 0,
                multiple=self.size_multiple,
                minimum=self.minimum_tile,
                tolerance=RADIUS_TOLERANCE * (64 if self.dtype == "float16" else 1),
            )
        except Exception as exc:
            raise ExportError(f"{self.source} does not run as its metadata describes it: {_first_line(exc)}") from None
        if got is None:
            return None
        far, side = got
        if radius is not None and far > radius:
            _MetaFields(self.meta, self.source).bad(
                "receptive_radius",
                f"says an output pixel sees {radius} input pixel(s) around it, but changing one input pixel "
                f"moves outputs {far} pixel(s) away (measured on a {side}x{side} input): tiles would be blended "
                "where they still differ (seams)",
            )
        return far

    def to_numpy(self, out: Any) -> np.ndarray:
        """An output of :meth:`run` as a float64 NumPy array."""
        return np.asarray(out, dtype=np.float64)

    @property
    def needs_prior(self) -> bool:
        return self.kind == "prior"

    def run(self, x: Any, prior: Any = None) -> Any:
        raise NotImplementedError

    def concat(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def __call__(self, x: Any, prior: Any = None) -> Any:
        if self.needs_prior and prior is None:
            raise RestoreError(
                f"{self.source} reads a prior ({self.prior_channels} channel(s)) beside the image; none was given"
            )
        prior = prior if self.needs_prior else None
        if self.meta.get("batch") == "1" and x.shape[0] > 1:  # a file traced for one image per call
            return self.concat(
                [self.run(x[i : i + 1], None if prior is None else prior[i : i + 1]) for i in range(x.shape[0])]
            )
        return self.run(x, prior)


class OnnxNetwork(ExportedFile):
    """An exported ONNX file in an onnxruntime session: ``net(x, prior=None)`` on (B,C,H,W) float32
    NumPy arrays returns the output array (:class:`ExportedFile`'s fields and call rules)."""

    format = "onnx"

    def __init__(self, session: Any, meta: dict[str, str], source: str) -> None:
        super().__init__(meta, source)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self._np_dtype = np.float16 if self.dtype == "float16" else np.float32

    def run(self, x: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """One session run, as the file was traced (no batch splitting, no checks)."""
        feed = {"image": np.asarray(x).astype(self._np_dtype, copy=False)}
        if "prior" in self.input_names:
            assert prior is not None  # __call__ refuses a missing prior
            feed["prior"] = np.asarray(prior).astype(self._np_dtype, copy=False)
        options = None
        if self.quiet:
            import onnxruntime as ort

            options = ort.RunOptions()
            options.log_severity_level = 4  # fatal only: the probe's own message names the failure
        try:
            return self.session.run(None, feed, options)[0]
        except MemoryError:
            raise RestoreError(out_of_memory(self.source, feed["image"].shape)) from None
        except Exception as exc:  # onnxruntime's own classes; an allocation failure is named by its text
            text = str(exc).lower()
            if "alloc" in text or "out of memory" in text:
                raise RestoreError(out_of_memory(self.source, feed["image"].shape)) from None
            raise

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def __repr__(self) -> str:
        return f"OnnxNetwork({self.source!r}, kind={self.kind})"


def measure_reach(
    call: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    *,
    radius: int | None,
    channels: int,
    prior_channels: int,
    multiple: int,
    minimum: int,
    tolerance: float = RADIUS_TOLERANCE,
) -> tuple[int, int] | None:
    """How far a network's output moves from one changed input pixel: ``(distance, side)``, the
    farthest output pixel (in input pixels, Chebyshev) that changed by more than ``tolerance`` on a
    ``side`` x ``side`` input of ``2 * (radius + 1) + 1`` pixels (rounded up to ``multiple``, at least
    ``minimum``) whose middle pixel alone differs. ``call(x, prior)`` runs (2,C,side,side) float32
    images (the prior zeros, when ``prior_channels``) and returns the outputs as NumPy. None, without a
    run, for ``radius`` None or above :data:`RADIUS_PROBE_LIMIT`. One forward: the probe of every
    exported file on load and the check of the radius `spt-adapter export` records."""
    if radius is None or radius + 1 > RADIUS_PROBE_LIMIT:
        return None
    side = max(2 * (radius + 1) + 1, minimum)
    side = -(-side // multiple) * multiple
    c = side // 2
    base = np.random.default_rng(0).random((1, channels, side, side), dtype=np.float32)
    moved = base.copy()
    moved[0, :, c, c] = (moved[0, :, c, c] + 0.5) % 1.0  # one pixel changed by half the range
    prior = np.zeros((2, prior_channels, side, side), np.float32) if prior_channels else None
    out = np.asarray(call(np.concatenate([base, moved]), prior), dtype=np.float64)
    scale = max(1, out.shape[-1] // side)
    ys, xs = np.nonzero(np.abs(out[1] - out[0]).max(axis=0) > tolerance)
    if ys.size == 0:
        return 0, side
    return int(max(np.abs(ys // scale - c).max(), np.abs(xs // scale - c).max())), side


def _first_line(exc: BaseException) -> str:
    """A runtime's exception in one short line: its class and first line (onnxruntime's own status
    message only, without the node and error-code preamble)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if "Status Message: " in text:
        text = text.split("Status Message: ", 1)[1]
    return f"{type(exc).__name__}: {text[:200]}"


def out_of_memory(source: str, shape: tuple[int, ...]) -> str:
    """The message for an allocation failure running ``source`` on an input of ``shape``."""
    h, w = shape[-2], shape[-1]
    return f"{source}: not enough memory to run a {h}x{w} input whole; restore in tiles: pass --tile 512 (or smaller)"


def default_threads() -> int | None:
    """onnxruntime's intra-op threads: ``$OMP_NUM_THREADS`` when it is a positive number, else its default."""
    n = os.environ.get("OMP_NUM_THREADS")
    return int(n) if n and n.isdigit() and int(n) > 0 else None


def load_onnx(
    source: bytes | str | os.PathLike,
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    name: str | None = None,
) -> OnnxNetwork:
    """Open an exported ONNX file (a path, or its bytes) in onnxruntime. ``threads``: intra-op threads;
    ``providers``: execution providers (CPU by default). Refuses what onnxruntime cannot load and
    files that `spt-adapter export` did not write, with one line naming the file."""
    if isinstance(source, (bytes, bytearray)):
        label, data = name or "<exported bytes>", bytes(source)
    else:
        label = name or str(source)
        if not Path(source).is_file():
            raise ExportError(f"exported file {source} does not exist")
        data = Path(source).read_bytes()
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(f"{label} is an ONNX file: running it needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own classes for unreadable files
        raise ExportError(f"{label}: onnxruntime cannot load it ({str(exc).strip().splitlines()[0][:200]})") from None
    meta = dict(session.get_modelmeta().custom_metadata_map)
    check_meta(meta, label)
    verify(meta, data, "onnx", label)
    net = OnnxNetwork(session, meta, label)
    net.check_graph({i.name: (list(i.shape), str(i.type)) for i in session.get_inputs()})
    net.probe(lambda a: a)
    return net


def check_torch_free(net: OnnxNetwork) -> None:
    """Refuse an export that reads a prior from a mask provider: computing it needs the provider and
    the package's PyTorch code, which this runner does without."""
    if net.needs_prior:
        provider = dict(net.prior.get("provider") or {})
        what = provider.get("provider") or "a mask provider"
        if provider.get("method"):
            what = f"{what} ({provider['method']})"
        raise RestoreError(
            f"{net.source} reads a prior computed by {what} (export kind 'prior'); the torch-free runner "
            "restores only exports with a distilled prior or none: run `spt-adapter restore --backbone "
            f"{net.source}` with PyTorch installed, or export an adapter trained with a prior student"
        )


def restore_image(
    net: OnnxNetwork,
    image: Any,
    prior: Any = None,
    *,
    tile: int | None = None,
    tile_overlap: int | None = None,
    tile_blend: int | None = None,
    channels: int | None = None,
    info: Any = None,
) -> np.ndarray:
    """Restore one image (NumPy ``HxW``/``HxWxC``, uint8/uint16 or float on [0, 1]) with an exported
    file: ``HxWx3`` (``HxW`` for grey files) uint8 for 8-bit inputs, uint16 for 16-bit ones, float32
    on [0, 1] for float ones. ``prior``: the whole image's prior, for a file that reads one (None otherwise). Tiling as
    :func:`~spt_adapter.deploy.tiling.restore_array` with the file's size multiple, minimum tile
    and receptive radius."""
    n_in = channels or net.channels
    if n_in != net.channels:
        raise RestoreError(f"{net.source} takes {net.channels}-channel images, not {n_in}")
    if net.needs_prior and prior is None:
        raise RestoreError(f"{net.source} reads a prior: compute it with the provider its metadata records")
    as_float = output_kind(image)
    x_np, _ = float_channels(image, n_in, "image")
    out = restore_array(
        net,
        x_np.transpose(2, 0, 1),
        prior if net.needs_prior else None,
        multiple=net.size_multiple,
        tile=tile,
        tile_overlap=tile_overlap,
        tile_blend=tile_blend,
        minimum=net.minimum_tile,
        radius=net.receptive_radius,
        info=info,
    )
    return to_image(out, as_float)
