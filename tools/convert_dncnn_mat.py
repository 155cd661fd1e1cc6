"""Convert cszn/DnCNN's MatConvNet models (``model/*.mat``) into a safetensors DnCNN.

    python tools/convert_dncnn_mat.py DnCNN/model/GD_Color_Blind.mat cdncnn_b.safetensors
    python tools/convert_dncnn_mat.py DnCNN/model/DnCNN3.mat dncnn3.safetensors

The ``.mat`` files are MATLAB v7.3, i.e. HDF5: ``h5py`` reads them as arrays (no code runs;
``scipy.io.loadmat`` cannot read v7.3). Each holds a MatConvNet *simplenn* ``net.layers`` list of
``conv`` and ``relu`` layers with batch normalisation already merged into the convolutions. The
output uses KAIR's ``DnCNN(act_mode="R")`` layer names (``model.{2i}.weight``/``.bias``), which
spandrel detects, so ``spt_adapter.load_backbone(OUT)`` loads it. Like KAIR's DnCNN, the network
predicts the residual and returns ``input - residual`` (MatConvNet's demos do the same).

Axes: MATLAB stores a conv weight as (H, W, C_in, C_out) in column-major order, so h5py returns it
reversed, (C_out, C_in, W, H); MATLAB also drops trailing singleton axes, so a grey network's last
weight (H, W, 64, 1) reads as (64, W, H). Both are undone here. Anything that is not such a layer
list (other layer types, pooling, strides, dilations, a non-"same" padding, wrong shapes) is
refused with a message naming the layer.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


class ConversionError(ValueError):
    """The file is not a MatConvNet simplenn DnCNN this converter understands."""


#: the most values one array of a DnCNN may hold (its largest conv, 64x64x3x3, holds 36,864): a larger
#: declared shape is a damaged or hostile file, refused before it is read (a 2.7 MB file declared 6.4 GB)
MAX_ARRAY_VALUES = 1 << 24


def _dataset(f, ref, what: str):
    """The HDF5 dataset ``ref`` points to, its declared shape checked before anything is read."""
    try:
        ds = f[ref]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConversionError(f"{what} points to nothing readable ({exc})") from None
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
        raise ConversionError(f"{what} is not an array")
    if ds.size > MAX_ARRAY_VALUES:
        raise ConversionError(
            f"{what} declares shape {tuple(ds.shape)} ({ds.size:,} values), far beyond any DnCNN layer; "
            "the file is damaged"
        )
    return ds


def _text(group, key: str) -> str:
    if key not in group:
        raise ConversionError(f"layer has no {key!r} field")
    ds = group[key]
    if not hasattr(ds, "shape") or ds.size > 4096:
        raise ConversionError(f"layer field {key!r} is not a short MATLAB char array")
    data = ds[()]
    if data.dtype != np.uint16:
        raise ConversionError(f"layer field {key!r} is not a MATLAB char array")
    return "".join(map(chr, np.asarray(data).ravel()))


def _scalar(group, key: str, default: float) -> np.ndarray:
    return np.asarray(group[key][()], dtype=np.float64).ravel() if key in group else np.array([default])


def read_layers(path: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The conv layers of a simplenn DnCNN as (name, weight (C_out, C_in, 3, 3), bias (C_out,)), with
    the ReLUs checked to sit between them."""
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ConversionError(f"{path} is not a MATLAB v7.3 (HDF5) file: {exc}") from None
    with handle as f:
        if "net" not in f or "layers" not in f["net"]:
            raise ConversionError(f"{path} holds no net.layers (top-level keys {sorted(f.keys())})")
        refs = f["net"]["layers"]
        if not hasattr(refs, "dtype"):  # a struct array: MatConvNet's DagNN saves its layer table so
            fields = sorted(refs.keys()) if hasattr(refs, "keys") else []
            raise ConversionError(
                f"{path}: net.layers is a struct of {fields}, a MatConvNet DagNN network (net.params holds "
                "its weights); this converter reads simplenn models (cszn/DnCNN's model/*.mat): convert it "
                "in MATLAB with dagnn.DagNN.loadobj and save a simplenn net, or use those files"
            )
        if refs.dtype != object:
            raise ConversionError(f"{path}: net.layers is not a cell array of layers (simplenn)")
        if refs.size > 1000:
            raise ConversionError(f"{path}: net.layers declares {refs.size} layers; a DnCNN has about 40")
        convs: list[tuple[str, np.ndarray, np.ndarray]] = []
        kinds: list[str] = []
        for index, ref in enumerate(np.asarray(refs[()]).ravel()):
            try:
                layer = f[ref]
            except (KeyError, ValueError, TypeError) as exc:
                raise ConversionError(f"{path}: layer #{index} points to nothing readable ({exc})") from None
            if not hasattr(layer, "keys"):
                raise ConversionError(f"{path}: layer #{index} is not a struct")
            kind = _text(layer, "type")
            name = _text(layer, "name") if "name" in layer else f"#{index}"
            kinds.append(kind)
            if kind == "relu":
                if np.any(_scalar(layer, "leak", 0.0) != 0):
                    raise ConversionError(f"{path}: layer {name} is a leaky ReLU; only plain ReLU is supported")
                continue
            if kind != "conv":
                raise ConversionError(
                    f"{path}: layer {name} has type {kind!r}; only conv and relu layers "
                    "(batch norm merged) are supported"
                )
            if np.any(_scalar(layer, "stride", 1.0) != 1) or np.any(_scalar(layer, "dilate", 1.0) != 1):
                raise ConversionError(f"{path}: layer {name} has a stride or dilation other than 1")
            if "weights" not in layer:
                raise ConversionError(f"{path}: conv layer {name} has no weights")
            weights = layer["weights"]
            if not hasattr(weights, "dtype") or weights.dtype != object or weights.size > 16:
                raise ConversionError(f"{path}: conv layer {name}: its weights are not a cell of 2 arrays")
            weight_refs = np.asarray(weights[()]).ravel()
            if len(weight_refs) != 2:
                raise ConversionError(f"{path}: layer {name} has {len(weight_refs)} weight arrays, expected 2")
            weight = np.asarray(_dataset(f, weight_refs[0], f"{path}: layer {name} weight")[()], dtype=np.float32)
            bias = np.asarray(_dataset(f, weight_refs[1], f"{path}: layer {name} bias")[()], dtype=np.float32).ravel()
            if weight.ndim == 3:  # MATLAB dropped the trailing C_out = 1 axis
                weight = weight[None]
            if weight.ndim != 4:
                raise ConversionError(f"{path}: layer {name} weight has shape {weight.shape}")
            weight = np.ascontiguousarray(weight.transpose(0, 1, 3, 2))  # (C_out, C_in, W, H) -> (.., H, W)
            c_out, _, kh, kw = weight.shape
            pad = _scalar(layer, "pad", 0.0)
            if kh != kw or kh % 2 != 1 or np.any(pad != (kh - 1) // 2):
                raise ConversionError(
                    f"{path}: layer {name} is a {kh}x{kw} conv with padding {pad.tolist()}; "
                    "only odd square kernels with 'same' padding are supported"
                )
            if bias.shape != (c_out,):
                raise ConversionError(f"{path}: layer {name} bias has {bias.size} values for {c_out} outputs")
            convs.append((name, weight, bias))
    expected = ["conv", "relu"] * (len(convs) - 1) + ["conv"]
    if kinds != expected or len(convs) < 3:
        raise ConversionError(f"{path}: layers are {kinds}; a DnCNN is conv (relu conv)* with at least 3 convs")
    for (prev_name, prev, _), (name, weight, _) in zip(convs, convs[1:], strict=False):
        if weight.shape[1] != prev.shape[0]:
            raise ConversionError(
                f"{path}: layer {name} reads {weight.shape[1]} channels but {prev_name} writes {prev.shape[0]}"
            )
    if convs[0][1].shape[1] != convs[-1][1].shape[0]:
        raise ConversionError(
            f"{path}: the network reads {convs[0][1].shape[1]} channels and writes "
            f"{convs[-1][1].shape[0]}; a residual DnCNN writes as many as it reads"
        )
    return convs


def convert(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of KAIR's ``DnCNN(act_mode="R")`` for the MatConvNet model in ``path``."""
    state: dict[str, torch.Tensor] = {}
    for i, (_, weight, bias) in enumerate(read_layers(path)):
        state[f"model.{2 * i}.weight"] = torch.from_numpy(weight)
        state[f"model.{2 * i}.bias"] = torch.from_numpy(bias)
    return state


def check_out(mat: Path, out: Path, overwrite: bool) -> None:
    """Refuse, before reading anything, an output that would lose a file or cannot be written: the
    ``.mat`` input itself (also through a link: always), an existing file unless ``overwrite``, a
    folder, a missing or read-only folder."""
    from spt_adapter._io import same_file

    if same_file(mat, out):
        raise ConversionError(f"the output {out} is the input {mat} (the same file); write it elsewhere")
    if out.is_dir():
        raise ConversionError(f"the output {out} is a folder; name the .safetensors file to write")
    if os.path.lexists(out) and not overwrite:
        raise ConversionError(f"the output {out} already exists; pass --overwrite to replace it")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConversionError(f"cannot write {out}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConversionError(f"cannot write {out}: the folder {folder} is not writable")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mat", type=Path, help="a cszn/DnCNN model/*.mat file (MATLAB v7.3)")
    parser.add_argument("out", type=Path, help="the .safetensors file to write (an existing one: see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (default: refuse)")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error(f"the output must end in .safetensors: {args.out}")
    try:
        check_out(args.mat, args.out, args.overwrite)
        state = convert(args.mat)
    except ConversionError as exc:
        print(f"convert_dncnn_mat: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, KeyError, TypeError, ValueError) as exc:  # h5py on a file no check foresaw: still one line
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(
            f"convert_dncnn_mat: error: {args.mat}: cannot be read as a DnCNN ({type(exc).__name__}: {first})",
            file=sys.stderr,
        )
        return 1
    from safetensors.torch import save

    from spt_adapter._io import atomic_write_bytes, remove_stale_temporaries_of, write_once_bytes

    remove_stale_temporaries_of(args.out, older_than=time.time() - 60)  # of a conversion killed while writing
    data = save(state, metadata={"source": args.mat.name, "converter": "tools/convert_dncnn_mat.py"})
    try:
        if args.overwrite:
            atomic_write_bytes(args.out, data)
        elif not write_once_bytes(args.out, data):
            raise ConversionError(f"{args.out} was created while converting; it is kept and nothing was written")
    except ConversionError as exc:
        print(f"convert_dncnn_mat: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"convert_dncnn_mat: error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    n = sum(t.numel() for t in state.values())
    print(f"wrote {args.out}: {len(state) // 2} convs, {state['model.0.weight'].shape[1]} channels in, {n} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
