"""What SPT units cost: parameters, forward latency, training-step time and memory.

Prints, for SwinIR-light (x2, 64x64 input) and a small Restormer, each measured side by side in
one run (variants interleaved, median of --repeats):

* trainable-parameter ratio: units / backbone (target <= 3 %);
* forward latency ratio: backbone + units (prior given) / frozen backbone (target <= +5 %), and
  the forward FLOP ratio (counted by torch.utils.flop_counter; independent of machine load);
* training-step time ratio: full fine-tune / SPT-only (target >= 1.5x faster);
* optimizer-state memory (Adam) and training memory: SPT-only vs full fine-tune (target >= 40 %
  less optimizer-state memory). Training memory = tensors saved for backward + gradients + optimizer
  state, counted exactly with saved-tensor hooks (on CUDA the allocator peak is printed too).

    python benchmarks/overhead.py                  # CPU, default unit config
    python benchmarks/overhead.py --device cuda    # the same on a GPU
    python benchmarks/overhead.py --student        # a distilled prior's student vs each backbone

``--student`` prints, for every backbone of the quality benchmarks (and the two above), the prior
student's forward FLOPs (torch.utils.flop_counter) and time against the backbone's (target: student
<= 10 % of the backbone's FLOPs) and against the classical segmenter it replaces at inference
(Felzenszwalb, seconds per image; SAM vit_b takes about 11 s per 1024 px image on the 2-core CPU,
docs/prior.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

import spt_adapter
from spt_adapter import SPTConfig

warnings.filterwarnings("ignore")


def swinir_light():
    from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

    # the SwinIR-light x2 configuration of the paper / model zoo
    return SwinIR(
        upscale=2,
        in_chans=3,
        img_size=64,
        window_size=8,
        img_range=1.0,
        depths=[6, 6, 6, 6],
        embed_dim=60,
        num_heads=[6, 6, 6, 6],
        mlp_ratio=2,
        upsampler="pixelshuffledirect",
        resi_connection="1conv",
    ), "layers.*.residual_group"


def restormer_small():
    from spandrel_extra_arches.architectures.Restormer.__arch.restormer_arch import Restormer

    return Restormer(
        dim=24, num_blocks=[2, 3, 3, 4], num_refinement_blocks=2, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66
    ), ["encoder_level*", "latent", "decoder_level*", "refinement"]


MODELS = {"swinir-light-x2": swinir_light, "restormer-small": restormer_small}


def _quality_backbones():
    """The backbones of benchmarks/quality.py (same shapes; weights do not change FLOPs):
    name -> (module, input channels)."""
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact
    from spandrel.architectures.DnCNN import DnCNN

    return {
        "dncnn-colour (quality denoise)": (DnCNN(in_nc=3, out_nc=3, nc=32, nb=8, act_mode="R"), 3),
        "srvgg-compact x4 (quality sr4)": (
            SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=4, act_type="prelu"),
            3,
        ),
        "KAIR dncnn_25 grey (quality kair)": (DnCNN(in_nc=1, out_nc=1, nc=64, nb=17, act_mode="R"), 1),
        "swinir-light-x2": (swinir_light()[0], 3),
        "restormer-small": (restormer_small()[0], 3),
    }


def _flops(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def student_costs(args) -> int:
    """The prior student (spt_adapter.core.student) beside every benchmark backbone: FLOPs and time."""
    import numpy as np

    from spt_adapter.core.student import PriorStudent
    from spt_adapter.prior import ClassicalMaskProvider

    print(
        f"# prior student width {args.student_width}, depth {args.student_depth}, 1 output channel; input "
        f"1x{args.size}x{args.size} (LQ); device {args.device}, median of {args.repeats}"
    )
    header = ("backbone", "student / backbone FLOPs", "student / backbone forward", "student vs felzenszwalb per image")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    seg = ClassicalMaskProvider("felzenszwalb", scale=300, sigma=0.8, min_size=50)
    ok = True
    for name, (net, cin) in _quality_backbones().items():
        net = net.to(args.device).eval()
        torch.manual_seed(0)
        student = PriorStudent(1, in_channels=cin, width=args.student_width, depth=args.student_depth).to(args.device)
        x = torch.rand(1, cin, args.size, args.size, device=args.device)
        # each closure binds this iteration's objects (default arguments): no late binding (B023)
        f_net, f_st = _flops(lambda net=net, x=x: net(x)), _flops(lambda student=student, x=x: student(x))
        with torch.no_grad():
            t_net = statistics.median(timed(lambda net=net, x=x: net(x), args.device) for _ in range(args.repeats))
            t_st = statistics.median(
                timed(lambda student=student, x=x: student(x), args.device) for _ in range(args.repeats)
            )
        img = (rng.random((args.size, args.size, 3)) * 255).astype(np.uint8)
        t_seg = statistics.median(timed(lambda img=img: seg.generate(img), "cpu") for _ in range(3))
        ok &= f_st <= 0.10 * f_net
        print(
            f"| {name} | {f_st / 1e6:.1f} / {f_net / 1e6:.1f} MFLOP = {100 * f_st / f_net:.1f} % "
            f"| {1e3 * t_st:.2f} / {1e3 * t_net:.2f} ms = {t_st / t_net:.3f}x "
            f"| {1e3 * t_st:.2f} ms vs {1e3 * t_seg:.1f} ms |"
        )
    print(f"target student <= 10 % of every backbone's forward FLOPs: {'met' if ok else 'NOT met'}")
    return 0


def build(name: str, variant: str, config: SPTConfig, device: str):
    torch.manual_seed(0)
    backbone, targets = MODELS[name]()
    backbone = backbone.to(device)
    if variant == "backbone":
        for p in backbone.parameters():
            p.requires_grad_(False)
        return backbone, backbone
    if variant == "full":
        return backbone, backbone
    model = spt_adapter.inject(backbone, targets, config=config)
    with torch.no_grad():  # trained-looking units: non-zero last layers, same cost as zero ones
        for _, p in model.unit_parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    return model, backbone


def call(model, x, prior):
    return model(x, prior=prior) if isinstance(model, spt_adapter.SPTModel) else model(x)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def inputs(batch, size, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    prior = (torch.randint(1, 25, (batch, 1, size, size), generator=g).float() / 24).to(device)
    target = torch.rand(batch, 3, size * 2, size * 2, generator=g).to(device)
    return x, prior, target


def train_step(model, opt, x, prior, target):
    out = call(model, x, prior)
    t = target if out.shape == target.shape else torch.zeros_like(out)
    loss = (out - t).abs().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def optimizer_state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))


def measure(name: str, args, config: SPTConfig) -> dict:
    device = args.device
    x, prior, target = inputs(args.batch, args.size, device)
    models = {v: build(name, v, config, device) for v in ("backbone", "spt", "full")}
    spt, backbone = models["spt"]
    n_units = sum(p.numel() for _, p in spt.unit_parameters())
    n_backbone = sum(p.numel() for p in backbone.parameters())

    flops = {}
    with torch.no_grad():
        for v in ("backbone", "spt"):
            with FlopCounterMode(display=False) as counter:
                call(models[v][0].eval(), x, prior)
            flops[v] = counter.get_total_flops()

    # forward latency, interleaved
    fwd = {"backbone": [], "spt": []}
    with torch.no_grad():
        for v in fwd:
            models[v][0].eval()
            call(models[v][0], x, prior)  # warm-up
        for _ in range(args.repeats):
            for v in fwd:
                fwd[v].append(timed(lambda v=v: call(models[v][0], x, prior), device))

    # training step, interleaved
    opts = {
        "spt": torch.optim.Adam([p for p in spt.parameters() if p.requires_grad], lr=1e-4),
        "full": torch.optim.Adam(models["full"][0].parameters(), lr=1e-4),
    }
    step = {"spt": [], "full": []}
    for v in step:
        models[v][0].train()
        train_step(models[v][0], opts[v], x, prior, target)  # warm-up, creates optimizer state
    for _ in range(args.repeats):
        for v in step:
            step[v].append(timed(lambda v=v: train_step(models[v][0], opts[v], x, prior, target), device))
    state = {v: optimizer_state_bytes(opts[v]) for v in opts}
    peak = {v: training_memory(models[v][0], opts[v], x, prior, target, device) for v in opts}
    if device.startswith("cuda"):
        cuda = {v: cuda_peak(models[v][0], opts[v], x, prior, target) for v in opts}
        extra = {"cuda_peak_full_mb": cuda["full"] / 2**20, "cuda_peak_spt_mb": cuda["spt"] / 2**20}
    else:
        extra = {}
    med = lambda xs: statistics.median(xs)  # noqa: E731
    return {
        "model": name,
        "unit_params": n_units,
        "backbone_params": n_backbone,
        "param_ratio": n_units / n_backbone,
        "fwd_backbone_ms": 1e3 * med(fwd["backbone"]),
        "fwd_spt_ms": 1e3 * med(fwd["spt"]),
        "fwd_ratio": med(fwd["spt"]) / med(fwd["backbone"]),
        "flops_ratio": flops["spt"] / flops["backbone"],
        "step_full_ms": 1e3 * med(step["full"]),
        "step_spt_ms": 1e3 * med(step["spt"]),
        "step_speedup": med(step["full"]) / med(step["spt"]),
        "optstate_full_mb": state["full"] / 2**20,
        "optstate_spt_mb": state["spt"] / 2**20,
        "optstate_saving": 1 - state["spt"] / state["full"],
        "peak_full_mb": peak["full"] / 2**20,
        "peak_spt_mb": peak["spt"] / 2**20,
        "peak_saving": 1 - peak["spt"] / peak["full"],
        **extra,
    }


def training_memory(model, opt, x, prior, target, device: str) -> int:
    """Bytes one training step holds at its peak beyond the model's weights: tensors saved for
    backward (counted once per storage) + parameter gradients + optimizer state. Exact and
    device-independent; on CUDA the allocator's peak is measured as well."""
    saved: dict[int, int] = {}

    def pack(t):
        if t.device.type != "meta":
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step(model, opt, x, prior, target)
    activations = sum(n for ptr, n in saved.items() if ptr not in params)  # weights are not activations
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    return activations + grads + optimizer_state_bytes(opt)


def cuda_peak(model, opt, x, prior, target) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_step(model, opt, x, prior, target)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    defaults = SPTConfig()
    parser.add_argument("--fusion", default=defaults.fusion)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--depth", type=int, default=defaults.depth)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--student", action="store_true", help="only the distilled prior's student vs each backbone")
    parser.add_argument("--student-width", type=int, default=16)
    parser.add_argument("--student-depth", type=int, default=4)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.student:
        return student_costs(args)
    config = SPTConfig(fusion=args.fusion, hidden=args.hidden, depth=args.depth)
    print(
        f"# spt-adapter {spt_adapter.__version__}, torch {torch.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(
        f"# unit config: fusion={config.fusion} hidden={config.hidden} depth={config.depth}; "
        f"batch {args.batch}, input {args.size}x{args.size}, median of {args.repeats}"
    )
    rows = [measure(name, args, config) for name in args.models]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    header = (
        "model",
        "units/backbone params",
        "forward +SPT / backbone",
        "forward FLOPs +SPT / backbone",
        "train step full / SPT",
        "Adam state SPT vs full",
        "train memory SPT vs full",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['model']} | {r['unit_params']:,} / {r['backbone_params']:,} = {100 * r['param_ratio']:.2f} % "
            f"| {r['fwd_spt_ms']:.1f} / {r['fwd_backbone_ms']:.1f} ms = {r['fwd_ratio']:.3f}x "
            f"| {r['flops_ratio']:.4f}x "
            f"| {r['step_full_ms']:.0f} / {r['step_spt_ms']:.0f} ms = {r['step_speedup']:.2f}x faster "
            f"| {r['optstate_spt_mb']:.3f} vs {r['optstate_full_mb']:.2f} MB = {100 * r['optstate_saving']:.1f} % less "
            f"| {r['peak_spt_mb']:.0f} vs {r['peak_full_mb']:.0f} MB = {100 * r['peak_saving']:.1f} % less |"
        )
    targets = {
        "params <= 3 %": all(r["param_ratio"] <= 0.03 for r in rows),
        "forward <= +5 %": all(r["fwd_ratio"] <= 1.05 for r in rows),
        "train step >= 1.5x": all(r["step_speedup"] >= 1.5 for r in rows),
        "optimizer state >= 40 % less": all(r["optstate_saving"] >= 0.40 for r in rows),
    }
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
