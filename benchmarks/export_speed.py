"""PyTorch vs TorchScript vs onnxruntime: seconds per 512x512 image (CPU), and parity.

For each backbone (a colour DnCNN, SwinIR-light x2 in its paper configuration, a small Restormer;
random weights, loaded through ``spt_adapter.load_backbone`` so spandrel's size requirements apply)
with default SPT units reading a provider's prior, or with a distilled student (``--student``):

* export it with ``spt_adapter.export`` to ONNX and TorchScript (the export's own check runs);
* parity: max |exported - PyTorch| on [0, 1] outputs at two small sizes other than the traced one,
  and at the timed size;
* time one forward of a ``--size`` x ``--size`` image through each of the three, interleaved,
  median of ``--repeats`` after one warm-up (PyTorch: the forward ``restore`` runs; the exported
  files: ``load_exported`` runners, onnxruntime on the CPU execution provider).

    python benchmarks/export_speed.py --threads 1 --repeats 2          # what docs/performance.md records
    python benchmarks/export_speed.py --only dncnn --size 256
    python benchmarks/export_speed.py --onnx-half --threads 1 --size 256   # float16 vs float32 ONNX, CPU

``--onnx-half``: instead, each backbone's float32 ONNX export against its float16 twin (``export(...,
half=True)``, what ``spt-adapter export --half`` writes) through onnxruntime on the CPU, interleaved,
with the largest difference between their outputs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import spt_adapter
from spt_adapter import SPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import restormer_small, swinir_light  # noqa: E402  the backbones overhead.py measures

warnings.filterwarnings("ignore")


def dncnn():
    from spandrel.architectures.DnCNN.__arch.network_dncnn import DnCNN

    return DnCNN(in_nc=3, out_nc=3, nc=32, nb=8, act_mode="R"), ["model.6", "model.10", "model.14"]


MODELS = {"dncnn-colour": dncnn, "swinir-light-x2": swinir_light, "restormer-small": restormer_small}


def build(name: str, student: bool, tmp: Path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net, targets = MODELS[name]()
    ckpt = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt))
    bb = spt_adapter.load_backbone(ckpt)
    cfg = SPTConfig(
        targets=targets,
        student={"width": 16, "depth": 4} if student else None,
        prior={"provider": {"provider": "classical", "method": "slic"}, "encoding": "boundary"},
    )
    model = spt_adapter.inject(bb.model.eval(), config=cfg).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # trained-looking units: they change the output
        for _, p in model.unit_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model, bb.descriptor


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--student", action="store_true", help="distilled adapters (image -> image)")
    parser.add_argument("--only", nargs="*", default=None, help=f"backbones among {list(MODELS)}")
    parser.add_argument("--onnx-half", action="store_true", help="float16 vs float32 ONNX files on the CPU")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.onnx_half:
        return onnx_half(args)
    import onnxruntime

    from spt_adapter.inference.export import export, parity
    from spt_adapter.inference.exported import load_exported
    from spt_adapter.inference.restore import _run, size_multiple

    print(
        f"# export_speed: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {args.threads}, {args.size}x{args.size} input, median of {args.repeats} after 1 warm-up, "
        f"{'distilled student' if args.student else 'provider prior'}"
    )
    print(
        "| backbone | PyTorch s | TorchScript s | onnxruntime s | ORT / PyTorch | parity ONNX (small / timed) | "
        "parity TorchScript (small / timed) | export s (onnx, ts) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.only or list(MODELS):
            model, desc = build(name, args.student, tmp)
            t = time.perf_counter()
            onnx_file = export(model, tmp / f"{name}.onnx", descriptor=desc)
            t_onnx = time.perf_counter() - t
            t = time.perf_counter()
            ts_file = export(model, tmp / f"{name}.pt", descriptor=desc)
            t_ts = time.perf_counter() - t
            small = [(40, 56), (37, 45)]
            p_small = {
                fmt: parity(f, fmt, model, descriptor=desc, sizes=small)
                for fmt, f in (("onnx", onnx_file), ("torchscript", ts_file))
            }
            runners = {"onnx": load_exported(onnx_file, threads=args.threads), "torchscript": load_exported(ts_file)}
            m = size_multiple(model, desc)
            g = torch.Generator().manual_seed(0)
            x = torch.rand(1, 3, args.size, args.size, generator=g)
            prior = None if args.student else (torch.rand(1, 1, args.size, args.size, generator=g) > 0.5).float()
            outs = {}

            def pytorch(model=model, x=x, prior=prior, m=m, outs=outs):
                with torch.no_grad():
                    outs["pytorch"] = _run(model, x, prior, multiple=m, backbone_only=False, half=False)[0]

            def exported(fmt, x=x, prior=prior, outs=outs, runners=runners):
                def run():
                    outs[fmt] = runners[fmt](x, prior)

                return run

            fns = {"pytorch": pytorch, "torchscript": exported("torchscript"), "onnx": exported("onnx")}
            times = {k: [] for k in fns}
            for rep in range(args.repeats + 1):
                for k, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    if rep:
                        times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            ref = outs["pytorch"].clamp(0, 1)
            p_big = {fmt: float((outs[fmt].float().clamp(0, 1) - ref).abs().max()) for fmt in ("onnx", "torchscript")}
            print(
                f"| {name} | {med['pytorch']:.2f} | {med['torchscript']:.2f} | {med['onnx']:.2f} | "
                f"{med['onnx'] / med['pytorch']:.2f}x | {p_small['onnx']:.1e} / {p_big['onnx']:.1e} | "
                f"{p_small['torchscript']:.1e} / {p_big['torchscript']:.1e} | {t_onnx:.1f}, {t_ts:.1f} |",
                flush=True,
            )
    return 0


def onnx_half(args) -> int:
    """float32 and float16 ONNX exports of each backbone through onnxruntime (CPU), timed side by side."""
    import numpy as np
    import onnxruntime

    from spt_adapter.deploy.onnx_restore import load_onnx
    from spt_adapter.errors import ExportError
    from spt_adapter.inference.export import export

    print(
        f"# export_speed --onnx-half: onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {args.threads}, {args.size}x{args.size} input, median of {args.repeats} after 1 warm-up, "
        f"{'distilled student' if args.student else 'provider prior'}"
    )
    print("| backbone | float32 s | float16 s | float16 / float32 | max abs diff |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.only or list(MODELS):
            model, desc = build(name, args.student, tmp)
            try:
                files = {
                    "float32": export(model, tmp / f"{name}.onnx", descriptor=desc, check=False),
                    "float16": export(model, tmp / f"{name}.half.onnx", descriptor=desc, half=True, check=False),
                }
            except ExportError as exc:  # some backbones cannot be traced in float16 on the CPU
                print(f"| {name} | - | - | not exported: {str(exc)[:90]} | - |", flush=True)
                continue
            nets = {k: load_onnx(f, threads=args.threads) for k, f in files.items()}
            rng = np.random.default_rng(0)
            x = rng.random((1, 3, args.size, args.size), dtype=np.float32)
            prior = None if args.student else (rng.random((1, 1, args.size, args.size)) > 0.5).astype(np.float32)
            times: dict[str, list[float]] = {k: [] for k in nets}
            outs = {}
            for rep in range(args.repeats + 1):
                for k, net in nets.items():
                    t = time.perf_counter()
                    outs[k] = np.asarray(net(x, prior), dtype=np.float32)
                    if rep:
                        times[k].append(time.perf_counter() - t)
            med = {k: statistics.median(v) for k, v in times.items()}
            diff = float(np.abs(np.clip(outs["float16"], 0, 1) - np.clip(outs["float32"], 0, 1)).max())
            print(
                f"| {name} | {med['float32']:.3f} | {med['float16']:.3f} | {med['float16'] / med['float32']:.2f}x "
                f"| {diff:.1e} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
